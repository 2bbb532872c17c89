//! The top-level error of a command and the exit codes scripts rely on.
//!
//! Each concern owns a `thiserror` enum with the context a user needs (file, JSON path, stack name, flag);
//! this enum only gathers them and decides the exit code. `main` prints `error: …` and the
//! `caused by:` chain.

use std::path::PathBuf;

/// Exit codes, documented in the README and in `thespctl --help`.
pub mod exit {
    /// Success: the command did what was asked (including "no changes").
    pub const OK: u8 = 0;
    /// The command ran and the outcome failed: a probe gate, a failed deployment, a circuit breaker.
    pub const FAILED: u8 = 1;
    /// Bad input: manifest, flags, unknown thespian, nothing running, AWS configuration or credentials.
    pub const USAGE: u8 = 2;
    /// Interrupted by Ctrl-C (128 + SIGINT).
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] crate::fleet::ManifestError),

    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),

    #[error(transparent)]
    Local(#[from] crate::target::local::LocalError),

    #[error(transparent)]
    Aws(#[from] crate::target::aws::AwsError),

    #[error(transparent)]
    Tunnel(#[from] crate::target::aws::tunnel::TunnelError),

    /// A flag combination or argument that cannot work; `message` says what to do instead.
    #[error("{message}")]
    Usage { message: String },

    /// Ctrl-C while waiting. `still_running` names what carries on without us (stacks, deployments).
    #[error("interrupted{}", still_running_suffix(.still_running))]
    Interrupted { still_running: Vec<String> },

    #[error("could not {action} {}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn still_running_suffix(still_running: &[String]) -> String {
    if still_running.is_empty() {
        String::new()
    } else {
        format!(
            "; still in progress (not cancelled): {}",
            still_running.join(", ")
        )
    }
}

impl Error {
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Manifest(_) | Error::Usage { .. } => exit::USAGE,
            Error::Probe(e) => e.exit_code(),
            Error::Local(e) => e.exit_code(),
            Error::Aws(e) => e.exit_code(),
            Error::Tunnel(e) => e.exit_code(),
            Error::Interrupted { .. } => exit::INTERRUPTED,
            Error::Io { .. } => exit::FAILED,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The causes of `err` (its `source()` chain), nearest first.
pub fn causes(err: &dyn std::error::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(err.source(), |e| e.source())
}

/// `error: cause: cause` on one line, for a "last error" text; a cause whose text repeats an earlier one
/// (wrappers that display their source) is said once.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    for cause in causes(err) {
        let text = cause.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_the_chain_and_says_a_repeated_cause_once() {
        let inner = std::io::Error::other("connection refused");
        let outer = Error::Io {
            action: "read",
            path: "/tmp/x".into(),
            source: inner,
        };
        assert_eq!(one_line(&outer), "could not read /tmp/x: connection refused");
        assert_eq!(causes(&outer).count(), 1);
    }

    #[test]
    fn interrupted_names_what_is_still_running() {
        let e = Error::Interrupted {
            still_running: vec!["demo-gilbert".into(), "demo-yorick".into()],
        };
        assert_eq!(
            e.to_string(),
            "interrupted; still in progress (not cancelled): demo-gilbert, demo-yorick"
        );
        assert_eq!(e.exit_code(), exit::INTERRUPTED);
        assert_eq!(
            Error::Interrupted {
                still_running: vec![]
            }
            .to_string(),
            "interrupted"
        );
    }
}
