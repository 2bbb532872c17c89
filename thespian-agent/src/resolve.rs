//! `THESPIAN_RESOLVE`: maps the `service_address`/`service_port` pairs of a config to local endpoints.
//!
//! Format: `NAME:PORT=HOST:PORT[,HOST:PORT...][;NAME:PORT=...]`, e.g.
//! `gilbert:80=127.0.0.1:41001,127.0.0.1:41002;yorick:80=127.0.0.1:41003`. A config written for ECS
//! Service Connect (`http://gilbert`, port `80`) then runs unchanged on one machine; calls spread
//! round-robin over the endpoints. Names match case-insensitively; empty entries (a trailing `;`) are
//! ignored.
//!
//! `THESPIAN_RESOLVE_FILE` names a file in the same syntax, re-read when it changes ([`ResolveFile`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// A parsed `THESPIAN_RESOLVE`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolveMap {
    entries: HashMap<(String, u16), Vec<String>>,
}

/// A malformed `THESPIAN_RESOLVE` entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("entry \"{entry}\": {message}")]
pub struct ResolveError {
    pub entry: String,
    pub message: String,
}

impl ResolveMap {
    pub fn parse(text: &str) -> Result<ResolveMap, ResolveError> {
        let mut entries = HashMap::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let err = |message: String| ResolveError {
                entry: entry.to_owned(),
                message,
            };
            let Some((key, endpoints)) = entry.split_once('=') else {
                return Err(err("expected NAME:PORT=HOST:PORT[,HOST:PORT...]".into()));
            };
            let (name, port) = split_host_port(key.trim()).map_err(|m| err(format!("before '=': {m}")))?;
            let name = name.to_ascii_lowercase();
            let mut list = Vec::new();
            for endpoint in endpoints.split(',').map(str::trim) {
                if endpoint.is_empty() {
                    return Err(err(
                        "empty endpoint (expected HOST:PORT after '=' and each ',')".into()
                    ));
                }
                split_host_port(endpoint).map_err(|m| err(format!("endpoint \"{endpoint}\": {m}")))?;
                list.push(endpoint.to_owned());
            }
            if entries.insert((name.clone(), port), list).is_some() {
                return Err(err(format!("{name}:{port} is mapped twice")));
            }
        }
        Ok(ResolveMap { entries })
    }

    /// The endpoints (`HOST:PORT`) that `host`:`port` resolves to, if mapped.
    pub fn lookup(&self, host: &str, port: u16) -> Option<&[String]> {
        self.entries
            .get(&(host.to_ascii_lowercase(), port))
            .map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `HOST:PORT` with a non-empty host (IPv6 in brackets) and a port in 1..=65535.
fn split_host_port(text: &str) -> Result<(&str, u16), String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("\"{text}\" has no :PORT"));
    };
    if host.is_empty() {
        return Err(format!("\"{text}\" has no host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "\"{text}\": write IPv6 addresses in brackets, e.g. [::1]:41001"
        ));
    }
    if host.contains([' ', '/', '=', ',', ';']) {
        return Err(format!("\"{host}\" is not a host name or address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(format!("port \"{port}\" is not a number between 1 and 65535")),
    }
}

/// Where call targets resolve: the fixed `THESPIAN_RESOLVE` map, or a `THESPIAN_RESOLVE_FILE` that is
/// re-read when it changes.
///
/// The file is how `thespctl up` moves callers during a rolling restart: it rewrites the file (atomically,
/// by rename) the moment a new replica is healthy, and every agent picks the change up on its next call
/// at most [`RELOAD_INTERVAL`] later — or at once when a call finds an endpoint gone.
#[derive(Debug, Clone)]
pub enum Resolver {
    Fixed(Arc<ResolveMap>),
    File(Arc<ResolveFile>),
}

impl Resolver {
    /// The map in effect now (for a file: as of the last reload).
    pub fn map(&self) -> Arc<ResolveMap> {
        match self {
            Resolver::Fixed(map) => map.clone(),
            Resolver::File(file) => file.map(),
        }
    }

