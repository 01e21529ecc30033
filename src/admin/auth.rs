//! Admin credentials: bearer tokens stored only as their SHA-256 (crates.io's `HashedToken`),
//! the bootstrap credential `TOLLGATE_BOOTSTRAP_TOKEN_SHA256`, roles, and the per-client
//! throttle on failed authentications.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::store::{Store, StoreError, TOKENS};

/// Wrong credentials a client may present in one window before it gets 429 (a request with
/// no credential guesses nothing and does not count).
pub const MAX_FAILURES: u32 = 20;
pub use crate::error::THROTTLE_WINDOW_SECS;

/// Roles rise puller < reader < approver < admin (CONTRACT.md); each may do what the ones
/// below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Puller,
    Reader,
    Approver,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "puller" => Ok(Role::Puller),
            "reader" => Ok(Role::Reader),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "role {other:?} is not one of puller, reader, approver, admin"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Puller => "puller",
            Role::Reader => "reader",
            Role::Approver => "approver",
            Role::Admin => "admin",
        })
    }
}

/// A token as stored: never the secret, only its SHA-256.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub sha256: String,
    pub created: i64,
    pub expires: Option<i64>,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("sha256", &"…")
            .finish()
    }
}

/// What a token listing shows: everything but the hash.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created: i64,
    pub expires: Option<i64>,
}

impl From<&TokenRecord> for TokenInfo {
    fn from(t: &TokenRecord) -> Self {
        TokenInfo {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            created: t.created,
            expires: t.expires,
        }
    }
}

/// A secret shown once: redacted in `Debug` so it can never reach a log by accident.
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Who is acting, as the audit names them.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Compares two equal-length hex digests without an early exit.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex::encode(buf))
}

/// The expiry of a token made now for `duration` ("90d"), without overflow.
pub fn expiry(now: i64, duration: &str) -> Result<i64, String> {
    let d = crate::policy::units::parse_duration(duration).map_err(|e| e.to_string())?;
    i64::try_from(d.as_secs())
        .ok()
        .and_then(|s| now.checked_add(s))
        .ok_or_else(|| format!("{duration} is too long"))
}

/// Makes a token: 256 random bits, returned once, and the record that keeps only its hash.
/// Names are plain text; `bootstrap` and `oidc:` are reserved for the credentials they name.
pub fn mint(
    name: &str,
    role: Role,
    expires: Option<i64>,
    now: i64,
) -> Result<(TokenRecord, Secret), String> {
    let name = name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err("name must be 1 to 128 printable characters".into());
    }
    if name.eq_ignore_ascii_case("bootstrap") || name.to_ascii_lowercase().starts_with("oidc:") {
        return Err(format!("name {name:?} is reserved"));
    }
    let secret = format!("tg_{}", random_hex(32)?);
    let rec = TokenRecord {
        id: random_hex(8)?,
        name: name.to_string(),
        role,
        sha256: sha256_hex(&secret),
        created: now,
        expires,
    };
    Ok((rec, Secret(secret)))
}

/// Mints a token and stores it (the offline command; the API stores it with its audit entry).
pub fn create(
    store: &Store,
    name: &str,
    role: Role,
    expires: Option<i64>,
    now: i64,
) -> Result<(TokenRecord, Secret), CreateError> {
    let (rec, secret) = mint(name, role, expires, now).map_err(CreateError::Invalid)?;
    store
        .put(TOKENS, &rec.id, &rec)
        .map_err(CreateError::Store)?;
    Ok((rec, secret))
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(StoreError),
}

pub fn list(store: &Store) -> Result<Vec<TokenRecord>, StoreError> {
    let mut all: Vec<TokenRecord> = store.all(TOKENS)?.into_iter().map(|(_, t)| t).collect();
    all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(all)
}

/// Why a credential was not accepted (for the audit; the client only hears "invalid").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    Missing,
    Malformed,
    Unknown,
    Expired(String),
    /// A JWT that did not verify, and why.
    Invalid(String),
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Missing => write!(f, "no credential"),
            Rejected::Malformed => write!(f, "not a Bearer credential"),
            Rejected::Unknown => write!(f, "unknown token"),
            Rejected::Expired(name) => write!(f, "expired token {name}"),
            Rejected::Invalid(why) => write!(f, "{why}"),
        }
    }
}

