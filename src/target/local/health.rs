//! Real gRPC health checks (`grpc.health.v1.Health/Check`) against replicas.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// What a replica's health service says, or why it says nothing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Serving,
    /// Up but refusing work (draining after SIGTERM).
    NotServing,
    /// Answered, but with another status (SERVICE_UNKNOWN, UNKNOWN).
    Unknown,
    /// The process runs but does not answer (connection refused, timeout, not gRPC).
    Unreachable,
    /// The process is gone.
    Dead,
}

impl Health {
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Serving => "SERVING",
            Health::NotServing => "NOT_SERVING",
            Health::Unknown => "UNKNOWN",
            Health::Unreachable => "unreachable",
            Health::Dead => "dead",
        }
    }
}

fn endpoint(addr: SocketAddr, timeout: Duration) -> Endpoint {
    // A SocketAddr always makes a valid URI.
    #[allow(clippy::expect_used)]
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("http://IP:PORT is a valid URI")
        .connect_timeout(timeout)
        .timeout(timeout)
}

async fn check_on(channel: Channel) -> Result<Health, String> {
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(match reply.into_inner().status() {
        ServingStatus::Serving => Health::Serving,
        ServingStatus::NotServing => Health::NotServing,
        ServingStatus::Unknown | ServingStatus::ServiceUnknown => Health::Unknown,
    })
}

/// One health check with a deadline: the answer, or [`Health::Unreachable`] with the reason.
pub async fn check(addr: SocketAddr, timeout: Duration) -> (Health, String) {
    let attempt = async {
        let channel = endpoint(addr, timeout)
            .connect()
            .await
            .map_err(|e| crate::error::one_line(&e))?;
        check_on(channel).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(h)) => (h.clone(), h.as_str().to_string()),
        Ok(Err(reason)) => (Health::Unreachable, reason),
        Err(_) => (
            Health::Unreachable,
            format!("no answer within {}", humantime::format_duration(timeout)),
        ),
    }
}

/// Polls the health service with backoff until it says SERVING. `alive` is asked between attempts so a
/// replica that crashed is reported at once instead of after the deadline. On failure returns the last
/// answer seen (or why there was none).
pub async fn wait_serving(
    addr: SocketAddr,
    deadline: Instant,
    cancel: &CancellationToken,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), WaitFailure> {
    let mut delay = Duration::from_millis(2);
    let mut channel: Option<Channel> = None;
    let mut last;
    loop {
        let per_try = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        // The channel is kept across attempts: it reconnects by itself, and saves a handshake per poll.
        let ch = match &channel {
            Some(ch) => Ok(ch.clone()),
            None => endpoint(addr, per_try)
                .connect()
                .await
                .map_err(|e| crate::error::one_line(&e)),
        };
        match ch {
            Ok(ch) => {
                channel = Some(ch.clone());
                match tokio::time::timeout(per_try, check_on(ch)).await {
                    Ok(Ok(Health::Serving)) => return Ok(()),
                    Ok(Ok(other)) => last = other.as_str().to_string(),
                    Ok(Err(e)) => last = e,
                    Err(_) => last = "health check timed out".into(),
                }
            }
            Err(e) => last = e,
        }
        alive().map_err(WaitFailure::Exited)?;
        if Instant::now() >= deadline {
            return Err(WaitFailure::Timeout(last));
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(WaitFailure::Interrupted),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitFailure {
    Timeout(String),
    Exited(String),
    Interrupted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_unreachable_with_a_reason() {
        // Bind then drop: the port is (for the moment) closed, so connecting is refused.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (health, reason) = check(addr, Duration::from_millis(500)).await;
        assert_eq!(health, Health::Unreachable);
        assert!(!reason.is_empty());
    }

    #[tokio::test]
    async fn waiting_reports_a_dead_process_without_waiting_for_the_deadline() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let begun = Instant::now();
        let got = wait_serving(
            addr,
            Instant::now() + Duration::from_secs(30),
            &CancellationToken::new(),
            || Err("exit code 2".into()),
        )
        .await;
        assert_eq!(got, Err(WaitFailure::Exited("exit code 2".into())));
        assert!(begun.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn serving_is_seen_through_a_real_health_server() {
        let (reporter, service) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream_from(listener)),
        );
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        assert_eq!(check(addr, Duration::from_secs(2)).await.0, Health::NotServing);
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        wait_serving(
            addr,
            Instant::now() + Duration::from_secs(5),
            &CancellationToken::new(),
            || Ok(()),
        )
        .await
        .unwrap();
        server.abort();
    }

    fn tokio_stream_from(
        listener: tokio::net::TcpListener,
    ) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
        futures_util::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        })
    }
}