    /// Bumped at every change of the map (always 0 for a fixed map).
    pub fn generation(&self) -> u64 {
        match self {
            Resolver::Fixed(_) => 0,
            Resolver::File(file) => file.generation(),
        }
    }

    /// Re-reads the file if it is due (or at once with `force`); a fixed map never changes.
    pub fn refresh(&self, force: bool) {
        if let Resolver::File(file) = self {
            file.refresh(force);
        }
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::Fixed(Arc::new(ResolveMap::default()))
    }
}

/// The file is checked at most this often on the call path (a read of a few hundred bytes).
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(100);

/// A `THESPIAN_RESOLVE_FILE`: the same syntax as `THESPIAN_RESOLVE`, re-read when its content changes.
#[derive(Debug)]
pub struct ResolveFile {
    path: PathBuf,
    base: Instant,
    /// When the file was last read, in nanoseconds after `base` (lock-free check on the call path).
    checked: AtomicU64,
    generation: AtomicU64,
    map: RwLock<Arc<ResolveMap>>,
    /// The last content read; its lock also makes one caller at a time do the reload.
    content: Mutex<Vec<u8>>,
}

/// A `THESPIAN_RESOLVE_FILE` that cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ResolveFileError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {error}", .path.display())]
    Parse { path: PathBuf, error: ResolveError },
}

