//! The real cosign signatures of containers/image (tests/fixtures/containers-image, see its
//! ORIGIN.md) through tollgate's verifier, under tollgate's semantics: the signed
//! docker-reference must name the repository (tags ignored), the payload digest must be the
//! image's, and signers count once per distinct trusted key.

use std::path::{Path, PathBuf};

use tollgate::policy::oci::{Digest, Repository};
use tollgate::policy::Sha256;
use tollgate::verify::cosign::{verify_legacy, SignatureDeny, SignatureLayer, TrustedKey};
use tollgate::verify::keys::PublicKey;

fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/containers-image");
    assert!(
        p.is_dir(),
        "the signature fixtures must be at {}",
        p.display()
    );
    p
}

fn key(name: &str) -> TrustedKey {
    let pem = std::fs::read_to_string(fixtures().join(name)).unwrap();
    TrustedKey::from_pem(name, &pem).unwrap()
}

fn layers_of(dir: &Path) -> Vec<SignatureLayer> {
    let mut out = Vec::new();
    for n in 1.. {
        let Ok(bytes) = std::fs::read(dir.join(format!("signature-{n}"))) else {
            break;
        };
        out.push(SignatureLayer::from_sigstore_json(&bytes).unwrap());
    }
    out
}

/// The decision for an image directory: no manifest means nothing to verify (REJECT).
fn verify(
    fixture: &str,
    repo: &str,
    keys: &[&str],
    threshold: usize,
) -> Result<Vec<String>, SignatureDeny> {
    let dir = fixtures().join(fixture);
    let Ok(manifest) = std::fs::read(dir.join("manifest.json")) else {
        return Err(SignatureDeny::Unsigned);
    };
    let digest = Digest(Sha256::from_bytes(
        <sha2::Sha256 as sha2::Digest>::digest(&manifest).into(),
    ));
    let keys: Vec<TrustedKey> = keys.iter().map(|k| key(k)).collect();
    let keys: Vec<&TrustedKey> = keys.iter().collect();
    verify_legacy(
        &layers_of(&dir),
        &digest,
        &Repository::parse(repo).unwrap(),
        None,
        &keys,
        threshold,
    )
}

const SINGLE: &str = "192.168.64.2:5000/cosign-signed-single-sample";

#[test]
fn accepted_vectors() {
    assert_eq!(
        verify("dir-img-cosign-valid", SINGLE, &["cosign.pub"], 1),
        Ok(vec!["cosign.pub".to_string()])
    );
    assert!(verify("dir-img-cosign-valid-2", SINGLE, &["cosign.pub"], 1).is_ok());
    assert!(
        verify("dir-img-cosign-mixed", SINGLE, &["cosign.pub"], 1).is_ok(),
        "one valid signature among an invalid one"
    );
    assert!(verify(
        "dir-img-cosign-valid-with-tag",
        "192.168.64.2:5000/skopeo-signed",
        &["cosign.pub"],
        1
    )
    .is_ok());
    assert!(verify(
        "dir-img-cosign-key-rekor-valid",
        "192.168.64.2:5000/cosign-signed/key-1",
        &["cosign2.pub"],
        1
    )
    .is_ok());
    // Key order and extra keys do not matter.
    assert!(verify(
        "dir-img-cosign-valid",
        SINGLE,
        &["cosign2.pub", "cosign.pub"],
        1
    )
    .is_ok());
}

#[test]
fn rejected_vectors() {
    let code = |r: Result<Vec<String>, SignatureDeny>| r.map_err(|e| e.code()).err();
    assert_eq!(
        code(verify(
            "dir-img-cosign-manifest-digest-error",
            SINGLE,
            &["cosign.pub"],
            1
        )),
        Some("signature_other_digest")
    );
    assert_eq!(
        code(verify(
            "dir-img-cosign-modified-manifest",
            SINGLE,
            &["cosign.pub"],
            1
        )),
        Some("signature_other_digest")
    );
    assert!(verify("dir-img-cosign-no-manifest", SINGLE, &["cosign.pub"], 1).is_err());
    assert_eq!(
        code(verify(
            "dir-img-cosign-other-attachment",
            SINGLE,
            &["cosign.pub"],
            1
        )),
        Some("unsigned")
    );
    assert_eq!(
        code(verify("dir-img-unsigned", SINGLE, &["cosign.pub"], 1)),
        Some("unsigned")
    );
    // The wrong key, no key at all, and another repository.
    assert_eq!(
        code(verify("dir-img-cosign-valid", SINGLE, &["cosign2.pub"], 1)),
        Some("untrusted_signer")
    );
    assert_eq!(
        code(verify("dir-img-cosign-valid", SINGLE, &[], 1)),
        Some("untrusted_signer")
    );
    assert_eq!(
        code(verify(
            "dir-img-cosign-valid",
            "docker.io/testing/manifest",
            &["cosign.pub"],
            1
        )),
        Some("signature_other_repository")
    );
    // Two signatures by one key are one signer.
    assert_eq!(
        code(verify(
            "dir-img-cosign-valid-2",
            SINGLE,
            &["cosign.pub", "cosign2.pub"],
            2
        )),
        Some("signature_threshold")
    );
    // A threshold of 0 means 1.
    assert_eq!(
        code(verify("dir-img-unsigned", SINGLE, &["cosign.pub"], 0)),
        Some("unsigned")
    );
}

