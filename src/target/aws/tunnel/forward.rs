//! The local side: a listener on 127.0.0.1 (or `--bind`), and the port logic that moves bytes between
//! accepted connections and the session.
//!
//! - Mux mode: every accepted connection becomes an smux stream, so any number of connections share the
//!   session at once.
//! - Basic mode (old agents): one connection at a time. The next one waits in the listen backlog (it is
//!   never refused) until the current one ends; then we send DisconnectToPort and wait for its ack, so
//!   the agent has closed its side before the next connection's bytes make it dial again.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::message::Flag;

/// Pause after a failed `accept` (e.g. too many open files) before trying again.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
use super::session::OutItem;
use super::smux::{self, SmuxError};

/// Serves mux mode until cancelled or the session ends. Returns an smux protocol error if there is one.
pub async fn serve_mux(
    listener: TcpListener,
    out: mpsc::Sender<OutItem>,
    inbound: mpsc::Receiver<Bytes>,
    max_payload: usize,
    keepalive: Option<(std::time::Duration, std::time::Duration)>,
    cancel: CancellationToken,
) -> Result<(), SmuxError> {
    // One PSH frame per Output message: the smux header takes 8 bytes of it.
    let client = smux::Client::new(out, max_payload.saturating_sub(smux::HEADER_LEN).max(1));
    let demux = client.clone().run(inbound, keepalive);
    tokio::pin!(demux);
    let conns = CancellationToken::new();
    let result = loop {
        tokio::select! {
            r = &mut demux => break r,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: do not spin; connections wait in the backlog.
                        tracing::warn!("accepting a local connection failed: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                tracing::debug!("accepted {peer}");
                let client = client.clone();
                let stop = conns.child_token();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = pipe_mux(client, tcp) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
            _ = cancel.cancelled() => break Ok(()),
        }
    };
    conns.cancel();
    result
}

/// One local connection over one smux stream, each direction on its own, with half-close.
async fn pipe_mux(client: Arc<smux::Client>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let Some((mut from_agent, mut to_agent)) = client.open().await else {
        return;
    };
    let (mut rd, mut wr) = tcp.into_split();
    let up = async move {
        let mut buf = vec![0u8; to_agent.max_data()];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !to_agent.send(&buf[..n]).await {
                        return;
                    }
                }
            }
        }
        to_agent.fin().await;
    };
    let down = async move {
        while let Some(data) = from_agent.recv().await {
            if wr.write_all(&data).await.is_err() {
                // The local peer is gone: dropping the reader discards what is still coming.
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Serves basic mode until cancelled or the session ends.
pub async fn serve_basic(
    listener: TcpListener,
    out: mpsc::Sender<OutItem>,
    mut inbound: mpsc::Receiver<Bytes>,
    max_payload: usize,
    cancel: CancellationToken,
) {
    loop {
        // Between connections, bytes from the agent belong to a connection that is gone.
        let tcp = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => break tcp,
                    Err(e) => {
                        tracing::warn!("accepting a local connection failed: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                data = inbound.recv() => {
                    match data {
                        Some(d) => tracing::debug!("discarding {} bytes for a closed connection", d.len()),
                        None => return,
                    }
                }
                _ = cancel.cancelled() => return,
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::select! {
            alive = pipe_basic(tcp, &out, &mut inbound, max_payload) => if !alive { return },
            _ = cancel.cancelled() => return,
        }
    }
}

/// One connection in basic mode. Returns false when the session is gone.
async fn pipe_basic(
    tcp: TcpStream,
    out: &mpsc::Sender<OutItem>,
    inbound: &mut mpsc::Receiver<Bytes>,
    max_payload: usize,
) -> bool {
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf = vec![0u8; max_payload.max(1)];
    let mut writable = true;
    // Pump both ways until the local side stops sending (EOF or error) or cannot be written to.
    loop {
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(OutItem::Data(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return false;
                    }
                }
            },
            data = inbound.recv() => match data {
                Some(d) => {
                    if wr.write_all(&d).await.is_err() {
                        writable = false;
                        break;
                    }
                }
                None => return false,
            },
        }
    }
    let (acked_tx, mut acked_rx) = oneshot::channel();
    if out
        .send(OutItem::Flag(Flag::DisconnectToPort, Some(acked_tx)))
        .await
        .is_err()
    {
        return false;
    }
    // Until the agent confirms, what it sends is still this connection's (a half-closed client may be
    // waiting for it).
    loop {
        tokio::select! {
            _ = &mut acked_rx => break,
            data = inbound.recv() => match data {
                Some(d) => {
                    if writable && wr.write_all(&d).await.is_err() {
                        writable = false;
                    }
                }
                None => return false,
            },
        }
    }
    let _ = wr.shutdown().await;
    true
}
