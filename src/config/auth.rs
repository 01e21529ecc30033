//! Upstream credentials: a secret from the environment (never shown by `Debug`), or a managed
//! identity, which stores none.

use std::fmt;

/// A secret read from the environment. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An upstream authenticated by the platform's managed identity (`auth = "managed-identity"`):
/// the system-assigned one, or the user-assigned identity `client_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedIdentity {
    pub client_id: Option<String>,
}

/// `auth` and `client_id` of an index or registry: `None` (credentials, if any, from
/// `username`/`password_env`) or a managed identity, which excludes them.
pub(super) fn upstream_auth(
    auth: Option<&str>,
    client_id: Option<String>,
    has_password: bool,
) -> Result<Option<ManagedIdentity>, String> {
    match auth {
        None | Some("basic") if client_id.is_some() => {
            Err("client_id goes with auth = \"managed-identity\"".into())
        }
        None | Some("basic") => Ok(None),
        Some("managed-identity") if has_password => Err(
            "auth = \"managed-identity\" takes no username/password_env (no stored secret)".into(),
        ),
        Some("managed-identity") => Ok(Some(ManagedIdentity {
            client_id: client_id.filter(|c| !c.trim().is_empty()),
        })),
        Some(other) => Err(format!(
            "auth must be \"managed-identity\" or \"basic\", not {other:?}"
        )),
    }
}
