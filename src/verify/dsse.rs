//! The in-toto statements (github.com/in-toto/attestation, spec/v1/statement.md) that DSSE
//! envelopes carry in cosign attestations and v3 bundles: the parts a rule reads. The
//! envelope itself (and its pre-authentication encoding) is sigstore-verify's.

use super::VerifyError;
use serde::Deserialize;

pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// The parts of an in-toto statement a policy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub predicate_type: String,
    /// The sha256 digests (lowercase hex) of the subjects.
    pub subjects: Vec<String>,
}

/// Parses the statement of an envelope whose payload type is in-toto. A subject without a
/// `name` is accepted (cosign v3 writes none for an image; the digest is what binds it).
pub fn statement(payload_type: &str, payload: &[u8]) -> Result<Statement, VerifyError> {
    (|| -> Result<Statement, String> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "_type")]
            kind: String,
            #[serde(rename = "predicateType")]
            predicate_type: String,
            subject: Vec<Subject>,
        }
        #[derive(Deserialize)]
        struct Subject {
            digest: std::collections::BTreeMap<String, String>,
        }
        if payload_type != IN_TOTO {
            return Err(format!(
                "the envelope carries {payload_type:?}, not an in-toto statement"
            ));
        }
        let raw: Raw = serde_json::from_slice(payload)
            .map_err(|e| format!("not an in-toto statement: {e}"))?;
        if !raw.kind.starts_with("https://in-toto.io/Statement/") {
            return Err(format!("unknown statement type {:?}", raw.kind));
        }
        Ok(Statement {
            predicate_type: raw.predicate_type,
            subjects: raw
                .subject
                .iter()
                .filter_map(|s| s.digest.get("sha256").map(|h| h.to_ascii_lowercase()))
                .collect(),
        })
    })()
    .map_err(VerifyError::Artifact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements() {
        let ok = r#"{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":"AB"}}],"predicateType":"x"}"#;
        assert_eq!(
            statement(IN_TOTO, ok.as_bytes()).unwrap(),
            Statement {
                predicate_type: "x".into(),
                subjects: vec!["ab".into()]
            }
        );
        assert!(statement("text/plain", ok.as_bytes()).is_err());
        assert!(statement(
            IN_TOTO,
            br#"{"_type":"other","subject":[],"predicateType":"x"}"#
        )
        .is_err());
        assert!(statement(IN_TOTO, b"[]").is_err());
    }
}
