//! Public keys an operator trusts (cosign key files): ECDSA P-256 and P-384, RSA (2048 to 8192
//! bits) and Ed25519, read from PEM `PUBLIC KEY` (SubjectPublicKeyInfo) and verified with
//! sigstore-crypto, the cryptography sigstore-verify itself uses.

use super::VerifyError;
use sigstore_verify::crypto::{KeyAlgorithm, SigningScheme, VerificationKey};
use sigstore_verify::types::{DerPublicKey, SignatureBytes};

/// The digest a signature was made over (what a bundle's `messageDigest` must name for
/// sigstore-verify to check the same signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
}

pub struct PublicKey {
    der: DerPublicKey,
    algorithm: KeyAlgorithm,
    /// The raw `subjectPublicKey` bits (an uncompressed EC point, a PKCS#1 RSA key, 32 bytes
    /// of Ed25519): what identifies the key whatever the SPKI around it says.
    raw: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.kind())
    }
}

impl PublicKey {
    /// Parses a PEM public key of one of the supported kinds.
    pub fn from_pem(pem: &str) -> Result<PublicKey, VerifyError> {
        let der = DerPublicKey::from_pem(pem).map_err(|_| {
            VerifyError::Key(
                "not a PEM public key (-----BEGIN PUBLIC KEY-----, SubjectPublicKeyInfo)".into(),
            )
        })?;
        Self::from_der(der.as_bytes())
    }

    /// Parses a DER SubjectPublicKeyInfo of one of the supported kinds.
    pub fn from_der(der: &[u8]) -> Result<PublicKey, VerifyError> {
        (|| -> Result<PublicKey, String> {
            let der = DerPublicKey::new(der.to_vec());
            let algorithm = KeyAlgorithm::from_spki(&der).map_err(|e| {
                format!("not an ECDSA P-256/P-384, RSA or Ed25519 public key ({e})")
            })?;
            if !matches!(
                algorithm,
                KeyAlgorithm::EcdsaP256
                    | KeyAlgorithm::EcdsaP384
                    | KeyAlgorithm::Rsa
                    | KeyAlgorithm::Ed25519
            ) {
                return Err(format!(
                    "{algorithm:?} keys are not accepted (ECDSA P-256/P-384, RSA or Ed25519)"
                ));
            }
            let key =
                VerificationKey::from_spki(&der).map_err(|e| format!("unreadable key: {e}"))?;
            // sigstore-crypto checks these when it verifies; checked here too, so a key that could
            // never verify anything is a load error instead of a rule that silently admits nothing.
            sigstore_verify::crypto::validate_raw_public_key(key.scheme(), key.as_bytes())
                .map_err(|e| match algorithm {
                    KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => format!(
                        "{e} (a compressed EC point: write the key uncompressed, as cosign does)"
                    ),
                    _ => e.to_string(),
                })?;
            Ok(PublicKey {
                raw: key.as_bytes().to_vec(),
                der,
                algorithm,
            })
        })()
        .map_err(VerifyError::Key)
    }

