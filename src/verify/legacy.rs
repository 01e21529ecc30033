//! cosign's legacy attachments rewritten as Sigstore bundles, so that one verifier
//! (sigstore-verify) checks them exactly as it checks bundles. A legacy `.sig` or `.att` layer
//! carries what a v0.1 bundle carries, spread over annotations (sigstore/cosign
//! `pkg/cosign/bundle`, `pkg/oci/static`):
//!
//! - `dev.sigstore.cosign/certificate` and `dev.sigstore.cosign/chain`: the Fulcio certificate
//!   and its issuers (PEM), becoming `verificationMaterial.x509CertificateChain`;
//! - `dev.sigstore.cosign/bundle`: the Rekor entry with its signed entry timestamp,
//!   `{"SignedEntryTimestamp", "Payload": {"body", "integratedTime", "logIndex", "logID"}}`,
//!   becoming one `tlogEntries` item with an `inclusionPromise` (protobuf-specs
//!   `TransparencyLogEntry`; a v0.1 bundle needs the promise, not an inclusion proof);
//! - the signature (annotation `dev.cosignproject.cosign/signature` over the layer's bytes, or
//!   the DSSE envelope that is the layer), becoming `messageSignature` or `dsseEnvelope`.

use super::VerifyError;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sigstore_verify::types::Bundle;
use x509_cert::der::{Decode, Encode};

use super::cosign::{BUNDLE_ANNOTATION, CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION};
use super::keys::Hash;

const BUNDLE_V01: &str = "application/vnd.dev.sigstore.bundle+json;version=0.1";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What a legacy layer signs.
#[derive(Clone, Copy)]
pub enum Content<'a> {
    /// A simple-signing payload and the signature over it.
    Message { payload: &'a [u8], sig: &'a [u8] },
    /// A DSSE envelope (the `.att` layer's JSON, as written).
    Dsse(&'a Value),
}

/// The Rekor entry of cosign's bundle annotation, as a bundle's `TransparencyLogEntry`.
fn tlog_entry(annotation: &str) -> Result<Value, String> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "SignedEntryTimestamp")]
        set: String,
        #[serde(rename = "Payload")]
        payload: RawPayload,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct RawPayload {
        body: String,
        integrated_time: i64,
        log_index: i64,
        #[serde(rename = "logID")]
        log_id: String,
    }
    let raw: Raw = serde_json::from_str(annotation)
        .map_err(|e| format!("the Rekor entry annotation cannot be read: {e}"))?;
    let p = raw.payload;
    let body = base64::engine::general_purpose::STANDARD
        .decode(p.body.trim())
        .map_err(|_| "the Rekor entry's body is not base64".to_string())?;
    // The bundle names the entry's kind and version; they are the body's own (Rekor's
    // `apiVersion` and `kind`), which sigstore-verify then checks the body against.
    let head: Value = serde_json::from_slice(&body)
        .map_err(|_| "the Rekor entry's body is not JSON".to_string())?;
    let (Some(kind), Some(version)) = (
        head.get("kind").and_then(Value::as_str),
        head.get("apiVersion").and_then(Value::as_str),
    ) else {
        return Err("the Rekor entry's body names no kind and apiVersion".into());
    };
    let log_id =
        hex::decode(&p.log_id).map_err(|_| "the Rekor entry's logID is not hex".to_string())?;
    Ok(json!({
        "logIndex": p.log_index.to_string(),
        "logId": {"keyId": b64(&log_id)},
        "kindVersion": {"kind": kind, "version": version},
        "integratedTime": p.integrated_time.to_string(),
        "inclusionPromise": {"signedEntryTimestamp": raw.set.trim()},
        "canonicalizedBody": p.body.trim(),
    }))
}

