//! Opening the WebSocket: TCP (and TLS) through stratum's transport, then the HTTP upgrade by
//! tokio-tungstenite over that stream, with every size bound of the protocol set on the socket.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rigfleet_proto::limits::MAX_FRAME_BYTES;
use rigfleet_proto::{AgentMessage, ProtoError, ServerMessage};
use rigfleet_stratum::transport::{connect_timeout, BoxedStream, NetConnector, TransportError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::target::ServerUrl;

/// The link's socket.
pub type WsStream = WebSocketStream<BoxedStream>;

/// Read buffer per connection: frames are small JSON, and the simulator holds thousands.
const READ_BUFFER: usize = 16 * 1024;
/// Bytes collected before a write reaches the socket (flushes write sooner).
const WRITE_BUFFER: usize = 64 * 1024;

/// Why the link is down or a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// TCP or TLS failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The WebSocket upgrade or a read/write failed.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// A step took longer than its limit.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The server answered with an `error` frame.
    #[error("server refused: {code}: {message}")]
    Refused {
        /// The protocol's error code (`auth_failed`…).
        code: String,
        /// Its message.
        message: String,
    },
    /// A frame that does not decode or comes out of turn.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server closed the connection.
    #[error("connection closed by the server{0}")]
    Closed(String),
}

impl From<ProtoError> for LinkError {
    fn from(e: ProtoError) -> Self {
        LinkError::Protocol(e.to_string())
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for LinkError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        LinkError::WebSocket(e.to_string())
    }
}

/// Socket settings: the protocol's 1 MiB bound on incoming messages and frames, and a bounded
/// write buffer so a peer that stops reading cannot make the agent buffer without end.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * MAX_FRAME_BYTES)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// Connects to the server's agent endpoint and upgrades to a WebSocket, each step within
/// `limit`.
pub async fn open(
    url: &ServerUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    limit: Duration,
) -> Result<WsStream, LinkError> {
    let endpoint = url.endpoint(tls);
    let stream = connect_timeout(&NetConnector, &endpoint, limit).await?;
    let upgrade =
        tokio_tungstenite::client_async_with_config(url.ws_url(), stream, Some(ws_config()));
    let (ws, _response) = tokio::time::timeout(limit, upgrade)
        .await
        .map_err(|_| LinkError::Timeout("websocket upgrade"))??;
    Ok(ws)
}

/// Encodes and sends one message.
pub async fn send_msg(ws: &mut WsStream, msg: &AgentMessage) -> Result<(), LinkError> {
    let text = rigfleet_proto::encode_agent(msg)?;
    ws.send(Message::text(text)).await?;
    Ok(())
}

/// The next server message, skipping control frames; an `error` frame becomes
/// [`LinkError::Refused`].
pub async fn recv_msg(ws: &mut WsStream) -> Result<ServerMessage, LinkError> {
    loop {
        let frame = ws
            .next()
            .await
            .ok_or_else(|| LinkError::Closed(String::new()))??;
        match frame {
            Message::Text(text) => {
                let msg = rigfleet_proto::decode_server(text.as_str())?;
                if let ServerMessage::Error(e) = msg {
                    return Err(refused(&e));
                }
                return Ok(msg);
            }
            Message::Close(frame) => return Err(LinkError::Closed(close_reason(frame.as_ref()))),
            Message::Binary(_) => {
                return Err(LinkError::Protocol(
                    "binary frame (only text is used)".into(),
                ))
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// An `error` frame as a link error, with its code spelled as on the wire.
pub fn refused(e: &rigfleet_proto::server_to_agent::ErrorFrame) -> LinkError {
    LinkError::Refused {
        code: error_code(e.code),
        message: e.message.chars().take(512).collect(),
    }
}

/// The wire name of an error code.
pub fn error_code(code: rigfleet_proto::server_to_agent::ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{code:?}"))
}

/// `: <code> <reason>` of a close frame, for logs.
pub fn close_reason(
    frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> String {
    match frame {
        Some(f) => format!(
            " ({} {})",
            u16::from(f.code),
            f.reason.as_str().chars().take(128).collect::<String>()
        ),
        None => String::new(),
    }
}
