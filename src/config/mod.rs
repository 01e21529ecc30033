//! Configuration: the TOML file CONTRACT.md describes, validated into typed settings. No network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;

use crate::policy::units::{parse_duration, parse_size};
use net::host_ports;
use raw::{RawConfig, RawIndex};

mod audit;
pub use audit::AuditConfig;
mod auth;
use auth::upstream_auth;
pub use auth::{ManagedIdentity, Secret};
mod net;
mod shared;
pub use shared::{CacheUrl, Password, PostgresConfig};
mod locate;
mod vulns;
pub use vulns::VulnConfig;
mod raw;
pub use net::{is_loopback_host, origin_listed, HostPort, IpNet};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Signature artifacts (layers) examined per image.
    pub signatures: usize,
    pub page_bytes: u64,
    pub manifest_bytes: u64,
    /// Largest request body of the JSON APIs (verification, admission).
    pub admin_body_bytes: u64,
    pub header_bytes: u64,
    /// Reading a request head (and waiting for the next one on a kept-alive connection).
    pub head_timeout: Duration,
    /// A response the client does not read, or a request body it does not send, for this long
    /// ends the connection.
    pub idle_timeout: Duration,
    /// Connections at once, on each listener; past it new ones wait up to `head_timeout`.
    pub max_connections: usize,
    /// Connections at once from one TCP peer (trusted proxies excepted); past it, refused.
    pub per_client_connections: usize,
    /// Peers whose `X-Forwarded-For` names the client (a load balancer in front of the gate).
    pub trusted_proxies: Vec<IpNet>,
    /// The longest a request body may take to arrive, whatever its pace (a body trickled a
    /// byte at a time just inside idle_timeout ends here).
    pub body_timeout: Duration,
    /// Below this much free space on data_dir's file system, new files are not cached (and
    /// `/readyz` says so); decisions are still served.
    pub min_free_disk: u64,
}

/// `[admission]`: the Kubernetes webhooks on a listener of their own, and what the API server
/// must present there.
#[derive(Debug, Clone, Default)]
pub struct AdmissionConfig {
    /// When set, `/k8s/*` is served only here (and is absent from `listen`).
    pub listen: Option<SocketAddr>,
    /// Client certificates (mTLS) from this CA are required on the admission listener.
    pub client_ca: Option<PathBuf>,
    /// SHA-256 of the bearer token the API server sends (`token_sha256_env`).
    pub token_sha256: Option<crate::policy::Sha256>,
}

