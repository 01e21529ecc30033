//! `[store]` and `[cache]`: where the state every replica shares lives. Without them the gate
//! keeps everything in data_dir (the embedded store and the local cache), as one process.

use std::path::{Path, PathBuf};

use super::raw::{RawCache, RawStore};
use super::{is_loopback_host, ConfigError, Secret};

/// `[store] url = "postgres://…"`: the shared store on PostgreSQL, as the parts the gate
/// checked (the connection is built from these, never from the URL's text).
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    pub connect_timeout: Option<std::time::Duration>,
    /// Host and database, for messages (never the password).
    pub shown: String,
    /// TLS to the server, its certificate verified (and its name checked) against `ca_file`
    /// or the platform's roots; off only with `sslmode=disable` to a loopback server.
    pub tls: bool,
    pub password: Option<Password>,
    pub ca_file: Option<PathBuf>,
}

/// Where the database password comes from; never from the config file itself.
#[derive(Debug, Clone)]
pub enum Password {
    /// `password_env`: read once at start.
    Env(Secret),
    /// `password_file`: read again for every new connection (a rotated secret, or a mounted
    /// Entra ID token for Azure Database for PostgreSQL, is picked up without a restart).
    File(PathBuf),
}

/// `[cache] url`: where verified bytes are kept besides the local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUrl {
    /// A directory (the default is data_dir): files under `cache/`, temp files under `tmp/`.
    Local(PathBuf),
    /// An object store shared by the replicas (`az://container/prefix`, `s3://bucket/prefix`),
    /// with each replica's local disk in front of it.
    Remote(String),
}

