//! Rekor transparency-log entries as signatures carry them offline: the signed entry timestamp
//! (SET, Rekor's promise to include the entry, which also fixes the integrated time a Fulcio
//! certificate is checked at), the optional inclusion proof with its signed checkpoint, and the
//! entry's body, which must describe *this* signature by *this* certificate over *this* payload
//! (sigstore-rs checks the SET of a legacy signature but not this binding; a real SET and
//! certificate copied from another signing would otherwise pass).

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::trust::TrustRoot;

/// One log entry, from cosign's `dev.sigstore.cosign/bundle` annotation or a bundle's
/// `tlogEntries`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The canonicalized body (JSON), decoded.
    pub body: Vec<u8>,
    pub integrated_time: i64,
    pub log_index: i64,
    pub log_id: Vec<u8>,
    pub set: Option<Vec<u8>>,
    pub proof: Option<InclusionProof>,
}

#[derive(Debug, Clone)]
pub struct InclusionProof {
    pub log_index: u64,
    pub tree_size: u64,
    pub root_hash: Vec<u8>,
    pub hashes: Vec<Vec<u8>>,
    pub checkpoint: Option<String>,
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| "not base64".to_string())
}

impl Entry {
    /// cosign's legacy annotation: `{"SignedEntryTimestamp", "Payload": {"body",
    /// "integratedTime", "logIndex", "logID"}}`.
    pub fn from_cosign_bundle(json: &str) -> Result<Entry, String> {
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
        let raw: Raw =
            serde_json::from_str(json).map_err(|e| format!("the Rekor bundle is invalid: {e}"))?;
        Ok(Entry {
            body: b64(&raw.payload.body).map_err(|e| format!("Rekor body: {e}"))?,
            integrated_time: raw.payload.integrated_time,
            log_index: raw.payload.log_index,
            log_id: hex::decode(&raw.payload.log_id).map_err(|_| "Rekor logID is not hex")?,
            set: Some(b64(&raw.set).map_err(|e| format!("Rekor SET: {e}"))?),
            proof: None,
        })
    }

    /// A Sigstore bundle's `TransparencyLogEntry` (protobuf JSON: 64-bit integers as strings,
    /// bytes as base64).
    pub fn from_bundle_entry(v: &Value) -> Result<Entry, String> {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str);
        let int = |p: &str| -> Option<i64> {
            match v.pointer(p)? {
                Value::String(s) => s.parse().ok(),
                Value::Number(n) => n.as_i64(),
                _ => None,
            }
        };
        let body = b64(s("/canonicalizedBody").ok_or("tlog entry without canonicalizedBody")?)
            .map_err(|e| format!("canonicalizedBody: {e}"))?;
        let set = match s("/inclusionPromise/signedEntryTimestamp") {
            Some(x) => Some(b64(x).map_err(|e| format!("signedEntryTimestamp: {e}"))?),
            None => None,
        };
        let proof = match v.get("inclusionProof") {
            None | Some(Value::Null) => None,
            Some(p) => {
                let pint = |k: &str| -> Option<u64> {
                    match p.get(k)? {
                        Value::String(s) => s.parse().ok(),
                        Value::Number(n) => n.as_u64(),
                        _ => None,
                    }
                };
                Some(InclusionProof {
                    log_index: pint("logIndex").ok_or("inclusionProof without logIndex")?,
                    tree_size: pint("treeSize").ok_or("inclusionProof without treeSize")?,
                    root_hash: b64(p.get("rootHash").and_then(Value::as_str).unwrap_or(""))
                        .map_err(|e| format!("rootHash: {e}"))?,
                    hashes: p
                        .get("hashes")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().map(|h| b64(h.as_str().unwrap_or("!"))).collect())
                        .unwrap_or(Ok(Vec::new()))
                        .map_err(|e| format!("inclusion proof hash: {e}"))?,
                    checkpoint: p
                        .pointer("/checkpoint/envelope")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
            }
        };
        Ok(Entry {
            body,
            integrated_time: int("/integratedTime").ok_or("tlog entry without integratedTime")?,
            log_index: int("/logIndex").ok_or("tlog entry without logIndex")?,
            log_id: b64(s("/logId/keyId").ok_or("tlog entry without logId")?)
                .map_err(|e| format!("logId: {e}"))?,
            set,
            proof,
        })
    }

