//! The operator's Sigstore trusted root (`trusted_root.json`, media type
//! `application/vnd.dev.sigstore.trustedroot+json;version=0.1`): the Fulcio CAs, the Rekor
//! logs, the certificate-transparency logs and the timestamp authorities, each with the period
//! it was valid for. Read from a file, never fetched (the gate runs offline); sigstore-verify
//! reads and validates it, once, when the policy is loaded.

use super::VerifyError;
use sigstore_verify::trust_root::{
    TrustedRoot, SIGSTORE_PRODUCTION_TRUSTED_ROOT, SIGSTORE_STAGING_TRUSTED_ROOT,
};
use sigstore_verify::Verifier;

pub struct TrustRoot {
    verifier: Verifier,
    /// sha256 of the JSON it was read from: what a verdict kept with a file was reached under.
    digest: String,
    cas: usize,
    tlogs: usize,
    ctlogs: usize,
    tsas: usize,
}

impl std::fmt::Debug for TrustRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TrustRoot({} CAs, {} transparency logs, {} CT logs, {} timestamp authorities)",
            self.cas, self.tlogs, self.ctlogs, self.tsas
        )
    }
}

impl TrustRoot {
    /// Parses a trusted root. Anything unreadable in it is an error: a partly read root could
    /// silently drop the CA or log an operator relies on.
    pub fn from_json(bytes: &[u8]) -> Result<TrustRoot, VerifyError> {
        (|| -> Result<TrustRoot, String> {
            let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 JSON".to_string())?;
            // sigstore-verify takes any media type; a file that is something else entirely (a
            // bundle, a TUF root) must not pass as an empty root.
            let media_type = serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| format!("not JSON: {e}"))?
                .get("mediaType")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string);
            if !media_type
                .as_deref()
                .is_some_and(|m| m.starts_with("application/vnd.dev.sigstore.trustedroot"))
            {
                return Err(
                    "mediaType is not application/vnd.dev.sigstore.trustedroot+json".into(),
                );
            }
            let root = TrustedRoot::from_json(text).map_err(|e| e.to_string())?;
            if root.certificate_authorities.is_empty() && root.tlogs.is_empty() {
                return Err("it lists no certificate authority and no transparency log".into());
            }
            let verifier = Verifier::new(&root).map_err(|e| e.to_string())?;
            Ok(TrustRoot {
                verifier,
                digest: {
                    use sha2::Digest as _;
                    hex::encode(sha2::Sha256::digest(bytes))
                },
                cas: root.certificate_authorities.len(),
                tlogs: root.tlogs.len(),
                ctlogs: root.ctlogs.len(),
                tsas: root.timestamp_authorities.len(),
            })
        })()
        .map_err(VerifyError::TrustRoot)
    }

    /// The Sigstore public-good root (or its staging instance) as sigstore-verify embedded it
    /// when tollgate was built: never fetched.
    pub fn embedded(staging: bool) -> Result<TrustRoot, VerifyError> {
        let json = if staging {
            SIGSTORE_STAGING_TRUSTED_ROOT
        } else {
            SIGSTORE_PRODUCTION_TRUSTED_ROOT
        };
        Self::from_json(json.as_bytes())
    }

    pub(crate) fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Does the root list certificate-transparency logs (so a Fulcio certificate must carry
    /// an SCT by one of them)?
    /// Which root this is (the sha256 of its JSON).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn has_ct_logs(&self) -> bool {
        self.ctlogs > 0
    }

    /// Does the root list any transparency log (so a log entry on a key signature can be
    /// checked)?
    pub fn has_logs(&self) -> bool {
        self.tlogs > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_roots_load_and_junk_does_not() {
        let prod = TrustRoot::embedded(false).unwrap();
        assert!(prod.has_logs());
        assert!(TrustRoot::embedded(true).is_ok());
        assert!(TrustRoot::from_json(b"{}").is_err());
        assert!(TrustRoot::from_json(b"not json").is_err());
        assert!(TrustRoot::from_json(
            br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#
        )
        .is_err());
    }
}
