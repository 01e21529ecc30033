//! PEP 740 provenance (the packaging spec "Index hosted attestations"), verified offline.
//!
//! A provenance object holds attestation bundles; each attestation is a DSSE envelope over an
//! in-toto statement, with the Fulcio certificate and the Rekor entry that vouch for it. Each
//! attestation is rewritten as the Sigstore bundle (v0.3, DSSE) it is, and that bundle is
//! verified by sigstore-verify against the operator's one trusted root: the certificate chain
//! to a Fulcio CA at the log's integrated time, the SCT, the entry's SET, inclusion proof and
//! checkpoint, the DSSE signature, and the entry's consistency with them. What is left is
//! PEP 740's own: the statement (`_type`, exactly one subject, named as this file after
//! parsing, with this file's sha256, a known predicate type), and the certificate's claims,
//! which [`Claims`] keeps for the publisher rule (`policy::publisher`) to match.
//!
//! The `publisher` object PyPI puts beside the attestations is not authenticated and is never
//! read: only the certificate says who published.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sigstore_verify::types::Bundle;

use super::bundle::{authenticate, Input};
use super::trust::TrustRoot;
use crate::policy::filename::DistFilename;
use crate::policy::name::ProjectName;
use crate::policy::publisher::Claims;

/// The predicate types PyPI accepts on an attestation (the spec's "Attestation statement").
pub const PREDICATE_TYPES: [&str; 2] = [
    "https://docs.pypi.org/attestations/publish/v1",
    "https://slsa.dev/provenance/v1",
];
/// Fulcio's arc for certificate extensions.
const FULCIO: x509_cert::der::asn1::ObjectIdentifier =
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1");
/// Attestations read from one provenance object, at most: each costs a chain and log check.
const MAX_ATTESTATIONS: usize = 8;
/// A provenance object larger than this is not one (PyPI's are a few KiB per attestation).
pub const MAX_PROVENANCE_BYTES: usize = 1 << 20;

#[derive(Deserialize)]
struct RawProvenance {
    version: u32,
    attestation_bundles: Vec<RawBundle>,
}

#[derive(Deserialize)]
struct RawBundle {
    attestations: Vec<RawAttestation>,
}

#[derive(Deserialize)]
struct RawAttestation {
    version: u32,
    verification_material: RawMaterial,
    envelope: RawEnvelope,
}

#[derive(Deserialize)]
struct RawMaterial {
    certificate: String,
    transparency_entries: Vec<Value>,
    #[serde(default)]
    timestamps: Vec<String>,
}

#[derive(Deserialize)]
struct RawEnvelope {
    statement: String,
    signature: String,
}

#[derive(Deserialize)]
struct RawStatement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<RawSubject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
}

#[derive(Deserialize)]
struct RawSubject {
    name: String,
    digest: BTreeMap<String, String>,
}

/// What a verified provenance object proves about one file: the claims of each attestation
/// that verified (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub attestations: Vec<Claims>,
}

/// Verifies a provenance object (the Integrity API's body) for the file `filename` of
/// `project` whose bytes hash to `sha256`. `Err` says why no attestation verified.
pub fn verify_provenance(
    root: &TrustRoot,
    provenance: &[u8],
    project: &ProjectName,
    filename: &str,
    sha256: [u8; 32],
) -> Result<Verified, String> {
    if provenance.len() > MAX_PROVENANCE_BYTES {
        return Err(format!(
            "the provenance is larger than {} KiB",
            MAX_PROVENANCE_BYTES >> 10
        ));
    }
    let raw: RawProvenance = serde_json::from_slice(provenance)
        .map_err(|e| format!("not a PEP 740 provenance object: {e}"))?;
    if raw.version != 1 {
        return Err(format!("provenance version {} is not 1", raw.version));
    }
    let all: Vec<&RawAttestation> = raw
        .attestation_bundles
        .iter()
        .flat_map(|b| b.attestations.iter())
        .collect();
    if all.is_empty() {
        return Err("the provenance holds no attestation".into());
    }
    if all.len() > MAX_ATTESTATIONS {
        return Err(format!(
            "the provenance holds {} attestations (at most {MAX_ATTESTATIONS} are read)",
            all.len()
        ));
    }
    let mut verified = Vec::new();
    let mut failures = Vec::new();
    for a in all {
        match verify_attestation(root, a, project, filename, sha256) {
            Ok(c) => verified.push(c),
            Err(e) => failures.push(e),
        }
    }
    if verified.is_empty() {
        failures.dedup();
        return Err(failures.join("; "));
    }
    Ok(Verified {
        attestations: verified,
    })
}

/// One attestation in its own JSON form (a `*.publish.attestation` file), as above.
pub fn verify_attestation_json(
    root: &TrustRoot,
    attestation: &[u8],
    project: &ProjectName,
    filename: &str,
    sha256: [u8; 32],
) -> Result<Claims, String> {
    let raw: RawAttestation = serde_json::from_slice(attestation)
        .map_err(|e| format!("not a PEP 740 attestation: {e}"))?;
    verify_attestation(root, &raw, project, filename, sha256)
}

