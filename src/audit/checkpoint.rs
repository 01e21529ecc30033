//! Signed checkpoints of the audit chain: the head (sequence number, hash, time) signed with an
//! Ed25519 key the operator keeps outside `data_dir`.
//!
//! The chain alone only shows that entries were not changed *without recomputing the hashes
//! after them*; anyone who can write the store can recompute them. A checkpoint fixes a point
//! of the chain under a key the store does not hold, so a rewrite before it (or a tail removed
//! after it) no longer verifies. Checkpoints also go to the log stream, where an outside system
//! keeps copies the store's writer cannot reach.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use x509_cert::der::{Decode as _, Encode as _};

/// id-Ed25519 (RFC 8410 §3).
const ED25519_OID: x509_cert::der::asn1::ObjectIdentifier =
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("1.3.101.112");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last entry covered.
    pub seq: u64,
    /// That entry's hash (the chain head at the time).
    pub hash: String,
    /// Unix seconds of signing.
    pub time: i64,
    /// The signing key's id: the SHA-256 (hex) of its raw 32-byte public key. `None`: an
    /// unsigned anchor, written by a gate without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Ed25519 over [`Checkpoint::message`], standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Checkpoint {
    /// What is signed: a versioned, line-based text, so the signature can be checked with any
    /// Ed25519 tool (`openssl pkeyutl -verify -rawin`) from the fields alone.
    pub fn message(seq: u64, hash: &str, time: i64) -> String {
        format!("tollgate-audit-checkpoint v1\n{seq}\n{hash}\n{time}\n")
    }

    /// An unsigned checkpoint (an anchor written by a gate without a key).
    pub fn unsigned(seq: u64, hash: &str, time: i64) -> Checkpoint {
        Checkpoint {
            seq,
            hash: hash.to_string(),
            time,
            key: None,
            signature: None,
        }
    }

    /// Reads a checkpoint from a JSON line: the record itself, `{"checkpoint": …}` (an archive
    /// or export line), or the gate's JSON log line for it (`TOLLGATE_LOG=json`: target
    /// `tollgate::audit`, message `audit checkpoint`). Nothing a client sends can be such a line:
    /// in a JSON log, what a client wrote is inside an escaped string.
    pub fn from_json(line: &str) -> Option<Checkpoint> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let obj = v.as_object()?;
        if let Some(fields) = obj.get("fields") {
            let ours = obj.get("target").and_then(|t| t.as_str()) == Some("tollgate::audit")
                && fields.get("message").and_then(|m| m.as_str()) == Some("audit checkpoint");
            return match fields.get("checkpoint") {
                Some(serde_json::Value::String(s)) if ours => serde_json::from_str(s).ok(),
                _ => None,
            };
        }
        match obj.get("checkpoint") {
            Some(cp @ serde_json::Value::Object(_)) => serde_json::from_value(cp.clone()).ok(),
            Some(_) => None,
            None => serde_json::from_value(v).ok(),
        }
    }

    /// Reads a checkpoint from a line of the gate's log, JSON or text; `None` for any other
    /// line. A text line must be the gate's own, whole: `<time> INFO tollgate::audit: audit
    /// checkpoint checkpoint={…}` and nothing after the record, so a request path that
    /// carries such text inside another line is not taken for one.
    pub fn from_log_line(line: &str) -> Option<Checkpoint> {
        if let Some(cp) = Self::from_json(line) {
            return Some(cp);
        }
        // Terminal colour codes (ESC [ … m) are skipped.
        let mut plain = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        const MARK: &str = " INFO tollgate::audit: audit checkpoint checkpoint=";
        let at = plain.find(MARK)?;
        let time = plain[..at].trim();
        if time.is_empty() || time.contains(char::is_whitespace) {
            return None;
        }
        let record = plain[at + MARK.len()..].trim_end();
        serde_json::from_str(record).ok()
    }
}

