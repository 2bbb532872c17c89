//! Rendering of the tunnel reports: the `forwarding …` line (or its JSON), session events, the close.

use serde::Serialize;

use crate::target::aws::tunnel::{Closed, SessionEvent, TunnelDescription, TunnelTarget};
use crate::ui::{Report, Style, Ui};

/// Printed once the tunnel forwards: `forwarding 127.0.0.1:P → gilbert (task …, i-…:HOSTPORT)`.
#[derive(Debug, Clone, Serialize)]
pub struct Forwarding<'a>(pub &'a TunnelDescription);

impl Report for Forwarding<'_> {
    fn render(&self, ui: &Ui) -> String {
        let d = self.0;
        let to = match (&d.thespian, &d.task_id, &d.remote_host) {
            (Some(name), Some(task), _) => {
                format!("{name} (task {task}, {}:{})", d.instance_id, d.remote_port)
            }
            (_, _, Some(host)) => format!("{host}:{} via {}", d.remote_port, d.instance_id),
            _ => format!("{}:{}", d.instance_id, d.remote_port),
        };
        format!(
            "{} {} → {to}",
            ui.paint("forwarding", Style::Green),
            d.local_address
        )
    }
}

/// `--plugin`: the session handed to session-manager-plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginHandoff {
    pub session_id: String,
    pub plugin: String,
    pub plugin_version: Option<String>,
    pub thespian: Option<String>,
    pub task_id: Option<String>,
    pub instance_id: String,
    pub remote_port: u16,
    pub remote_host: Option<String>,
    pub document: String,
    /// What the plugin was asked to listen on (0: it picks and prints the port).
    pub local_port: u16,
}

impl PluginHandoff {
    pub fn new(
        session_id: &str,
        plugin: &str,
        plugin_version: Option<String>,
        target: &TunnelTarget,
    ) -> Self {
        PluginHandoff {
            session_id: session_id.to_string(),
            plugin: plugin.to_string(),
            plugin_version,
            thespian: None,
            task_id: None,
            instance_id: target.instance.clone(),
            remote_port: target.port,
            remote_host: target.host.clone(),
            document: target.document.clone(),
            local_port: 0,
        }
    }
}

impl Report for PluginHandoff {
    fn render(&self, _ui: &Ui) -> String {
        let to = match (&self.thespian, &self.task_id) {
            (Some(name), Some(task)) => {
                format!("{name} (task {task}, {}:{})", self.instance_id, self.remote_port)
            }
            _ => match &self.remote_host {
                Some(host) => format!("{host}:{} via {}", self.remote_port, self.instance_id),
                None => format!("{}:{}", self.instance_id, self.remote_port),
            },
        };
        format!(
            "session {} → {to} handed to {} {}; it prints the local port",
            self.session_id,
            self.plugin,
            self.plugin_version.as_deref().unwrap_or("(unknown version)")
        )
    }
}

/// A session event, as a line on stderr.
pub fn event(ui: &Ui, event: &SessionEvent) {
    match event {
        SessionEvent::Reconnecting { reason } => ui.info(format!("data channel lost ({reason}); resuming the session…")),
        SessionEvent::Reconnected { attempts } => ui.info(format!(
            "session resumed after {attempts} attempt(s); open connections carry on"
        )),
        SessionEvent::AgentCouldNotConnect => {
            ui.warn("the SSM agent could not connect to the remote port for a new connection (is the task still listening?)")
        }
        SessionEvent::AgentMessage(message) => ui.info(format!("agent: {message}")),
    }
}

/// The closing line on stderr.
pub fn closed(ui: &Ui, closed: &Closed) {
    let how = match (closed.flag_acked, closed.api_terminated) {
        (true, true) => "terminated (agent confirmed; TerminateSession called)",
        (true, false) => "terminated (agent confirmed; the TerminateSession call failed)",
        (false, true) => "terminated (TerminateSession called; the agent did not confirm in time)",
        (false, false) => {
            "closed locally; the agent did not confirm and TerminateSession failed: it ends on its idle timeout"
        }
    };
    ui.info(format!("session {} {how}", closed.session_id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::OutputFormat;

    fn description() -> TunnelDescription {
        TunnelDescription {
            local_address: "127.0.0.1:4000".parse().unwrap(),
            local_port: 4000,
            thespian: Some("gilbert".into()),
            cluster: Some("demo".into()),
            task_id: Some("4d590253bb114126b7afa7b58eea9221".into()),
            task_arn: None,
            instance_id: "i-0abc".into(),
            remote_port: 32768,
            remote_host: None,
            document: "AWS-StartPortForwardingSession".into(),
            session_id: "s-1".into(),
            agent_version: "3.3.0.0".into(),
            mode: "mux",
        }
    }

    #[test]
    fn the_forwarding_line_names_task_instance_and_host_port() {
        let ui = Ui::plain(OutputFormat::Table);
        assert_eq!(
            Forwarding(&description()).render(&ui),
            "forwarding 127.0.0.1:4000 → gilbert (task 4d590253bb114126b7afa7b58eea9221, i-0abc:32768)"
        );
        let mut low = description();
        low.thespian = None;
        low.task_id = None;
        low.remote_host = Some("db.internal".into());
        assert_eq!(
            Forwarding(&low).render(&ui),
            "forwarding 127.0.0.1:4000 → db.internal:32768 via i-0abc"
        );
    }

    #[test]
    fn json_has_the_documented_keys() {
        let v = serde_json::to_value(Forwarding(&description())).unwrap();
        for key in [
            "local_address",
            "local_port",
            "thespian",
            "cluster",
            "task_id",
            "task_arn",
            "instance_id",
            "remote_port",
            "remote_host",
            "document",
            "session_id",
            "agent_version",
            "mode",
        ] {
            assert!(v.get(key).is_some(), "missing {key}: {v}");
        }
    }
}