    /// Verifies the SET with the trusted log key of this entry's log id that was valid at the
    /// integrated time. The SET signs the canonical JSON (keys sorted, no whitespace) of
    /// `{body, integratedTime, logID, logIndex}` (Rekor's `bundle.go`, `VerifySET`).
    /// An inclusion proof, where present, must verify too, and its checkpoint be signed by
    /// the same log.
    pub fn verify(&self, trust: &TrustRoot) -> Result<(), String> {
        let Some(set) = &self.set else {
            return Err("the log entry has no signed entry timestamp (SET); entries without one need a timestamp authority, which this gate does not accept".into());
        };
        let log = trust
            .log(&self.log_id, self.integrated_time)
            .ok_or("the log entry is from no transparency log of the trusted root")?;
        let canonical = format!(
            r#"{{"body":"{}","integratedTime":{},"logID":"{}","logIndex":{}}}"#,
            base64::engine::general_purpose::STANDARD.encode(&self.body),
            self.integrated_time,
            hex::encode(&self.log_id),
            self.log_index
        );
        if !log.key.verifies(canonical.as_bytes(), set) {
            return Err("the log entry's signed entry timestamp does not verify".into());
        }
        if let Some(p) = &self.proof {
            let leaf = Sha256::new()
                .chain_update([0u8])
                .chain_update(&self.body)
                .finalize();
            let root = root_from_proof(p.log_index, p.tree_size, leaf.into(), &p.hashes)
                .ok_or("the log entry's inclusion proof is malformed")?;
            if root.as_slice() != p.root_hash.as_slice() {
                return Err(
                    "the log entry's inclusion proof does not lead to its root hash".into(),
                );
            }
            // The root hash means something only when the log signed it.
            let cp = p
                .checkpoint
                .as_ref()
                .ok_or("the log entry's inclusion proof has no signed checkpoint")?;
            verify_checkpoint(cp, p, &log.log_id, &log.key)?;
        }
        Ok(())
    }
}

