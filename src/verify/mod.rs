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
