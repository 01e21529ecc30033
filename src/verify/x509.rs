//! X.509 certificates as Sigstore uses them: a short-lived Fulcio leaf that names the signer
//! (its SAN) and the OIDC issuer that vouched for it (Fulcio's extensions), chained to a CA of
//! the operator's trusted root, each certificate checked at the Rekor integrated time, never
//! at "now" (Fulcio leaves live ten minutes).
//!
//! The chain check is deliberately narrow (RFC 5280 §6.1 for this one use): names chain, every
//! signature verifies, every certificate is valid at the time, issuers are CAs allowed to sign
//! certificates, the leaf is a code-signing end entity, and an unknown critical extension
//! refuses the certificate (RFC 5280 §4.2).

use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::Certificate;

use super::keys::{Hash, PublicKey};

const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
/// Fulcio's OIDC issuer extensions: v1 holds the raw string, v2 a DER UTF8String
/// (github.com/sigstore/fulcio docs/oid-info.md).
const FULCIO_ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1");
const FULCIO_ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8");
/// The embedded SCT list (RFC 6962 §3.3); not critical in Fulcio certificates, read as known.
const SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2");

/// A parsed certificate with the fields the checks use.
pub struct Cert {
    pub der: Vec<u8>,
    cert: Certificate,
    /// The raw `tbsCertificate` bytes, exactly as signed.
    tbs: Vec<u8>,
    pub key: PublicKey,
    not_before: i64,
    not_after: i64,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cert({})", self.cert.tbs_certificate.subject)
    }
}

/// The first DER element inside a SEQUENCE, with its header: the signed `tbsCertificate`.
fn first_inner_element(der: &[u8]) -> Option<&[u8]> {
    fn header(b: &[u8]) -> Option<(usize, usize)> {
        let first = *b.get(1)?;
        if first < 0x80 {
            return Some((2, first as usize));
        }
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        Some((2 + n, len))
    }
    if der.first() != Some(&0x30) {
        return None;
    }
    let (h, _) = header(der)?;
    let inner = der.get(h..)?;
    let (ih, ilen) = header(inner)?;
    inner.get(..ih.checked_add(ilen)?)
}