fn verify_attestation(
    root: &TrustRoot,
    a: &RawAttestation,
    project: &ProjectName,
    filename: &str,
    sha256: [u8; 32],
) -> Result<Claims, String> {
    if a.version != 1 {
        return Err(format!("attestation version {} is not 1", a.version));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let statement_bytes = b64
        .decode(&a.envelope.statement)
        .map_err(|e| format!("the statement is not base64: {e}"))?;
    // The statement first: a file it does not name is refused before any cryptography.
    let st: RawStatement = serde_json::from_slice(&statement_bytes)
        .map_err(|e| format!("not an in-toto statement: {e}"))?;
    if st.kind != "https://in-toto.io/Statement/v1" {
        return Err(format!("the statement's _type is {:?}", st.kind));
    }
    let [subject] = st.subject.as_slice() else {
        return Err(format!(
            "the statement has {} subjects, not one",
            st.subject.len()
        ));
    };
    if !same_distribution(&subject.name, filename, project) {
        return Err(format!(
            "the attestation is for {}, not {filename}",
            subject.name
        ));
    }
    if subject.digest.get("sha256").map(|h| h.to_ascii_lowercase()) != Some(hex::encode(sha256)) {
        return Err(format!(
            "the attestation's sha256 is not this file's ({} was attested)",
            subject.digest.get("sha256").map_or("none", String::as_str)
        ));
    }
    if !PREDICATE_TYPES.contains(&st.predicate_type.as_str()) {
        return Err(format!(
            "predicate type {:?} is not one PyPI attests",
            st.predicate_type
        ));
    }
    // The attestation as the Sigstore bundle it is (what pypi-attestations' `to_bundle` does):
    // the same certificate, log entry, timestamps, statement and signature.
    let bundle = json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {
            "certificate": {"rawBytes": a.verification_material.certificate},
            "tlogEntries": a.verification_material.transparency_entries,
            "timestampVerificationData": {
                "rfc3161Timestamps": a.verification_material.timestamps.iter()
                    .map(|t| json!({"signedTimestamp": t})).collect::<Vec<_>>()
            }
        },
        "dsseEnvelope": {
            "payload": a.envelope.statement,
            "payloadType": super::dsse::IN_TOTO,
            "signatures": [{"sig": a.envelope.signature, "keyid": ""}]
        }
    });
    let bundle = Bundle::from_json(&bundle.to_string())
        .map_err(|e| format!("the attestation's material: {e}"))?;
    if a.verification_material.transparency_entries.len() != 1 {
        return Err(format!(
            "the attestation carries {} log entries, not one",
            a.verification_material.transparency_entries.len()
        ));
    }
    let (identity, issuer) = authenticate(root, &bundle, Input::Sha256(sha256), None)?
        .ok_or("the attestation is not keyless")?;
    let der = b64
        .decode(&a.verification_material.certificate)
        .map_err(|e| format!("the certificate is not base64: {e}"))?;
    Ok(Claims {
        identity,
        issuer,
        extensions: fulcio_extensions(&der)?,
        predicate_type: st.predicate_type,
    })
}

/// Whether two distribution filenames name the same distribution once parsed (the spec: the
/// subject is the filename "after normalization"): the project, the version and, for wheels,
/// the build tag and the set of compatibility tags (`a.b` tags expand, in any order).
fn same_distribution(subject: &str, filename: &str, project: &ProjectName) -> bool {
    let (Ok(a), Ok(b)) = (
        DistFilename::parse(subject, project),
        DistFilename::parse(filename, project),
    ) else {
        return false;
    };
    if a.version != b.version || a.kind != b.kind {
        return false;
    }
    let tags = |f: &str| -> Option<(String, std::collections::BTreeSet<String>)> {
        let stem = f.strip_suffix(".whl")?;
        let parts: Vec<&str> = stem.split('-').collect();
        let n = parts.len();
        let build = if n == 6 {
            parts[2].to_string()
        } else {
            String::new()
        };
        let mut set = std::collections::BTreeSet::new();
        for py in parts[n - 3].split('.') {
            for abi in parts[n - 2].split('.') {
                for plat in parts[n - 1].split('.') {
                    set.insert(format!("{py}-{abi}-{plat}").to_ascii_lowercase());
                }
            }
        }
        Some((build, set))
    };
    tags(subject) == tags(filename)
}

/// The Fulcio extensions `1.3.6.1.4.1.57264.1.N` for N ≥ 8 (DER UTF8String values; Fulcio's
/// docs/oid-info.md). The deprecated N < 8 (raw strings) are not read.
pub fn fulcio_extensions(der: &[u8]) -> Result<BTreeMap<u32, String>, String> {
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let mut out = BTreeMap::new();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        let Some(parent) = ext.extn_id.parent() else {
            continue;
        };
        if parent != FULCIO {
            continue;
        }
        let Some(n) = ext.extn_id.arcs().last() else {
            continue;
        };
        if n < 8 {
            continue;
        }
        let value = x509_cert::der::asn1::Utf8StringRef::from_der(ext.extn_value.as_bytes())
            .map_err(|e| format!("certificate extension {}: {e}", ext.extn_id))?;
        if out.insert(n, value.as_str().to_string()).is_some() {
            return Err(format!(
                "certificate extension {} appears twice",
                ext.extn_id
            ));
        }
    }
    Ok(out)
}