#[test]
fn the_unknown_key_signature_is_refused() {
    let dir = fixtures();
    let layer = SignatureLayer::from_sigstore_json(
        &std::fs::read(dir.join("unknown-cosign-key.signature")).unwrap(),
    )
    .unwrap();
    let manifest = std::fs::read(dir.join("dir-img-cosign-mixed/manifest.json")).unwrap();
    let digest = Digest(Sha256::from_bytes(
        <sha2::Sha256 as sha2::Digest>::digest(&manifest).into(),
    ));
    let owned = [key("cosign.pub"), key("cosign2.pub"), key("rekor.pub")];
    let keys: Vec<&TrustedKey> = owned.iter().collect();
    let r = verify_legacy(
        &[layer],
        &digest,
        &Repository::parse(SINGLE).unwrap(),
        None,
        &keys,
        1,
    );
    assert_eq!(r, Err(SignatureDeny::Untrusted { found: 1 }));
    assert_eq!(
        r.unwrap_err().to_string(),
        "signed, but by no trusted signer (found: 1 signature(s))"
    );
}

#[test]
fn tampered_payload_or_signature_is_refused() {
    let dir = fixtures().join("dir-img-cosign-valid");
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let digest = Digest(Sha256::from_bytes(
        <sha2::Sha256 as sha2::Digest>::digest(&manifest).into(),
    ));
    let repo = Repository::parse(SINGLE).unwrap();
    let owned = [key("cosign.pub")];
    let keys: Vec<&TrustedKey> = owned.iter().collect();
    let mut layer = layers_of(&dir).remove(0);
    let mut payload = layer.clone();
    payload.payload = String::from_utf8(payload.payload)
        .unwrap()
        .replace("single-sample", "single-sampl3")
        .into_bytes();
    assert!(verify_legacy(&[payload], &digest, &repo, None, &keys, 1).is_err());
    layer.annotations.insert(
        "dev.cosignproject.cosign/signature".into(),
        "aW52YWxpZCBzaWduYXR1cmU=".into(),
    );
    assert!(verify_legacy(&[layer.clone()], &digest, &repo, None, &keys, 1).is_err());
    layer.annotations.clear();
    assert_eq!(
        verify_legacy(&[layer], &digest, &repo, None, &keys, 1),
        Err(SignatureDeny::Unsigned)
    );
    // signed_identity: a signature for another repository counts when the rule names it.
    let other = Repository::parse("registry.test/mirror/sample").unwrap();
    let signed = Repository::parse(SINGLE).unwrap();
    assert!(verify_legacy(&layers_of(&dir), &digest, &other, Some(&signed), &keys, 1).is_ok());
    assert!(verify_legacy(&layers_of(&dir), &digest, &other, None, &keys, 1).is_err());
}

#[test]
fn rsa_keys_parse_and_garbage_does_not() {
    let pem = std::fs::read_to_string(fixtures().join("some-rsa-key.pub")).unwrap();
    assert!(matches!(PublicKey::from_pem(&pem), Ok(PublicKey::Rsa(_))));
    let rsa = PublicKey::from_pem(&pem).unwrap();
    assert!(
        !rsa.verifies(b"x", &[0u8; 512]),
        "a zero signature must not verify"
    );
}

#[test]
fn one_key_under_two_names_is_one_signer() {
    let pem = std::fs::read_to_string(fixtures().join("cosign.pub")).unwrap();
    let a = TrustedKey::from_pem("a.pub", &pem).unwrap();
    let b = TrustedKey::from_pem("b.pub", &pem).unwrap();
    let dir = fixtures().join("dir-img-cosign-valid");
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let digest = Digest(Sha256::from_bytes(
        <sha2::Sha256 as sha2::Digest>::digest(&manifest).into(),
    ));
    let r = verify_legacy(
        &layers_of(&dir),
        &digest,
        &Repository::parse(SINGLE).unwrap(),
        None,
        &[&a, &b],
        2,
    );
    assert_eq!(r.map_err(|e| e.code()), Err("signature_threshold"));
}
