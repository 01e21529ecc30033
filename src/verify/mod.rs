//! Signature and attestation verification (cosign legacy artifacts, Sigstore bundles), key-based
//! and keyless, fully offline: tollgate's rules on top of sigstore-verify, the Sigstore
//! project's verifier. Pure: artifacts, keys and the trusted root are handed in.

pub mod bundle;
pub mod cosign;
pub mod dsse;
pub mod keys;
pub mod legacy;
pub mod sigstore;
pub mod trust;

use std::collections::HashMap;
use std::sync::Arc;

/// The key material the image rules name, carried beside the policy (the policy names keys;
/// verification holds them): the keys read from `allowlist_dir/keys/` and the operator's
/// Sigstore trusted root.
#[derive(Debug, Clone, Default)]
pub struct Material {
    pub keys: HashMap<String, Arc<cosign::TrustedKey>>,
    pub trust_root: Option<Arc<trust::TrustRoot>>,
}
