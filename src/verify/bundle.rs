//! The one place tollgate calls sigstore-verify: a bundle authenticated keyless (under the
//! library's "any identity" policy, the identity returned for the rule to match) or with a key,
//! and the library's refusals turned into one sentence each.

use sigstore_verify::types::bundle::VerificationMaterialContent;
use sigstore_verify::types::Bundle;
use sigstore_verify::{
    CertificateError, Error as SigError, PublicKeyVerificationPolicy, TimestampError,
    TransparencyLogError, VerificationPolicy,
};

use super::keys::PublicKey;
use super::legacy;
use super::trust::TrustRoot;

/// Log entries and RFC 3161 timestamps read per bundle.
const MAX_TLOG_ENTRIES: usize = 1;
const MAX_TIMESTAMPS: usize = 4;
/// Reasons and library details are cut to this many characters: a refusal is one line.
const MAX_DETAIL: usize = 160;
pub(crate) fn cut(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    match s.char_indices().nth(MAX_DETAIL) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// One sentence for why sigstore-verify refused a bundle, by the library's own categories
/// (its detail strings are evidence, not something to branch on).
pub fn reason(e: &SigError) -> String {
    use CertificateError as C;
    use TransparencyLogError as L;
    let (what, detail) = match e {
        // webpki checks the leaf's validity while it builds the path; its error names say
        // which. Only the sentence depends on this reading, never the decision.
        SigError::Certificate(C::ChainInvalid(d))
            if d.contains("CertExpired") || d.contains("CertNotValidYet") =>
        {
            (
                "the certificate is not valid at the log's integrated time or the timestamp",
                d.clone(),
            )
        }
        SigError::Certificate(C::ChainInvalid(d)) => (
            "the certificate does not chain to a CA of the trusted root at the signing time",
            d.clone(),
        ),
        SigError::Certificate(C::NoValidAuthority { time }) => (
            "no CA of the trusted root was valid at the signing time",
            time.to_string(),
        ),
        SigError::Certificate(C::NotYetValid { .. } | C::Expired { .. }) => (
            "the certificate is not valid at the log's integrated time or the timestamp",
            e.to_string(),
        ),
        SigError::Certificate(C::Sct(d)) => (
            "the certificate carries no SCT that verifies with a CT log of the trusted root",
            d.clone(),
        ),
        SigError::Certificate(C::Malformed(d)) => ("the certificate cannot be read", d.clone()),
        SigError::TransparencyLog(L::EntryMismatch(d)) => (
            "the log entry records another signature, signer or payload",
            d.clone(),
        ),
        SigError::TransparencyLog(L::UnknownLog { log_id }) => (
            "the log entry is from a log the trusted root does not list",
            log_id.clone(),
        ),
        SigError::TransparencyLog(L::InclusionProof(d)) => {
            ("the log entry's inclusion proof does not verify", d.clone())
        }
        SigError::TransparencyLog(L::Checkpoint(d)) => {
            ("the log's signed checkpoint does not verify", d.clone())
        }
        SigError::TransparencyLog(L::InclusionPromise(d)) => (
            "the log entry's signed entry timestamp does not verify",
            d.clone(),
        ),
        SigError::TransparencyLog(L::IntegratedTime(d)) => (
            "the log entry's integrated time is not acceptable",
            d.clone(),
        ),
        SigError::TransparencyLog(L::MalformedEntry(d)) => {
            ("the log entry cannot be read", d.clone())
        }
        SigError::Timestamp(TimestampError::Invalid(d)) => (
            "an RFC 3161 timestamp does not verify with a timestamp authority of the trusted root",
            d.clone(),
        ),
        SigError::Timestamp(TimestampError::OutsideAuthorityValidity { time }) => (
            "an RFC 3161 timestamp lies outside its authority's validity",
            time.to_string(),
        ),
        SigError::Timestamp(TimestampError::NoVerifiedTimestamp(d)) => (
            "no verified signing time (a signed log entry time or an RFC 3161 timestamp)",
            d.clone(),
        ),
        SigError::SignatureInvalid(d) => ("the signature does not verify", d.clone()),
        SigError::ArtifactMismatch(d) => (
            "the log entry or the signature records another artifact",
            d.clone(),
        ),
        SigError::Bundle(d) => ("the bundle is not valid", d.to_string()),
        SigError::InvalidBundle(d) => ("the bundle is not valid", d.clone()),
        SigError::UnsupportedBundle(d) => ("the bundle is not supported", d.clone()),
        other => ("the signature could not be verified", other.to_string()),
    };
    format!("{what} ({})", cut(&detail))
}

/// What a signature is checked against: the bytes (a legacy payload) or a digest (a DSSE
/// statement's subject).
#[derive(Clone, Copy)]
pub enum Input<'a> {
    Bytes(&'a [u8]),
    Sha256([u8; 32]),
}

impl Input<'_> {
    fn artifact(&self) -> sigstore_verify::types::Artifact<'_> {
        match self {
            Input::Bytes(b) => sigstore_verify::types::Artifact::Blob(b),
            Input::Sha256(d) => sigstore_verify::types::Sha256Hash::new(*d).into(),
        }
    }
}