/// Resolves an `Authorization` header to an actor.
pub fn authenticate(
    store: &Store,
    bootstrap_sha256: Option<&str>,
    header: Option<&str>,
    now: i64,
) -> Result<Result<Actor, Rejected>, StoreError> {
    let Some(h) = header else {
        return Ok(Err(Rejected::Missing));
    };
    let Some(token) = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Ok(Err(Rejected::Malformed));
    };
    let hash = sha256_hex(token);
    if let Some(b) = bootstrap_sha256 {
        if same(&hash, &b.to_ascii_lowercase()) {
            return Ok(Ok(Actor {
                name: "bootstrap".into(),
                role: Role::Admin,
            }));
        }
    }
    for t in list(store)? {
        if same(&hash, &t.sha256) {
            if t.expires.is_some_and(|e| e <= now) {
                return Ok(Err(Rejected::Expired(t.name)));
            }
            return Ok(Ok(Actor {
                name: format!("{} [token {}]", t.name, t.id),
                role: t.role,
            }));
        }
    }
    Ok(Err(Rejected::Unknown))
}

/// Failed authentications per client address, in fixed windows. With a shared store the
/// failures are counted there too, so that more replicas do not give an attacker more tries:
/// a failure on any replica counts on every one (the locked-out clients are read back every
/// second, see [`Throttle::merge`]).
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, (i64, u32)>>,
    shared: Option<std::sync::Arc<Store>>,
}

impl Throttle {
    /// A throttle that also counts in `store` when it is shared by replicas.
    pub fn new(store: &std::sync::Arc<Store>) -> Throttle {
        Throttle {
            failures: Mutex::default(),
            shared: store.shared().then(|| store.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, u32)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Is this client locked out now?
    pub fn blocked(&self, client: &str, now: i64) -> bool {
        self.lock().get(client).is_some_and(|(start, n)| {
            now - start < THROTTLE_WINDOW_SECS as i64 && *n >= MAX_FAILURES
        })
    }

    pub fn fail(&self, client: &str, now: i64) {
        let counted = self
            .shared
            .as_ref()
            .and_then(|s| s.auth_failed(client, now, THROTTLE_WINDOW_SECS as i64));
        let mut m = self.lock();
        if m.len() > 100_000 {
            // Bounded: old windows go first.
            m.retain(|_, (start, _)| now - *start < THROTTLE_WINDOW_SECS as i64);
        }
        let e = m.entry(client.to_string()).or_insert((now, 0));
        if now - e.0 >= THROTTLE_WINDOW_SECS as i64 {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1).max(counted.unwrap_or(0));
    }

    /// Takes in the clients the shared store holds locked out (by failures on any replica).
    pub fn merge(&self, locked: Vec<(String, i64, u32)>) {
        let mut m = self.lock();
        for (client, start, n) in locked {
            let e = m.entry(client).or_insert((start, 0));
            if start > e.0 {
                *e = (start, n);
            } else if start == e.0 {
                e.1 = e.1.max(n);
            }
        }
    }

    /// Reads the lockouts from the shared store (nothing on the embedded one).
    pub fn sync(&self, now: i64) {
        let Some(store) = &self.shared else { return };
        match store.auth_locked(now, THROTTLE_WINDOW_SECS as i64, MAX_FAILURES) {
            Ok(locked) => self.merge(locked),
            Err(e) => tracing::warn!(error = %e, "could not read the shared admin lockouts"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_rise() {
        assert!(Role::Puller < Role::Reader);
        assert!(Role::Reader < Role::Approver);
        assert!(Role::Approver < Role::Admin);
        assert!(Role::parse("root").is_err());
        assert_eq!(Role::parse("approver"), Ok(Role::Approver));
    }

    #[test]
    fn throttle_locks_out_after_max_failures_in_a_window() {
        let t = Throttle::default();
        for _ in 0..MAX_FAILURES {
            assert!(!t.blocked("10.0.0.1", 100));
            t.fail("10.0.0.1", 100);
        }
        assert!(t.blocked("10.0.0.1", 100));
        assert!(!t.blocked("10.0.0.2", 100));
        assert!(!t.blocked("10.0.0.1", 100 + THROTTLE_WINDOW_SECS as i64));
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret("tg_abc".into())), "Secret(…)");
        assert!(same("ab", "ab") && !same("ab", "ac") && !same("ab", "abc"));
    }
}
