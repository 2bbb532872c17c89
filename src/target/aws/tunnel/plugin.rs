//! `--plugin`: hand the data channel to an installed `session-manager-plugin`, exactly as the AWS CLI
//! does (`awscli/customizations/sessionmanager.py`):
//!
//! ```text
//! argv[0] session-manager-plugin
//! argv[1] AWS_SSM_START_SESSION_RESPONSE   (the response JSON is in that environment variable;
//!                                            plugins ≤ 1.2.497.0 get the JSON itself here)
//! argv[2] region
//! argv[3] StartSession
//! argv[4] profile name, or ""
//! argv[5] the StartSession request JSON ({"Target": …, "DocumentName": …, "Parameters": …})
//! argv[6] the SSM endpoint URL (the plugin calls ResumeSession/TerminateSession there)
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::TunnelError;
use super::message::Version;
use super::session::Started;

pub const PLUGIN: &str = "session-manager-plugin";
pub const RESPONSE_ENV: &str = "AWS_SSM_START_SESSION_RESPONSE";
/// From this version on the plugin reads the response from the environment (keeps the token out of `ps`).
const ENV_FORM_MIN_EXCLUSIVE: &str = "1.2.497.0";

/// An installed plugin and its version.
#[derive(Debug, Clone)]
pub struct Plugin {
    pub path: PathBuf,
    pub version: Option<String>,
}

/// Finds `session-manager-plugin` on PATH and asks its version.
pub async fn find() -> Result<Plugin, TunnelError> {
    let path = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(PLUGIN))
                .find(|candidate| is_executable(candidate))
        })
        .ok_or(TunnelError::PluginMissing)?;
    let output = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| TunnelError::PluginSpawn {
            path: path.clone(),
            source,
        })?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Ok(Plugin {
        path,
        version: Version::parse(&version).map(|_| version),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What the plugin needs besides the StartSession response.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub region: String,
    pub profile: Option<String>,
    /// The StartSession request as JSON (with `Target`).
    pub request: serde_json::Value,
    pub ssm_endpoint: String,
}

/// The StartSession response the plugin reads.
pub fn response_json(started: &Started) -> String {
    json!({
        "SessionId": started.session_id,
        "TokenValue": started.token_value,
        "StreamUrl": started.stream_url,
    })
    .to_string()
}

/// argv[1..] and the environment for `plugin`, as the AWS CLI builds them.
pub fn arguments(
    plugin: &Plugin,
    started: &Started,
    handoff: &Handoff,
) -> (Vec<String>, Vec<(String, String)>) {
    let env_form = plugin
        .version
        .as_deref()
        .and_then(Version::parse)
        .zip(Version::parse(ENV_FORM_MIN_EXCLUSIVE))
        .is_some_and(|(v, min)| v > min);
    let response = response_json(started);
    let (first, env) = if env_form {
        (
            RESPONSE_ENV.to_string(),
            vec![(RESPONSE_ENV.to_string(), response)],
        )
    } else {
        (response, Vec::new())
    };
    let args = vec![
        first,
        handoff.region.clone(),
        "StartSession".to_string(),
        handoff.profile.clone().unwrap_or_default(),
        handoff.request.to_string(),
        handoff.ssm_endpoint.clone(),
    ];
    (args, env)
}

/// Runs the plugin with our stdio until it exits. On Ctrl-C the plugin (in our process group) gets the
/// SIGINT itself; if it is still running after a moment we pass one on, and kill it as a last resort.
pub async fn run(
    plugin: &Plugin,
    started: &Started,
    handoff: &Handoff,
    cancel: &CancellationToken,
) -> Result<std::process::ExitStatus, TunnelError> {
    let (args, env) = arguments(plugin, started, handoff);
    let mut child = Command::new(&plugin.path)
        .args(&args)
        .envs(env)
        .stdin(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| TunnelError::PluginSpawn {
            path: plugin.path.clone(),
            source,
        })?;
    tokio::select! {
        status = child.wait() => return status.map_err(|source| TunnelError::PluginSpawn { path: plugin.path.clone(), source }),
        _ = cancel.cancelled() => {}
    }
    if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        return status.map_err(|source| TunnelError::PluginSpawn {
            path: plugin.path.clone(),
            source,
        });
    }
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
    }
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(status) => status.map_err(|source| TunnelError::PluginSpawn {
            path: plugin.path.clone(),
            source,
        }),
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await.map_err(|source| TunnelError::PluginSpawn {
                path: plugin.path.clone(),
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> Started {
        Started {
            session_id: "s-1".into(),
            token_value: "tok".into(),
            stream_url:
                "wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe".into(),
        }
    }

    fn handoff() -> Handoff {
        Handoff {
            region: "eu-west-1".into(),
            profile: None,
            request: json!({"Target": "i-0123", "DocumentName": "AWS-StartPortForwardingSession",
                "Parameters": {"portNumber": ["32768"], "localPortNumber": ["0"]}}),
            ssm_endpoint: "https://ssm.eu-west-1.amazonaws.com".into(),
        }
    }

    #[test]
    fn new_plugins_get_the_response_through_the_environment() {
        let plugin = Plugin {
            path: "/x".into(),
            version: Some("1.2.764.0".into()),
        };
        let (args, env) = arguments(&plugin, &started(), &handoff());
        assert_eq!(args[0], RESPONSE_ENV);
        assert_eq!(args[1], "eu-west-1");
        assert_eq!(args[2], "StartSession");
        assert_eq!(args[3], "");
        let request: serde_json::Value = serde_json::from_str(&args[4]).unwrap();
        assert_eq!(request["Target"], "i-0123");
        assert_eq!(args[5], "https://ssm.eu-west-1.amazonaws.com");
        assert_eq!(env.len(), 1);
        let response: serde_json::Value = serde_json::from_str(&env[0].1).unwrap();
        assert_eq!(response["TokenValue"], "tok");
    }

    #[test]
    fn old_plugins_get_the_response_in_argv() {
        let plugin = Plugin {
            path: "/x".into(),
            version: Some("1.2.497.0".into()),
        };
        let (args, env) = arguments(&plugin, &started(), &handoff());
        assert!(env.is_empty());
        let response: serde_json::Value = serde_json::from_str(&args[0]).unwrap();
        assert_eq!(response["SessionId"], "s-1");
    }
}
