//! The real cosign signatures of containers/image (tests/fixtures/containers-image, see its
//! ORIGIN.md) through tollgate's verifier, under tollgate's semantics: the signed
//! docker-reference must name the repository (tags ignored), the payload digest must be the
//! image's, and signers count once per distinct trusted key.

use std::path::{Path, PathBuf};

use base64::Engine;
use tollgate::policy::oci::{reference_repository, Digest, Repository};
use tollgate::policy::oci::{KeylessIdentity, SubjectMatch};
use tollgate::policy::Sha256;
use tollgate::verify::cosign::{verify_legacy, SignatureDeny, SignatureLayer, TrustedKey};
use tollgate::verify::keys::PublicKey;
use tollgate::verify::sigstore::{examine, judge_signature, Artifact, Trust};
use tollgate::verify::trust::TrustRoot;

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
    assert_eq!(
        r.unwrap_err().to_string(),
        "signed, but by no trusted signer (found: 1 signature(s) by an unknown key or an untrusted certificate)"
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
    // A signature layer without its signature is a broken signature, not "unsigned".
    layer.annotations.clear();
    let refused = verify_legacy(&[layer], &digest, &repo, None, &keys, 1).unwrap_err();
    assert_eq!(refused.code(), "untrusted_signer");
    assert!(
        refused.to_string().contains("carries no base64 signature"),
        "{refused}"
    );
    assert_eq!(
        verify_legacy(&[], &digest, &repo, None, &keys, 1),
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
    assert_eq!(PublicKey::from_pem(&pem).unwrap().kind(), "RSA");
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

// ---- keyless: containers/image's dir-img-cosign-fulcio-rekor-valid and sigstore-rs's v0.3 bundle,
// under the Sigstore production trusted root (tests/fixtures/sigstore/ORIGIN.md).

const FULCIO_REPO: &str = "192.168.64.2:5000/cosign-signed/fulcio-rekor-1";
const GITHUB_OAUTH: &str = "https://github.com/login/oauth";

fn sigstore_fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sigstore")
            .join(name),
    )
    .unwrap()
}

fn prod_root_json() -> serde_json::Value {
    serde_json::from_slice(&sigstore_fixture("prod-trusted_root.json")).unwrap()
}

fn root_of(v: &serde_json::Value) -> TrustRoot {
    TrustRoot::from_json(&serde_json::to_vec(v).unwrap()).unwrap()
}

fn exact(issuer: &str, subject: &str) -> KeylessIdentity {
    KeylessIdentity {
        issuer: issuer.into(),
        subject: SubjectMatch::Exact(subject.into()),
    }
}

fn digest_of(bytes: &[u8]) -> Digest {
    Digest(Sha256::from_bytes(
        <sha2::Sha256 as sha2::Digest>::digest(bytes).into(),
    ))
}

/// The fulcio-rekor-valid signature, after `edit`, judged keyless under `root`.
fn keyless_verdict(
    root: &TrustRoot,
    identity: &KeylessIdentity,
    edit: impl FnOnce(&mut SignatureLayer),
) -> Result<Vec<String>, SignatureDeny> {
    let dir = fixtures().join("dir-img-cosign-fulcio-rekor-valid");
    let digest = digest_of(&std::fs::read(dir.join("manifest.json")).unwrap());
    let mut layer = layers_of(&dir).remove(0);
    edit(&mut layer);
    let ex = examine(
        &[Artifact::Signature(layer)],
        &Trust {
            keys: &[],
            root: Some(root),
        },
    );
    judge_signature(
        &ex,
        &digest,
        &Repository::parse(FULCIO_REPO).unwrap(),
        &[],
        std::slice::from_ref(identity),
        1,
        false,
    )
}

