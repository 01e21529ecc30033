//! cosign "legacy" signatures: the `sha256-<hex>.sig` artifact whose layers each carry a
//! simple-signing payload (the layer's bytes) and its signature in the layer's annotations
//! (cosign's `dev.cosignproject.cosign/signature`, base64).
//!
//! Pure: the caller fetches the artifact and hands over its layers, the image digest and the
//! trusted keys. Every check that sigstore-rs leaves to its caller is made here: the payload's
//! digest must be the image's, the signed `docker-reference` must name the repository (or the
//! rule's `signed_identity`), a signature counts once per distinct trusted key, and no key or no
//! signature never passes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine;
use serde::Deserialize;

use super::keys::PublicKey;
use crate::policy::oci::{reference_repository, Digest, Repository};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIGNATURE_TYPE: &str = "cosign container image signature";

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
    pub fn from_sigstore_json(bytes: &[u8]) -> Result<SignatureLayer, String> {
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
        let raw: Raw = serde_json::from_slice(json).map_err(|e| format!("attachment JSON: {e}"))?;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(raw.payload)
            .map_err(|_| "payload is not base64")?;
        Ok(SignatureLayer {
            media_type: raw.mime_type,
            payload,
            annotations: raw.annotations,
        })
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
    pub fn from_pem(name: &str, pem: &str) -> Result<TrustedKey, String> {
        let key = PublicKey::from_pem(pem)?;
        let fingerprint = PublicKey::fingerprint(pem).ok_or("the PEM body is not base64")?;
        Ok(TrustedKey {
            name: name.to_string(),
            key,
            fingerprint,
        })
    }
}

/// Why signatures did not admit an image. Each renders to one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureDeny {
    Unsigned,
    Untrusted { found: usize },
    OtherRepository { signed: String, wanted: String },
    OtherDigest { signed: String },
    Threshold { signers: Vec<String>, need: usize },
}

impl SignatureDeny {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureDeny::Unsigned => "unsigned",
            SignatureDeny::Untrusted { .. } => "untrusted_signer",
            SignatureDeny::OtherRepository { .. } => "signature_other_repository",
            SignatureDeny::OtherDigest { .. } => "signature_other_digest",
            SignatureDeny::Threshold { .. } => "signature_threshold",
        }
    }
}

impl fmt::Display for SignatureDeny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureDeny::Unsigned => write!(f, "unsigned"),
            SignatureDeny::Untrusted { found } => write!(
                f,
                "signed, but by no trusted signer (found: {found} signature(s))"
            ),
            SignatureDeny::OtherRepository { signed, wanted } => write!(
                f,
                "signature names another repository ({signed}, not {wanted})"
            ),
            SignatureDeny::OtherDigest { signed } => {
                write!(f, "signature is for another image ({signed})")
            }
            SignatureDeny::Threshold { signers, need } => write!(
                f,
                "signed by {} trusted signer(s) ({}), {need} required",
                signers.len(),
                signers.join(", ")
            ),
        }
    }
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Verifies legacy cosign signatures of the image `digest` in `repo`. Returns the names of the
/// distinct trusted keys that signed it, when at least `threshold` (never less than one) did.
pub fn verify_legacy(
    layers: &[SignatureLayer],
    digest: &Digest,
    repo: &Repository,
    signed_identity: Option<&Repository>,
    keys: &[&TrustedKey],
    threshold: usize,
) -> Result<Vec<String>, SignatureDeny> {
    let wanted = signed_identity.unwrap_or(repo);
    let signatures: Vec<(&SignatureLayer, Vec<u8>)> = layers
        .iter()
        // Another media type is another attachment, not a signature.
        .filter(|l| l.media_type == SIMPLE_SIGNING)
        .filter_map(|l| {
            let sig = l.annotations.get(SIGNATURE_ANNOTATION)?;
            let sig = base64::engine::general_purpose::STANDARD
                .decode(sig.trim())
                .ok()?;
            Some((l, sig))
        })
        .collect();
    if signatures.is_empty() {
        return Err(SignatureDeny::Unsigned);
    }
    let mut signers = BTreeSet::new();
    let mut fingerprints = BTreeSet::new();
    let mut specific: Option<SignatureDeny> = None;
    for (layer, sig) in &signatures {
        for k in keys {
            if !k.key.verifies(&layer.payload, sig) {
                continue;
            }
            // Authentic; now it must be about this image, in this repository.
            let Ok(p) = serde_json::from_slice::<Payload>(&layer.payload) else {
                continue;
            };
            if p.critical.kind != SIGNATURE_TYPE {
                continue;
            }
            if Digest::parse(&p.critical.image.docker_manifest_digest)
                .ok()
                .as_ref()
                != Some(digest)
            {
                specific.get_or_insert(SignatureDeny::OtherDigest {
                    signed: p.critical.image.docker_manifest_digest.clone(),
                });
                continue;
            }
            match reference_repository(&p.critical.identity.docker_reference) {
                Ok(r) if &r == wanted => {
                    if fingerprints.insert(k.fingerprint) {
                        signers.insert(k.name.clone());
                    }
                }
                _ => {
                    specific.get_or_insert(SignatureDeny::OtherRepository {
                        signed: p.critical.identity.docker_reference.clone(),
                        wanted: wanted.to_string(),
                    });
                }
            }
        }
    }
    let need = threshold.max(1);
    if !signers.is_empty() && signers.len() >= need {
        return Ok(signers.into_iter().collect());
    }
    if !signers.is_empty() {
        return Err(SignatureDeny::Threshold {
            signers: signers.into_iter().collect(),
            need,
        });
    }
    Err(specific.unwrap_or(SignatureDeny::Untrusted {
        found: signatures.len(),
    }))
}