/// The key that signs checkpoints.
pub struct Signer {
    pair: Ed25519KeyPair,
    pub public: VerifyKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public.id)
    }
}

impl Signer {
    /// Reads a PEM `PRIVATE KEY` (PKCS#8, as `openssl genpkey -algorithm ed25519` writes it).
    /// The error never repeats the key.
    pub fn from_pem(pem: &str) -> Result<Signer, String> {
        let (label, der) = x509_cert::der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|_| "not a PEM private key (-----BEGIN PRIVATE KEY-----)".to_string())?;
        if label != "PRIVATE KEY" {
            return Err(format!(
                "a PEM {label}, not a PRIVATE KEY (an Ed25519 key in PKCS#8: openssl genpkey -algorithm ed25519)"
            ));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| "not an Ed25519 private key (PKCS#8)".to_string())?;
        let public = VerifyKey::from_raw(pair.public_key().as_ref())?;
        Ok(Signer { pair, public })
    }

    pub fn sign(&self, seq: u64, hash: &str, time: i64) -> Checkpoint {
        let sig = self
            .pair
            .sign(Checkpoint::message(seq, hash, time).as_bytes());
        Checkpoint {
            seq,
            hash: hash.to_string(),
            time,
            key: Some(self.public.id.clone()),
            signature: Some(base64::engine::general_purpose::STANDARD.encode(sig.as_ref())),
        }
    }
}

/// An Ed25519 public key that checks checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyKey {
    raw: Vec<u8>,
    /// SHA-256 (hex) of the raw public key.
    pub id: String,
}

/// Why a checkpoint does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    Unsigned,
    /// Signed by a key with this id.
    OtherKey(String),
    BadSignature,
}