/// RFC 9162 §2.1.3.2: the root hash an inclusion proof leads to.
fn root_from_proof(index: u64, size: u64, leaf: [u8; 32], proof: &[Vec<u8>]) -> Option<[u8; 32]> {
    if index >= size {
        return None;
    }
    let node = |l: &[u8], r: &[u8]| -> [u8; 32] {
        Sha256::new()
            .chain_update([1u8])
            .chain_update(l)
            .chain_update(r)
            .finalize()
            .into()
    };
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in proof {
        if p.len() != 32 || s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

/// A checkpoint is a signed note (golang.org/x/mod/sumdb/note): the text, a blank line, then
/// lines `— <origin> <base64(4-byte key hint ‖ signature)>`. Its size and root hash must be the
/// proof's, and one signature must verify with the log's key (hint: the log id's first bytes).
fn verify_checkpoint(
    note: &str,
    proof: &InclusionProof,
    log_id: &[u8],
    key: &super::keys::PublicKey,
) -> Result<(), String> {
    let (text, sigs) = note
        .split_once("\n\n")
        .ok_or("the checkpoint is not a signed note")?;
    let body = format!("{text}\n");
    let mut lines = text.lines();
    let _origin = lines.next();
    let size: Option<u64> = lines.next().and_then(|l| l.parse().ok());
    let root = lines.next().and_then(|l| b64(l).ok());
    if size != Some(proof.tree_size) || root.as_deref() != Some(proof.root_hash.as_slice()) {
        return Err("the checkpoint does not match the inclusion proof".into());
    }
    let signed = sigs.lines().any(|l| {
        let Some(rest) = l.strip_prefix("\u{2014} ") else {
            return false;
        };
        let Some((_, sig)) = rest.rsplit_once(' ') else {
            return false;
        };
        b64(sig).is_ok_and(|raw| {
            raw.len() > 4
                && log_id.starts_with(&raw[..4])
                && key.verifies(body.as_bytes(), &raw[4..])
        })
    });
    if !signed {
        return Err("the checkpoint is not signed by the log".into());
    }
    Ok(())
}

/// The DER inside a PEM block (the body stores the signer's certificate as base64 PEM).
fn pem_der(b64pem: &str) -> Option<Vec<u8>> {
    let pem = String::from_utf8(b64(b64pem).ok()?).ok()?;
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    b64(&body).ok()
}

/// What a log entry must describe.
#[derive(Clone, Copy)]
pub enum Signed<'a> {
    /// A signature over a message (cosign's simple-signing payload): `hashedrekord`/`rekord`.
    Message { payload: &'a [u8] },
    /// A DSSE envelope's signature (over its PAE): `dsse` or `intoto`.
    Dsse { payload: &'a [u8] },
}

/// Checks that the entry's body records `sig`, made by the certificate `cert_der`, over this
/// payload (Rekor's type schemas: hashedrekord/rekord 0.0.1, dsse 0.0.1, intoto 0.0.2).
pub fn check_binding(
    body: &[u8],
    signed: Signed,
    sig: &[u8],
    cert_der: &[u8],
) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the log entry body is not JSON")?;
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    let str_at = |p: &str| v.pointer(p).and_then(Value::as_str);
    let sha_hex = |p: &[u8]| hex::encode(Sha256::digest(p));
    let hash_is = |alg: Option<&str>, value: Option<&str>, payload: &[u8]| {
        alg == Some("sha256") && value.is_some_and(|h| h.eq_ignore_ascii_case(&sha_hex(payload)))
    };
    let ok = match (signed, kind) {
        (Signed::Message { payload }, "hashedrekord" | "rekord") => {
            hash_is(
                str_at("/spec/data/hash/algorithm"),
                str_at("/spec/data/hash/value"),
                payload,
            ) && str_at("/spec/signature/content")
                .and_then(|s| b64(s).ok())
                .as_deref()
                == Some(sig)
                && str_at("/spec/signature/publicKey/content")
                    .and_then(pem_der)
                    .as_deref()
                    == Some(cert_der)
        }
        (Signed::Dsse { payload }, "dsse") => {
            hash_is(
                str_at("/spec/payloadHash/algorithm"),
                str_at("/spec/payloadHash/value"),
                payload,
            ) && v
                .pointer("/spec/signatures")
                .and_then(Value::as_array)
                .is_some_and(|a| {
                    a.iter().any(|s| {
                        s.get("signature")
                            .and_then(Value::as_str)
                            .and_then(|x| b64(x).ok())
                            .as_deref()
                            == Some(sig)
                            && s.get("verifier")
                                .and_then(Value::as_str)
                                .and_then(pem_der)
                                .as_deref()
                                == Some(cert_der)
                    })
                })
        }
        (Signed::Dsse { payload }, "intoto") => {
            hash_is(
                str_at("/spec/content/payloadHash/algorithm"),
                str_at("/spec/content/payloadHash/value"),
                payload,
            ) && v
                .pointer("/spec/content/envelope/signatures")
                .and_then(Value::as_array)
                .is_some_and(|a| {
                    a.iter().any(|s| {
                        // intoto 0.0.2 stores the envelope's base64 signature base64-encoded again.
                        let recorded = s
                            .get("sig")
                            .and_then(Value::as_str)
                            .and_then(|x| b64(x).ok());
                        let matches = recorded.as_deref() == Some(sig)
                            || recorded
                                .and_then(|r| String::from_utf8(r).ok())
                                .and_then(|r| b64(&r).ok())
                                .as_deref()
                                == Some(sig);
                        matches
                            && s.get("publicKey")
                                .and_then(Value::as_str)
                                .and_then(pem_der)
                                .as_deref()
                                == Some(cert_der)
                    })
                })
        }
        (_, other) => {
            return Err(format!(
                "the log entry is of kind {other:?}, which does not record this kind of signature"
            ))
        }
    };
    if ok {
        Ok(())
    } else {
        Err("the log entry records another signature, signer or payload".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inclusion_proofs() {
        // A 3-leaf tree: root = H(1, H(1, l0, l1), l2).
        let leaf = |b: u8| -> [u8; 32] { Sha256::new().chain_update([0u8, b]).finalize().into() };
        let node = |l: &[u8], r: &[u8]| -> [u8; 32] {
            Sha256::new()
                .chain_update([1u8])
                .chain_update(l)
                .chain_update(r)
                .finalize()
                .into()
        };
        let (l0, l1, l2) = (leaf(0), leaf(1), leaf(2));
        let root = node(&node(&l0, &l1), &l2);
        assert_eq!(
            root_from_proof(0, 3, l0, &[l1.to_vec(), l2.to_vec()]),
            Some(root)
        );
        assert_eq!(
            root_from_proof(2, 3, l2, &[node(&l0, &l1).to_vec()]),
            Some(root)
        );
        assert_ne!(
            root_from_proof(1, 3, l1, &[l1.to_vec(), l2.to_vec()]),
            Some(root)
        );
        assert_eq!(root_from_proof(3, 3, l2, &[]), None);
        assert_eq!(root_from_proof(0, 3, l0, &[l1.to_vec()]), None);
    }
}
