//! The per-process instance id sent as `x-thespian-instance`, so a probe can tell replicas apart.
//!
//! On ECS it is the task id, read from the task metadata endpoint (`ECS_CONTAINER_METADATA_URI_V4/task`,
//! whose `TaskARN` ends in the id); elsewhere `hostname:pid`.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long start-up may wait for the metadata endpoint (it answers in about a millisecond on ECS).
const METADATA_TIMEOUT: Duration = Duration::from_millis(1000);

/// The instance id, and a warning to log when the ECS metadata could not be read.
pub async fn instance_id(ecs_metadata_uri: Option<&str>) -> (String, Option<String>) {
    let fallback = || {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{host}:{}", std::process::id())
    };
    let Some(uri) = ecs_metadata_uri.filter(|u| !u.trim().is_empty()) else {
        return (fallback(), None);
    };
    match tokio::time::timeout(METADATA_TIMEOUT, ecs_task_id(uri)).await {
        Ok(Ok(id)) => (id, None),
        Ok(Err(e)) => {
            let id = fallback();
            (
                id.clone(),
                Some(format!(
                    "ECS_CONTAINER_METADATA_URI_V4: could not read the task id ({e}); using {id}"
                )),
            )
        }
        Err(_) => {
            let id = fallback();
            (
                id.clone(),
                Some(format!(
                    "ECS_CONTAINER_METADATA_URI_V4: no answer within 1 s; using {id}"
                )),
            )
        }
    }
}

/// `GET {uri}/task` over plain HTTP/1.1 (the endpoint is a link-local plaintext server) and the last
/// segment of its `TaskARN`.
async fn ecs_task_id(uri: &str) -> Result<String, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("\"{uri}\" is not a URL: {e}"))?;
    if parsed.scheme_str() != Some("http") {
        return Err(format!("\"{uri}\" is not an http:// URL"));
    }
    let host = parsed.host().ok_or_else(|| format!("\"{uri}\" has no host"))?;
    let port = parsed.port_u16().unwrap_or(80);
    let path = format!("{}/task", parsed.path().trim_end_matches('/'));
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let body = http_body(&response)?;
    let task: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("bad JSON: {e}"))?;
    let arn = task
        .get("TaskARN")
        .and_then(|v| v.as_str())
        .ok_or("no TaskARN in the task metadata")?;
    match arn.rsplit('/').next() {
        Some(id) if !id.is_empty() && id != arn => Ok(id.to_owned()),
        _ => Err(format!("unexpected TaskARN \"{arn}\"")),
    }
}

/// The body of a `200` HTTP/1.1 response, de-chunked if needed.
fn http_body(response: &[u8]) -> Result<Vec<u8>, String> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("metadata endpoint answered \"{status}\""));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_plain_or_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(http_body(plain).expect("plain"), b"{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).expect("chunked"), b"{\"a\":1}");
        assert!(
            http_body(b"HTTP/1.1 404 Not Found\r\n\r\n")
                .expect_err("404")
                .contains("404")
        );
    }

    #[tokio::test]
    async fn without_ecs_it_is_hostname_and_pid() {
        let (id, warning) = instance_id(None).await;
        assert!(id.ends_with(&format!(":{}", std::process::id())), "{id}");
        assert_eq!(warning, None);
        let (_, warning) = instance_id(Some("http://127.0.0.1:1/v4/x")).await;
        assert!(
            warning
                .expect("warns")
                .starts_with("ECS_CONTAINER_METADATA_URI_V4: could not read")
        );
    }
}
