//! The Thespian agent: a tiny gRPC server whose methods act out a configured behaviour tree.

pub mod config;

/// Code generated from `proto/thespian.proto`: the `Thespian` client and server and the `Nothing` message.
pub mod proto {
    tonic::include_proto!("thespian");

    /// Encoded `FileDescriptorSet` of the Thespian proto, served by the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/thespian_descriptor.bin"));
}

/// Runs the agent configured from the environment (`PORT`, `SERVICE_NAME`, `CONFIG_JSON`, ...) until
/// SIGTERM/SIGINT. Used by the `thespian-agent` binary and by `thespctl agent`.
pub fn cli_main() -> std::process::ExitCode {
    eprintln!("thespian-agent: not built yet");
    std::process::ExitCode::from(2)
}
