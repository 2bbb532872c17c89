//! Connections: `--address` parsing, one HTTP/2 connection per slot spread across the endpoints, and
//! recovery when a replica goes away mid-run.
//!
//! A request that fails *before it reached any server* (see [`never_sent`]) is safe to send again, as
//! gRPC clients do transparently. The pool then re-resolves the thespian through the target (when it can: local processes, no tunnel) so that a
//! replica replaced by `thespctl up` on a new port is found, and the request goes out again until its
//! deadline. Requests that did reach a server are never re-sent: their outcome is what is measured.

use std::error::Error as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use thespian_agent::client::{self, Client as H2Client};
use thespian_agent::proto::thespian_client::ThespianClient;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::probe::ProbeError;
use crate::target::Endpoint;

/// Re-resolves the thespian's endpoints (`None` when that fails: the last known list stays in use).
pub type Refresh = Box<dyn Fn() -> BoxFuture<'static, Option<Vec<Endpoint>>> + Send + Sync>;

/// Re-resolution is rate-limited: a burst of failed requests triggers one lookup, not thousands.
const REFRESH_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A slot whose connection could not be re-established is not redialled more often than this.
const REDIAL_MIN_INTERVAL: Duration = Duration::from_millis(20);

/// A gRPC client on one connection: the lean client of [`thespian_agent::client`] for plaintext endpoints, the
/// generated `ThespianClient` over tonic's `Channel` for TLS ones. Cheap to clone (once per request).
#[derive(Debug, Clone)]
pub enum Client {
    H2(H2Client),
    Tls(ThespianClient<Channel>),
}

/// Parses `--address`: `HOST:PORT` (plain-text HTTP/2, as agents listen), or an `http://` / `https://` URL.
pub fn parse_address(address: &str) -> Result<Endpoint, ProbeError> {
    let bad = |reason: &str| ProbeError::BadAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = address.trim();
    let uri = if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        trimmed.to_string()
    } else {
        let (host, port) = trimmed.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
            Ok(_) => {}
        }
        format!("http://{trimmed}")
    };
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if parsed.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if parsed
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(bad("a path is not allowed: gRPC methods have fixed paths"));
    }
    Ok(Endpoint {
        uri,
        label: trimmed.to_string(),
    })
}

fn bad_endpoint(ep: &Endpoint, source: impl std::error::Error + Send + Sync + 'static) -> ProbeError {
    ProbeError::BadEndpoint {
        label: ep.label.clone(),
        uri: ep.uri.clone(),
        source: Box::new(source),
    }
}

/// The tonic endpoint of a TLS `ep`, with the system's roots.
fn tls_endpoint(ep: &Endpoint, connect_timeout: Duration) -> Result<tonic::transport::Endpoint, ProbeError> {
    tonic::transport::Endpoint::from_shared(ep.uri.clone())
        .and_then(|e| e.tls_config(ClientTlsConfig::new().with_native_roots()))
        .map(|e| e.connect_timeout(connect_timeout).tcp_nodelay(true))
        .map_err(|e| bad_endpoint(ep, e))
}

fn is_tls(ep: &Endpoint) -> bool {
    ep.uri.starts_with("https://")
}

/// Connects to `ep` now (TCP, TLS if any, HTTP/2 handshake).
async fn open(ep: &Endpoint, connect_timeout: Duration) -> Result<Client, ProbeError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| ProbeError::Connect {
        label: ep.label.clone(),
        uri: ep.uri.clone(),
        problem: connect_problem(source.as_ref()),
        source,
    };
    if is_tls(ep) {
        let channel = tls_endpoint(ep, connect_timeout)?
            .connect()
            .await
            .map_err(|e| failed(Box::new(e)))?;
        return Ok(Client::Tls(ThespianClient::new(channel)));
    }
    let uri: http::Uri = ep.uri.parse().map_err(|e| bad_endpoint(ep, e))?;
    // The engine starts a pass's requests together, so they already leave in one write.
    let conn = client::dial_with(&uri, Some(connect_timeout), client::Batching::Immediate)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    let client = H2Client::new(conn, &uri).map_err(|e| bad_endpoint(ep, e))?;
    Ok(Client::H2(client))
}

