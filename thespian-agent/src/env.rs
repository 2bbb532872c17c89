//! The agent's settings, read from the environment the way existing Thespian deployments set it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::resolve::{ResolveError, ResolveFile, ResolveFileError, ResolveMap, Resolver};
use crate::telemetry::Export;

pub const DEFAULT_PORT: u16 = 6379;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_millis(10_000);

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub service: String,
    pub config: Config,
    /// `THESPIAN_RESOLVE` (fixed), or `THESPIAN_RESOLVE_FILE` (re-read when it changes).
    pub resolve: Resolver,
    pub shutdown_grace: Duration,
    pub export: Export,
    pub ecs_metadata_uri: Option<String>,
    pub rust_log: Option<String>,
    /// Tokio worker threads (`THESPIAN_WORKER_THREADS`); `None`: the default (see `lib.rs`).
    pub worker_threads: Option<usize>,
}

/// Bad input in the environment. Each message names the variable and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0} is not valid UTF-8")]
    NotUnicode(&'static str),
    #[error(
        "SERVICE_NAME is not set: it names the service on every span and log line (e.g. SERVICE_NAME=gilbert)"
    )]
    MissingServiceName,
    #[error("PORT: \"{0}\" is not a port number (0-65535; 0 picks a free port)")]
    Port(String),
    #[error("BIND_ADDR: \"{0}\" is not an IP address (e.g. 0.0.0.0 or 127.0.0.1)")]
    BindAddr(String),
    #[error(
        "neither CONFIG_JSON nor CONFIG_FILE is set: give the behaviour as JSON (CONFIG_JSON='{{\"grpc_method_a\":null}}') or a file path"
    )]
    NoConfig,
    #[error("both CONFIG_JSON and CONFIG_FILE are set: unset one of them")]
    BothConfigs,
    #[error("CONFIG_JSON: {0}")]
    ConfigJson(ConfigError),
    #[error("CONFIG_FILE: cannot read {}: {source}", .path.display())]
    ConfigFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CONFIG_FILE {}: {error}", .path.display())]
    ConfigFile { path: PathBuf, error: ConfigError },
    #[error("THESPIAN_RESOLVE: {0} (format: NAME:PORT=HOST:PORT[,HOST:PORT...][;...])")]
    Resolve(ResolveError),
    #[error("THESPIAN_RESOLVE_FILE {0} (format: NAME:PORT=HOST:PORT[,HOST:PORT...][;...])")]
    ResolveFile(ResolveFileError),
    #[error("both THESPIAN_RESOLVE and THESPIAN_RESOLVE_FILE are set: unset one of them")]
    BothResolves,
    #[error("SHUTDOWN_GRACE_MS: \"{0}\" is not a number of milliseconds")]
    ShutdownGrace(String),
    #[error("THESPIAN_WORKER_THREADS: \"{0}\" is not a number of threads (1 or more)")]
    WorkerThreads(String),
}

impl Settings {
    /// Reads the settings through `var` (`std::env::var_os` in the binary; a map in tests).
    pub fn from_env(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Settings, SettingsError> {
        let get = |name: &'static str| -> Result<Option<String>, SettingsError> {
            match var(name) {
                None => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(Some)
                    .map_err(|_| SettingsError::NotUnicode(name)),
            }
        };
        let service = get("SERVICE_NAME")?
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or(SettingsError::MissingServiceName)?;

        let port = match get("PORT")? {
            None => DEFAULT_PORT,
            Some(p) => p.trim().parse::<u16>().map_err(|_| SettingsError::Port(p))?,
        };
        let ip = match get("BIND_ADDR")?.filter(|s| !s.trim().is_empty()) {
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(a) => a
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| SettingsError::BindAddr(a))?,
        };

        // An empty variable counts as unset (compose files and task definitions often leave one blank).
        let config_json = get("CONFIG_JSON")?.filter(|s| !s.trim().is_empty());
        let config = match (config_json, get("CONFIG_FILE")?.filter(|s| !s.trim().is_empty())) {
            (Some(_), Some(_)) => return Err(SettingsError::BothConfigs),
            (None, None) => return Err(SettingsError::NoConfig),
            (Some(json), None) => Config::from_json(&json).map_err(SettingsError::ConfigJson)?,
            (None, Some(file)) => {
                let path = PathBuf::from(file);
                let text =
                    std::fs::read_to_string(&path).map_err(|source| SettingsError::ConfigFileRead {
                        path: path.clone(),
                        source,
                    })?;
                Config::from_json(&text).map_err(|error| SettingsError::ConfigFile { path, error })?
            }
        };