#[test]
fn fulcio_rekor_valid_is_accepted_at_its_integrated_time() {
    let root = root_of(&prod_root_json());
    let me = exact(GITHUB_OAUTH, "mitr@redhat.com");
    // The certificate lived ten minutes in January 2023: it is checked at the SET's
    // integratedTime (1674247893), not now.
    assert_eq!(
        keyless_verdict(&root, &me, |_| {}),
        Ok(vec![format!("mitr@redhat.com from {GITHUB_OAUTH}")])
    );
    // The chain annotation is not needed when the trusted root holds the intermediate.
    assert!(keyless_verdict(&root, &me, |l| {
        l.annotations.remove("dev.sigstore.cosign/chain");
    })
    .is_ok());
    let regex = KeylessIdentity::new_regex(GITHUB_OAUTH, r"mitr@redhat\.com").unwrap();
    assert!(keyless_verdict(&root, &regex, |_| {}).is_ok());
}

#[test]
fn fulcio_rekor_valid_is_refused_for_every_broken_part() {
    let root = root_of(&prod_root_json());
    let me = exact(GITHUB_OAUTH, "mitr@redhat.com");
    let code = |r: Result<Vec<String>, SignatureDeny>| r.map_err(|e| e.code()).err();
    // Another identity or issuer: the signer is named in the refusal.
    let other = keyless_verdict(
        &root,
        &exact(GITHUB_OAUTH, "this-does-not-match@example.com"),
        |_| {},
    );
    assert_eq!(
        other.clone().unwrap_err().to_string(),
        format!("signed, but by no trusted signer (found: mitr@redhat.com from {GITHUB_OAUTH})")
    );
    assert_eq!(
        code(keyless_verdict(
            &root,
            &exact("https://accounts.google.com", "mitr@redhat.com"),
            |_| {}
        )),
        Some("untrusted_signer")
    );
    // A pattern that matches only part of the subject does not pass.
    let partial = KeylessIdentity::new_regex(GITHUB_OAUTH, "mitr").unwrap();
    assert!(keyless_verdict(&root, &partial, |_| {}).is_err());
    // The SET missing, junk, or altered.
    for edit in [
        Box::new(|l: &mut SignatureLayer| {
            l.annotations.remove("dev.sigstore.cosign/bundle");
        }) as Box<dyn Fn(&mut SignatureLayer)>,
        Box::new(|l: &mut SignatureLayer| {
            l.annotations.insert(
                "dev.sigstore.cosign/bundle".into(),
                "this is not a valid SET".into(),
            );
        }),
        Box::new(|l: &mut SignatureLayer| {
            let b = l.annotations["dev.sigstore.cosign/bundle"].replace("1674247893", "1674247894");
            l.annotations.insert("dev.sigstore.cosign/bundle".into(), b);
        }),
        // The certificate missing or junk.
        Box::new(|l: &mut SignatureLayer| {
            l.annotations.remove("dev.sigstore.cosign/certificate");
        }),
        Box::new(|l: &mut SignatureLayer| {
            l.annotations.insert(
                "dev.sigstore.cosign/certificate".into(),
                "this is not a valid certificate".into(),
            );
        }),
        // Another signature under the real certificate and log entry.
        Box::new(|l: &mut SignatureLayer| {
            let valid = layers_of(&fixtures().join("dir-img-cosign-key-rekor-valid")).remove(0);
            l.annotations.insert(
                "dev.cosignproject.cosign/signature".into(),
                valid.annotations["dev.cosignproject.cosign/signature"].clone(),
            );
        }),
    ] {
        assert_eq!(
            code(keyless_verdict(&root, &me, edit)),
            Some("untrusted_signer")
        );
    }
    // The real certificate and Rekor entry copied onto another signing of the same image (the
    // key-rekor-valid signature of the same manifest digest): the signature does not verify with
    // the certificate's key, and the entry records another signature.
    let copied = keyless_verdict(&root, &me, |l| {
        let mut other = layers_of(&fixtures().join("dir-img-cosign-key-rekor-valid")).remove(0);
        for a in [
            "dev.sigstore.cosign/certificate",
            "dev.sigstore.cosign/chain",
            "dev.sigstore.cosign/bundle",
        ] {
            other.annotations.insert(a.into(), l.annotations[a].clone());
        }
        *l = other;
    });
    assert_eq!(code(copied), Some("untrusted_signer"));
    // No trusted root: certificates are not trusted at all.
    let dir = fixtures().join("dir-img-cosign-fulcio-rekor-valid");
    let ex = examine(
        &[Artifact::Signature(layers_of(&dir).remove(0))],
        &Trust {
            keys: &[],
            root: None,
        },
    );
    let digest = digest_of(&std::fs::read(dir.join("manifest.json")).unwrap());
    assert!(judge_signature(
        &ex,
        &digest,
        &Repository::parse(FULCIO_REPO).unwrap(),
        &[],
        std::slice::from_ref(&me),
        1,
        false
    )
    .is_err());
    // The same signature judged for another repository (it names fulcio-rekor-1).
    assert_eq!(
        judge_signature(
            &examine(
                &[Artifact::Signature(layers_of(&dir).remove(0))],
                &Trust {
                    keys: &[],
                    root: Some(&root)
                }
            ),
            &digest,
            &Repository::parse("registry.test/other").unwrap(),
            &[],
            &[me],
            1,
            false
        )
        .map_err(|e| e.code()),
        Err("signature_other_repository")
    );
    // Judged for another repository by a rule that does not trust its signer: the claim of
    // an untrusted signer is no reason of its own; it is "no trusted signer (found: …)".
    let stranger = judge_signature(
        &examine(
            &[Artifact::Signature(layers_of(&dir).remove(0))],
            &Trust {
                keys: &[],
                root: Some(&root),
            },
        ),
        &digest,
        &Repository::parse("registry.test/other").unwrap(),
        &[],
        &[exact(GITHUB_OAUTH, "someone@example.com")],
        1,
        false,
    )
    .unwrap_err();
    assert_eq!(
        stranger.to_string(),
        format!("signed, but by no trusted signer (found: mitr@redhat.com from {GITHUB_OAUTH})")
    );
}

