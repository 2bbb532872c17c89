//! The Thespian agent: a tiny gRPC server whose methods act out a configured behaviour tree.
//!
//! - [`config`]: the behaviour JSON (the existing Thespian format plus optional extensions), validated.
//! - [`behavior`]: the executor (sleeps, functions, concurrent actions, calls to other Thespians).
//! - [`client`]: the lean unary gRPC client the calls (and `thespctl probe`) use.
//! - [`coalesce`]: batches each HTTP/2 connection's writes (server and client side).
//! - [`server`]: `thespian.Thespian`, health, reflection, response metadata, drain on SIGTERM.
//! - [`telemetry`]: W3C trace context, OTLP export, JSON log lines.
//! - [`env`]: the settings from the environment; [`resolve`]: `THESPIAN_RESOLVE`.

pub mod behavior;
pub mod client;
pub mod coalesce;
pub mod config;
pub mod env;
mod instance;
pub mod resolve;
pub mod server;
pub mod telemetry;
pub mod timer;

/// Code generated from `proto/thespian.proto`: the `Thespian` client and server and the `Nothing` message.
pub mod proto {
    tonic::include_proto!("thespian");

    /// Encoded `FileDescriptorSet` of the Thespian proto, served by the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/thespian_descriptor.bin"));

    /// The generated service's codec (`build.rs` names it): prost's, with buffers sized for `Nothing`.
    /// tonic's default allocates 8 KiB to encode each reply and 8 KiB to decode each request; blocks
    /// that large skip the allocator's per-thread cache and cost more than the rest of a null method.
    /// The buffers still grow for any larger message.
    #[derive(Debug, Clone, Copy)]
    pub struct Codec<T, U>(std::marker::PhantomData<fn(T) -> U>);

    impl<T, U> Default for Codec<T, U> {
        fn default() -> Self {
            Codec(std::marker::PhantomData)
        }
    }

    /// Room for a few small messages (an empty one is a 5-byte frame).
    const BUFFER_SIZE: usize = 64;

    fn buffer_settings() -> tonic::codec::BufferSettings {
        // The yield threshold is tonic's default (32 KiB); only the initial capacity changes.
        tonic::codec::BufferSettings::new(BUFFER_SIZE, 32 * 1024)
    }

    impl<T, U> tonic::codec::Codec for Codec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = tonic_prost::ProstEncoder<T>;
        type Decoder = tonic_prost::ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            tonic_prost::ProstEncoder::new(buffer_settings())
        }

        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::new(buffer_settings())
        }
    }
}

use std::process::ExitCode;

/// Exit code for bad input (configuration, environment, an address that cannot be bound).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code for a failure at run time.
pub const EXIT_FAILED: u8 = 1;

/// Runs the agent configured from the environment (`PORT`, `SERVICE_NAME`, `CONFIG_JSON`, ...) until
/// SIGTERM/SIGINT. Used by the `thespian-agent` binary and by `thespctl agent`.
///
/// Exit codes: 0 after a drain, 2 for bad input (one `error: ...` line on stderr naming the variable),
/// 1 for a failure at run time.
pub fn cli_main() -> ExitCode {
    let settings = match env::Settings::from_env(|name| std::env::var_os(name)) {
        Ok(settings) => settings,
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    if let Err(message) = telemetry::init_logs(&settings.service, settings.rust_log.as_deref()) {
        return fail(EXIT_BAD_INPUT, &message);
    }
    let runtime = match build_runtime(settings.worker_threads) {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_FAILED, &server::RunError::Runtime(e)),
    };
    let result = runtime.block_on(server::run(settings));
    // Connections still open after the grace period are abandoned, not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            fail(e.exit_code(), &e)
        }
    }
}

/// Two worker threads by default (see `docs/benchmarks.md`: more threads cost memory, not throughput, in a
/// container with a fraction of a CPU); `THESPIAN_WORKER_THREADS` overrides.
fn build_runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = worker_threads.unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(4)
        .thread_name("thespian")
        .enable_all()
        .build()
}

fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(code)
}