        let resolve = match (
            get("THESPIAN_RESOLVE")?.filter(|s| !s.trim().is_empty()),
            get("THESPIAN_RESOLVE_FILE")?.filter(|s| !s.trim().is_empty()),
        ) {
            (Some(_), Some(_)) => return Err(SettingsError::BothResolves),
            (None, None) => Resolver::default(),
            (Some(r), None) => Resolver::Fixed(ResolveMap::parse(&r).map_err(SettingsError::Resolve)?.into()),
            (None, Some(path)) => Resolver::File(
                ResolveFile::open(PathBuf::from(path))
                    .map_err(SettingsError::ResolveFile)?
                    .into(),
            ),
        };
        let shutdown_grace = match get("SHUTDOWN_GRACE_MS")? {
            None => DEFAULT_SHUTDOWN_GRACE,
            Some(g) => Duration::from_millis(g.trim().parse().map_err(|_| SettingsError::ShutdownGrace(g))?),
        };
        let worker_threads = match get("THESPIAN_WORKER_THREADS")? {
            None => None,
            Some(w) => match w.trim().parse::<usize>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(SettingsError::WorkerThreads(w)),
            },
        };
        let text = |name: &str| var(name).and_then(|v| v.into_string().ok());
        Ok(Settings {
            bind: SocketAddr::new(ip, port),
            service,
            config,
            resolve,
            shutdown_grace,
            export: Export::from_env(text),
            ecs_metadata_uri: get("ECS_CONTAINER_METADATA_URI_V4")?,
            rust_log: get("RUST_LOG")?,
            worker_threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_env(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into()))
    }

    #[test]
    fn defaults_match_existing_deployments() {
        let s = settings(&[("SERVICE_NAME", "gilbert"), ("CONFIG_JSON", "{}")]).expect("ok");
        assert_eq!(s.bind, "0.0.0.0:6379".parse().expect("addr"));
        assert_eq!(s.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert_eq!(s.export, Export::None);
        let s = settings(&[
            ("SERVICE_NAME", "g"),
            ("CONFIG_JSON", "{}"),
            ("PORT", "0"),
            ("BIND_ADDR", "::1"),
        ])
        .expect("ok");
        assert_eq!(s.bind, "[::1]:0".parse().expect("addr"));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let base = [("SERVICE_NAME", "g"), ("CONFIG_JSON", "{}")];
        let with = |extra: (&'static str, &'static str)| {
            let mut v: Vec<(&str, &str)> = base.iter().copied().filter(|(k, _)| *k != extra.0).collect();
            v.push(extra);
            settings(&v).expect_err("rejected").to_string()
        };
        assert!(with(("PORT", "70000")).starts_with("PORT: \"70000\""));
        assert!(with(("BIND_ADDR", "localhost")).starts_with("BIND_ADDR:"));
        assert!(with(("SERVICE_NAME", " ")).starts_with("SERVICE_NAME is not set"));
        assert!(with(("CONFIG_FILE", "/x")).starts_with("both CONFIG_JSON and CONFIG_FILE"));
        assert!(with(("SHUTDOWN_GRACE_MS", "soon")).starts_with("SHUTDOWN_GRACE_MS:"));
        assert!(with(("THESPIAN_RESOLVE", "gilbert")).starts_with("THESPIAN_RESOLVE: entry \"gilbert\""));
        assert!(
            settings(&[("SERVICE_NAME", "g")])
                .expect_err("no config")
                .to_string()
                .starts_with("neither")
        );
    }

    #[test]
    fn a_resolve_file_is_an_alternative_to_the_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("resolve");
        let path_str = path.to_str().expect("utf-8 path");
        let base = [("SERVICE_NAME", "g"), ("CONFIG_JSON", "{}")];
        let with = |extra: &[(&str, &str)]| {
            let mut v: Vec<(&str, &str)> = base.to_vec();
            v.extend_from_slice(extra);
            settings(&v)
        };
        // Missing is fine (an empty map until it is written); present, it must parse.
        let s = with(&[("THESPIAN_RESOLVE_FILE", path_str)]).expect("missing file");
        assert!(matches!(s.resolve, Resolver::File(_)));
        std::fs::write(&path, "gilbert:80=nowhere").expect("write");
        let err = with(&[("THESPIAN_RESOLVE_FILE", path_str)])
            .expect_err("bad file")
            .to_string();
        assert!(
            err.starts_with("THESPIAN_RESOLVE_FILE ") && err.contains("has no :PORT"),
            "{err}"
        );
        let err = with(&[
            ("THESPIAN_RESOLVE_FILE", path_str),
            ("THESPIAN_RESOLVE", "a:80=b:1"),
        ])
        .expect_err("both")
        .to_string();
        assert!(
            err.starts_with("both THESPIAN_RESOLVE and THESPIAN_RESOLVE_FILE"),
            "{err}"
        );
    }
}