#[test]
fn fulcio_rekor_valid_against_edited_trusted_roots() {
    let me = exact(GITHUB_OAUTH, "mitr@redhat.com");
    let b64 = base64::engine::general_purpose::STANDARD;
    // The Rekor key replaced by another key under the same log id: the SET does not verify.
    let mut v = prod_root_json();
    let cosign_der = b64.encode(
        b64.decode(
            std::fs::read_to_string(fixtures().join("cosign.pub"))
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap(),
    );
    v["tlogs"][0]["publicKey"]["rawBytes"] = cosign_der.clone().into();
    assert!(keyless_verdict(&root_of(&v), &me, |_| {}).is_err());
    // The certificate's SCT checked with another key under the CT log's id: refused; a root
    // that lists no CT log does not ask for one.
    let mut v = prod_root_json();
    for log in v["ctlogs"].as_array_mut().unwrap() {
        log["publicKey"]["rawBytes"] = cosign_der.clone().into();
    }
    let refused = keyless_verdict(&root_of(&v), &me, |_| {}).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("carries no SCT that verifies with a CT log of the trusted root"),
        "{refused}"
    );
    let mut v = prod_root_json();
    v["ctlogs"] = serde_json::json!([]);
    assert!(keyless_verdict(&root_of(&v), &me, |_| {}).is_ok());
    // The CT logs' periods ending before the SCT was made.
    let mut v = prod_root_json();
    for log in v["ctlogs"].as_array_mut().unwrap() {
        log["publicKey"]["validFor"]["end"] = "2022-11-01T00:00:00Z".into();
    }
    assert!(keyless_verdict(&root_of(&v), &me, |_| {}).is_err());
    // The CA no longer valid at the integrated time (its period ended the day before).
    let mut v = prod_root_json();
    for ca in v["certificateAuthorities"].as_array_mut().unwrap() {
        ca["validFor"]["end"] = "2023-01-19T00:00:00Z".into();
    }
    assert!(keyless_verdict(&root_of(&v), &me, |_| {}).is_err());
    // Only the Fulcio root (fulcio_v1.crt.pem) trusted: the chain annotation supplies the
    // intermediate, which must itself chain to the root; without it there is no path.
    let mut v = prod_root_json();
    let root_pem = std::fs::read_to_string(fixtures().join("fulcio_v1.crt.pem")).unwrap();
    let root_der = b64.encode(
        b64.decode(
            root_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap(),
    );
    v["certificateAuthorities"] = serde_json::json!([{
        "subject": {}, "uri": "https://fulcio.example",
        "certChain": {"certificates": [{"rawBytes": root_der}]},
        "validFor": {"start": "2021-01-01T00:00:00Z"}
    }]);
    let only_root = root_of(&v);
    assert!(keyless_verdict(&only_root, &me, |_| {}).is_ok());
    assert!(keyless_verdict(&only_root, &me, |l| {
        l.annotations.remove("dev.sigstore.cosign/chain");
    })
    .is_err());
    // A trusted root that is not one is refused outright.
    assert!(TrustRoot::from_json(b"{}").is_err());
    assert!(TrustRoot::from_json(br#"{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[{"publicKey":{"rawBytes":"AAAA","validFor":{"start":"2021-01-01T00:00:00Z"}},"logId":{"keyId":"AAAA"}}]}"#).is_err());
}

const KUBEWARDEN: &str =
    "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0";
const GITHUB_ACTIONS: &str = "https://token.actions.githubusercontent.com";
const BUNDLE_DIGEST: &str =
    "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172";

fn bundle_verdict(
    bundle: &[u8],
    digest: &str,
    identity: &KeylessIdentity,
) -> Result<Vec<String>, SignatureDeny> {
    let root = root_of(&prod_root_json());
    let ex = examine(
        &[Artifact::Bundle(bundle.to_vec())],
        &Trust {
            keys: &[],
            root: Some(&root),
        },
    );
    judge_signature(
        &ex,
        &Digest::parse(digest).unwrap(),
        // v3 bundles name no repository: any repository is judged on the digest alone.
        &Repository::parse("ghcr.io/kubewarden/kubewarden-controller").unwrap(),
        &[],
        std::slice::from_ref(identity),
        1,
        false,
    )
}

#[test]
fn the_v03_bundle_is_accepted_for_its_digest_and_identity() {
    let bundle = sigstore_fixture("bundle_v03.json");
    assert_eq!(
        bundle_verdict(&bundle, BUNDLE_DIGEST, &exact(GITHUB_ACTIONS, KUBEWARDEN)),
        Ok(vec![format!("{KUBEWARDEN} from {GITHUB_ACTIONS}")])
    );
    let by_regex = KeylessIdentity::new_regex(
        GITHUB_ACTIONS,
        r"https://github\.com/kubewarden/.+@refs/tags/v.*",
    )
    .unwrap();
    assert!(bundle_verdict(&bundle, BUNDLE_DIGEST, &by_regex).is_ok());
}

#[test]
fn the_v03_bundle_is_refused_when_anything_differs() {
    let bundle = sigstore_fixture("bundle_v03.json");
    let code = |r: Result<Vec<String>, SignatureDeny>| r.map_err(|e| e.code()).err();
    let me = exact(GITHUB_ACTIONS, KUBEWARDEN);
    // Another image: the statement's subject is the only binding.
    let other = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        code(bundle_verdict(&bundle, &other, &me)),
        Some("signature_other_digest")
    );
    // Another identity or issuer.
    assert_eq!(
        code(bundle_verdict(&bundle, BUNDLE_DIGEST, &exact(GITHUB_ACTIONS, "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.35.0"))),
        Some("untrusted_signer")
    );
    assert_eq!(
        code(bundle_verdict(
            &bundle,
            BUNDLE_DIGEST,
            &exact("https://accounts.google.com", KUBEWARDEN)
        )),
        Some("untrusted_signer")
    );
    let mut v: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: Vec<Edit> = vec![
        // The log entry's body altered (its SET no longer verifies).
        Box::new(|v| {
            let e = &mut v["verificationMaterial"]["tlogEntries"][0];
            let body = e["canonicalizedBody"].as_str().unwrap().replace('A', "B");
            e["canonicalizedBody"] = body.into();
        }),
        // The SET and the RFC 3161 timestamp both removed: no verified signing time is left.
        Box::new(|v| {
            v["verificationMaterial"]["tlogEntries"][0]
                .as_object_mut()
                .unwrap()
                .remove("inclusionPromise");
            v["verificationMaterial"]
                .as_object_mut()
                .unwrap()
                .remove("timestampVerificationData");
        }),
        // The RFC 3161 timestamp altered.
        Box::new(|v| {
            let ts = &mut v["verificationMaterial"]["timestampVerificationData"]
                ["rfc3161Timestamps"][0]["signedTimestamp"];
            let t = ts.as_str().unwrap().replace('A', "B");
            *ts = t.into();
        }),
        // The integrated time moved (the SET covers it).
        Box::new(|v| {
            v["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = "1775719410".into();
        }),
        // The inclusion proof's root hash altered.
        Box::new(|v| {
            v["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["rootHash"] =
                base64::engine::general_purpose::STANDARD
                    .encode([7u8; 32])
                    .into();
        }),
        // The statement changed under the signature.
        Box::new(|v| {
            let p = base64::engine::general_purpose::STANDARD
                .decode(v["dsseEnvelope"]["payload"].as_str().unwrap())
                .unwrap();
            let p = String::from_utf8(p)
                .unwrap()
                .replace("c811d58d", "c811d58e");
            v["dsseEnvelope"]["payload"] =
                base64::engine::general_purpose::STANDARD.encode(p).into();
        }),
        // No tlog entry at all.
        Box::new(|v| {
            v["verificationMaterial"]["tlogEntries"] = serde_json::json!([]);
        }),
        // Not a bundle.
        Box::new(|v| {
            v["mediaType"] = "application/json".into();
        }),
        // The one real entry repeated: each copy would cost a full check before the signer
        // is known; more than one is refused.
        Box::new(|v| {
            let e = v["verificationMaterial"]["tlogEntries"][0].clone();
            v["verificationMaterial"]["tlogEntries"] = serde_json::json!([e.clone(), e]);
        }),
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut e = v.clone();
        edit(&mut e);
        let r = bundle_verdict(&serde_json::to_vec(&e).unwrap(), BUNDLE_DIGEST, &me);
        assert!(r.is_err(), "edit {i} was accepted");
    }
    // Either source of time alone suffices: without the SET, the RFC 3161 timestamp of
    // Sigstore's timestamp authority dates the signature (as cosign v3 verifies it); without
    // the timestamp, the SET does.
    for drop in ["inclusionPromise", "timestampVerificationData"] {
        let mut e = v.clone();
        let target = if drop == "inclusionPromise" {
            &mut e["verificationMaterial"]["tlogEntries"][0]
        } else {
            &mut e["verificationMaterial"]
        };
        target.as_object_mut().unwrap().remove(drop);
        assert!(
            bundle_verdict(&serde_json::to_vec(&e).unwrap(), BUNDLE_DIGEST, &me).is_ok(),
            "without {drop}"
        );
    }
    // The checkpoint's signature altered.
    let cp = v["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]
        ["envelope"]
        .as_str()
        .unwrap()
        .to_string();
    let (text, sig) = cp.split_once("\n\n").unwrap();
    let tampered = format!(
        "{}\n\n{}",
        text.replace("rekor.sigstore.dev", "rekor.evil.dev"),
        sig
    );
    v["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]["envelope"] =
        tampered.into();
    assert!(bundle_verdict(&serde_json::to_vec(&v).unwrap(), BUNDLE_DIGEST, &me).is_err());
}

/// The key-rekor-valid signature (cosign2.pub, with a real Rekor entry of the public-good log)
/// judged with its key, with and without the production trusted root.
fn key_rekor_verdict(
    root: Option<&TrustRoot>,
    require_tlog: bool,
    edit: impl FnOnce(&mut SignatureLayer),
) -> Result<Vec<String>, SignatureDeny> {
    let dir = fixtures().join("dir-img-cosign-key-rekor-valid");
    let digest = digest_of(&std::fs::read(dir.join("manifest.json")).unwrap());
    let mut layer = layers_of(&dir).remove(0);
    edit(&mut layer);
    let k = key("cosign2.pub");
    let keys = [&k];
    let ex = examine(&[Artifact::Signature(layer)], &Trust { keys: &keys, root });
    judge_signature(
        &ex,
        &digest,
        &Repository::parse("192.168.64.2:5000/cosign-signed/key-1").unwrap(),
        &keys,
        &[],
        1,
        require_tlog,
    )
}

#[test]
fn a_log_entry_on_a_key_signature_is_verified_against_the_trusted_root() {
    let root = root_of(&prod_root_json());
    assert_eq!(
        key_rekor_verdict(Some(&root), false, |_| {}),
        Ok(vec!["cosign2.pub".to_string()])
    );
    // The entry altered: the key's signature alone no longer admits, and the refusal says
    // why (containers/image: REJECT when the SET is altered or checked with another key).
    let altered = |l: &mut SignatureLayer| {
        let b = l.annotations["dev.sigstore.cosign/bundle"].replace("1674251859", "1674251860");
        assert_ne!(b, l.annotations["dev.sigstore.cosign/bundle"]);
        l.annotations.insert("dev.sigstore.cosign/bundle".into(), b);
    };
    let refused = key_rekor_verdict(Some(&root), false, altered).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("signed by key cosign2.pub, but its transparency-log entry"),
        "{refused}"
    );
    let mut other_log = prod_root_json();
    let cosign_der = std::fs::read_to_string(fixtures().join("cosign.pub"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    for log in other_log["tlogs"].as_array_mut().unwrap() {
        log["publicKey"]["rawBytes"] = cosign_der.clone().into();
    }
    assert!(key_rekor_verdict(Some(&root_of(&other_log)), false, |_| {}).is_err());
    // Without a trusted root there is nothing to check the entry against: the key decides.
    assert!(key_rekor_verdict(None, false, altered).is_ok());
    // require_tlog: the verified entry counts; the same signature stripped of its entry, or
    // without a root to check it against, does not, and the refusal says why.
    assert!(key_rekor_verdict(Some(&root), true, |_| {}).is_ok());
    let stripped = key_rekor_verdict(Some(&root), true, |l| {
        l.annotations.remove("dev.sigstore.cosign/bundle");
    })
    .unwrap_err();
    assert!(
        stripped.to_string().contains(
            "key cosign2.pub without a verified transparency-log entry (the rule requires one)"
        ),
        "{stripped}"
    );
    assert!(key_rekor_verdict(None, true, |_| {}).is_err());
}

/// The pki-valid signature: made with a key whose certificate (from a private PKI, not a
/// Fulcio CA) is attached. A rule listing that key admits it; as keyless material it is not
/// trusted.
#[test]
fn a_key_signature_with_its_certificate_attached_counts_for_the_key() {
    use x509_cert::der::{Decode, Encode};
    let dir = fixtures().join("dir-img-cosign-pki-valid");
    let layer = layers_of(&dir).remove(0);
    let cert = x509_cert::Certificate::load_pem_chain(
        layer.annotations["dev.sigstore.cosign/certificate"].as_bytes(),
    )
    .unwrap()
    .remove(0);
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap();
    assert!(x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(&spki).is_ok());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let k = TrustedKey::from_pem("pki.pub", &pem).unwrap();
    let digest = digest_of(&std::fs::read(dir.join("manifest.json")).unwrap());
    let payload: serde_json::Value = serde_json::from_slice(&layer.payload).unwrap();
    let repo = reference_repository(
        payload["critical"]["identity"]["docker-reference"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let root = root_of(&prod_root_json());
    for root in [None, Some(&root)] {
        let ex = examine(
            &[Artifact::Signature(layer.clone())],
            &Trust { keys: &[&k], root },
        );
        assert_eq!(
            judge_signature(&ex, &digest, &repo, &[&k], &[], 1, false),
            Ok(vec!["pki.pub".to_string()])
        );
        // Its log entry records the certificate, not the key: it does not satisfy
        // require_tlog.
        assert!(judge_signature(&ex, &digest, &repo, &[&k], &[], 1, true).is_err());
    }
    // Keyless, the private PKI is not a Fulcio CA of the trusted root.
    let ex = examine(
        &[Artifact::Signature(layer)],
        &Trust {
            keys: &[],
            root: Some(&root),
        },
    );
    assert!(judge_signature(
        &ex,
        &digest,
        &repo,
        &[],
        &[exact("https://github.com/login/oauth", "mitr@redhat.com")],
        1,
        false
    )
    .is_err());
}
