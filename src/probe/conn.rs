//! Connections: `--address` parsing, one HTTP/2 connection per slot spread across the endpoints, and
//! recovery when a replica goes away mid-run.
//!
//! A request that fails *before it reached any server* (the connection could not be (re-)established,
//! typed as [`tonic::ConnectError`]) is safe to send again, as gRPC clients do transparently. The pool
//! then re-resolves the thespian through the target (when it can: local processes, no tunnel) so that a
//! replica replaced by `thespctl up` on a new port is found, and the request goes out again until its
//! deadline. Requests that did reach a server are never re-sent: their outcome is what is measured.

use std::error::Error as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use thespian_agent::proto::thespian_client::ThespianClient;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::probe::ProbeError;
use crate::target::Endpoint;

pub type Client = ThespianClient<Channel>;

/// Re-resolves the thespian's endpoints (`None` when that fails: the last known list stays in use).
pub type Refresh = Box<dyn Fn() -> BoxFuture<'static, Option<Vec<Endpoint>>> + Send + Sync>;

/// Re-resolution is rate-limited: a burst of failed requests triggers one lookup, not thousands.
const REFRESH_MIN_INTERVAL: Duration = Duration::from_millis(100);

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

/// The tonic endpoint of `ep`: TCP_NODELAY (small unary messages must not wait for Nagle), TLS with the
/// system's roots for `https://`.
fn tonic_endpoint(
    ep: &Endpoint,
    connect_timeout: Duration,
) -> Result<tonic::transport::Endpoint, ProbeError> {
    let bad = |source| ProbeError::BadEndpoint {
        label: ep.label.clone(),
        uri: ep.uri.clone(),
        source,
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(ep.uri.clone())
        .map_err(bad)?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    if ep.uri.starts_with("https://") {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .map_err(bad)?;
    }
    Ok(endpoint)
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

/// The request never reached a server: the connection could not be established.
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut cur = status.source();
    while let Some(e) = cur {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

struct Slot {
    /// The connection in use and a generation number that changes whenever it is replaced.
    current: RwLock<(Client, u64, Arc<str>)>,
    /// Serialises replacements so concurrent failures on one slot cause one reconnection.
    replacing: tokio::sync::Mutex<()>,
}

struct Known {
    endpoints: Arc<Vec<Endpoint>>,
    refreshed: Instant,
}

/// The probe's HTTP/2 connections: slot `j` connects to endpoint `j mod E`, so replicas get equal shares
/// when the number of connections is a multiple of the number of endpoints (the default: 2 per replica).
pub struct Pool {
    slots: Vec<Slot>,
    known: Mutex<Known>,
    refresh: Option<Refresh>,
    refreshing: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
}

impl Pool {
    /// Opens `connections` connections and waits until each is established (TCP and HTTP/2 handshake), so
    /// that an unreachable endpoint is reported before any request is measured.
    pub async fn connect(
        endpoints: Vec<Endpoint>,
        connections: usize,
        connect_timeout: Duration,
        refresh: Option<Refresh>,
    ) -> Result<Pool, ProbeError> {
        if endpoints.is_empty() {
            return Err(ProbeError::NoEndpoints);
        }
        let attempts = (0..connections.max(1)).map(|j| {
            let ep = endpoints[j % endpoints.len()].clone();
            async move {
                let channel = tonic_endpoint(&ep, connect_timeout)?
                    .connect()
                    .await
                    .map_err(|source| ProbeError::Connect {
                        label: ep.label.clone(),
                        uri: ep.uri.clone(),
                        problem: connect_problem(&source),
                        source,
                    })?;
                Ok::<_, ProbeError>(Slot {
                    current: RwLock::new((ThespianClient::new(channel), 0, Arc::from(ep.uri.as_str()))),
                    replacing: tokio::sync::Mutex::new(()),
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

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A client on slot `slot` (a cheap clone of its channel) and the slot's generation.
    pub fn client(&self, slot: usize) -> (Client, u64) {
        let s = &self.slots[slot % self.slots.len()];
        let guard = s
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard.0.clone(), guard.1)
    }

    /// The URI slot `slot` is connected to.
    pub fn uri(&self, slot: usize) -> Arc<str> {
        let s = &self.slots[slot % self.slots.len()];
        let guard = s
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.2.clone()
    }

    /// Called after a request on `slot` (generation `seen`) could not reach any server: re-resolves the
    /// endpoints when possible and points the slot at its endpoint in the new list. When the endpoint is
    /// unchanged the channel is kept (it redials by itself on the next request).
    pub async fn replace(&self, slot: usize, seen: u64) {
        let index = slot % self.slots.len();
        let s = &self.slots[index];
        let _one_at_a_time = s.replacing.lock().await;
        if self.client(index).1 != seen {
            return; // another request already replaced it
        }
        let endpoints = self.endpoints().await;
        if endpoints.is_empty() {
            return;
        }
        let ep = &endpoints[index % endpoints.len()];
        if *self.uri(index) == *ep.uri {
            return;
        }
        let Ok(endpoint) = tonic_endpoint(ep, self.connect_timeout) else {
            return;
        };
        let channel = endpoint.connect_lazy();
        let mut guard = s
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = guard.1 + 1;
        *guard = (
            ThespianClient::new(channel),
            generation,
            Arc::from(ep.uri.as_str()),
        );
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
        let err = Pool::connect(vec![ep], 2, Duration::from_secs(2), None)
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

    #[tokio::test]
    async fn connections_spread_round_robin_over_endpoints() {
        // Two real listeners; h2 handshakes need a server, so accept TCP and answer with an HTTP/2 server
        // preface via a minimal tonic server is overkill here: use lazily connected pools instead and
        // check the assignment only.
        let a = Endpoint {
            uri: "http://127.0.0.1:1".into(),
            label: "a".into(),
        };
        let b = Endpoint {
            uri: "http://127.0.0.1:2".into(),
            label: "b".into(),
        };
        let endpoints = [a, b];
        let slots: Vec<Slot> = (0..4)
            .map(|j| {
                let ep = &endpoints[j % 2];
                let channel = tonic_endpoint(ep, Duration::from_secs(1)).unwrap().connect_lazy();
                Slot {
                    current: RwLock::new((ThespianClient::new(channel), 0, Arc::from(ep.uri.as_str()))),
                    replacing: tokio::sync::Mutex::new(()),
                }
            })
            .collect();
        let pool = Pool {
            slots,
            known: Mutex::new(Known {
                endpoints: Arc::new(endpoints.to_vec()),
                refreshed: Instant::now(),
            }),
            refresh: None,
            refreshing: tokio::sync::Mutex::new(()),
            connect_timeout: Duration::from_secs(1),
        };
        let uris: Vec<String> = (0..4).map(|j| pool.uri(j).to_string()).collect();
        assert_eq!(
            uris,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:1",
                "http://127.0.0.1:2"
            ]
        );
    }
}
