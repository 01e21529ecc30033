//! The standing adversarial suite: property tests over every parser that reads what someone
//! outside controls (upstream pages, requirement files, allowlists, references, signature
//! artifacts, bundles, wheels). Each must answer, never panic, and stay quick, on arbitrary
//! input and on real input with bytes changed. The suite runs a bounded number of cases;
//! `PROPTEST_CASES=N scripts/fuzz.sh` runs many more.

mod common;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use tollgate::policy::oci::{
    parse_image_ref, Digest, KeylessIdentity, RepoPattern, Repository, SubjectMatch, Tag,
};
use tollgate::policy::{DistFilename, ProjectName};
use tollgate::verify::cosign::SignatureLayer;
use tollgate::verify::sigstore::{examine, judge_signature, Artifact, Trust};
use tollgate::verify::trust::TrustRoot;

/// Each call gets at most this long, whatever its input (a parser that backtracks or loops on
/// a crafted input would show up here).
const QUICK: Duration = Duration::from_secs(2);

fn quick<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    assert!(
        started.elapsed() < QUICK,
        "{what} took {:?}",
        started.elapsed()
    );
    out
}

fn config(cases: u32) -> ProptestConfig {
    // PROPTEST_CASES (scripts/fuzz.sh) overrides the suite's bounded count.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes of a real input with some of them replaced, inserted or cut.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    proptest::collection::vec((0..len, any::<u8>(), 0u8..3), 1..8).prop_map(move |edits| {
        let mut b = base.clone();
        for (at, byte, kind) in edits {
            let at = at.min(b.len());
            match kind {
                0 if at < b.len() => b[at] = byte,
                1 => b.insert(at, byte),
                _ => {
                    b.truncate(at);
                }
            }
        }
        b
    })
}

fn text_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~\n\t]{0,400}",
        // Structure-shaped noise: brackets, quotes and separators parsers care about.
        "[<>/=\"'#\\[\\]{}:,;@\\\\ a-z0-9.\n-]{0,400}",
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn simple_pages(html in text_like(), json in proptest::collection::vec(any::<u8>(), 0..600)) {
        quick("parse_html", || tollgate::pypi::page::parse_html(&html));
        quick("parse_json", || tollgate::pypi::page::parse_json(&json).is_ok());
        quick("parse_json(text)", || tollgate::pypi::page::parse_json(html.as_bytes()).is_ok());
    }

    #[test]
    fn requirement_files(text in text_like()) {
        quick("requirements", || tollgate::policy::requirements::parse_requirements(&text));
        quick("pylock", || tollgate::policy::requirements::parse_pylock(&text).is_ok());
    }

    #[test]
    fn allowlist_files(text in text_like(), name in "[a-z]{1,8}", spec in "[<>=!~,.0-9a-z*]{0,20}") {
        let files = vec![("a.toml".to_string(), text)];
        quick("allowlist", || tollgate::policy::allowlist::load(&files, &["pypi".to_string()]).is_ok());
        // Shaped like a rule, with hostile values.
        let rule = format!("[[package]]\nname = \"{name}\"\nspecifier = \"{spec}\"\nmin_age = \"1d\"\n[[image]]\nrepository = \"docker.io/{name}/*\"\ntags = [\"{spec}\"]\n");
        let files = vec![("b.toml".to_string(), rule)];
        quick("allowlist rule", || tollgate::policy::allowlist::load(&files, &["pypi".to_string()]).is_ok());
    }

    #[test]
    fn names_and_references(s in text_like()) {
        quick("project", || ProjectName::parse(&s).is_ok());
        quick("digest", || Digest::parse(&s).is_ok());
        quick("tag", || Tag::parse(&s).is_ok());
        quick("repository", || Repository::parse(&s).is_ok());
        quick("pattern", || RepoPattern::parse(&s).is_ok());
        quick("image ref", || parse_image_ref(&s).is_ok());
        if let Ok(p) = ProjectName::parse("demo") {
            quick("filename", || DistFilename::parse(&s, &p).is_ok());
        }
        // A keyless subject pattern never matches more than its anchors allow.
        if let Ok(id) = KeylessIdentity::new_regex("https://issuer", &s) {
            let ok = id.matches(&["x".repeat(3)], Some("https://issuer"));
            if ok {
                if let SubjectMatch::Regex(re) = &id.subject {
                    prop_assert!(re.is_match("xxx"));
                }
            }
        }
    }
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path),
    )
    .unwrap()
}