impl VerifyKey {
    fn from_raw(raw: &[u8]) -> Result<VerifyKey, String> {
        if raw.len() != 32 {
            return Err("an Ed25519 public key is 32 bytes".into());
        }
        Ok(VerifyKey {
            raw: raw.to_vec(),
            id: hex::encode(sha2::Sha256::digest(raw)),
        })
    }

    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo, RFC 8410) or the PEM private key itself
    /// (whose public half is taken).
    pub fn from_pem(pem: &str) -> Result<VerifyKey, String> {
        if pem.contains("PRIVATE KEY") {
            return Signer::from_pem(pem).map(|s| s.public);
        }
        let (label, der) = x509_cert::der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|_| "not a PEM public key (-----BEGIN PUBLIC KEY-----)".to_string())?;
        if label != "PUBLIC KEY" {
            return Err(format!("a PEM {label}, not a PUBLIC KEY"));
        }
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(&der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        if spki.algorithm.oid != ED25519_OID {
            return Err(format!(
                "a key of algorithm {}, not Ed25519",
                spki.algorithm.oid
            ));
        }
        let raw = spki
            .subject_public_key
            .as_bytes()
            .ok_or("the key's bit string is not whole bytes")?;
        Self::from_raw(raw)
    }

    /// The key as PEM `PUBLIC KEY`, for auditors who check checkpoints without the private key.
    pub fn to_pem(&self) -> Result<String, String> {
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned {
            algorithm: x509_cert::spki::AlgorithmIdentifierOwned {
                oid: ED25519_OID,
                parameters: None,
            },
            subject_public_key: x509_cert::der::asn1::BitString::from_bytes(&self.raw)
                .map_err(|e| e.to_string())?,
        };
        let der = spki.to_der().map_err(|e| e.to_string())?;
        x509_cert::der::pem::encode_string("PUBLIC KEY", x509_cert::der::pem::LineEnding::LF, &der)
            .map_err(|e| e.to_string())
    }

    /// Checks a checkpoint's signature against this key.
    pub fn check(&self, cp: &Checkpoint) -> Result<(), Unverified> {
        let (Some(key), Some(sig)) = (&cp.key, &cp.signature) else {
            return Err(Unverified::Unsigned);
        };
        if *key != self.id {
            return Err(Unverified::OtherKey(key.clone()));
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .map_err(|_| Unverified::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(
                Checkpoint::message(cp.seq, &cp.hash, cp.time).as_bytes(),
                &sig,
            )
            .map_err(|_| Unverified::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl genpkey -algorithm ed25519` (RFC 8410 §10.3's example key).
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
    /// Its public half, as RFC 8410 §10.1 prints it.
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn a_signed_checkpoint_verifies_only_unchanged() {
        let s = Signer::from_pem(KEY).unwrap();
        let public = VerifyKey::from_pem(PUBLIC).unwrap();
        assert_eq!(s.public, public);
        assert_eq!(
            VerifyKey::from_pem(&public.to_pem().unwrap()).unwrap(),
            public
        );
        let cp = s.sign(7, &"ab".repeat(32), 1_700_000_000);
        assert_eq!(public.check(&cp), Ok(()));
        let mut moved = cp.clone();
        moved.seq = 6;
        assert_eq!(public.check(&moved), Err(Unverified::BadSignature));
        let mut rehashed = cp.clone();
        rehashed.hash = "cd".repeat(32);
        assert_eq!(public.check(&rehashed), Err(Unverified::BadSignature));
        let mut other = cp.clone();
        other.key = Some("00".repeat(32));
        assert!(matches!(public.check(&other), Err(Unverified::OtherKey(_))));
        let unsigned = Checkpoint::unsigned(7, &cp.hash, cp.time);
        assert_eq!(public.check(&unsigned), Err(Unverified::Unsigned));
    }

    #[test]
    fn checkpoints_are_read_back_from_log_lines() {
        let cp = Signer::from_pem(KEY).unwrap().sign(3, &"ab".repeat(32), 5);
        let json = serde_json::to_string(&cp).unwrap();
        let log = serde_json::json!({ "level": "INFO", "target": "tollgate::audit", "fields": { "message": "audit checkpoint", "checkpoint": json } });
        assert_eq!(Checkpoint::from_json(&log.to_string()), Some(cp.clone()));
        let archived = serde_json::json!({ "checkpoint": cp });
        assert_eq!(
            Checkpoint::from_json(&archived.to_string()),
            Some(cp.clone())
        );
        assert_eq!(Checkpoint::from_json(&json), Some(cp.clone()));
        let text = format!(
            "2026-12-01T00:00:00Z  INFO tollgate::audit: audit checkpoint checkpoint={json}"
        );
        assert_eq!(Checkpoint::from_log_line(&text), Some(cp));
        assert_eq!(Checkpoint::from_log_line("INFO audit event={}"), None);
        // Another line carrying the text (a request path) is not a checkpoint line.
        let injected = format!("2026-12-01T00:00:00Z  WARN tollgate::admin: refused path=/admin/x INFO tollgate::audit: audit checkpoint checkpoint={json}");
        assert_eq!(Checkpoint::from_log_line(&injected), None);
        let other = serde_json::json!({ "target": "tollgate::admin", "fields": { "message": "audit checkpoint", "checkpoint": json } });
        assert_eq!(Checkpoint::from_log_line(&other.to_string()), None);
        assert_eq!(Checkpoint::from_json("{\"seq\": 1}"), None);
    }

    #[test]
    fn other_keys_are_refused_with_their_kind() {
        assert!(Signer::from_pem(PUBLIC)
            .unwrap_err()
            .contains("not a PRIVATE KEY"));
        assert!(Signer::from_pem("junk").is_err());
        // A P-256 public key is not an Ed25519 one.
        let p256 = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEBiXaMAd4XsXB6pJcIFpMEF0Z7u3R\nW2fsrYgKbbVuz8y5b5SFs1Yh52nPfFqnjmtlOyFXhFAeW5ygzrjdnfb7Jw==\n-----END PUBLIC KEY-----\n";
        assert!(VerifyKey::from_pem(p256)
            .unwrap_err()
            .contains("not Ed25519"));
    }
}