    pub fn kind(&self) -> &'static str {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
            KeyAlgorithm::EcdsaP384 => "ECDSA P-384",
            KeyAlgorithm::Rsa => "RSA",
            KeyAlgorithm::Ed25519 => "Ed25519",
            _ => "other",
        }
    }

    /// The DER SubjectPublicKeyInfo, as sigstore-verify's key policy takes it.
    pub fn der(&self) -> &DerPublicKey {
        &self.der
    }

    /// SHA-256 over the key's algorithm and raw key bits: two files holding one key (RSA
    /// parameters NULL or absent, PEM line lengths) have one fingerprint, so a threshold counts
    /// keys, not file names.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(self.kind().as_bytes());
        h.update([0]);
        h.update(&self.raw);
        h.finalize().into()
    }

    /// The signature schemes a cosign signature by this key may use. cosign hashes with
    /// SHA-256 whatever the key (sigstore/cosign `LoadPublicKey`, `crypto.SHA256`), while
    /// Sigstore's clients pair P-384 with SHA-384 (sigstore protobuf-specs
    /// `PKIX_ECDSA_P384_SHA_384`); both are tried, never a weaker hash than SHA-256.
    fn schemes(&self) -> &'static [SigningScheme] {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256 => &[SigningScheme::EcdsaP256Sha256],
            KeyAlgorithm::EcdsaP384 => &[
                SigningScheme::EcdsaP384Sha256,
                SigningScheme::EcdsaP384Sha384,
            ],
            KeyAlgorithm::Rsa => &[SigningScheme::RsaPkcs1Sha256],
            KeyAlgorithm::Ed25519 => &[SigningScheme::Ed25519],
            _ => &[],
        }
    }

    /// Does `sig` (ASN.1 DER for ECDSA, as cosign writes it) sign `msg` under this key? Any
    /// malformed signature is simply `false`.
    pub fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.verifying_hash(msg, sig).is_some()
    }

    /// The digest with which `sig` signs `msg` under this key, if it does.
    pub fn verifying_hash(&self, msg: &[u8], sig: &[u8]) -> Option<Hash> {
        let sig = SignatureBytes::new(sig.to_vec());
        self.schemes()
            .iter()
            .find(|s| {
                VerificationKey::from_spki_with_scheme(&self.der, **s)
                    .is_ok_and(|k| k.verify(msg, &sig).is_ok())
            })
            .map(|s| match s {
                SigningScheme::EcdsaP384Sha384 => Hash::Sha384,
                _ => Hash::Sha256,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const COSIGN: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFNLqFhf4fiN6o/glAuYnq2jYUeL0\nvRuLu/z39pmbVwS9ff5AYnlwaP9sxREajdLY9ynM6G1sy6AAmb7Z63TsLg==\n-----END PUBLIC KEY-----\n";

    fn pem(der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn the_kinds_and_what_is_refused() {
        let k = PublicKey::from_pem(COSIGN).unwrap();
        assert_eq!(k.kind(), "ECDSA P-256");
        assert!(!k.verifies(b"payload", b"junk"));
        assert!(PublicKey::from_pem("not a key").is_err());
        // An Ed25519 key (RFC 8410 §10.1's example key) parses.
        let ed = pem(
            &hex::decode("302a300506032b657003210019bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1")
                .unwrap(),
        );
        assert_eq!(PublicKey::from_pem(&ed).unwrap().kind(), "Ed25519");
        // The cosign key with its point compressed (SEC1 §2.3.3): refused with the reason.
        let der = DerPublicKey::from_pem(COSIGN).unwrap();
        let point = &der.as_bytes()[der.as_bytes().len() - 65..];
        let mut compressed =
            hex::decode("3039301306072a8648ce3d020106082a8648ce3d030107032200").unwrap();
        compressed.push(if point[64] % 2 == 0 { 2 } else { 3 });
        compressed.extend_from_slice(&point[1..33]);
        let err = PublicKey::from_pem(&pem(&compressed)).unwrap_err();
        assert!(err.to_string().contains("compressed"), "{err}");
        assert!(matches!(err, crate::verify::VerifyError::Key(_)));
    }

    /// A P-384 key and its ECDSA signature over "payload" with SHA-256, made by
    /// python-cryptography as cosign signs with a P-384 key (`crypto.SHA256`).
    const P384_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEv75CGlfmD2yde3yHaazuUQMmX5V/mRBw\nwdxSNrs/GolVdQdEySWJI4zyLNcPUynuU+4+BSQGqcts3yAGWENKdRN7ywRKlY7S\nMX4HJsUhcjTz8HEDWKgF1dF5ryNj6HUS\n-----END PUBLIC KEY-----\n";
    const P384_SHA256_SIG: &str = "306502306e5f6255ff143a858d555b3fe6d356c4d017a2b1ebb983dd44ea7d0ea065527ae9041bfd47d54a931ee310c2f1cdc158023100fb214bb27df1f9edd6063fad97919f56d96f806c8d3f200dcb2c1f8289e556342339ee3125196733c12e5a34efbb08b0";

    #[test]
    fn p384_keys_verify_cosign_sha256_and_sigstore_sha384_signatures() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::{
            EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING,
        };
        let k = PublicKey::from_pem(P384_PEM).unwrap();
        assert_eq!(k.kind(), "ECDSA P-384");
        let sig = hex::decode(P384_SHA256_SIG).unwrap();
        assert!(k.verifies(b"payload", &sig));
        assert!(!k.verifies(b"payload2", &sig));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        for alg in [
            &ECDSA_P384_SHA384_ASN1_SIGNING,
            &ECDSA_P256_SHA256_ASN1_SIGNING,
        ] {
            let pair = EcdsaKeyPair::generate(alg).unwrap();
            let k =
                PublicKey::from_pem(&pem(pair.public_key().as_der().unwrap().as_ref())).unwrap();
            let sig = pair.sign(&rng, b"payload").unwrap();
            assert!(k.verifies(b"payload", sig.as_ref()));
            assert!(!k.verifies(b"other", sig.as_ref()));
        }
    }

    #[test]
    fn one_key_in_two_encodings_has_one_fingerprint() {
        // The same key read from PEM with another line length: one fingerprint; another key:
        // another fingerprint.
        let a = PublicKey::from_pem(COSIGN).unwrap();
        let der = DerPublicKey::from_pem(COSIGN).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        let one_line = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        let b = PublicKey::from_pem(&one_line).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let ed = pem(
            &hex::decode("302a300506032b657003210019bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1")
                .unwrap(),
        );
        assert_ne!(
            a.fingerprint(),
            PublicKey::from_pem(&ed).unwrap().fingerprint()
        );
    }
}