pub(super) fn store_section(
    raw: Option<RawStore>,
    retention: bool,
    invalid: &dyn Fn(String) -> ConfigError,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<PostgresConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    // Retention archives the pruned entries into data_dir: with replicas, each one's archive
    // would hold a part of the chain, and no single place could verify it.
    if retention {
        return Err(invalid(
            "[audit] retention is not available with a shared [store]: the archive would be split between the replicas' disks; keep the chain whole in PostgreSQL (and its backups)".into(),
        ));
    }
    let Some(url) = raw.url else {
        return Err(invalid(
            "[store] needs url = \"postgres://user@host:5432/db\" (without it, leave [store] out for the embedded store)".into(),
        ));
    };
    let bad = |m: &str| invalid(format!("[store] url: {m}"));
    let parsed = reqwest::Url::parse(&url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(bad(
            "must start with postgres:// (PostgreSQL is the shared store)",
        ));
    }
    if parsed.password().is_some() {
        return Err(bad(
            "holds a password: the config file never does; use password_env or password_file",
        ));
    }
    // The connection is built from the parts checked here, never from the URL text: another
    // parser reading the same text differently (an `@` in the path or the fragment taken as
    // the end of the credentials) must not be able to send the gate to another server.
    if parsed.fragment().is_some() || url.contains('#') {
        return Err(bad("has a #fragment; a store URL has none"));
    }
    let host = parsed.host_str().unwrap_or_default();
    // An IPv6 literal keeps its brackets in the URL, not in the address connected to.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    if host.is_empty() {
        return Err(bad("names no host"));
    }
    if host.contains([',', '@', '/', '%']) {
        return Err(bad(
            "names more than one host, or not a host; give the one server (or its load balancer)",
        ));
    }
    let decode = |s: &str| -> Result<String, ConfigError> {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|d| d.into_owned())
            .map_err(|_| bad("not UTF-8 after percent-decoding"))
    };
    let user = match parsed.username() {
        "" => None,
        u => Some(decode(u)?),
    };
    let dbname = match parsed.path().trim_start_matches('/') {
        "" => None,
        d => Some(decode(d)?),
    };
    // A database name is one identifier (no second path segment, nothing that reads as
    // credentials or another address).
    if dbname
        .as_deref()
        .is_some_and(|d| d.is_empty() || d.contains(['/', '@', ',', '\0']))
    {
        return Err(bad("the path is one database name"));
    }
    let port = parsed.port().unwrap_or(5432);
    // libpq's sslmode, read the safe way: every mode that encrypts also verifies the server's
    // certificate and name (verify-full), because a store that can be impersonated decides
    // what the gate admits. Only a loopback server may be reached without TLS.
    let mut tls = true;
    let mut application_name = None;
    let mut connect_timeout = None;
    for (k, v) in parsed.query_pairs() {
        match (k.as_ref(), v.as_ref()) {
            ("sslmode", "disable") if is_loopback_host(&host) => tls = false,
            ("sslmode", "disable") => {
                return Err(bad(
                    "sslmode=disable is only for a server on this host; the store is reached over TLS",
                ))
            }
            ("sslmode", "require" | "verify-ca" | "verify-full") => {}
            ("sslmode", other) => {
                return Err(bad(&format!(
                    "sslmode={other}: use verify-full (TLS, certificate and name checked) or disable (loopback only)"
                )))
            }
            ("sslrootcert", _) => return Err(bad("set ca_file instead of sslrootcert")),
            ("application_name", v) => application_name = Some(v.to_string()),
            ("connect_timeout", v) => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| bad("connect_timeout is whole seconds"))?;
                connect_timeout = Some(std::time::Duration::from_secs(secs.clamp(1, 300)));
            }
            ("password", _) => {
                return Err(bad(
                    "holds a password: the config file never does; use password_env or password_file",
                ))
            }
            // Nothing that could change where the gate connects, how, or as whom: `host`,
            // `hostaddr` or `port` would reach another server than the one checked above (in
            // plain text, with sslmode=disable).
            (other, _) => {
                return Err(bad(&format!(
                    "parameter {other:?} is not accepted (the server is the URL's host and port; sslmode, application_name and connect_timeout are)"
                )))
            }
        }
    }
    let password = match (raw.password_env, raw.password_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "[store]: password_env or password_file, not both".into(),
            ))
        }
        (Some(var), None) => Some(Password::Env(Secret::new(std::env::var(&var).map_err(
            |_| {
                invalid(format!(
                    "[store] password_env: environment variable {var} is not set"
                ))
            },
        )?))),
        (None, Some(f)) => Some(Password::File(resolve(&f))),
        (None, None) => None,
    };
    Ok(Some(PostgresConfig {
        shown: format!("{host}:{port}/{}", dbname.as_deref().unwrap_or("")),
        host,
        port,
        user,
        dbname,
        application_name,
        connect_timeout,
        tls,
        password,
        ca_file: raw.ca_file.as_deref().map(resolve),
    }))
}

pub(super) fn cache_section(
    raw: Option<RawCache>,
    data_dir: &Path,
    invalid: &dyn Fn(String) -> ConfigError,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<CacheUrl, ConfigError> {
    let Some(url) = raw.and_then(|r| r.url) else {
        return Ok(CacheUrl::Local(data_dir.to_path_buf()));
    };
    match url.split_once("://") {
        Some(("az" | "s3", rest)) => {
            let bucket = rest.split('/').next().unwrap_or_default();
            if bucket.is_empty() {
                return Err(invalid(format!(
                    "[cache] url {url:?}: names no container or bucket"
                )));
            }
            if rest.contains("..") || rest.contains('?') || rest.contains('@') {
                return Err(invalid(format!(
                    "[cache] url {url:?}: a container/bucket and a prefix only (credentials come from the environment)"
                )));
            }
            Ok(CacheUrl::Remote(url))
        }
        Some((scheme, _)) => Err(invalid(format!(
            "[cache] url: {scheme}:// is not supported (az://container/prefix, s3://bucket/prefix, or a directory)"
        ))),
        None => Ok(CacheUrl::Local(resolve(&url))),
    }
}