/// Why a connection could not be made, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectProblem {
    Refused,
    TimedOut,
    Other,
}

impl std::fmt::Display for ConnectProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectProblem::Refused => "connection refused (nothing listens there)",
            ConnectProblem::TimedOut => "no answer before the connect timeout",
            ConnectProblem::Other => "the connection failed",
        })
    }
}

/// Classifies a connection failure by the `std::io::Error` at the root of its chain (never by message text).
pub fn connect_problem(err: &(dyn std::error::Error + 'static)) -> ConnectProblem {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return ConnectProblem::Refused,
                std::io::ErrorKind::TimedOut => return ConnectProblem::TimedOut,
                _ => {}
            }
        }
        cur = e.source();
    }
    ConnectProblem::Other
}

/// The request never reached a server: the lean client says so (see [`client::never_sent`]), or tonic's
/// channel (TLS endpoints) could not (re-)establish its connection.
pub fn never_sent(status: &tonic::Status) -> bool {
    if client::never_sent(status) {
        return true;
    }
    let mut cur = status.source();
    while let Some(e) = cur {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

struct Current {
    client: Client,
    /// Changes whenever the connection is replaced.
    generation: u64,
    uri: Arc<str>,
}

struct Slot {
    /// The connection's place in the whole run: slot `index` goes to endpoint `index mod E`.
    index: usize,
    current: RwLock<Current>,
    /// Serialises replacements (concurrent failures on one slot cause one redial) and remembers the
    /// last attempt.
    replacing: tokio::sync::Mutex<Option<Instant>>,
}

struct Known {
    endpoints: Arc<Vec<Endpoint>>,
    refreshed: Instant,
}

/// Connections of a probe: slot `j` connects to endpoint `j mod E`, so replicas get equal shares when the
/// number of connections is a multiple of the number of endpoints (the default: 2 per replica).
pub struct Pool {
    slots: Vec<Slot>,
    known: Mutex<Known>,
    refresh: Option<Arc<Refresh>>,
    refreshing: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
}

impl Pool {
    /// Opens the connections of the given slots and waits until each is established (TCP and HTTP/2
    /// handshake), so that an unreachable endpoint is reported before any request is measured. The
    /// connections' tasks run on the current runtime.
    pub async fn connect(
        endpoints: Vec<Endpoint>,
        slots: &[usize],
        connect_timeout: Duration,
        refresh: Option<Arc<Refresh>>,
    ) -> Result<Pool, ProbeError> {
        if endpoints.is_empty() {
            return Err(ProbeError::NoEndpoints);
        }
        let attempts = slots.iter().map(|&index| {
            let ep = endpoints[index % endpoints.len()].clone();
            async move {
                let client = open(&ep, connect_timeout).await?;
                Ok::<_, ProbeError>(Slot {
                    index,
                    current: RwLock::new(Current {
                        client,
                        generation: 0,
                        uri: Arc::from(ep.uri.as_str()),
                    }),
                    replacing: tokio::sync::Mutex::new(None),
                })
            }
        });
        let slots = futures_util::future::try_join_all(attempts).await?;
        Ok(Pool {
            slots,
            known: Mutex::new(Known {
                endpoints: Arc::new(endpoints),
                refreshed: Instant::now(),
            }),
            refresh,
            refreshing: tokio::sync::Mutex::new(()),
            connect_timeout,
        })
    }

    fn current(&self, slot: usize) -> std::sync::RwLockReadGuard<'_, Current> {
        self.slots[slot % self.slots.len()]
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client on local slot `slot` (a cheap clone) and the slot's generation.
    pub fn client(&self, slot: usize) -> (Client, u64) {
        let current = self.current(slot);
        (current.client.clone(), current.generation)
    }

    /// The URI local slot `slot` is connected to.
    pub fn uri(&self, slot: usize) -> Arc<str> {
        self.current(slot).uri.clone()
    }

    /// Called after a request on `slot` (generation `seen`) could not reach any server: re-resolves the
    /// endpoints when possible and reconnects the slot to its endpoint in the (new) list. A failed
    /// reconnection leaves the slot as it was; the request's own retries (until its deadline) call again.
    pub async fn replace(&self, slot: usize, seen: u64) {
        let s = &self.slots[slot % self.slots.len()];
        let mut last_attempt = s.replacing.lock().await;
        if self.current(slot).generation != seen {
            return; // another request already replaced it
        }
        if last_attempt.is_some_and(|t| t.elapsed() < REDIAL_MIN_INTERVAL) {
            return;
        }
        *last_attempt = Some(Instant::now());
        let endpoints = self.endpoints().await;
        if endpoints.is_empty() {
            return;
        }
        let ep = &endpoints[s.index % endpoints.len()];
        let client = if is_tls(ep) {
            if *self.current(slot).uri == *ep.uri {
                return; // tonic's channel redials by itself
            }
            match tls_endpoint(ep, self.connect_timeout) {
                Ok(endpoint) => Client::Tls(ThespianClient::new(endpoint.connect_lazy())),
                Err(_) => return,
            }
        } else {
            match open(ep, self.connect_timeout).await {
                Ok(client) => client,
                Err(_) => return,
            }
        };
        let mut current = s
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Current {
            client,
            generation: current.generation + 1,
            uri: Arc::from(ep.uri.as_str()),
        };
    }

    /// The endpoints, re-resolved if a refresh is possible and the last one is not too recent.
    async fn endpoints(&self) -> Arc<Vec<Endpoint>> {
        if let Some(refresh) = &self.refresh {
            let _one_at_a_time = self.refreshing.lock().await;
            let stale = self.known().refreshed.elapsed() >= REFRESH_MIN_INTERVAL;
            if stale {
                let fresh = refresh().await;
                let mut known = self.known();
                if let Some(list) = fresh.filter(|l| !l.is_empty()) {
                    known.endpoints = Arc::new(list);
                }
                known.refreshed = Instant::now();
            }
        }
        self.known().endpoints.clone()
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_plain_http2_uris() {
        let ep = parse_address("127.0.0.1:50051").unwrap();
        assert_eq!(ep.uri, "http://127.0.0.1:50051");
        assert_eq!(ep.label, "127.0.0.1:50051");
        assert_eq!(parse_address("localhost:80").unwrap().uri, "http://localhost:80");
        assert_eq!(parse_address("[::1]:7000").unwrap().uri, "http://[::1]:7000");
        assert_eq!(
            parse_address("https://gilbert.example.com").unwrap().uri,
            "https://gilbert.example.com"
        );
        assert_eq!(
            parse_address("http://10.0.0.1:80/").unwrap().uri,
            "http://10.0.0.1:80/"
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (input, reason) in [
            ("127.0.0.1", "no port"),
            (":50051", "no host"),
            ("host:http", "must be a number"),
            ("host:0", "must be a number"),
            ("host:70000", "must be a number"),
            ("http://h:1/thespian.Thespian/A", "a path is not allowed"),
            ("host name:80", "invalid"),
        ] {
            let err = parse_address(input).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(input.trim()), "{input}: {text}");
            assert!(text.contains(reason), "{input}: {text}");
            assert!(text.contains("--address"), "{input}: {text}");
        }
    }

    #[test]
    fn connection_problems_are_classified_by_io_error_kind() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tcp connect error")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(connect_problem(&refused), ConnectProblem::Refused);
        let timed_out = Wrapper(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(connect_problem(&timed_out), ConnectProblem::TimedOut);
        let other = Wrapper(std::io::Error::other("dns"));
        assert_eq!(connect_problem(&other), ConnectProblem::Other);
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_before_any_request() {
        // A port that was just free: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ep = parse_address(&format!("127.0.0.1:{port}")).unwrap();
        let err = Pool::connect(vec![ep], &[0, 1], Duration::from_secs(2), None)
            .await
            .err()
            .expect("connect must fail");
        match &err {
            ProbeError::Connect { problem, .. } => assert_eq!(*problem, ConnectProblem::Refused),
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.to_string().contains("connection refused"), "{err}");
    }
}
