//! Every case of the PEP 740 vectors (tests/fixtures/pep740/RESULTS.txt, pypi-attestations
//! 0.0.30 run offline) through the gate's verifier: `verify::pep740` (sigstore-verify under
//! the operator's trusted root, then the statement) and `policy::publisher` (the Trusted
//! Publisher a rule pins, matched against the certificate).

use std::path::{Path, PathBuf};

use sha2::Digest as _;
use tollgate::policy::name::ProjectName;
use tollgate::policy::publisher::{Claims, Publisher, RawPublisher};
use tollgate::verify::pep740::{verify_attestation_json, verify_provenance, Verified};
use tollgate::verify::trust::TrustRoot;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pep740")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn root(staging: bool) -> TrustRoot {
    let f = if staging {
        "trust/staging.trusted_root.json"
    } else {
        "trust/production.trusted_root.json"
    };
    TrustRoot::from_json(&read(f)).unwrap()
}

fn sha(rel: &str) -> [u8; 32] {
    sha2::Sha256::digest(read(rel)).into()
}

fn project_of(filename: &str) -> ProjectName {
    ProjectName::parse(filename.split('-').next().unwrap()).unwrap()
}

/// The provenance of `artifact` (a path under the fixtures) verified for that file.
fn provenance(prov: &str, artifact: &str, staging: bool) -> Result<Verified, String> {
    let name = Path::new(artifact).file_name().unwrap().to_str().unwrap();
    verify_provenance(
        &root(staging),
        &read(prov),
        &project_of(name),
        name,
        sha(artifact),
    )
}

fn attestation(att: &str, artifact: &str, staging: bool) -> Result<Claims, String> {
    let name = Path::new(artifact).file_name().unwrap().to_str().unwrap();
    verify_attestation_json(
        &root(staging),
        &read(att),
        &project_of(name),
        name,
        sha(artifact),
    )
}

fn publisher(toml_inline: &str) -> Publisher {
    #[derive(serde::Deserialize)]
    struct W {
        publisher: RawPublisher,
    }
    let w: W = toml::from_str(&format!("publisher = {toml_inline}")).unwrap();
    w.publisher.parse().unwrap()
}

