//! Outbound HTTP: the one client builder (rustls on aws-lc-rs, no system proxies unless
//! configured), and the resolver guard that keeps connections to private addresses for the
//! hosts the configuration names (checked on the address connected to, not a second lookup).

use std::time::Duration;

/// Addresses an upstream connection may not reach unless the host is configured: private,
/// loopback, link-local, shared (CGNAT), reserved and multicast ranges, and IPv6 forms that embed
/// such an IPv4 address (mapped, compatible, NAT64, 6to4).
pub fn ip_is_private(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] & 0xffc0) == 0xfec0
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| ip_is_private(IpAddr::V4(v4)))
                // IPv4-translated (RFC 2765, ::ffff:0:a.b.c.d).
                || (seg[..4] == [0; 4]
                    && seg[4] == 0xffff
                    && seg[5] == 0
                    && ip_is_private(IpAddr::V4(embedded(seg[6], seg[7]))))
                // Local-use NAT64 (RFC 8215, 64:ff9b:1::/48): local by definition, whatever
                // IPv4 address it embeds.
                || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1)
                // Teredo (RFC 4380, 2001::/32, the IPv4 address obfuscated) and documentation
                // (RFC 3849, 2001:db8::/32).
                || (seg[0] == 0x2001 && (seg[1] == 0 || seg[1] == 0xdb8))
                || (seg[..6] == [0; 6] && ip_is_private(IpAddr::V4(embedded(seg[6], seg[7]))))
                || (seg[0] == 0x64
                    && seg[1] == 0xff9b
                    && ip_is_private(IpAddr::V4(embedded(seg[6], seg[7]))))
                || (seg[0] == 0x2002 && ip_is_private(IpAddr::V4(embedded(seg[1], seg[2]))))
        }
    }
}

/// Resolves names for an upstream client, at connect time: a host the operator configured may
/// resolve to any address; any other keeps only its public addresses, and fails when it has
/// none. The address connected to is the one checked (no second lookup a rebinding DNS server
/// could answer differently). IP literals are not looked up (the URL checks see them), and
/// through an HTTPS proxy the proxy resolves names, so address checks are then the proxy's.
pub(super) struct GuardedResolver {
    pub(super) private_ok: Vec<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let any = self.private_ok.contains(&host);
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| any || !ip_is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(
                    format!("{host} resolves to no address the gate may connect to").into(),
                );
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The process's one TLS provider: aws-lc-rs, the library sigstore-verify checks signatures
/// with, so TLS and signatures rest on one cryptographic stack. Installed before any TLS
/// configuration is built (reqwest and rustls look it up then); later calls change nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The HTTP client for one upstream: no automatic redirects (each caller checks where a
/// redirect goes and strips credentials itself), bounded connect and read times. It trusts the
/// platform's certificate store (or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, as OpenSSL
/// does), where a network that re-signs TLS at its egress proxy puts that proxy's CA; the
/// built-in Mozilla roots, so a machine without a store still reaches public upstreams; and
/// the upstream's own `ca_file`, for a private CA of that upstream only.
pub fn http_client(
    label: &str,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
    private_ok: Vec<String>,
) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let mut private_ok = private_ok;
    private_ok.extend(proxy_hosts());
    let mut b = reqwest::Client::builder()
        .dns_resolver(std::sync::Arc::new(GuardedResolver { private_ok }))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| format!("{label}: ca_file {}: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("{label}: ca_file {}: {e}", ca.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| format!("{label}: {e}"))
}

/// What went wrong in TLS when a request failed, in words an operator can act on; `None` when
/// the failure was not TLS (a refused connection, a timeout). rustls's error sits behind reqwest's
/// and hyper's and inside an `io::Error`, whose `source()` skips the error it wraps, so each
/// `io::Error` is opened with `get_ref`.
pub fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(describe_tls(t));
        }
        // An io::Error may wrap another io::Error (tokio-rustls's inside hyper's) and its
        // `source()` would skip both: open it instead.
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    const TRUST: &str = "if an egress proxy re-signs TLS, trust its CA: add it to the system's \
        certificate store or SSL_CERT_FILE, or name it in the upstream's ca_file";
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            format!("TLS: the upstream's certificate is signed by an unknown CA ({TRUST})")
        }
        rustls::Error::InvalidCertificate(C::BadSignature | C::BadEncoding) => {
            format!("TLS: the upstream's certificate chain does not verify ({TRUST})")
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "TLS: the upstream's certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "TLS: the upstream's certificate is not valid for its host name".into(),
        rustls::Error::InvalidCertificate(other) => {
            format!("TLS: the upstream's certificate is refused ({other:?}; {TRUST})")
        }
        other => format!("TLS: the handshake with the upstream failed ({other})"),
    }
}

/// The hosts of the egress proxies the environment names (reqwest reads the same variables):
/// an operator's proxy is usually on a private address, and the resolver guard must let the
/// gate connect to it. Through a proxy the proxy resolves upstream names (see `GuardedResolver`).
fn proxy_hosts() -> Vec<String> {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .filter_map(|var| std::env::var(var).ok())
    .filter_map(|v| {
        // reqwest accepts a bare `host:port` as an http:// proxy; so does this.
        let url = if v.contains("://") {
            v
        } else {
            format!("http://{v}")
        };
        reqwest::Url::parse(&url)
            .ok()?
            .host_str()
            .map(str::to_ascii_lowercase)
    })
    .collect()
}

/// Redirects followed per request, for every upstream (index pages, registries, blobs).
pub const MAX_REDIRECTS: usize = 5;

/// Where a redirect answer points (its `Location` resolved against `from`), or why it cannot
/// be followed. The caller checks the target against its origins before following it.
pub fn redirect_target(
    resp: &reqwest::Response,
    from: &reqwest::Url,
) -> Result<reqwest::Url, String> {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| from.join(l).ok())
        .ok_or_else(|| "redirect without a usable Location".to_string())
}
