//! The resolve file: how a local agent finds `http://gilbert` port `80`.
//!
//! On ECS, Service Connect answers for `gilbert:80`. Locally, `up` writes `.thespctl/resolve` in the
//! agent's `THESPIAN_RESOLVE` syntax (`gilbert:80=127.0.0.1:41001,127.0.0.1:41002;yorick:80=…`) and
//! hands every agent its path in `THESPIAN_RESOLVE_FILE`. Agents re-read it when it changes, so a
//! rolling restart can move callers to a new replica without restarting them: the file always lists
//! exactly the replicas that are healthy and not being stopped.

use std::path::Path;

use super::LocalError;
use super::state::{State, write_atomic};

/// The port every thespian answers on by name (the ECS Service Connect client alias `NAME:80`).
pub const ALIAS_PORT: u16 = 80;

/// The resolve map of `state`, one entry per thespian with its replicas in index order, thespians sorted.
pub fn render(state: &State) -> String {
    state
        .thespians
        .iter()
        .filter(|(_, t)| !t.replicas.is_empty())
        .map(|(name, t)| {
            let endpoints: Vec<String> = t.replicas.iter().map(|r| r.address().to_string()).collect();
            format!("{name}:{ALIAS_PORT}={}", endpoints.join(","))
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Writes the map atomically: an agent re-reading it sees the old map or the new one, never a mix.
pub fn write(path: &Path, state: &State) -> Result<(), LocalError> {
    let mut text = render(state);
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::local::state::ReplicaRecord;

    fn rec(thespian: &str, index: u32, port: u16) -> ReplicaRecord {
        ReplicaRecord {
            thespian: thespian.into(),
            index,
            pid: 1,
            start_time: 1,
            port,
            config_hash: "h".into(),
            log: "l".into(),
            started_at_ms: 0,
        }
    }

    #[test]
    fn renders_the_agents_syntax_in_a_stable_order() {
        let mut state = State::new("demo", Path::new("m"));
        assert_eq!(render(&state), "");
        state.put(rec("yorick", 0, 42000));
        state.put(rec("gilbert", 1, 41002));
        state.put(rec("gilbert", 0, 41001));
        assert_eq!(
            render(&state),
            "gilbert:80=127.0.0.1:41001,127.0.0.1:41002;yorick:80=127.0.0.1:42000"
        );
    }
}
