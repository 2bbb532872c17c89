use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use thespctl::cli::{Cli, Command};
use thespctl::error::exit;
use thespctl::ui::{Style, Ui};
use thespctl::{Context, commands};

fn main() -> ExitCode {
    let cli = Cli::parse_args();

    // The embedded agent: `thespctl up` starts replicas as `thespctl agent`, so one installed binary is
    // enough. It configures itself from the environment and owns its runtime, logging and signals.
    if matches!(cli.command, Command::Agent) {
        return thespian_agent::cli_main();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let ui = Ui::new(cli.global.output);
    let ctx = Context {
        global: cli.global.clone(),
        ui: ui.clone(),
        cancel: CancellationToken::new(),
    };

    let code = runtime.block_on(async {
        // Registered here, before the command runs: `tokio::signal::ctrl_c()` registers only when first
        // polled, and a Ctrl-C that beat the spawned task to it would kill the process without a word.
        let interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        let cancel = ctx.cancel.clone();
        tokio::spawn(async move {
            let Ok(mut interrupts) = interrupts else {
                return;
            };
            if interrupts.recv().await.is_some() {
                cancel.cancel();
                // A second Ctrl-C means "now": leave without waiting for anything.
                if interrupts.recv().await.is_some() {
                    std::process::exit(i32::from(exit::INTERRUPTED));
                }
            }
        });
        match commands::run(&cli.command, &ctx).await {
            Ok(code) => code,
            Err(err) => {
                report_error(&ui, &err);
                err.exit_code()
            }
        }
    });
    // Do not wait for stray blocking tasks (a stdin confirmation, a log follower) on the way out.
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// `error: …` then the `caused by:` chain, one cause per line.
fn report_error(ui: &Ui, err: &thespctl::error::Error) {
    eprintln!("{} {err}", ui.paint("error:", Style::Red));
    for cause in thespctl::error::causes(err) {
        eprintln!("  caused by: {cause}");
    }
}