impl Cert {
    pub fn from_der(der: &[u8]) -> Result<Cert, String> {
        let cert = Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
        let tbs = first_inner_element(der)
            .ok_or("not a certificate")?
            .to_vec();
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| format!("certificate key: {e}"))?;
        let key = PublicKey::from_der(&spki).map_err(|e| format!("certificate key: {e}"))?;
        let v = &cert.tbs_certificate.validity;
        Ok(Cert {
            der: der.to_vec(),
            not_before: v.not_before.to_unix_duration().as_secs() as i64,
            not_after: v.not_after.to_unix_duration().as_secs() as i64,
            cert,
            tbs,
            key,
        })
    }

    /// One PEM certificate (its own DER bytes, not a re-encoding).
    pub fn from_pem(pem: &str) -> Result<Cert, String> {
        let (label, der) = x509_cert::der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        if label != "CERTIFICATE" {
            return Err(format!("not a PEM certificate ({label})"));
        }
        Cert::from_der(&der)
    }

    /// Every certificate of a PEM bundle (cosign's `chain` annotation).
    pub fn from_pem_chain(pem: &str) -> Result<Vec<Cert>, String> {
        const END: &str = "-----END CERTIFICATE-----";
        let mut out = Vec::new();
        let mut rest = pem.trim();
        while !rest.is_empty() {
            let end = rest
                .find(END)
                .ok_or("not a PEM certificate chain")?
                .saturating_add(END.len());
            out.push(Cert::from_pem(&rest[..end])?);
            rest = rest[end..].trim_start();
        }
        Ok(out)
    }

    pub fn valid_at(&self, t: i64) -> bool {
        self.not_before <= t && t <= self.not_after
    }

    fn extension(&self, id: ObjectIdentifier) -> Option<(bool, &[u8])> {
        self.cert
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .find(|e| e.extn_id == id)
            .map(|e| (e.critical, e.extn_value.as_bytes()))
    }

    /// RFC 5280 §4.2: a critical extension this code does not process refuses the certificate.
    fn unknown_critical(&self) -> Option<String> {
        let known = [KEY_USAGE, SAN, BASIC_CONSTRAINTS, EXT_KEY_USAGE];
        self.cert
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .find(|e| e.critical && !known.contains(&e.extn_id))
            .map(|e| e.extn_id.to_string())
    }

    /// May this CA issue a chain with `below` intermediate CAs under it (RFC 5280 §4.2.1.9
    /// pathLenConstraint)?
    fn allows_depth(&self, below: usize) -> bool {
        self.extension(BASIC_CONSTRAINTS)
            .and_then(|(_, v)| BasicConstraints::from_der(v).ok())
            .and_then(|b| b.path_len_constraint)
            .is_none_or(|max| below <= max as usize)
    }

    fn is_ca(&self) -> bool {
        let bc = self
            .extension(BASIC_CONSTRAINTS)
            .and_then(|(_, v)| BasicConstraints::from_der(v).ok());
        let ku = self
            .extension(KEY_USAGE)
            .and_then(|(_, v)| KeyUsage::from_der(v).ok());
        // RFC 5280 §4.2.1.9 / §4.2.1.3: a certificate signs certificates only as a CA with
        // keyCertSign, where key usage is present.
        bc.is_some_and(|b| b.ca) && ku.as_ref().is_none_or(|k| k.key_cert_sign())
    }

    fn is_code_signing_leaf(&self) -> bool {
        let ca = self
            .extension(BASIC_CONSTRAINTS)
            .and_then(|(_, v)| BasicConstraints::from_der(v).ok())
            .is_some_and(|b| b.ca);
        let eku = self
            .extension(EXT_KEY_USAGE)
            .and_then(|(_, v)| ExtendedKeyUsage::from_der(v).ok())
            .is_some_and(|e| e.0.contains(&CODE_SIGNING));
        let ku = self
            .extension(KEY_USAGE)
            .and_then(|(_, v)| KeyUsage::from_der(v).ok())
            .is_none_or(|k| k.digital_signature());
        !ca && eku && ku
    }

    /// Is this certificate signed by `issuer` (names chain and the signature verifies)?
    fn issued_by(&self, issuer: &Cert) -> bool {
        let (Ok(a), Ok(b)) = (
            self.cert.tbs_certificate.issuer.to_der(),
            issuer.cert.tbs_certificate.subject.to_der(),
        ) else {
            return false;
        };
        if a != b {
            return false;
        }
        let alg = self.cert.signature_algorithm.oid;
        // RFC 5280 §4.1.1.2: the signed and the outer algorithm must be the same.
        if self.cert.tbs_certificate.signature.oid != alg {
            return false;
        }
        let Some(sig) = self.cert.signature.as_bytes() else {
            return false;
        };
        let ecdsa = matches!(issuer.key, PublicKey::P256(_) | PublicKey::P384(_));
        let hash = if alg == ECDSA_SHA256 && ecdsa
            || alg == RSA_SHA256 && matches!(issuer.key, PublicKey::Rsa(_))
            || alg == ED25519 && matches!(issuer.key, PublicKey::Ed25519(_))
        {
            Hash::Sha256
        } else if alg == ECDSA_SHA384 && ecdsa {
            Hash::Sha384
        } else {
            return false;
        };
        issuer.key.verifies_with(hash, &self.tbs, sig)
    }

    /// The signer's identities: the SAN's e-mail addresses and URIs (Fulcio puts the OIDC
    /// subject in exactly one of them).
    pub fn identities(&self) -> Vec<String> {
        use x509_cert::ext::pkix::name::GeneralName;
        let Some(san) = self
            .extension(SAN)
            .and_then(|(_, v)| SubjectAltName::from_der(v).ok())
        else {
            return Vec::new();
        };
        san.0
            .iter()
            .filter_map(|n| match n {
                GeneralName::Rfc822Name(s) | GeneralName::UniformResourceIdentifier(s) => {
                    Some(s.to_string())
                }
                _ => None,
            })
            .collect()
    }

    /// The OIDC issuer Fulcio recorded (v2 extension preferred, v1 as written by older CAs).
    pub fn oidc_issuer(&self) -> Option<String> {
        if let Some((_, v)) = self.extension(FULCIO_ISSUER_V2) {
            return x509_cert::der::asn1::Utf8StringRef::from_der(v)
                .ok()
                .map(|s| s.as_str().to_string());
        }
        self.extension(FULCIO_ISSUER_V1)
            .and_then(|(_, v)| std::str::from_utf8(v).ok().map(str::to_string))
    }

    /// SHA-256 of the certificate's SubjectPublicKeyInfo (RFC 6962's issuer key hash).
    fn spki_sha256(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let der = self
            .cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap_or_default();
        sha2::Sha256::digest(der).into()
    }
}

/// A CA of the trusted root: its certificates (as listed, leaf-most first) and when it may
/// have issued.
pub struct Authority {
    pub certs: Vec<Cert>,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
}

