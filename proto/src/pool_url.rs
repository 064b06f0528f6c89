//! Pool addresses (`stratum+tcp://host:port`, `stratum+ssl://host:port`): parsed here, in the
//! protocol crate, so that the server refuses a desired config with a bad pool URL before it
//! is stored and signed, with the same words the agent's Stratum client would use.

use std::fmt;
use std::str::FromStr;

/// How a pool is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain TCP (`stratum+tcp://`, `tcp://`).
    Tcp,
    /// TLS over TCP (`stratum+ssl://`, `stratum+tls://`, `ssl://`, `tls://`).
    Tls,
}

/// A validated pool address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolUrl {
    /// TCP or TLS.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (never 0).
    pub port: u16,
}

/// Why a pool URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// No `scheme://` prefix.
    #[error("{0:?} has no scheme; write stratum+tcp://host:port or stratum+ssl://host:port")]
    MissingScheme(String),
    /// A scheme other than the Stratum ones.
    #[error("unknown scheme {0:?}; use stratum+tcp or stratum+ssl")]
    UnknownScheme(String),
    /// Nothing between `://` and the port.
    #[error("{0:?} has an empty host")]
    EmptyHost(String),
    /// A host with characters no host name has.
    #[error("{0:?} is not a valid host name or address")]
    BadHost(String),
    /// No `:port`; Stratum has no default port.
    #[error("{0:?} has no port; write host:port (Stratum has no default port)")]
    MissingPort(String),
    /// A port that is not 1 to 65535.
    #[error("{0:?} is not a port number (1 to 65535)")]
    BadPort(String),
    /// A path, query or user info: pools take the worker from `mining.authorize`, not the URL.
    #[error("{0:?} has a path or user info; give only scheme://host:port (user and password go in their own options)")]
    Unexpected(String),
}

impl FromStr for PoolUrl {
    type Err = UrlError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| UrlError::MissingScheme(text.to_string()))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "stratum+tcp" | "tcp" => Scheme::Tcp,
            "stratum+ssl" | "stratum+tls" | "ssl" | "tls" => Scheme::Tls,
            _ => return Err(UrlError::UnknownScheme(scheme.to_string())),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(UrlError::Unexpected(text.to_string()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::BadHost(authority.to_string()))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(UrlError::BadHost(host.to_string()));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| UrlError::MissingPort(text.to_string()))?;
            (host, port)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| UrlError::MissingPort(text.to_string()))?;
            if host.contains(':') {
                // A bare IPv6 address: the port cannot be told apart without brackets.
                return Err(UrlError::BadHost(host.to_string()));
            }
            let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
            if !host.is_empty() && !host.chars().all(valid) {
                return Err(UrlError::BadHost(host.to_string()));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(UrlError::EmptyHost(text.to_string()));
        }
        if port.is_empty() {
            return Err(UrlError::MissingPort(text.to_string()));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| UrlError::BadPort(port.to_string()))?;
        Ok(PoolUrl {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for PoolUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Tcp => "stratum+tcp",
            Scheme::Tls => "stratum+ssl",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_scheme() {
        for (text, scheme) in [
            ("stratum+tcp://pool.example.com:3333", Scheme::Tcp),
            ("tcp://pool.example.com:3333", Scheme::Tcp),
            ("STRATUM+TCP://pool.example.com:3333/", Scheme::Tcp),
            ("stratum+ssl://pool.example.com:3333", Scheme::Tls),
            ("stratum+tls://pool.example.com:3333", Scheme::Tls),
            ("ssl://pool.example.com:3333", Scheme::Tls),
        ] {
            let url: PoolUrl = text.parse().unwrap();
            assert_eq!(url.scheme, scheme, "{text}");
            assert_eq!(url.host, "pool.example.com");
            assert_eq!(url.port, 3333);
        }
        let v6: PoolUrl = "stratum+tcp://[::1]:3333".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "stratum+tcp://[::1]:3333");
        let v4: PoolUrl = " stratum+ssl://127.0.0.1:443 ".parse().unwrap();
        assert_eq!(v4.to_string(), "stratum+ssl://127.0.0.1:443");
    }

    #[test]
    fn url_errors_say_what_is_wrong() {
        type Check = fn(&UrlError) -> bool;
        let cases: [(&str, Check); 11] = [
            ("pool.example.com:3333", |e| {
                matches!(e, UrlError::MissingScheme(_))
            }),
            (
                "http://pool.example.com:3333",
                |e| matches!(e, UrlError::UnknownScheme(s) if s == "http"),
            ),
            ("stratum+tcp://pool.example.com", |e| {
                matches!(e, UrlError::MissingPort(_))
            }),
            ("stratum+tcp://pool.example.com:", |e| {
                matches!(e, UrlError::MissingPort(_))
            }),
            ("stratum+tcp://:3333", |e| {
                matches!(e, UrlError::EmptyHost(_))
            }),
            ("stratum+tcp://pool:0", |e| {
                matches!(e, UrlError::BadPort(_))
            }),
            ("stratum+tcp://pool:70000", |e| {
                matches!(e, UrlError::BadPort(_))
            }),
            ("stratum+tcp://pool:33a", |e| {
                matches!(e, UrlError::BadPort(_))
            }),
            ("stratum+tcp://user:pw@pool:3333", |e| {
                matches!(e, UrlError::Unexpected(_))
            }),
            ("stratum+tcp://::1:3333", |e| {
                matches!(e, UrlError::BadHost(_))
            }),
            ("stratum+tcp://po ol:3333", |e| {
                matches!(e, UrlError::BadHost(_))
            }),
        ];
        for (text, check) in cases {
            let err = text.parse::<PoolUrl>().unwrap_err();
            assert!(check(&err), "{text}: {err:?}");
            assert!(!err.to_string().is_empty());
        }
        // The message names the fix, not only the fault.
        let err = "stratum+tcp://pool".parse::<PoolUrl>().unwrap_err();
        assert!(err.to_string().contains("host:port"), "{err}");
    }
}
