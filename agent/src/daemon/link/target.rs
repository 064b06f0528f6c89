//! Where the server is: its URL split into what the TCP/TLS transport and the WebSocket and
//! HTTP requests need, and the TLS trust to use (CA file, pinned certificate or system roots).

use std::path::PathBuf;
use std::sync::Arc;

use rigfleet_proto::enroll::AGENT_WS_PATH;
use rigfleet_stratum::transport::{
    tls_client_config, Endpoint, PoolUrl, Scheme, TlsOptions, TransportError,
};

/// A parsed server URL: `http(s)://host[:port][/base]` (`ws`/`wss` accepted as synonyms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// TLS (`https`, `wss`) or plain text.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port (default 443 or 80).
    pub port: u16,
    /// Path prefix the server is mounted under, without a trailing slash (usually empty).
    pub base_path: String,
}

impl ServerUrl {
    /// Parses and checks a server URL; the error says what is wrong in words.
    pub fn parse(text: &str) -> Result<ServerUrl, String> {
        let text = text.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} is not a URL (expected https://host:port)"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "https" | "wss" => true,
            "http" | "ws" => false,
            other => return Err(format!("scheme {other:?} not allowed (https or http)")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') || path.contains(['?', '#']) || rest.contains(['?', '#']) {
            return Err(format!("{text:?}: no user info, query or fragment allowed"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("{text:?} has an unclosed ["))?;
                if h.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(format!("{h:?} is not an IPv6 address"));
                }
                (h, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
        if host.is_empty() || !host.chars().all(valid) {
            return Err(format!("{text:?} has no valid host"));
        }
        let port = match port {
            None | Some("") => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{p:?} is not a port number"))?,
        };
        let base_path = path.trim_end_matches('/').to_string();
        if base_path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("{text:?} has whitespace in its path"));
        }
        Ok(ServerUrl {
            tls,
            host: host.to_string(),
            port,
            base_path,
        })
    }

    /// `host:port` as the `Host` header wants it (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The path of an endpoint under the base path.
    pub fn path(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.base_path)
    }

    /// The WebSocket URL of the agent link (`wss://…/api/agent/ws`).
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!(
            "{scheme}://{}{}",
            self.authority(),
            self.path(AGENT_WS_PATH)
        )
    }

    /// What the transport connects to.
    pub fn endpoint(&self, tls: Option<Arc<rustls::ClientConfig>>) -> Endpoint {
        Endpoint {
            url: PoolUrl {
                scheme: if self.tls { Scheme::Tls } else { Scheme::Tcp },
                host: self.host.clone(),
                port: self.port,
            },
            tls,
        }
    }

    /// Whether plain text stays on this machine (the only place `http` is sensible).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
    }
}

/// How the server's TLS certificate is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkTls {
    /// Trust this PEM CA bundle in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Trust exactly the certificate with this `sha256:<hex>` fingerprint.
    pub cert_fingerprint: Option<String>,
}

impl LinkTls {
    /// The rustls configuration for `url`, or `None` for plain text.
    pub fn client_config(
        &self,
        url: &ServerUrl,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, TransportError> {
        if !url.tls {
            return Ok(None);
        }
        let pin = match &self.cert_fingerprint {
            Some(fp) => {
                let hex = fp.trim();
                let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
                Some(TlsOptions::parse_fingerprint(hex)?)
            }
            None => None,
        };
        tls_client_config(&TlsOptions {
            pin_sha256: pin,
            ca_file: self.ca_file.clone(),
        })
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_to_the_websocket_endpoint() {
        let u = ServerUrl::parse("https://fleet.example:8443").expect("valid");
        assert_eq!(u.ws_url(), "wss://fleet.example:8443/api/agent/ws");
        assert_eq!(u.authority(), "fleet.example:8443");
        let u = ServerUrl::parse("http://127.0.0.1:8080/rigfleet/").expect("valid");
        assert_eq!(u.ws_url(), "ws://127.0.0.1:8080/rigfleet/api/agent/ws");
        assert_eq!(u.path("/api/agent/enroll"), "/rigfleet/api/agent/enroll");
        assert!(u.is_loopback() && !u.tls);
        let u = ServerUrl::parse("https://[::1]").expect("valid");
        assert_eq!((u.port, u.authority().as_str()), (443, "[::1]:443"));
        assert_eq!(ServerUrl::parse("http://farm").expect("valid").port, 80);
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "farm:8080",
            "ftp://farm",
            "https://",
            "https://a b",
            "https://farm:0",
            "https://farm:99999",
            "https://user@farm",
            "https://farm/?x=1",
            "https://[zz]:1",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_text_needs_no_tls_config_and_bad_pins_are_refused() {
        let plain = ServerUrl::parse("http://127.0.0.1:1").expect("valid");
        assert!(LinkTls::default()
            .client_config(&plain)
            .expect("plain")
            .is_none());
        let tls = ServerUrl::parse("https://127.0.0.1:1").expect("valid");
        let bad = LinkTls {
            ca_file: None,
            cert_fingerprint: Some("sha256:zz".into()),
        };
        assert!(bad.client_config(&tls).is_err());
        let pinned = LinkTls {
            ca_file: None,
            cert_fingerprint: Some(format!("sha256:{}", "ab".repeat(32))),
        };
        assert!(pinned.client_config(&tls).expect("pin").is_some());
    }
}