/// sigstore-verify on one bundle. Keyless (`key` None): the certificate, log entries,
/// timestamps and binding are verified under the library's "any identity" policy and the
/// certificate's identity and issuer are returned, for the caller to match (skipping that
/// match would admit anyone). With a key: the bundle must be signed by it, and its log
/// entries verify.
pub fn authenticate(
    root: &TrustRoot,
    bundle: &Bundle,
    input: Input<'_>,
    key: Option<&PublicKey>,
) -> Result<Option<(String, Option<String>)>, String> {
    // Sigstore's clients write one log entry and at most a timestamp or two; each extra one
    // costs a full chain and log check before the signer is known. sigstore-python refuses
    // more than one entry; so does tollgate, and it reads a few timestamps at most.
    let vm = &bundle.verification_material;
    if vm.tlog_entries.len() > MAX_TLOG_ENTRIES {
        return Err(format!(
            "the bundle carries {} transparency-log entries (at most {MAX_TLOG_ENTRIES} is read)",
            vm.tlog_entries.len()
        ));
    }
    let timestamps = vm.timestamp_verification_data.rfc3161_timestamps.len();
    if timestamps > MAX_TIMESTAMPS {
        return Err(format!(
            "the bundle carries {timestamps} RFC 3161 timestamps (at most {MAX_TIMESTAMPS} are read)"
        ));
    }
    if let Some(key) = key {
        root.verifier()
            .verify(
                input.artifact(),
                bundle,
                &PublicKeyVerificationPolicy::new(key.der().clone()),
            )
            .map_err(|e| reason(&e))?;
        return Ok(None);
    }
    // A root without CT logs (a private Sigstore, GitHub's artifact-attestation instance)
    // cannot ask for SCTs; one that lists any always does.
    let mut policy = VerificationPolicy::any_identity();
    if !root.has_ct_logs() {
        policy = policy.skip_sct();
    }
    let result = root
        .verifier()
        .verify(input.artifact(), bundle, &policy)
        .map_err(|e| reason(&e))?;
    // Fail closed should the policy ever be relaxed: nothing counts unless the certificate
    // and the log were checked.
    if !result.certificate_verified() || !result.tlog_verified() {
        return Err("the certificate or the log entry was not verified".into());
    }
    let der = bundle
        .signing_certificate()
        .map(|c| c.as_bytes().to_vec())
        .unwrap_or_default();
    let n = legacy::identity_count(&der);
    if n != 1 {
        return Err(format!(
            "the certificate names {n} e-mail/URI identities, not one"
        ));
    }
    let identity = result
        .identity()
        .map(|i| i.as_str().to_string())
        .ok_or("the certificate names no identity")?;
    Ok(Some((identity, result.issuer().map(str::to_string))))
}

pub(crate) fn is_keyless(bundle: &Bundle) -> bool {
    matches!(
        bundle.verification_material.content,
        VerificationMaterialContent::Certificate(_)
            | VerificationMaterialContent::X509CertificateChain { .. }
    )
}