/// The certificate annotation and its chain, leaf first, as DER. Self-issued certificates
/// (cosign appends the Fulcio root to the chain) are left out: a trust anchor comes from the
/// trusted root, never from the signature.
fn certificates(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Option<Vec<Vec<u8>>>, String> {
    let Some(leaf) = annotations.get(CERTIFICATE_ANNOTATION) else {
        return Ok(None);
    };
    let parse = |pem: &str, what: &str| {
        x509_cert::Certificate::load_pem_chain(pem.as_bytes())
            .map_err(|_| format!("the {what} annotation is not a PEM certificate"))
    };
    let leaf = parse(leaf, "certificate")?;
    let [leaf] = leaf.as_slice() else {
        return Err("the certificate annotation holds more than one certificate".into());
    };
    let mut out = vec![leaf
        .to_der()
        .map_err(|_| "the certificate cannot be encoded".to_string())?];
    if let Some(chain) = annotations
        .get(CHAIN_ANNOTATION)
        .filter(|c| !c.trim().is_empty())
    {
        for c in parse(chain, "chain")? {
            if c.tbs_certificate.subject == c.tbs_certificate.issuer {
                continue;
            }
            out.push(
                c.to_der()
                    .map_err(|_| "a chain certificate cannot be encoded".to_string())?,
            );
        }
    }
    Ok(Some(out))
}

/// Does the layer carry a certificate (keyless material)?
pub fn has_certificate(annotations: &std::collections::BTreeMap<String, String>) -> bool {
    annotations.contains_key(CERTIFICATE_ANNOTATION)
}

/// Does the layer carry a Rekor entry?
pub fn has_log_entry(annotations: &std::collections::BTreeMap<String, String>) -> bool {
    annotations.contains_key(BUNDLE_ANNOTATION)
}

/// Which verification material the bundle carries.
pub enum Material {
    /// The certificate and chain annotations (keyless).
    Certificate,
    /// A public key the caller holds, and the digest its signature was made over.
    Key(Hash),
}

/// The v0.1 bundle equivalent to a legacy layer, for keyless verification or for checking its
/// log entry with a key the rule lists.
pub fn bundle(
    content: Content<'_>,
    annotations: &std::collections::BTreeMap<String, String>,
    material: Material,
) -> Result<Bundle, VerifyError> {
    (|| -> Result<Bundle, String> {
        let (mut material, hash) = match material {
            Material::Certificate => {
                let Some(chain) = certificates(annotations)? else {
                    return Err("the signature carries no certificate".into());
                };
                if !annotations.contains_key(BUNDLE_ANNOTATION) {
                    // cosign refuses these too (unless told to ignore the log): nothing dates the
                    // ten-minute certificate, so any signature made with its key would pass.
                    return Err("certificate-signed, but without a transparency-log entry".into());
                }
                (
                    json!({"x509CertificateChain": {"certificates":
                        chain.iter().map(|d| json!({"rawBytes": b64(d)})).collect::<Vec<_>>()}}),
                    Hash::Sha256,
                )
            }
            Material::Key(hash) => (json!({"publicKey": {"hint": ""}}), hash),
        };
        let entries = match annotations.get(BUNDLE_ANNOTATION) {
            Some(a) => vec![tlog_entry(a)?],
            None => Vec::new(),
        };
        material["tlogEntries"] = Value::Array(entries);
        let mut bundle = json!({"mediaType": BUNDLE_V01, "verificationMaterial": material});
        match content {
            Content::Message { payload, sig } => {
                use sha2::Digest as _;
                // The digest the signature was made over, so the library checks the same pairing
                // (cosign: SHA-256 whatever the key; Sigstore's P-384: SHA-384).
                let (algorithm, digest) = match hash {
                    Hash::Sha256 => ("SHA2_256", sha2::Sha256::digest(payload).to_vec()),
                    Hash::Sha384 => ("SHA2_384", sha2::Sha384::digest(payload).to_vec()),
                };
                bundle["messageSignature"] = json!({
                    "messageDigest": {"algorithm": algorithm, "digest": b64(&digest)},
                    "signature": b64(sig),
                });
            }
            Content::Dsse(env) => bundle["dsseEnvelope"] = env.clone(),
        }
        Bundle::from_json(&bundle.to_string()).map_err(|e| format!("the signature's material: {e}"))
    })()
    .map_err(VerifyError::Artifact)
}

/// A DER certificate's e-mail and URI subject alternative names: Fulcio certifies exactly one
/// (the OIDC subject). sigstore-verify reads the first; a certificate naming several is
/// refused, so one certificate can never stand for two identities.
pub fn identity_count(der: &[u8]) -> usize {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return 0;
    };
    match cert.tbs_certificate.get::<SubjectAltName>() {
        Ok(Some((_, san))) => san
            .0
            .iter()
            .filter(|n| {
                matches!(
                    n,
                    GeneralName::Rfc822Name(_) | GeneralName::UniformResourceIdentifier(_)
                )
            })
            .count(),
        _ => 0,
    }
}
