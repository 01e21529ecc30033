//! cosign's artifacts and the reasons a signature check refuses.
//!
//! Legacy signatures are the `sha256-<hex>.sig` artifact whose layers each carry a
//! simple-signing payload (the layer's bytes) and its signature in the layer's annotations
//! (cosign's `dev.cosignproject.cosign/signature`, base64); legacy attestations are the
//! `sha256-<hex>.att` artifact whose layers are DSSE envelopes. Keyless ones add the Fulcio
//! certificate, its chain and the Rekor entry as annotations.

use super::VerifyError;
use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use super::keys::PublicKey;
use crate::policy::oci::{Digest, Repository};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
pub(crate) const SIGNATURE_TYPE: &str = "cosign container image signature";

/// One layer of a signature artifact.
#[derive(Debug, Clone)]
pub struct SignatureLayer {
    pub media_type: String,
    /// The layer's bytes: the simple-signing JSON, exactly as signed.
    pub payload: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

impl SignatureLayer {
    /// The containers/image attachment format used in `dir:` layouts and the test vectors:
    /// `0x00 "sigstore-json\n"` then `{"mimeType","payload"(base64),"annotations"}`.
    pub fn from_sigstore_json(bytes: &[u8]) -> Result<SignatureLayer, VerifyError> {
        (|| -> Result<SignatureLayer, String> {
            #[derive(Deserialize)]
            struct Raw {
                #[serde(rename = "mimeType")]
                mime_type: String,
                payload: String,
                #[serde(default)]
                annotations: BTreeMap<String, String>,
            }
            let json = bytes
                .strip_prefix(b"\x00sigstore-json\n")
                .ok_or("not a sigstore-json attachment")?;
            let raw: Raw =
                serde_json::from_slice(json).map_err(|e| format!("attachment JSON: {e}"))?;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(raw.payload)
                .map_err(|_| "payload is not base64")?;
            Ok(SignatureLayer {
                media_type: raw.mime_type,
                payload,
                annotations: raw.annotations,
            })
        })()
        .map_err(VerifyError::Artifact)
    }
}

/// A trusted key, the name it is reported under (its file name) and its fingerprint (distinct
/// keys are counted by fingerprint, so one key under two names is one signer).
#[derive(Debug)]
pub struct TrustedKey {
    pub name: String,
    pub key: PublicKey,
    pub fingerprint: [u8; 32],
}

impl TrustedKey {
    pub fn from_pem(name: &str, pem: &str) -> Result<TrustedKey, VerifyError> {
        (|| -> Result<TrustedKey, String> {
            let key = PublicKey::from_pem(pem)?;
            let fingerprint = key.fingerprint();
            Ok(TrustedKey {
                name: name.to_string(),
                key,
                fingerprint,
            })
        })()
        .map_err(VerifyError::Key)
    }
}

pub use crate::policy::oci::SignatureDeny;

#[derive(Deserialize)]
pub(crate) struct Payload {
    pub critical: Critical,
}

#[derive(Deserialize)]
pub(crate) struct Critical {
    pub identity: Identity,
    pub image: Image,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Deserialize)]
pub(crate) struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Deserialize)]
pub(crate) struct Image {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

/// Verifies legacy cosign signatures of the image `digest` in `repo` with keys only (no
/// keyless identities). Returns the names of the distinct trusted keys that signed it, when at
/// least `threshold` (never less than one) did.
pub fn verify_legacy(
    layers: &[SignatureLayer],
    digest: &Digest,
    repo: &Repository,
    signed_identity: Option<&Repository>,
    keys: &[&TrustedKey],
    threshold: usize,
) -> Result<Vec<String>, SignatureDeny> {
    use super::sigstore::{examine, judge_signature, Artifact, Trust};
    let artifacts: Vec<Artifact> = layers.iter().cloned().map(Artifact::Signature).collect();
    let examined = examine(&artifacts, &Trust { keys, root: None });
    judge_signature(
        &examined,
        digest,
        signed_identity.unwrap_or(repo),
        keys,
        &[],
        threshold,
        false,
    )
}