impl ResolveFile {
    /// Reads the file once. A file that does not exist yet is an empty map (the one who writes it may
    /// start its agents first); one that exists must parse.
    pub fn open(path: PathBuf) -> Result<ResolveFile, ResolveFileError> {
        let content = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(ResolveFileError::Read { path, source }),
        };
        let map = ResolveMap::parse(&String::from_utf8_lossy(&content)).map_err(|error| {
            ResolveFileError::Parse {
                path: path.clone(),
                error,
            }
        })?;
        Ok(ResolveFile {
            path,
            base: Instant::now(),
            checked: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            map: RwLock::new(Arc::new(map)),
            content: Mutex::new(content),
        })
    }

    pub fn map(&self) -> Arc<ResolveMap> {
        self.map.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the file when [`RELOAD_INTERVAL`] has passed since the last read, or at once with `force`.
    /// Never fails: a file that went missing or does not parse leaves the current map in place (logged).
    pub fn refresh(&self, force: bool) {
        // Shifted by one interval, so the very first call re-reads: the file may have been completed
        // between start-up and that call (`thespctl up` starts callers before it knows every callee).
        let now = u64::try_from((self.base.elapsed() + RELOAD_INTERVAL).as_nanos()).unwrap_or(u64::MAX);
        let last = self.checked.load(Ordering::Relaxed);
        if !force && now.saturating_sub(last) < RELOAD_INTERVAL.as_nanos() as u64 {
            return;
        }
        // One reader at a time; the others carry on with the current map.
        let Ok(mut content) = self.content.try_lock() else {
            return;
        };
        self.checked.store(now, Ordering::Relaxed);
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(
                    "THESPIAN_RESOLVE_FILE {}: {e}; keeping the current map",
                    self.path.display()
                );
                return;
            }
        };
        if bytes == *content {
            return;
        }
        match ResolveMap::parse(&String::from_utf8_lossy(&bytes)) {
            Ok(map) => {
                *self.map.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::debug!("THESPIAN_RESOLVE_FILE {}: reloaded", self.path.display());
            }
            Err(error) => {
                tracing::warn!(
                    "THESPIAN_RESOLVE_FILE {}: {error}; keeping the previous map",
                    self.path.display()
                );
            }
        }
        *content = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_format() {
        let map = ResolveMap::parse("gilbert:80=127.0.0.1:41001, 127.0.0.1:41002;Yorick:80=[::1]:41003;")
            .expect("parses");
        assert_eq!(
            map.lookup("gilbert", 80),
            Some(&["127.0.0.1:41001".to_owned(), "127.0.0.1:41002".to_owned()][..])
        );
        assert_eq!(map.lookup("YORICK", 80), Some(&["[::1]:41003".to_owned()][..]));
        assert_eq!(map.lookup("gilbert", 81), None);
        assert!(ResolveMap::parse("").expect("empty is fine").is_empty());
    }

    #[test]
    fn rejects_malformed_entries_naming_them() {
        let cases = [
            ("gilbert:80", "expected NAME:PORT=HOST:PORT"),
            ("gilbert=127.0.0.1:1", "has no :PORT"),
            ("gilbert:x=127.0.0.1:1", "port \"x\""),
            ("gilbert:80=", "empty endpoint"),
            ("gilbert:80=127.0.0.1:1,", "empty endpoint"),
            ("gilbert:80=127.0.0.1", "has no :PORT"),
            ("gilbert:80=127.0.0.1:70000", "port \"70000\""),
            ("gilbert:80=::1:5", "brackets"),
            ("gilbert:80=a:1;gilbert:80=b:2", "mapped twice"),
        ];
        for (text, message) in cases {
            let err = ResolveMap::parse(text).expect_err(text);
            assert!(err.to_string().contains(message), "{text}: {err}");
        }
    }

    fn write(path: &std::path::Path, text: &str) {
        // As `thespctl up` does: a new file renamed over the old one.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    #[test]
    fn a_resolve_file_is_read_at_first_use_then_when_due_or_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("resolve");
        // Not there yet: an empty map, not an error (the writer may start its agents first).
        let file = ResolveFile::open(path.clone()).expect("missing file is fine");
        assert!(file.map().is_empty());

        write(&path, "gilbert:80=127.0.0.1:41001");
        file.refresh(false);
        assert_eq!(
            file.map().lookup("gilbert", 80),
            Some(&["127.0.0.1:41001".to_owned()][..]),
            "first use reads"
        );
        let generation = file.generation();

        // Within the interval a change is not looked at, unless forced.
        write(&path, "gilbert:80=127.0.0.1:41002");
        file.refresh(false);
        assert_eq!(file.generation(), generation);
        file.refresh(true);
        assert_eq!(
            file.map().lookup("gilbert", 80),
            Some(&["127.0.0.1:41002".to_owned()][..])
        );
        assert_eq!(file.generation(), generation + 1);

        // The same content again is no change.
        write(&path, "gilbert:80=127.0.0.1:41002");
        file.refresh(true);
        assert_eq!(file.generation(), generation + 1);

        // After the interval an unforced refresh reads it.
        write(&path, "gilbert:80=127.0.0.1:41003");
        std::thread::sleep(RELOAD_INTERVAL + Duration::from_millis(20));
        file.refresh(false);
        assert_eq!(
            file.map().lookup("gilbert", 80),
            Some(&["127.0.0.1:41003".to_owned()][..])
        );
    }

    #[test]
    fn a_broken_or_vanished_file_keeps_the_last_good_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("resolve");
        write(&path, "gilbert:80=127.0.0.1:41001");
        let file = ResolveFile::open(path.clone()).expect("opens");
        write(&path, "gilbert:80=");
        file.refresh(true);
        assert_eq!(
            file.map().lookup("gilbert", 80),
            Some(&["127.0.0.1:41001".to_owned()][..])
        );
        std::fs::remove_file(&path).expect("rm");
        file.refresh(true);
        assert_eq!(
            file.map().lookup("gilbert", 80),
            Some(&["127.0.0.1:41001".to_owned()][..])
        );
        assert_eq!(file.generation(), 0);
        // At start-up, though, a file that does not parse is an error naming it.
        write(&path, "gilbert");
        let err = ResolveFile::open(path).expect_err("bad file");
        assert!(err.to_string().contains("resolve: entry \"gilbert\""), "{err}");
    }
}
