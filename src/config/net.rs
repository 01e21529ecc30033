//! Addresses in the configuration: networks of trusted proxies, and host:port origins
//! (upstreams, their file hosts and token realms).

use reqwest::Url;
use std::net::IpAddr;

/// An address block (`10.0.0.0/8`, `fd00::/8`) or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub(super) addr: IpAddr,
    pub(super) prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let bad = || format!("{s:?} is not an address or address/prefix");
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer seen as an IPv4-mapped IPv6 address is the same peer.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A host an upstream's links, redirects or token realm may go to, and the port: compared as
/// an origin (host and port; the scheme is checked beside it), so another service on another
/// port of the same host is another place. Written `host` (the scheme's default port, 443 or
/// 80) or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    /// `None`: the default port of the URL's scheme.
    pub port: Option<u16>,
}

impl HostPort {
    pub fn parse(s: &str) -> Result<HostPort, String> {
        // A scheme without a default port, so an explicit `:443` or `:80` is kept as written.
        let u = Url::parse(&format!("x-tollgate://{}", s.trim()))
            .map_err(|_| format!("{s:?} is not a host or host:port"))?;
        let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
        if host.is_empty() || u.path() != "" && u.path() != "/" || u.query().is_some() {
            return Err(format!("{s:?} is not a host or host:port"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!("{s:?} carries credentials"));
        }
        Ok(HostPort {
            host,
            port: u.port(),
        })
    }

    /// A URL's own host and port (no port when it is the scheme's default).
    pub fn of_url(url: &Url) -> HostPort {
        HostPort {
            host: url.host_str().unwrap_or_default().to_ascii_lowercase(),
            port: url.port(),
        }
    }

    /// Is `url` on this host and port?
    pub fn matches(&self, url: &Url) -> bool {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let default = match url.scheme() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        };
        host == self.host && self.port.or(default) == url.port_or_known_default()
    }
}

/// Is `url` on one of these hosts and ports?
pub fn origin_listed(list: &[HostPort], url: &Url) -> bool {
    list.iter().any(|h| h.matches(url))
}

pub(super) fn host_ports(list: Vec<String>, what: &str) -> Result<Vec<HostPort>, String> {
    list.iter()
        .map(|h| HostPort::parse(h).map_err(|e| format!("{what}: {e}")))
        .collect()
}

/// Is this host name or address one of the machine's own (loopback)?
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}