/// Any verified attestation names the publisher.
fn admitted(v: &Verified, p: &Publisher) -> Result<(), String> {
    let mut why = Vec::new();
    for c in &v.attestations {
        match p.admits(c) {
            Ok(()) => return Ok(()),
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

const A: &str = "pypi_attestations-0.0.19.tar.gz";
const TOB: &str = r#"{ github = "trailofbits/pypi-attestations", workflow = "release.yml" }"#;

fn expect_err(r: Result<impl std::fmt::Debug, String>, why: &str) {
    match r {
        Ok(v) => panic!("expected a failure ({why}), got {v:?}"),
        Err(e) => assert!(e.contains(why), "expected {why:?} in {e:?}"),
    }
}

#[test]
fn results_txt_lists_the_cases_checked_here() {
    let text = String::from_utf8(read("RESULTS.txt")).unwrap();
    let cases = text.lines().filter(|l| l.starts_with("## case")).count();
    assert_eq!(
        cases, 23,
        "a case was added to RESULTS.txt: check it here too"
    );
}

#[test]
fn github_provenance_verifies_for_its_pinned_publisher_only() {
    // Cases 1, 18: the real provenance, pinned repository and workflow.
    let v = provenance(&format!("{A}.provenance"), A, false).unwrap();
    admitted(&v, &publisher(TOB)).unwrap();
    let c = &v.attestations[0];
    assert_eq!(
        c.predicate_type,
        "https://docs.pypi.org/attestations/publish/v1"
    );
    assert_eq!(c.extensions[&14], "refs/tags/v0.0.19");
    // Cases 2, 20: another repository. Case 3: a GitLab publisher of that name.
    expect_err(
        admitted(&v, &publisher(r#"{ github = "other/repo", workflow = "release.yml" }"#)),
        "signed by repository \"https://github.com/trailofbits/pypi-attestations\", not https://github.com/other/repo",
    );
    expect_err(
        admitted(
            &v,
            &publisher(r#"{ github = "pypi/pypi-attestations", workflow = "release.yml" }"#),
        ),
        "not https://github.com/pypi/pypi-attestations",
    );
    expect_err(
        admitted(
            &v,
            &publisher(
                r#"{ gitlab = "trailofbits/pypi-attestations", workflow = ".gitlab-ci.yml" }"#,
            ),
        ),
        "not https://gitlab.com",
    );
    // Cases 5, 16, 19: another workflow.
    for wf in ["evil.yml", "wrong.yml", "publish.yml"] {
        expect_err(
            admitted(
                &v,
                &publisher(&format!(
                    r#"{{ github = "trailofbits/pypi-attestations", workflow = "{wf}" }}"#
                )),
            ),
            &format!(
                "not https://github.com/trailofbits/pypi-attestations/.github/workflows/{wf}@"
            ),
        );
    }
    // An environment the certificate does not carry cannot be proven.
    expect_err(
        admitted(
            &v,
            &publisher(
                r#"{ github = "trailofbits/pypi-attestations", workflow = "release.yml", environment = "pypi" }"#,
            ),
        ),
        "does not carry a deployment environment",
    );
}

#[test]
fn both_attestations_of_a_release_verify() {
    // Case 4: the publish and the SLSA attestation, each under the same publisher.
    for att in ["publish", "slsa"] {
        let c = attestation(&format!("{A}.{att}.attestation"), A, false).unwrap();
        assert_eq!(
            c.identity,
            "https://github.com/trailofbits/pypi-attestations/.github/workflows/release.yml@refs/tags/v0.0.19"
        );
        publisher(TOB).admits(&c).unwrap();
    }
    // Case 23: an actions/attest bundle converted to PEP 740 form.
    let m = "pypi_attestation_models-0.0.4a2.tar.gz";
    let c = attestation(&format!("{m}.attestation"), m, false).unwrap();
    publisher(r#"{ github = "trailofbits/pypi-attestation-models", workflow = "release.yml" }"#)
        .admits(&c)
        .unwrap();
}

#[test]
fn the_wrong_root_fails() {
    // Case 6: production material against the staging root; case 13: the reverse.
    expect_err(
        attestation(&format!("{A}.publish.attestation"), A, true),
        "",
    );
    let r = "rfc8785-0.1.2-py3-none-any.whl";
    assert!(attestation(&format!("{r}.publish.attestation"), r, false).is_err());
    // Case 12: staging material verifies against the staging root, but names a person, which
    // no Trusted Publisher rule admits.
    let c = attestation(&format!("{r}.publish.attestation"), r, true).unwrap();
    assert_eq!(c.identity, "william@yossarian.net");
    for p in [TOB, r#"{ google = "william@yossarian.net" }"#] {
        assert!(publisher(p).admits(&c).is_err(), "{p}");
    }
}

#[test]
fn gitlab_google_and_circleci_publishers() {
    // Cases 7, 21, 22.
    let g = "gitlab_oidc_project-0.0.3.tar.gz";
    let c = attestation(&format!("{g}.publish.attestation"), g, false).unwrap();
    publisher(r#"{ gitlab = "facutuesca/gitlab-oidc-project", workflow = ".gitlab-ci.yml" }"#)
        .admits(&c)
        .unwrap();
    expect_err(
        publisher(r#"{ gitlab = "facutuesca/gitlab-oidc-project", workflow = "wrong.yml" }"#)
            .admits(&c),
        "not https://gitlab.com/facutuesca/gitlab-oidc-project//wrong.yml@",
    );
    // Cases 9, 10.
    let gcb = "gcb_attestation_test-0.0.0.tar.gz";
    let v = provenance(&format!("{gcb}.provenance"), gcb, false).unwrap();
    admitted(
        &v,
        &publisher(r#"{ google = "919436158236-compute@developer.gserviceaccount.com" }"#),
    )
    .unwrap();
    expect_err(
        admitted(&v, &publisher(r#"{ google = "wrong-account@wrong.com" }"#)),
        "signed by \"919436158236-compute@developer.gserviceaccount.com\", not wrong-account@wrong.com",
    );
    // Case 11.
    let ci = "circleci_sign_publish_example-0.0.1.dev137-py3-none-any.whl";
    let v = provenance(&format!("{ci}.provenance"), ci, false).unwrap();
    admitted(&v, &publisher(r#"{ circleci = "fdd9283f-e619-46af-8f9c-851f7d3e8b2b", pipeline_definition_id = "8e4f8ab2-8d7c-4827-9f15-de076d6d647f" }"#)).unwrap();
    expect_err(
        admitted(
            &v,
            &publisher(
                r#"{ circleci = "fdd9283f-e619-46af-8f9c-851f7d3e8b2b", pipeline_definition_id = "00000000-0000-0000-0000-000000000000" }"#,
            ),
        ),
        "signed by pipeline",
    );
}

#[test]
fn an_attestation_with_an_rfc3161_timestamp_verifies() {
    // Case 8.
    let c = attestation(
        "extra/with_timestamp/pypi_attestations-0.0.19.tar.gz.publish.attestation",
        "extra/with_timestamp/pypi_attestations-0.0.19.tar.gz",
        false,
    )
    .unwrap();
    assert_eq!(c.identity, "jku@goto.fi");
}

#[test]
fn tampered_renamed_and_resigned_files_fail() {
    // Case 14: one byte appended to the file.
    expect_err(
        provenance(
            &format!("derived/tampered/{A}.provenance"),
            &format!("derived/tampered/{A}"),
            false,
        ),
        "the attestation's sha256 is not this file's",
    );
    // Case 15: the same bytes under another version's name.
    expect_err(
        provenance(
            "derived/renamed/pypi_attestations-0.0.20.tar.gz.provenance",
            "derived/renamed/pypi_attestations-0.0.20.tar.gz",
            false,
        ),
        "the attestation is for pypi_attestations-0.0.19.tar.gz, not pypi_attestations-0.0.20.tar.gz",
    );
    // Case 16: the unauthenticated publisher changed to wrong.yml is never read: the rule and
    // the certificate decide, so the genuine certificate still verifies for release.yml.
    let v = provenance(&format!("derived/{A}.provenance.wrong-workflow"), A, false).unwrap();
    admitted(&v, &publisher(TOB)).unwrap();
    // Case 17: the statement's digest rewritten under the old signature. For the real file the
    // statement no longer names it; for the digest it now names, the signature fails.
    let bad = format!("derived/badsig/{A}.publish.attestation");
    expect_err(
        attestation(&bad, &format!("derived/badsig/{A}"), false),
        "sha256 is not this file's",
    );
    let r = verify_attestation_json(&root(false), &read(&bad), &project_of(A), A, [0u8; 32]);
    assert!(
        r.is_err(),
        "a statement under another statement's signature verified"
    );
}

#[test]
fn subject_names_match_after_parsing() {
    // Vector G: the wheel's tags in another order are the same file.
    let digest =
        hex::decode("d2772f9a5199f05ed1be8d9aa78b879e51772e3ead9d73fe8057257b1aec7cf8").unwrap();
    let att = read(
        "spt3g-1.0-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl.publish.attestation",
    );
    let project = ProjectName::parse("spt3g").unwrap();
    let d: [u8; 32] = digest.try_into().unwrap();
    verify_attestation_json(
        &root(true),
        &att,
        &project,
        "spt3g-1.0-cp310-cp310-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        d,
    )
    .unwrap();
    expect_err(
        verify_attestation_json(
            &root(true),
            &att,
            &project,
            "spt3g-1.0-cp311-cp311-manylinux2014_x86_64.whl",
            d,
        ),
        "the attestation is for",
    );
}

#[test]
fn a_github_certificate_without_a_source_ref_matches_by_digest() {
    // Vector H: no .14 extension; the build config URI ends in the .13 digest.
    let pem = String::from_utf8(read("no-source-repository-ref-extension.pem")).unwrap();
    let der = pem_der(&pem);
    let ext = tollgate::verify::pep740::fulcio_extensions(&der).unwrap();
    assert!(!ext.contains_key(&14));
    let c = Claims {
        identity: String::new(),
        issuer: None,
        extensions: ext,
        predicate_type: String::new(),
    };
    publisher(r#"{ github = "SWIFTSIM/swiftgalaxy", workflow = "python-publish.yml" }"#)
        .admits(&c)
        .unwrap();
    assert!(
        publisher(r#"{ github = "SWIFTSIM/swiftgalaxy", workflow = "release.yml" }"#)
            .admits(&c)
            .is_err()
    );
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .take_while(|l| !l.starts_with("-----END"))
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[test]
fn a_changed_signature_or_log_entry_fails() {
    let good: serde_json::Value =
        serde_json::from_slice(&read(&format!("{A}.publish.attestation"))).unwrap();
    let check = |v: &serde_json::Value| {
        verify_attestation_json(
            &root(false),
            v.to_string().as_bytes(),
            &project_of(A),
            A,
            sha(A),
        )
    };
    check(&good).unwrap();
    let mut sig = good.clone();
    let s = sig["envelope"]["signature"].as_str().unwrap().to_string();
    let flipped = if s.starts_with('M') {
        s.replacen('M', "N", 1)
    } else {
        format!("M{}", &s[1..])
    };
    sig["envelope"]["signature"] = flipped.into();
    assert!(check(&sig).is_err(), "a changed signature verified");
    let mut entry = good.clone();
    let t = entry["verification_material"]["transparency_entries"][0]["integratedTime"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    entry["verification_material"]["transparency_entries"][0]["integratedTime"] =
        (t + 60).to_string().into();
    assert!(check(&entry).is_err(), "a changed log entry verified");
    let mut none = good.clone();
    none["verification_material"]["transparency_entries"] = serde_json::json!([]);
    expect_err(check(&none), "log entries, not one");
}

#[test]
fn the_publisher_read_back_from_a_certificate_is_the_one_it_proves() {
    use tollgate::policy::publisher::Publisher as P;
    let cases = [
        (
            provenance(&format!("{A}.provenance"), A, false)
                .unwrap()
                .attestations[0]
                .clone(),
            Some(r#"{ github = "trailofbits/pypi-attestations", workflow = "release.yml" }"#),
        ),
        (
            attestation(
                "gitlab_oidc_project-0.0.3.tar.gz.publish.attestation",
                "gitlab_oidc_project-0.0.3.tar.gz",
                false,
            )
            .unwrap(),
            Some(r#"{ gitlab = "facutuesca/gitlab-oidc-project", workflow = ".gitlab-ci.yml" }"#),
        ),
        (
            provenance(
                "gcb_attestation_test-0.0.0.tar.gz.provenance",
                "gcb_attestation_test-0.0.0.tar.gz",
                false,
            )
            .unwrap()
            .attestations[0]
                .clone(),
            Some(r#"{ google = "919436158236-compute@developer.gserviceaccount.com" }"#),
        ),
        (
            provenance(
                "circleci_sign_publish_example-0.0.1.dev137-py3-none-any.whl.provenance",
                "circleci_sign_publish_example-0.0.1.dev137-py3-none-any.whl",
                false,
            )
            .unwrap()
            .attestations[0]
                .clone(),
            Some(
                r#"{ circleci = "fdd9283f-e619-46af-8f9c-851f7d3e8b2b", pipeline_definition_id = "8e4f8ab2-8d7c-4827-9f15-de076d6d647f" }"#,
            ),
        ),
        // A person's identity is no Trusted Publisher.
        (
            attestation(
                "extra/with_timestamp/pypi_attestations-0.0.19.tar.gz.publish.attestation",
                "extra/with_timestamp/pypi_attestations-0.0.19.tar.gz",
                false,
            )
            .unwrap(),
            None,
        ),
    ];
    for (claims, want) in cases {
        let got = P::from_claims(&claims);
        assert_eq!(got.as_ref().map(P::to_toml).as_deref(), want, "{claims:?}");
        if let Some(p) = got {
            // What import writes is what the loader reads, and it admits these claims.
            assert_eq!(publisher(&p.to_toml()), p);
            p.admits(&claims).unwrap();
        }
    }
}
