fn main() -> std::process::ExitCode {
    thespian_agent::cli_main()
}
