//! Outbound HTTP (`wasi:http/outgoing-handler`): what a grant of it looks
//! like. A grant is a list of origins, `scheme://host[:port|:*]`, written
//! the same in a manifest and in the host's `allow_http`; the handler that
//! makes the requests comes with the capability itself.

use serde::Deserialize;
use std::fmt;

/// The longest origin accepted in a grant (a DNS name is at most 253).
const MAX_ORIGIN_BYTES: usize = 300;

/// One origin a plugin may reach: `https://api.example.com`,
/// `http://127.0.0.1:8025`, `http://127.0.0.1:*` (any port). No path, no
/// wildcard host: a grant names the hosts it trusts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpOrigin {
    scheme: Scheme,
    /// Lower-case; an IPv6 address keeps its brackets.
    host: String,
    port: Port,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Port {
    Any,
    Only(u16),
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl HttpOrigin {
    /// The origins both `self` and `other` let through: the narrower of
    /// the two ports, or nothing when scheme, host or port differ.
    pub fn intersect(&self, other: &HttpOrigin) -> Option<HttpOrigin> {
        if self.scheme != other.scheme || self.host != other.host {
            return None;
        }
        let port = match (self.port, other.port) {
            (Port::Any, p) | (p, Port::Any) => p,
            (Port::Only(a), Port::Only(b)) if a == b => Port::Only(a),
            _ => return None,
        };
        Some(HttpOrigin { scheme: self.scheme, host: self.host.clone(), port })
    }

    /// Whether a request to `scheme://host:port` is inside this origin
    /// (`host` as the URL writes it; compared without case).
    pub fn admits(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let Ok(scheme) = parse_scheme(scheme) else { return false };
        let port = port.unwrap_or(scheme.default_port());
        scheme == self.scheme
            && host.eq_ignore_ascii_case(&self.host)
            && match self.port {
                Port::Any => true,
                Port::Only(p) => p == port,
            }
    }
}

fn parse_scheme(scheme: &str) -> Result<Scheme, String> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Ok(Scheme::Http),
        "https" => Ok(Scheme::Https),
        other => Err(format!("scheme {other:?} is not http or https")),
    }
}

impl TryFrom<String> for HttpOrigin {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl std::str::FromStr for HttpOrigin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("{text:?} is not an origin (scheme://host[:port|:*]): {why}"));
        if text.len() > MAX_ORIGIN_BYTES {
            return Err(format!("an origin of {} bytes is longer than the most of {MAX_ORIGIN_BYTES}", text.len()));
        }
        if text.trim() == "*" {
            return bad("a bare `*` would grant the whole network; name the hosts");
        }
        let Some((scheme, rest)) = text.split_once("://") else { return bad("no `://`") };
        let scheme = match parse_scheme(scheme) {
            Ok(s) => s,
            Err(why) => return bad(&why),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return bad("an origin has no path, query, fragment or user");
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else { return bad("an IPv6 address without its `]`") };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("not an IPv6 address between the brackets");
            }
            let port = if after.is_empty() { Some("") } else { after.strip_prefix(':') };
            (format!("[{}]", addr.to_ascii_lowercase()), port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
                None => (rest.to_ascii_lowercase(), Some("")),
            }
        };
        let Some(port) = port else { return bad("something other than `:port` after the IPv6 address") };
        let port = match port {
            "" => Port::Only(scheme.default_port()),
            "*" => Port::Any,
            digits => match digits.parse::<u16>() {
                Ok(p) if p > 0 => Port::Only(p),
                _ => return bad("the port is not 1-65535 or `*`"),
            },
        };
        if host.is_empty() {
            return bad("no host");
        }
        if host.contains('*') {
            return bad("a wildcard host; name each host");
        }
        if !host.starts_with('[')
            && !host.split('.').all(|label| !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return bad("the host is not a DNS name or an IP address");
        }
        Ok(HttpOrigin { scheme, host, port })
    }
}

impl fmt::Display for HttpOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        match self.port {
            Port::Any => write!(f, ":*"),
            Port::Only(p) if p == self.scheme.default_port() => Ok(()),
            Port::Only(p) => write!(f, ":{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> HttpOrigin {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn origins_parse_and_print_as_written() {
        for text in ["https://api.example.com", "http://127.0.0.1:*", "http://127.0.0.1:8025", "http://[::1]:8080", "https://[::1]"] {
            assert_eq!(origin(text).to_string(), text);
        }
        assert_eq!(origin("HTTPS://API.Example.com:443/").to_string(), "https://api.example.com", "case, default port and a trailing / fold");
    }

    #[test]
    fn malformed_origins_say_what_is_wrong() {
        for (text, why) in [
            ("*", "bare `*`"),
            ("api.example.com", "no `://`"),
            ("ftp://example.com", "not http or https"),
            ("https://example.com/v1/send", "no path"),
            ("https://user@example.com", "no path, query, fragment or user"),
            ("https://*.example.com", "wildcard host"),
            ("https://example.com:99999", "port is not 1-65535"),
            ("https://example.com:0", "port is not 1-65535"),
            ("https://", "no host"),
            ("https://exa mple.com", "not a DNS name"),
            ("http://[::1", "without its `]`"),
            ("http://[::1]x", "after the IPv6 address"),
        ] {
            let e = text.parse::<HttpOrigin>().unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert!("https://".to_string().repeat(100).parse::<HttpOrigin>().unwrap_err().contains("longer than the most"));
    }

    #[test]
    fn the_intersection_is_the_narrower_grant() {
        let any = origin("http://127.0.0.1:*");
        let one = origin("http://127.0.0.1:8025");
        assert_eq!(any.intersect(&one), Some(one.clone()));
        assert_eq!(one.intersect(&any), Some(one.clone()));
        assert_eq!(any.intersect(&any), Some(any.clone()));
        assert_eq!(one.intersect(&origin("http://127.0.0.1:8026")), None);
        assert_eq!(one.intersect(&origin("https://127.0.0.1:8025")), None, "the scheme counts");
        assert_eq!(one.intersect(&origin("http://localhost:8025")), None, "hosts are compared as named");
    }

    #[test]
    fn a_request_is_admitted_by_scheme_host_and_port() {
        let api = origin("https://api.example.com");
        assert!(api.admits("https", "API.example.com", None));
        assert!(api.admits("https", "api.example.com", Some(443)));
        assert!(!api.admits("https", "api.example.com", Some(8443)));
        assert!(!api.admits("http", "api.example.com", None));
        assert!(!api.admits("https", "api.example.com.evil.test", None));
        assert!(origin("http://127.0.0.1:*").admits("http", "127.0.0.1", Some(9)));
    }
}
