//! Public keys: ECDSA P-256 (SHA-256, ASN.1 DER signatures, as cosign writes them), ECDSA P-384
//! (SHA-384; the Sigstore Fulcio CAs), RSA (PKCS#1 v1.5 with SHA-256) and Ed25519, read from PEM
//! `PUBLIC KEY` or DER SubjectPublicKeyInfo (a certificate's key, a trusted root's log key).

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use sha2::Digest as _;

/// The digest a signature was made over, as an X.509 signature algorithm names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
}

pub enum PublicKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(rsa::pkcs1v15::VerifyingKey<sha2::Sha256>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublicKey::P256(_) => "PublicKey(ECDSA P-256)",
            PublicKey::P384(_) => "PublicKey(ECDSA P-384)",
            PublicKey::Rsa(_) => "PublicKey(RSA)",
            PublicKey::Ed25519(_) => "PublicKey(Ed25519)",
        })
    }
}

impl PublicKey {
    /// Parses a PEM public key of one of the three supported kinds.
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P384(k));
        }
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_pem(pem) {
            return Self::rsa(k);
        }
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::Ed25519(k));
        }
        Err("not a PEM ECDSA P-256/P-384, RSA or Ed25519 public key".into())
    }

    /// Parses a DER SubjectPublicKeyInfo of one of the supported kinds.
    pub fn from_der(der: &[u8]) -> Result<PublicKey, String> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P384(k));
        }
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(der) {
            return Self::rsa(k);
        }
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::Ed25519(k));
        }
        Err("not an ECDSA P-256/P-384, RSA or Ed25519 public key".into())
    }

    fn rsa(k: rsa::RsaPublicKey) -> Result<PublicKey, String> {
        // Keys this small are forgeable; refuse them rather than trust them.
        if rsa::traits::PublicKeyParts::n(&k).bits() < 2048 {
            return Err("RSA keys under 2048 bits are refused".into());
        }
        Ok(PublicKey::Rsa(rsa::pkcs1v15::VerifyingKey::new(k)))
    }

    /// Does `sig` sign `msg` with the digest `hash` (an X.509 signature algorithm's choice)?
    /// ECDSA keys accept either digest (FIPS 186-4 §6.4 truncates a longer one); RSA only
    /// SHA-256; Ed25519 hashes internally and is checked as usual.
    pub fn verifies_with(&self, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
        let prehash = match hash {
            Hash::Sha256 => sha2::Sha256::digest(msg).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(msg).to_vec(),
        };
        match self {
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(sig)
                .is_ok_and(|s| k.verify_prehash(&prehash, &s).is_ok()),
            PublicKey::P384(k) => p384::ecdsa::Signature::from_der(sig)
                .is_ok_and(|s| k.verify_prehash(&prehash, &s).is_ok()),
            PublicKey::Rsa(_) if hash != Hash::Sha256 => false,
            PublicKey::Rsa(_) | PublicKey::Ed25519(_) => self.verifies(msg, sig),
        }
    }

    /// SHA-256 of the key's SubjectPublicKeyInfo, re-encoded from the parsed key (uncompressed
    /// EC points): two files holding one key, in whatever encoding, have one fingerprint, so a
    /// threshold counts keys, not file names.
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        use p256::pkcs8::EncodePublicKey;
        let der = match self {
            PublicKey::P256(k) => k.to_public_key_der().ok()?,
            PublicKey::P384(k) => k.to_public_key_der().ok()?,
            PublicKey::Rsa(k) => AsRef::<rsa::RsaPublicKey>::as_ref(k)
                .to_public_key_der()
                .ok()?,
            PublicKey::Ed25519(k) => k.to_public_key_der().ok()?,
        };
        Some(<sha2::Sha256 as sha2::Digest>::digest(der.as_bytes()).into())
    }

    /// Does `sig` sign `msg` under this key, with the key's usual digest (SHA-256 for P-256
    /// and RSA, SHA-384 for P-384)? Any malformed signature is simply `false`.
    pub fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(sig)
                .or_else(|_| p256::ecdsa::Signature::from_slice(sig))
                .is_ok_and(|s| k.verify(msg, &s).is_ok()),
            PublicKey::P384(k) => p384::ecdsa::Signature::from_der(sig)
                .or_else(|_| p384::ecdsa::Signature::from_slice(sig))
                .is_ok_and(|s| k.verify(msg, &s).is_ok()),
            PublicKey::Rsa(k) => {
                rsa::pkcs1v15::Signature::try_from(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
            PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_strict(msg, &s).is_ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use ed25519_dalek::Signer;

    #[test]
    fn the_three_key_kinds() {
        let cosign = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFNLqFhf4fiN6o/glAuYnq2jYUeL0\nvRuLu/z39pmbVwS9ff5AYnlwaP9sxREajdLY9ynM6G1sy6AAmb7Z63TsLg==\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            PublicKey::from_pem(cosign),
            Ok(PublicKey::P256(_))
        ));
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pem = sk
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let k = PublicKey::from_pem(&pem).unwrap();
        assert!(matches!(k, PublicKey::Ed25519(_)));
        let sig = sk.sign(b"payload").to_bytes();
        assert!(k.verifies(b"payload", &sig));
        assert!(!k.verifies(b"payload2", &sig));
        assert!(!k.verifies(b"payload", &sig[..10]));
        assert!(PublicKey::from_pem("not a key").is_err());
    }

    #[test]
    fn one_key_in_two_encodings_has_one_fingerprint() {
        use base64::Engine;
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let vk = sk.verifying_key();
        let plain = vk.to_public_key_pem(Default::default()).unwrap();
        // The same key with a compressed point (SEC1 §2.3.3), SPKI written out by hand.
        let mut der = hex::decode("3039301306072a8648ce3d020106082a8648ce3d030107032200").unwrap();
        der.extend_from_slice(vk.to_encoded_point(true).as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        // RFC 7468 lines are at most 64 characters.
        let compressed = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &b64[..64],
            &b64[64..]
        );
        assert_ne!(plain, compressed);
        let a = PublicKey::from_pem(&plain).unwrap();
        let b = PublicKey::from_pem(&compressed).unwrap();
        assert!(a.fingerprint().is_some());
        assert_eq!(a.fingerprint(), b.fingerprint());
    }
}
