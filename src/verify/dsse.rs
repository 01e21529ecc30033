//! DSSE envelopes (github.com/secure-systems-lab/dsse, protocol.md) carrying in-toto statements
//! (github.com/in-toto/attestation, spec/v1/statement.md): what cosign attestations and v3
//! bundles sign.

use base64::Engine;
use serde::Deserialize;

pub const IN_TOTO: &str = "application/vnd.in-toto+json";

#[derive(Debug, Clone)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<Vec<u8>>,
}

impl Envelope {
    pub fn from_json(v: &serde_json::Value) -> Result<Envelope, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            payload_type: String,
            payload: String,
            #[serde(default)]
            signatures: Vec<RawSig>,
        }
        #[derive(Deserialize)]
        struct RawSig {
            sig: String,
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw: Raw =
            serde_json::from_value(v.clone()).map_err(|e| format!("not a DSSE envelope: {e}"))?;
        Ok(Envelope {
            payload: b64
                .decode(raw.payload.trim())
                .map_err(|_| "the DSSE payload is not base64")?,
            signatures: raw
                .signatures
                .iter()
                .filter_map(|s| b64.decode(s.sig.trim()).ok())
                .collect(),
            payload_type: raw.payload_type,
        })
    }

    /// The bytes a DSSE signature covers: the pre-authentication encoding
    /// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body` (protocol.md).
    pub fn pae(&self) -> Vec<u8> {
        let mut out = format!(
            "DSSEv1 {} {} {} ",
            self.payload_type.len(),
            self.payload_type,
            self.payload.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.payload);
        out
    }
}

/// The parts of an in-toto statement a policy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub predicate_type: String,
    /// The sha256 digests (lowercase hex) of the subjects.
    pub subjects: Vec<String>,
}

/// Parses the statement of an envelope whose payload type is in-toto. A subject without a
/// `name` is accepted (cosign v3 writes none for an image; the digest is what binds it).
pub fn statement(env: &Envelope) -> Result<Statement, String> {
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
    if env.payload_type != IN_TOTO {
        return Err(format!(
            "the envelope carries {:?}, not an in-toto statement",
            env.payload_type
        ));
    }
    let raw: Raw = serde_json::from_slice(&env.payload)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_the_spec_encoding() {
        // protocol.md's example: PAE("http://example.com/HelloWorld", "hello world").
        let e = Envelope {
            payload_type: "http://example.com/HelloWorld".into(),
            payload: b"hello world".to_vec(),
            signatures: vec![],
        };
        assert_eq!(
            e.pae(),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn statements() {
        let env = |t: &str, p: &str| Envelope {
            payload_type: t.into(),
            payload: p.as_bytes().to_vec(),
            signatures: vec![],
        };
        let ok = r#"{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":"AB"}}],"predicateType":"x"}"#;
        assert_eq!(
            statement(&env(IN_TOTO, ok)).unwrap(),
            Statement {
                predicate_type: "x".into(),
                subjects: vec!["ab".into()]
            }
        );
        assert!(statement(&env("text/plain", ok)).is_err());
        assert!(statement(&env(
            IN_TOTO,
            r#"{"_type":"other","subject":[],"predicateType":"x"}"#
        ))
        .is_err());
        assert!(statement(&env(IN_TOTO, "[]")).is_err());
    }
}
