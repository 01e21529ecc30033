//! Signature and attestation verification (cosign legacy artifacts, Sigstore bundles), key-based
//! and keyless, fully offline: tollgate's rules on top of sigstore-verify, the Sigstore
//! project's verifier. Pure: artifacts, keys and the trusted root are handed in.

pub mod bundle;
pub mod cosign;
pub mod dsse;
pub mod keys;
pub mod legacy;
pub mod pep740;
pub mod sigstore;
pub mod trust;

use std::collections::HashMap;
use std::sync::Arc;

/// Why verification material or an artifact could not be read. (Why a signature does not
/// admit an image is a `policy::oci::SignatureDeny`.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A public key that is not one of the supported kinds, or not PEM.
    #[error("{0}")]
    Key(String),
    /// A Sigstore trusted root that cannot be read whole.
    #[error("{0}")]
    TrustRoot(String),
    /// A signature layer, DSSE statement or legacy bundle that cannot be read.
    #[error("{0}")]
    Artifact(String),
}

/// Sentences for the callers that report errors as text.
impl From<VerifyError> for String {
    fn from(e: VerifyError) -> String {
        e.to_string()
    }
}

/// The key material the image rules name, carried beside the policy (the policy names keys;
/// verification holds them): the keys read from `allowlist_dir/keys/` and the operator's
/// Sigstore trusted root.
#[derive(Debug, Clone, Default)]
pub struct Material {
    pub keys: HashMap<String, Arc<cosign::TrustedKey>>,
    pub trust_root: Option<Arc<trust::TrustRoot>>,
}