/// Checks that `leaf` is a code-signing certificate issued, directly or through the
/// `intermediates` the signature carried, by a certificate of one of `authorities`, everything
/// valid at `at`. The carried intermediates are untrusted: each must itself chain up. Returns
/// the hash of the leaf's issuer's key (for its SCTs).
pub fn verify_chain(
    leaf: &Cert,
    intermediates: &[Cert],
    authorities: &[Authority],
    at: i64,
) -> Result<[u8; 32], String> {
    if !leaf.valid_at(at) {
        return Err(format!(
            "the certificate was not valid at the log's integrated time {at}"
        ));
    }
    if !leaf.is_code_signing_leaf() {
        return Err("the certificate is not a code-signing end-entity certificate".into());
    }
    if let Some(ext) = leaf.unknown_critical() {
        return Err(format!(
            "the certificate has an unknown critical extension {ext}"
        ));
    }
    let anchors: Vec<&Cert> = authorities
        .iter()
        .filter(|a| a.valid_from <= at && a.valid_to.is_none_or(|end| at <= end))
        .flat_map(|a| a.certs.iter())
        .filter(|c| c.valid_at(at) && c.is_ca() && c.unknown_critical().is_none())
        .collect();
    let usable: Vec<&Cert> = intermediates
        .iter()
        .filter(|c| c.valid_at(at) && c.is_ca() && c.unknown_critical().is_none())
        .collect();
    let mut current = leaf;
    // The leaf's own issuer (its key is part of what a precertificate SCT signs).
    let mut leaf_issuer: Option<&Cert> = None;
    // Sigstore chains are leaf → intermediate → root; a few more hops cover private CAs.
    // `below`: the intermediate CAs between the issuer being tried and the leaf.
    for below in 0..4 {
        if let Some(a) = anchors
            .iter()
            .find(|a| current.issued_by(a) && a.allows_depth(below))
        {
            return Ok(leaf_issuer.unwrap_or(a).spki_sha256());
        }
        match usable
            .iter()
            .find(|c| !std::ptr::eq(**c, current) && current.issued_by(c) && c.allows_depth(below))
        {
            Some(next) => {
                leaf_issuer.get_or_insert(next);
                current = next
            }
            None => break,
        }
    }
    Err("the certificate was not issued by a CA of the trusted root".into())
}

/// RFC 6962 §3.2–3.3: checks the certificate's embedded SCTs. At least one must be by a
/// certificate-transparency log of the trusted root, valid at the SCT's time, and verify over
/// the precertificate (the TBS without the SCT extension) and the issuer's key hash.
pub fn verify_sct(
    leaf: &Cert,
    issuer_key_hash: &[u8; 32],
    ct_logs: &[super::trust::LogKey],
) -> Result<(), String> {
    let (_, ext) = leaf
        .extension(SCT_LIST)
        .ok_or("the certificate carries no SCT (it was not logged for certificate transparency)")?;
    let list = x509_cert::der::asn1::OctetString::from_der(ext)
        .map_err(|_| "the SCT extension is malformed")?;
    let list = list.as_bytes();
    let u16_at = |b: &[u8], i: usize| -> Option<usize> {
        Some(((*b.get(i)? as usize) << 8) | *b.get(i + 1)? as usize)
    };
    let total = u16_at(list, 0).ok_or("the SCT list is malformed")?;
    let mut body = list.get(2..2 + total).ok_or("the SCT list is malformed")?;
    // The precertificate: the TBS without the SCT extension, re-encoded (RFC 6962 §3.2).
    let mut tbs = leaf.cert.tbs_certificate.clone();
    if let Some(exts) = tbs.extensions.as_mut() {
        exts.retain(|e| e.extn_id != SCT_LIST);
    }
    let tbs = tbs.to_der().map_err(|e| format!("precertificate: {e}"))?;
    let mut last = String::from("no SCT of a trusted log verifies");
    while !body.is_empty() {
        let len = u16_at(body, 0).ok_or("the SCT list is malformed")?;
        let sct = body.get(2..2 + len).ok_or("the SCT list is malformed")?;
        body = &body[2 + len..];
        // version(1) log_id(32) timestamp(8) extensions(2+n) hash(1) sig(1) sig_len(2) sig
        if sct.first() != Some(&0) || sct.len() < 1 + 32 + 8 + 2 {
            continue;
        }
        let log_id = &sct[1..33];
        let timestamp_ms = u64::from_be_bytes(sct[33..41].try_into().unwrap_or([0; 8]));
        let Some(ext_len) = u16_at(sct, 41) else {
            continue;
        };
        let Some(exts) = sct.get(43..43 + ext_len) else {
            continue;
        };
        let rest = &sct[43 + ext_len..];
        let (Some(&hash), Some(sig_len)) = (rest.first(), u16_at(rest, 2)) else {
            continue;
        };
        let Some(sig) = rest.get(4..4 + sig_len) else {
            continue;
        };
        if hash != 4 {
            // Only SHA-256 (RFC 5246 HashAlgorithm 4) is used by CT logs.
            continue;
        }
        let at = (timestamp_ms / 1000) as i64;
        let Some(log) = ct_logs.iter().find(|l| {
            l.log_id == log_id && l.valid_from <= at && l.valid_to.is_none_or(|end| at <= end)
        }) else {
            last = "the SCT is by no certificate-transparency log of the trusted root".into();
            continue;
        };
        let mut signed = Vec::with_capacity(tbs.len() + 64);
        signed.push(0); // version v1
        signed.push(0); // signature_type certificate_timestamp
        signed.extend_from_slice(&timestamp_ms.to_be_bytes());
        signed.extend_from_slice(&1u16.to_be_bytes()); // entry_type precert_entry
        signed.extend_from_slice(issuer_key_hash);
        let n = tbs.len();
        signed.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
        signed.extend_from_slice(&tbs);
        signed.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        signed.extend_from_slice(exts);
        if log.key.verifies(&signed, sig) {
            return Ok(());
        }
        last = "the SCT does not verify with its log's key".into();
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_is_not_a_certificate() {
        assert!(Cert::from_der(b"junk").is_err());
        assert!(Cert::from_pem("this is not a valid certificate").is_err());
        assert!(first_inner_element(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
    }
}