impl AdmissionConfig {
    /// Is anything more than the network guarding `/k8s/*`?
    pub fn is_guarded(&self) -> bool {
        self.client_ca.is_some() || self.token_sha256.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct IndexConfig {
    pub name: String,
    /// Always ends with `/`.
    pub url: Url,
    pub file_hosts: Vec<HostPort>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `auth = "managed-identity"`: Entra ID tokens from the platform's managed identity.
    pub managed_identity: Option<ManagedIdentity>,
    pub ca_file: Option<PathBuf>,
    /// Whether release-rule ages count from the index's own upload times (PEP 700
    /// `upload-time`), or from the gate's first sight of each file (`upload_time =
    /// "first_seen"`): an index that can date a file in the past must not shorten its quarantine.
    pub trust_upload_time: bool,
}

#[derive(Debug, Clone)]
pub struct PypiConfig {
    pub wheels_only: bool,
    pub page_ttl: Duration,
    /// Connect and read timeout for upstream requests (an extension of CONTRACT.md's config).
    pub upstream_timeout: Duration,
    pub indexes: Vec<IndexConfig>,
    /// An upstream page listing more files than this is refused (a hostile upstream must not
    /// make the gate parse, pin and keep without bound).
    pub max_files_per_page: usize,
    /// First-sight pins kept per project at most; files past it are not pinned or listed.
    pub max_pins_per_project: usize,
    /// First-sight pins of versions no release rule admits any more, not served for this
    /// long, are pruned.
    pub prune_pins_after: Duration,
    /// Files larger than this are not downloaded to be hashed (approvals, files an upstream
    /// lists without a hash).
    pub max_hash_bytes: u64,
    /// How long downloading one file to hash it may take.
    pub hash_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The registry's name as rules and signers write it (normalised; may carry a port).
    pub host: String,
    /// The first path segment clients use for it.
    pub prefix: String,
    pub url: Url,
    pub auth_hosts: Vec<HostPort>,
    pub redirect_hosts: Vec<HostPort>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `auth = "managed-identity"`: an Entra ID token exchanged for ACR's refresh token.
    pub managed_identity: Option<ManagedIdentity>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct OciConfig {
    pub tag_ttl: Duration,
    pub default_registry: String,
    /// Pulls and `/api/v1/verify` need a token of role `puller` or above.
    pub require_auth: bool,
    pub registries: Vec<RegistryConfig>,
}

/// Where the OIDC issuer's signing keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(Url),
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    pub role_claim: String,
}

#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// Serve `/admin` only here (and not on `listen`).
    pub listen: Option<SocketAddr>,
    pub oidc: Option<OidcConfig>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, if any.
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub allowlist_dir: PathBuf,
    pub public_url: Option<String>,
    pub cache_max_bytes: u64,
    /// Bytes per second the background scrub re-hashes cached files at (0: off).
    pub cache_scrub_rate: u64,
    pub limits: Limits,
    pub tls: Option<Tls>,
    /// The one Sigstore trusted root of both gates (keyless signatures, log entries,
    /// timestamps), read offline.
    pub trusted_root: Option<PathBuf>,
    pub admission: AdmissionConfig,
    pub audit: AuditConfig,
    pub pypi: PypiConfig,
    pub oci: OciConfig,
    pub admin: AdminConfig,
    /// `[store]`: PostgreSQL shared by the replicas (`None`: the embedded store in data_dir).
    pub store: Option<PostgresConfig>,
    /// `[cache] url`: a local directory (data_dir by default) or a shared object store.
    pub cache: CacheUrl,
    pub vulnerabilities: Option<VulnConfig>,
}

impl Config {
    /// Parses and validates config text; relative paths resolve against `base`.
    pub fn from_text(text: &str, path: Option<&Path>, base: &Path) -> Result<Config, ConfigError> {
        let shown = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(built-in defaults)".into());
        let invalid = |line: usize, message: String| ConfigError::Invalid {
            path: shown.clone(),
            line,
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| {
                    text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1
                })
                .unwrap_or(1);
            invalid(line, e.message().replace('\n', " "))
        })?;
        let line_of = |needle: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(needle))
                .map(|i| i + 1)
                .unwrap_or(1)
        };
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() || base == Path::new(".") {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let listen_raw = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            invalid(
                line_of("listen"),
                format!("listen: {listen_raw:?} is not an address:port"),
            )
        })?;
        let size = |key: &str, v: Option<&String>, default: u64| -> Result<u64, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => parse_size(s).map_err(|e| invalid(line_of(key), format!("{key}: {e}"))),
            }
        };
        let cache_max_bytes = size("cache_max_bytes", raw.cache_max_bytes.as_ref(), 200 << 30)?;
        let cache_scrub_rate = match raw.cache_scrub_rate.as_deref() {
            Some("0") => 0,
            v => size(
                "cache_scrub_rate",
                v.map(|s| s.trim_end_matches("/s").to_string()).as_ref(),
                16 << 20,
            )?,
        };
        let rl = raw.limits.unwrap_or_default();
        let duration =
            |key: &str, v: Option<&String>, default: u64| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(Duration::from_secs(default)),
                    Some(s) => parse_duration(s)
                        .map_err(|e| invalid(line_of(key), format!("{key}: {e}")))
                        .and_then(|d| {
                            if d.is_zero() {
                                Err(invalid(line_of(key), format!("{key} must be more than 0s")))
                            } else {
                                Ok(d)
                            }
                        }),
                }
            };
        let count = |key: &str, v: Option<u32>, default: u32| -> Result<usize, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(invalid(line_of(key), format!("{key} must be at least 1"))),
                n => Ok(n as usize),
            }
        };
        let limits = Limits {
            signatures: rl.signatures.unwrap_or(64).clamp(1, 1024) as usize,
            page_bytes: size("page_bytes", rl.page_bytes.as_ref(), 4 << 20)?,
            manifest_bytes: size("manifest_bytes", rl.manifest_bytes.as_ref(), 4 << 20)?,
            admin_body_bytes: size("admin_body_bytes", rl.admin_body_bytes.as_ref(), 1 << 20)?,
            header_bytes: size("header_bytes", rl.header_bytes.as_ref(), 16 << 10)?,
            head_timeout: duration("head_timeout", rl.head_timeout.as_ref(), 10)?,
            idle_timeout: duration("idle_timeout", rl.idle_timeout.as_ref(), 60)?,
            max_connections: count("max_connections", rl.max_connections, 10_000)?,
            per_client_connections: count(
                "per_client_connections",
                rl.per_client_connections,
                256,
            )?,
            trusted_proxies: rl
                .trusted_proxies
                .iter()
                .map(|p| IpNet::parse(p))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    invalid(line_of("trusted_proxies"), format!("trusted_proxies: {e}"))
                })?,
            min_free_disk: size("min_free_disk", rl.min_free_disk.as_ref(), 1 << 30)?,
            body_timeout: duration("body_timeout", rl.body_timeout.as_ref(), 60)?,
        };
        // Accepted for forward compatibility of config files; the parts that use them are not
        // in this build, but a bad value is still an error now rather than later.
        if limits.page_bytes == 0 || limits.header_bytes < 1024 {
            return Err(invalid(
                line_of("[limits]"),
                "limits: page_bytes must be > 0 and header_bytes at least 1KiB".into(),
            ));
        }

        let public_url = match raw.public_url {
            None => None,
            Some(u) => {
                let parsed = Url::parse(&u)
                    .map_err(|e| invalid(line_of("public_url"), format!("public_url: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
                    return Err(invalid(
                        line_of("public_url"),
                        "public_url must be an http(s) URL without a query".into(),
                    ));
                }
                Some(u.trim_end_matches('/').to_string())
            }
        };

        let tls = raw.tls.map(|t| Tls {
            cert: resolve(&t.cert),
            key: resolve(&t.key),
        });

        let rad = raw.admission.unwrap_or_default();
        let admission = AdmissionConfig {
            listen: match &rad.listen {
                None => None,
                Some(l) => Some(l.parse::<SocketAddr>().map_err(|e| {
                    invalid(
                        line_of("[admission]"),
                        format!("[admission] listen {l:?}: {e}"),
                    )
                })?),
            },
            client_ca: rad.client_ca.as_deref().map(resolve),
            token_sha256: match &rad.token_sha256_env {
                None => None,
                Some(var) => {
                    let v = std::env::var(var).map_err(|_| {
                        invalid(
                            line_of("token_sha256_env"),
                            format!("[admission] token_sha256_env: environment variable {var} is not set"),
                        )
                    })?;
                    Some(crate::policy::Sha256::parse(v.trim()).map_err(|_| {
                        invalid(
                            line_of("token_sha256_env"),
                            format!("[admission] token_sha256_env: {var} is not a hex SHA-256"),
                        )
                    })?)
                }
            },
        };
        let data_dir = resolve(raw.data_dir.as_deref().unwrap_or("data"));
        let cache_invalid = |m| invalid(line_of("[cache]"), m);
        let cache = shared::cache_section(raw.cache, &data_dir, &cache_invalid, &resolve)?;
        let audit = audit::section(
            raw.audit.unwrap_or_default(),
            &data_dir,
            &invalid,
            &line_of,
            &resolve,
        )?;
        let vulnerabilities = vulns::section(
            raw.vulnerabilities,
            &|m| invalid(line_of("[vulnerabilities]"), m),
            &resolve,
        )?;
        let store = shared::store_section(
            raw.store,
            audit.retention.is_some(),
            &|m| invalid(line_of("[store]"), m),
            &resolve,
        )?;

        // A client certificate is part of a TLS handshake: mTLS needs the gate to serve TLS.
        if admission.client_ca.is_some() && tls.is_none() {
            return Err(invalid(
                line_of("client_ca"),
                "[admission] client_ca needs [tls] (client certificates are a TLS handshake)"
                    .into(),
            ));
        }

        let rp = raw.pypi.unwrap_or_default();
        let page_ttl = match rp.page_ttl {
            None => Duration::from_secs(600),
            Some(s) => parse_duration(&s)
                .map_err(|e| invalid(line_of("page_ttl"), format!("page_ttl: {e}")))?,
        };
        let upstream_timeout = match rp.upstream_timeout {
            None => Duration::from_secs(30),
            Some(s) => match parse_duration(&s) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    return Err(invalid(
                        line_of("upstream_timeout"),
                        format!("upstream_timeout: {s:?} is not a positive duration"),
                    ))
                }
            },
        };
        let mut indexes = Vec::new();
        let raw_indexes = if rp.index.is_empty() {
            vec![RawIndex {
                name: "pypi".into(),
                url: "https://pypi.org/simple/".into(),
                file_hosts: Some(vec!["files.pythonhosted.org".into()]),
                username: None,
                password_env: None,
                ca_file: None,
                upload_time: None,
                auth: None,
                client_id: None,
            }]
        } else {
            rp.index
        };
        for ri in raw_indexes {
            let at = line_of(&format!("name = \"{}\"", ri.name));
            let bad = |m: String| invalid(at, format!("[[pypi.index]] {:?}: {m}", ri.name));
            if ri.name.is_empty()
                || !ri
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad("name must be letters, digits, '-' or '_'".into()));
            }
            if indexes.iter().any(|i: &IndexConfig| i.name == ri.name) {
                return Err(bad("a second index with this name".into()));
            }
            let mut url_text = ri.url.clone();
            if !url_text.ends_with('/') {
                url_text.push('/');
            }
            let url = Url::parse(&url_text).map_err(|e| bad(format!("url: {e}")))?;
            let host = url.host_str().unwrap_or_default().to_string();
            match url.scheme() {
                "https" => {}
                "http" if is_loopback_host(&host) => {}
                _ => {
                    return Err(bad(
                        "url must be https (http only for a loopback upstream)".into()
                    ))
                }
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(bad(
                    "put credentials in username/password_env, not in the url".into(),
                ));
            }
            let password = match &ri.password_env {
                None => None,
                Some(var) => Some(Secret::new(std::env::var(var).map_err(|_| {
                    bad(format!(
                        "password_env: environment variable {var} is not set"
                    ))
                })?)),
            };
            if password.is_some() != ri.username.is_some() {
                return Err(bad("username and password_env go together".into()));
            }
            let managed_identity =
                upstream_auth(ri.auth.as_deref(), ri.client_id, password.is_some()).map_err(bad)?;
            // By default the index's own host and port: a file link to another port of the
            // same host is another service.
            let file_hosts = match ri.file_hosts {
                Some(list) => host_ports(list, "file_hosts").map_err(bad)?,
                None => vec![HostPort::of_url(&url)],
            };
            if file_hosts.is_empty() {
                return Err(bad("file_hosts is empty; no file could be fetched".into()));
            }
            // Upload times are PyPI's own (set by Warehouse at upload, never by the uploader);
            // any other index's are taken from its first sight unless the operator says so.
            let trust_upload_time = match ri.upload_time.as_deref() {
                Some("trust") => true,
                Some("first_seen") => false,
                None => url.as_str() == "https://pypi.org/simple/",
                Some(other) => {
                    return Err(bad(format!(
                        "upload_time must be \"trust\" or \"first_seen\", not {other:?}"
                    )))
                }
            };
            indexes.push(IndexConfig {
                trust_upload_time,
                name: ri.name,
                url,
                file_hosts,
                username: ri.username,
                password,
                managed_identity,
                ca_file: ri.ca_file.as_deref().map(resolve),
            });
        }

        let ro = raw.oci.unwrap_or_default();
        let ra = raw.admin.unwrap_or_default();
        let admin_listen =
            match &ra.listen {
                None => None,
                Some(l) => Some(l.parse::<SocketAddr>().map_err(|e| {
                    invalid(line_of("listen"), format!("[admin] listen {l:?}: {e}"))
                })?),
            };
        let oidc = match ra.oidc {
            None => None,
            Some(o) => {
                let at = line_of("[admin.oidc]");
                if o.issuer.trim().is_empty() || o.audience.trim().is_empty() {
                    return Err(invalid(
                        at,
                        "[admin.oidc] issuer and audience must not be empty".into(),
                    ));
                }
                let jwks = if o.jwks.starts_with("https://") || o.jwks.starts_with("http://") {
                    let url = Url::parse(&o.jwks)
                        .map_err(|e| invalid(at, format!("[admin.oidc] jwks: {e}")))?;
                    let host = url.host_str().unwrap_or_default().to_string();
                    if url.scheme() != "https" && !is_loopback_host(&host) {
                        return Err(invalid(
                            at,
                            "[admin.oidc] jwks must be https (http only for loopback) or a file"
                                .into(),
                        ));
                    }
                    JwksSource::Url(url)
                } else {
                    JwksSource::File(resolve(&o.jwks))
                };
                Some(OidcConfig {
                    issuer: o.issuer,
                    audience: o.audience,
                    jwks,
                    role_claim: o.role_claim.unwrap_or_else(|| "roles".into()),
                })
            }
        };
        let tag_ttl = match ro.tag_ttl {
            None => Duration::from_secs(60),
            Some(s) => parse_duration(&s)
                .map_err(|e| invalid(line_of("tag_ttl"), format!("tag_ttl: {e}")))?,
        };
        let default_registry = crate::policy::oci::normalize_host(
            ro.default_registry.as_deref().unwrap_or("docker.io"),
        )
        .map_err(|e| {
            invalid(
                line_of("default_registry"),
                format!("default_registry: {e}"),
            )
        })?;
        let mut registries: Vec<RegistryConfig> = Vec::new();
        for rr in ro.registry {
            let at = line_of(&format!("host = \"{}\"", rr.host));
            let bad = |m: String| invalid(at, format!("[[oci.registry]] {:?}: {m}", rr.host));
            let host =
                crate::policy::oci::normalize_host(&rr.host).map_err(|e| bad(e.to_string()))?;
            // The default prefix is the host without its port (`localhost:5000` → `localhost`):
            // a client's first path segment cannot carry one.
            let prefix = rr
                .prefix
                .clone()
                .unwrap_or_else(|| match host.rsplit_once(':') {
                    Some((h, port))
                        if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        h.to_string()
                    }
                    _ => host.clone(),
                });
            if prefix.is_empty() || prefix.contains(['/', ':']) || prefix == "v2" {
                return Err(bad(
                    "prefix must be one path segment without a port (set prefix for this host)"
                        .into(),
                ));
            }
            if registries
                .iter()
                .any(|r| r.host == host || r.prefix == prefix)
            {
                return Err(bad("a second registry with this host or prefix".into()));
            }
            let url =
                Url::parse(rr.url.trim_end_matches('/')).map_err(|e| bad(format!("url: {e}")))?;
            let url_host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            match url.scheme() {
                "https" => {}
                "http" if is_loopback_host(&url_host) => {}
                _ => {
                    return Err(bad(
                        "url must be https (http only for a loopback registry)".into()
                    ))
                }
            }
            if !url.username().is_empty() || url.password().is_some() || url.path() != "/" {
                return Err(bad(
                    "url is the registry's origin only (no path, no credentials)".into(),
                ));
            }
            let password = match &rr.password_env {
                None => None,
                Some(var) => Some(Secret::new(std::env::var(var).map_err(|_| {
                    bad(format!(
                        "password_env: environment variable {var} is not set"
                    ))
                })?)),
            };
            if password.is_some() != rr.username.is_some() {
                return Err(bad("username and password_env go together".into()));
            }
            let managed_identity =
                upstream_auth(rr.auth.as_deref(), rr.client_id, password.is_some()).map_err(bad)?;
            registries.push(RegistryConfig {
                host,
                prefix,
                // By default the registry's own host and port.
                auth_hosts: match rr.auth_hosts {
                    Some(list) => host_ports(list, "auth_hosts").map_err(bad)?,
                    None => vec![HostPort::of_url(&url)],
                },
                redirect_hosts: host_ports(rr.redirect_hosts.unwrap_or_default(), "redirect_hosts")
                    .map_err(bad)?,
                url,
                username: rr.username,
                password,
                managed_identity,
                ca_file: rr.ca_file.as_deref().map(resolve),
            });
        }
        if ro.default_registry.is_some() && !registries.iter().any(|r| r.host == default_registry) {
            return Err(invalid(line_of("default_registry"), format!("default_registry {default_registry:?} is not a configured [[oci.registry]] host")));
        }
        // `[oci] trusted_root` is the old name of the top-level key; one file, named once.
        let trusted_root = match (&raw.trusted_root, &ro.trusted_root) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    line_of("trusted_root"),
                    "trusted_root is set twice: keep the top-level one ([oci] trusted_root is its old name)".into(),
                ))
            }
            (Some(p), None) | (None, Some(p)) => Some(resolve(p)),
            (None, None) => None,
        };
        let oci = OciConfig {
            tag_ttl,
            default_registry,
            require_auth: ro.require_auth.unwrap_or(false),
            registries,
        };

        Ok(Config {
            source: path.map(Path::to_path_buf),
            listen,
            data_dir,
            store,
            cache,
            vulnerabilities,
            allowlist_dir: resolve(raw.allowlist_dir.as_deref().unwrap_or("allowlists")),
            public_url,
            cache_max_bytes,
            cache_scrub_rate,
            limits,
            tls,
            admission,
            audit,
            trusted_root,
            admin: AdminConfig {
                listen: admin_listen,
                oidc,
            },
            pypi: PypiConfig {
                wheels_only: rp.wheels_only.unwrap_or(false),
                page_ttl,
                upstream_timeout,
                indexes,
                max_files_per_page: count("max_files_per_page", rp.max_files_per_page, 40_000)?,
                max_pins_per_project: count(
                    "max_pins_per_project",
                    rp.max_pins_per_project,
                    10_000,
                )?,
                prune_pins_after: duration(
                    "prune_pins_after",
                    rp.prune_pins_after.as_ref(),
                    90 * 86_400,
                )?,
                max_hash_bytes: size("max_hash_bytes", rp.max_hash_bytes.as_ref(), 8 << 30)?,
                hash_timeout: duration("hash_timeout", rp.hash_timeout.as_ref(), 1800)?,
            },
            oci,
        })
    }

    pub fn registry_hosts(&self) -> Vec<String> {
        self.oci.registries.iter().map(|r| r.host.clone()).collect()
    }

    pub fn index_names(&self) -> Vec<String> {
        self.pypi.indexes.iter().map(|i| i.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_text(
            text,
            Some(Path::new("/etc/tg/tollgate.toml")),
            Path::new("/etc/tg"),
        )
    }

    #[test]
    fn store_and_cache_sections() {
        // The embedded default: no store server, the cache in data_dir.
        let c = parse("").unwrap();
        assert!(c.store.is_none());
        assert_eq!(c.cache, CacheUrl::Local(PathBuf::from("/etc/tg/data")));
        let c = parse("[store]\nurl = \"postgresql://tg%40corp@db.internal:6432/gate?sslmode=verify-full&application_name=x\"\npassword_file = \"pw\"\nca_file = \"ca.pem\"\n[cache]\nurl = \"az://cache/gate\"\n").unwrap();
        let pg = c.store.unwrap();
        assert!(pg.tls);
        assert_eq!(
            (
                pg.host.as_str(),
                pg.port,
                pg.user.as_deref(),
                pg.dbname.as_deref()
            ),
            ("db.internal", 6432, Some("tg@corp"), Some("gate"))
        );
        assert_eq!(pg.application_name.as_deref(), Some("x"));
        assert_eq!(pg.shown, "db.internal:6432/gate");
        let v6 = parse("[store]\nurl = \"postgres://tg@[::1]/gate?sslmode=disable\"\n").unwrap();
        assert_eq!(v6.store.unwrap().host, "::1");
        assert!(matches!(pg.password, Some(Password::File(ref p)) if p == Path::new("/etc/tg/pw")));
        assert_eq!(pg.ca_file.as_deref(), Some(Path::new("/etc/tg/ca.pem")));
        assert_eq!(c.cache, CacheUrl::Remote("az://cache/gate".into()));
        assert_eq!(
            parse("[cache]\nurl = \"/srv/cache\"\n").unwrap().cache,
            CacheUrl::Local(PathBuf::from("/srv/cache"))
        );
        // Plain TCP to a loopback server only.
        let c = parse("[store]\nurl = \"postgres://tg@127.0.0.1/gate?sslmode=disable\"\n").unwrap();
        assert!(!c.store.unwrap().tls);
        for (text, why) in [
            ("[store]\nurl = \"postgres://tg@db.internal/gate?sslmode=disable\"\n", "only for a server on this host"),
            ("[store]\nurl = \"postgres://tg@db.internal/gate?sslmode=prefer\"\n", "sslmode=prefer"),
            ("[store]\nurl = \"postgres://tg:hunter2@db.internal/gate\"\n", "password_env or password_file"),
            ("[store]\nurl = \"mysql://db.internal/gate\"\n", "postgres://"),
            ("[store]\npassword_file = \"pw\"\n", "needs url"),
            ("[store]\nurl = \"postgres://tg@db/gate?sslrootcert=x\"\n", "ca_file"),
            ("[store]\nurl = \"postgres://tg@127.0.0.1/gate?sslmode=disable&hostaddr=192.0.2.2\"\n", "\"hostaddr\" is not accepted"),
            ("[store]\nurl = \"postgres://tg@127.0.0.1/gate?sslmode=disable&host=192.0.2.2\"\n", "\"host\" is not accepted"),
            ("[store]\nurl = \"postgres://tg@db/gate?port=1\"\n", "\"port\" is not accepted"),
            ("[store]\nurl = \"postgres://tg@db/gate?password=hunter2\"\n", "password_env or password_file"),
            ("[store]\nurl = \"postgres://tg@127.0.0.1,192.0.2.2/gate?sslmode=disable\"\n", "more than one host"),
            // Another parser would take everything up to the last `@` as credentials.
            ("[store]\nurl = \"postgres://127.0.0.1:5432/db@192.0.2.2:5432/x?sslmode=disable\"\n", "one database name"),
            ("[store]\nurl = \"postgres://127.0.0.1:5432/db?sslmode=disable#@192.0.2.2:5432/f\"\n", "fragment"),
            ("[store]\nurl = \"postgres://tg@db/gate?keepalives=0\"\n", "\"keepalives\" is not accepted"),
            ("[store]\nurl = \"postgres://tg@db/gate\"\npassword_env = \"TOLLGATE_TEST_UNSET_VAR\"\n", "is not set"),
            ("[store]\nurl = \"postgres://tg@db/gate\"\npassword_env = \"A\"\npassword_file = \"b\"\n", "not both"),
            ("[store]\nurl = \"postgres://tg@db/gate\"\n[audit]\nretention = \"400d\"\n", "retention is not available"),
            ("[cache]\nurl = \"gs://bucket/x\"\n", "not supported"),
            ("[cache]\nurl = \"az:///x\"\n", "names no container"),
            ("[cache]\nurl = \"s3://bucket/x?key=1\"\n", "credentials come from the environment"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn hosts_and_ports_compare_as_origins() {
        let u = |s: &str| Url::parse(s).unwrap();
        let plain = HostPort::parse("Files.Example").unwrap();
        assert!(plain.matches(&u("https://files.example/a")));
        assert!(plain.matches(&u("https://files.example:443/a")));
        assert!(plain.matches(&u("http://files.example/a")));
        assert!(!plain.matches(&u("https://files.example:8443/a")));
        assert!(!plain.matches(&u("https://files.example.evil/a")));
        let port = HostPort::parse("127.0.0.1:9000").unwrap();
        assert!(port.matches(&u("http://127.0.0.1:9000/x")));
        assert!(!port.matches(&u("http://127.0.0.1:9001/x")));
        assert!(!port.matches(&u("http://127.0.0.1/x")));
        let v6 = HostPort::parse("[::1]:8080").unwrap();
        assert!(v6.matches(&u("http://[::1]:8080/x")));
        for bad in ["", "a/b", "user@host", "host:port", "host?x=1"] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse("data_dir = \"d\"\n[pypi]\npage_ttl = \"1m\"\n[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:9000/simple\"\n").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/tg/d"));
        assert_eq!(c.allowlist_dir, PathBuf::from("/etc/tg/allowlists"));
        assert_eq!(
            c.pypi.indexes[0].url.as_str(),
            "http://127.0.0.1:9000/simple/"
        );
        // The default file host is the index's own host and port.
        let hosts: Vec<String> = c.pypi.indexes[0]
            .file_hosts
            .iter()
            .map(|h| h.to_string())
            .collect();
        assert_eq!(hosts, vec!["127.0.0.1:9000"]);
        assert_eq!(c.pypi.page_ttl, Duration::from_secs(60));
        assert_eq!(c.limits.page_bytes, 4 << 20);
        let d = Config::from_text("", None, Path::new(".")).unwrap();
        assert_eq!(d.pypi.indexes[0].url.as_str(), "https://pypi.org/simple/");
    }

    #[test]
    fn refuses_bad_config_with_line() {
        let e = parse("listen = \"127.0.0.1:8080\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/tg/tollgate.toml:2:"), "{e}");
        let c = parse("[admin]\nlisten = \"127.0.0.1:1\"\n[admin.oidc]\nissuer = \"https://i\"\naudience = \"a\"\njwks = \"keys.json\"\n[oci]\nrequire_auth = true\n").unwrap();
        assert!(c.oci.require_auth);
        assert_eq!(c.admin.listen, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(
            c.admin.oidc.as_ref().map(|o| o.role_claim.as_str()),
            Some("roles")
        );
        assert!(parse("[admin]\nlisten = \"nowhere\"\n").is_err());
        assert!(parse("[admin.oidc]\nissuer = \"https://i\"\naudience = \"a\"\njwks = \"http://evil.example/keys\"\n").is_err());
        assert!(parse("[admin]\nbogus = 1\n").is_err());
        assert!(
            parse("[[oci.registry]]\nhost = \"nvcr.io\"\nurl = \"http://nvcr.io\"\n")
                .unwrap_err()
                .to_string()
                .contains("https")
        );
        assert!(parse(
            "[[oci.registry]]\nhost = \"nvcr.io\"\nprefix = \"a/b\"\nurl = \"https://nvcr.io\"\n"
        )
        .is_err());
        // auth = "managed-identity": no stored secret beside it, client_id only with it.
        let mi = parse("[[pypi.index]]\nname = \"feed\"\nurl = \"https://pkgs.dev.azure.com/o/_packaging/f/pypi/simple/\"\nauth = \"managed-identity\"\nclient_id = \"abc\"\n").unwrap();
        assert_eq!(
            mi.pypi.indexes[0].managed_identity,
            Some(ManagedIdentity {
                client_id: Some("abc".into())
            })
        );
        for bad in [
            "auth = \"managed-identity\"\nusername = \"u\"\npassword_env = \"PATH\"\n",
            "client_id = \"abc\"\n",
            "auth = \"token\"\n",
        ] {
            let text = format!(
                "[[oci.registry]]\nhost = \"a.azurecr.io\"\nurl = \"https://a.azurecr.io\"\n{bad}"
            );
            assert!(parse(&text).is_err(), "{bad}");
        }
        // The README's case: a host with a port and no prefix takes the host without its port.
        let c =
            parse("[[oci.registry]]\nhost = \"localhost:5000\"\nurl = \"http://127.0.0.1:5000\"\n")
                .unwrap();
        assert_eq!(c.oci.registries[0].prefix, "localhost");
        assert_eq!(c.oci.registries[0].host, "localhost:5000");
        let c = parse("[oci]\ntag_ttl = \"5s\"\n[[oci.registry]]\nhost = \"index.docker.io\"\nprefix = \"hub\"\nurl = \"https://registry-1.docker.io\"\n").unwrap();
        assert_eq!(
            (
                c.oci.registries[0].host.as_str(),
                c.oci.registries[0].prefix.as_str()
            ),
            ("docker.io", "hub")
        );
        let auth: Vec<String> = c.oci.registries[0]
            .auth_hosts
            .iter()
            .map(|h| h.to_string())
            .collect();
        assert_eq!(auth, vec!["registry-1.docker.io"]);
        assert!(
            parse("[[pypi.index]]\nname = \"x\"\nurl = \"http://pypi.example/simple/\"\n")
                .unwrap_err()
                .to_string()
                .contains("https")
        );
        assert!(parse(
            "[[pypi.index]]\nname = \"x\"\nurl = \"https://u:p@pypi.example/simple/\"\n"
        )
        .is_err());
        assert!(parse("[[pypi.index]]\nname = \"x\"\nurl = \"https://a/\"\n[[pypi.index]]\nname = \"x\"\nurl = \"https://b/\"\n").is_err());
        assert!(parse("[[pypi.index]]\nname = \"x\"\nurl = \"https://a/\"\nusername = \"u\"\npassword_env = \"TOLLGATE_TEST_UNSET_VAR\"\n").unwrap_err().to_string().contains("not set"));
        assert!(parse("cache_max_bytes = \"lots\"\n")
            .unwrap_err()
            .to_string()
            .contains("cache_max_bytes"));
    }

    #[test]
    fn vulnerabilities_section() {
        let c = parse("[vulnerabilities]\ndatabase = \"osv/PyPI\"\n").unwrap();
        let v = c.vulnerabilities.unwrap();
        assert_eq!(v.database, Path::new("/etc/tg/osv/PyPI"));
        assert_eq!(v.block, crate::policy::osv::Level::High);
        assert_eq!(v.max_age, Duration::from_secs(3 * 86_400));
        for (text, why) in [
            ("block = \"high\"", "database is required"),
            (
                "database = \"d\"\nblock = \"severe\"",
                "block must be low, medium, high or critical",
            ),
            (
                "database = \"d\"\nmax_age = \"0s\"",
                "max_age must be more than 0s",
            ),
            ("database = \"d\"\nmirror = true", "unknown field"),
        ] {
            let e = parse(&format!("[vulnerabilities]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            format!("{:?}", Secret::new("hunter2".into())),
            "Secret(***)"
        );
    }
}
