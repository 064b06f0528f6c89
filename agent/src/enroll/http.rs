//! A minimal HTTP/1.1 client for the one request the agent makes outside the WebSocket: the
//! enrollment `POST`. One request per connection (`Connection: close`), over stratum's TCP/TLS
//! transport, the whole answer bounded to [`MAX_RESPONSE_BYTES`].

use std::sync::Arc;
use std::time::Duration;

use rigfleet_stratum::transport::{connect_timeout, NetConnector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon::link::target::ServerUrl;

/// Largest response read (headers and body together).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connect, TLS or I/O failure.
    #[error("{0}")]
    Io(String),
    /// Took longer than the limit.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// Not an HTTP response we understand.
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    /// Larger than [`MAX_RESPONSE_BYTES`].
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

/// `POST`s `body` as JSON to `path` of `url` and reads the answer, all within `limit`.
pub async fn post_json(
    url: &ServerUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    path: &str,
    body: &[u8],
    limit: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(limit, exchange(url, tls, path, body, limit))
        .await
        .map_err(|_| HttpError::Timeout(limit))?
}

async fn exchange(
    url: &ServerUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    path: &str,
    body: &[u8],
    limit: Duration,
) -> Result<Response, HttpError> {
    let mut stream = connect_timeout(&NetConnector, &url.endpoint(tls), limit)
        .await
        .map_err(|e| HttpError::Io(e.to_string()))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rigfleet-agent/{}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path(path),
        url.authority(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let io = |e: std::io::Error| HttpError::Io(e.to_string());
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.write_all(body).await.map_err(io)?;
    stream.flush().await.map_err(io)?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // Servers that close without TLS close_notify: the bytes we have are what we get.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError::TooLarge);
        }
        // Stop as soon as a Content-Length body is complete (a keep-alive server would not close).
        if let Some(done) = complete_length(&buf) {
            if buf.len() >= done {
                break;
            }
        }
    }
    parse_response(&buf)
}

/// Total length of head and body when the head is complete and names a Content-Length.
fn complete_length(buf: &[u8]) -> Option<usize> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let len = header(head, "content-length")?.parse::<usize>().ok()?;
    Some(end + len)
}

/// Parses a whole response as read until the server closed.
pub fn parse_response(buf: &[u8]) -> Result<Response, HttpError> {
    let end =
        find(buf, b"\r\n\r\n").ok_or_else(|| HttpError::Malformed("no end of headers".into()))?;
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| HttpError::Malformed("headers are not UTF-8".into()))?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!(
            "status line {:?}",
            status_line.chars().take(80).collect::<String>()
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Malformed("no status code".into()))?;
    let raw = &buf[end + 4..];
    let chunked = header(head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(raw)?
    } else if let Some(len) = header(head, "content-length") {
        let len = len
            .parse::<usize>()
            .map_err(|_| HttpError::Malformed("bad Content-Length".into()))?;
        raw.get(..len)
            .ok_or_else(|| HttpError::Malformed("body shorter than Content-Length".into()))?
            .to_vec()
    } else {
        raw.to_vec()
    };
    Ok(Response { status, body })
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, HttpError> {
    let bad = |why: &str| HttpError::Malformed(format!("chunked body: {why}"));
    let mut out = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n").ok_or_else(|| bad("no chunk size"))?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|_| bad("size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("size"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let data = raw.get(..size).ok_or_else(|| bad("truncated"))?;
        out.extend_from_slice(data);
        raw = raw.get(size + 2..).ok_or_else(|| bad("truncated"))?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_bodies() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}extra")
            .expect("valid");
        assert_eq!((r.status, r.body.as_slice()), (201, b"{}".as_slice()));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(r.body, b"abcde");
        let r = parse_response(b"HTTP/1.0 400 Bad\r\n\r\nhello").expect("valid");
        assert_eq!((r.status, r.body.as_slice()), (400, b"hello".as_slice()));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            b"".as_slice(),
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