const KUBEWARDEN: &str =
    "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0";
const DIGEST: &str = "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172";

fn root() -> &'static TrustRoot {
    static ROOT: std::sync::OnceLock<TrustRoot> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| TrustRoot::from_json(&fixture("sigstore/prod-trusted_root.json")).unwrap())
}

fn verdict(artifacts: &[Artifact]) -> bool {
    let ex = examine(
        artifacts,
        &Trust {
            keys: &[],
            root: Some(root()),
        },
    );
    let id = KeylessIdentity {
        issuer: "https://token.actions.githubusercontent.com".into(),
        subject: SubjectMatch::Exact(KUBEWARDEN.into()),
    };
    judge_signature(
        &ex,
        &Digest::parse(DIGEST).unwrap(),
        &Repository::parse("ghcr.io/kubewarden/kubewarden-controller").unwrap(),
        &[],
        std::slice::from_ref(&id),
        1,
        false,
    )
    .is_ok()
}

proptest! {
    #![proptest_config(config(96))]

    /// A real production bundle with bytes changed: never a panic, and never admitted with
    /// another claim or another signer: when a change leaves it admitted (a dropped optional
    /// part such as the timestamps, spacing in the checkpoint's unsigned signature lines), the
    /// signed envelope and the certificate are the original's.
    #[test]
    fn bundles_with_bytes_changed(bytes in mutated(fixture("sigstore/bundle_v03.json"))) {
        let original: serde_json::Value = serde_json::from_slice(&fixture("sigstore/bundle_v03.json")).unwrap();
        let admitted = quick("examine bundle", || verdict(&[Artifact::Bundle(bytes.clone())]));
        if admitted {
            let now: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&now["dsseEnvelope"], &original["dsseEnvelope"]);
            prop_assert_eq!(
                &now["verificationMaterial"]["certificate"],
                &original["verificationMaterial"]["certificate"]
            );
        }
    }

    #[test]
    fn bundles_from_noise(bytes in proptest::collection::vec(any::<u8>(), 0..2048), text in text_like()) {
        prop_assert!(!quick("noise bundle", || verdict(&[Artifact::Bundle(bytes)])));
        prop_assert!(!quick("text bundle", || verdict(&[Artifact::Bundle(text.into_bytes())])));
    }

    /// The real keyless legacy signature with its payload or annotations changed.
    #[test]
    fn legacy_layers_with_bytes_changed(
        payload in mutated(b"{\"critical\":{\"identity\":{\"docker-reference\":\"r\"},\"image\":{\"docker-manifest-digest\":\"sha256:0\"},\"type\":\"cosign container image signature\"},\"optional\":null}".to_vec()),
        annotation in text_like(),
        which in 0usize..4,
    ) {
        let keys = ["dev.cosignproject.cosign/signature", "dev.sigstore.cosign/certificate", "dev.sigstore.cosign/chain", "dev.sigstore.cosign/bundle"];
        let layer = SignatureLayer {
            media_type: "application/vnd.dev.cosign.simplesigning.v1+json".into(),
            payload,
            annotations: [(keys[which].to_string(), annotation)].into_iter().collect(),
        };
        prop_assert!(!quick("legacy layer", || verdict(&[Artifact::Signature(layer.clone()), Artifact::Attestation(layer)])));
    }

    #[test]
    fn trusted_roots(bytes in mutated(fixture("sigstore/prod-trusted_root.json"))) {
        quick("trusted root", || TrustRoot::from_json(&bytes).is_ok());
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Wheels: a real one with bytes changed, and noise, through METADATA extraction.
    #[test]
    fn wheels(edit in mutated(wheel()), noise in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let p = ProjectName::parse("demo-a").unwrap();
        let v: pep440_rs::Version = "1.0".parse().unwrap();
        quick("wheel", || tollgate::pypi::wheel::extract_metadata(std::io::Cursor::new(edit), &p, &v).is_ok());
        quick("noise wheel", || tollgate::pypi::wheel::extract_metadata(std::io::Cursor::new(noise), &p, &v).is_ok());
    }
}

fn wheel() -> Vec<u8> {
    static WHEEL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    WHEEL
        .get_or_init(|| {
            let fx = common::Fixture::build();
            std::fs::read(fx.root().join("packages/demo_a-1.0-py3-none-any.whl")).unwrap()
        })
        .clone()
}
