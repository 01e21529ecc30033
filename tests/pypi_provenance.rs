//! PEP 740 provenance end to end: the real tollgate binary in front of a PyPI-like static
//! upstream serving real attested distributions and their real provenance objects at the
//! Integrity API's paths (tests/support/pep740_index.py, from tests/fixtures/pep740), with the
//! Sigstore production trusted root, and real pip and uv installing through it.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const SECRET: &str = "provenance-test-bootstrap-token";
const CIRCLECI: &str = "circleci_sign_publish_example-0.0.1.dev137-py3-none-any.whl";

fn upstream(dir: &std::path::Path) -> (Proc, BTreeMap<String, String>) {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pep740");
    let out = Command::new("python3")
        .arg(support("pep740_index.py"))
        .arg(&fixtures)
        .arg(dir.join("up"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let shas = serde_json::from_slice(&out.stdout).unwrap();
    (static_upstream(&dir.join("up"), dir.join("up.log")), shas)
}

fn allowlist(shas: &BTreeMap<String, String>) -> String {
    let sha = |f: &str| shas[f].clone();
    format!(
        r#"
[[package]]
name = "circleci-sign-publish-example"
version = "0.0.1.dev137"
sha256 = ["{ci}"]
publisher = {{ circleci = "fdd9283f-e619-46af-8f9c-851f7d3e8b2b", pipeline_definition_id = "8e4f8ab2-8d7c-4827-9f15-de076d6d647f" }}

[[package]]
name = "pypi-attestations"
specifier = ">=0.0.19"
min_age = "1s"
publisher = {{ github = "trailofbits/pypi-attestations", workflow = "release.yml" }}

[[package]]
name = "gitlab-oidc-project"
version = "0.0.3"
sha256 = ["{gl}"]
publisher = {{ gitlab = "facutuesca/gitlab-oidc-project", workflow = "wrong.yml" }}

[[package]]
name = "gcb-attestation-test"
version = "0.0.0"
sha256 = ["{gcb}"]
publisher = {{ google = "919436158236-compute@developer.gserviceaccount.com" }}

[[package]]
name = "rfc8785"
version = "0.1.2"
sha256 = ["{rfc}"]
publisher = {{ github = "trailofbits/rfc8785.py", workflow = "release.yml" }}

[[package]]
name = "pypi-attestation-models"
version = "0.0.4a2"
sha256 = ["{models}"]
"#,
        ci = sha(CIRCLECI),
        gl = sha("gitlab_oidc_project-0.0.3.tar.gz"),
        gcb = sha("gcb_attestation_test-0.0.0.tar.gz"),
        rfc = sha("rfc8785-0.1.2-py3-none-any.whl"),
        models = sha("pypi_attestation_models-0.0.4a2.tar.gz"),
    )
}

fn config(port: u16) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pep740/trust/production.trusted_root.json");
    format!(
        "trusted_root = \"{}\"\n[pypi]\npage_ttl = \"1s\"\n[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{port}/simple/\"\n",
        root.display()
    )
}

/// The filenames a project page lists once the gate has checked what it needed to (polled:
/// provenance is fetched and verified in the background after the first view).
async fn listed(gate: &Gate, project: &str, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = gate.json_page(project).await;
        let files = page["files"].as_array().cloned().unwrap_or_default();
        if files.len() >= want || Instant::now() > deadline {
            return files;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn explain(gate: &Gate, project: &str, file: &str, sha: &str) -> serde_json::Value {
    admin_request(
        gate,
        "127.0.0.1",
        "GET",
        &format!("/admin/v1/explain?package={project}&filename={file}&sha256={sha}"),
        Some(SECRET),
        None,
        None,
    )
    .await
    .body
}

#[tokio::test(flavor = "multi_thread")]
async fn only_files_published_by_the_pinned_publisher_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (up, shas) = upstream(dir.path());
    let gate = Gate::start_admin(
        &dir.path().join("gate"),
        &config(up.port),
        &allowlist(&shas),
        SECRET,
    );

    // The publisher matches: listed with the gate's own provenance URL, and installed by
    // real pip and uv.
    let files = listed(&gate, "circleci-sign-publish-example", 1).await;
    assert_eq!(files.len(), 1, "{files:?}");
    let prov_url = files[0]["provenance"]
        .as_str()
        .expect("a provenance URL")
        .to_string();
    assert!(
        prov_url.ends_with(&format!("/{CIRCLECI}.provenance")),
        "{prov_url}"
    );
    let served = reqwest::get(gate.url(&prov_url)).await.unwrap();
    assert_eq!(served.status(), 200);
    let upstream_copy = std::fs::read(dir.path().join(format!(
        "up/integrity/circleci-sign-publish-example/0.0.1.dev137/{CIRCLECI}/provenance"
    )))
    .unwrap();
    assert_eq!(
        served.bytes().await.unwrap().as_ref(),
        upstream_copy.as_slice()
    );
    let req = requirements(
        dir.path(),
        "ci",
        &[format!(
            "circleci-sign-publish-example==0.0.1.dev137 --hash=sha256:{}",
            shas[CIRCLECI]
        )],
    );
    let out = tokio::task::block_in_place(|| {
        pip_install_with(&gate.index(), &req, &dir.path().join("pip"), &["--no-deps"])
    });
    assert!(out.status.success(), "pip: {}", show(&out));
    let out =
        tokio::task::block_in_place(|| uv_install(&gate.index(), &req, &dir.path().join("uv")));
    assert!(out.status.success(), "uv: {}", show(&out));

    // A release rule with a publisher: the release whose provenance names this file and the
    // publisher is listed; the same bytes re-published as 0.0.20 (provenance for another
    // file) are not.
    let files = listed(&gate, "pypi-attestations", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let files2 = listed(&gate, "pypi-attestations", 2).await;
    let names: Vec<&str> = files2
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["pypi_attestations-0.0.19.tar.gz"],
        "{files:?} {files2:?}"
    );
    let renamed = "pypi_attestations-0.0.20.tar.gz";
    let e = explain(&gate, "pypi-attestations", renamed, &shas[renamed]).await;
    assert_eq!(e["reason"], "provenance", "{e}");
    assert!(
        e["explanation"].as_str().unwrap().contains("the attestation is for pypi_attestations-0.0.19.tar.gz, not pypi_attestations-0.0.20.tar.gz"),
        "{e}"
    );

    // Another workflow, no provenance, and a signature outside the trusted root: not listed,
    // and refused by pip, with the reason in explain.
    for (project, file, why) in [
        (
            "gitlab-oidc-project",
            "gitlab_oidc_project-0.0.3.tar.gz",
            "wants GitLab facutuesca/gitlab-oidc-project workflow wrong.yml",
        ),
        (
            "gcb-attestation-test",
            "gcb_attestation_test-0.0.0.tar.gz",
            "the index local has no provenance for gcb_attestation_test-0.0.0.tar.gz",
        ),
        ("rfc8785", "rfc8785-0.1.2-py3-none-any.whl", "provenance:"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let e = loop {
            assert!(
                gate.json_page(project).await["files"]
                    .as_array()
                    .unwrap()
                    .is_empty(),
                "{project} listed"
            );
            let e = explain(&gate, project, file, &shas[file]).await;
            if e["reason"] != "provenance_unchecked" || Instant::now() > deadline {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert_eq!(e["reason"], "provenance", "{project}: {e}");
        assert!(
            e["explanation"].as_str().unwrap().contains(why),
            "{project}: {e}"
        );
        let req = requirements(
            dir.path(),
            project,
            &[format!("{project} --hash=sha256:{}", shas[file])],
        );
        let out = tokio::task::block_in_place(|| {
            pip_install_with(
                &gate.index(),
                &req,
                &dir.path().join(project),
                &["--no-deps"],
            )
        });
        assert!(!out.status.success(), "{project} installed: {}", show(&out));
        // Asked for directly, the file is refused too.
        let r = reqwest::get(gate.url(&format!("/files/{project}/{}/{file}", shas[file])))
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{project}");
    }

    // An exact pin without a publisher needs no provenance.
    let files = listed(&gate, "pypi-attestation-models", 1).await;
    assert_eq!(files.len(), 1);
    assert!(files[0].get("provenance").is_none());

    // `allowlist import --publisher-from-provenance` reads each pinned file's publisher back
    // from its verified certificate; a person's signature gives none, and says so.
    let req = requirements(
        dir.path(),
        "import",
        &[
            format!(
                "circleci-sign-publish-example==0.0.1.dev137 --hash=sha256:{}",
                shas[CIRCLECI]
            ),
            format!(
                "pypi-attestations==0.0.19 --hash=sha256:{}",
                shas["pypi_attestations-0.0.19.tar.gz"]
            ),
            format!(
                "rfc8785==0.1.2 --hash=sha256:{}",
                shas["rfc8785-0.1.2-py3-none-any.whl"]
            ),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["allowlist", "import"])
        .arg(&req)
        .args(["--publisher-from-provenance", "--config"])
        .arg(gate.dir.join("tollgate.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success(),
        "rfc8785 has no Trusted Publisher: {}",
        show(&out)
    );
    assert!(text.contains(r#"publisher = { circleci = "fdd9283f-e619-46af-8f9c-851f7d3e8b2b", pipeline_definition_id = "8e4f8ab2-8d7c-4827-9f15-de076d6d647f" }"#), "{text}");
    assert!(
        text.contains(
            r#"publisher = { github = "trailofbits/pypi-attestations", workflow = "release.yml" }"#
        ),
        "{text}"
    );
    assert!(text.contains("# rfc8785==0.1.2: no publisher:"), "{text}");
    // The rules it wrote load, as they are.
    let imp = dir.path().join("imp");
    std::fs::create_dir_all(imp.join("allowlists")).unwrap();
    std::fs::write(imp.join("allowlists/imported.toml"), &text).unwrap();
    std::fs::write(
        imp.join("tollgate.toml"),
        format!(
            "allowlist_dir = \"allowlists\"\ndata_dir = \"data\"\n{}",
            config(up.port)
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(imp.join("tollgate.toml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", show(&check));

    // The verdicts are kept with the pins: restarted with the upstream's provenance gone, the
    // gate still lists what it verified (and serves its copy).
    drop(gate);
    std::fs::remove_dir_all(dir.path().join("up/integrity")).unwrap();
    let gate = Gate::restart_admin(&dir.path().join("gate"), SECRET);
    let files = listed(&gate, "circleci-sign-publish-example", 1).await;
    assert_eq!(files.len(), 1);
    let r = reqwest::get(gate.url(files[0]["provenance"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(up);
}

#[test]
fn a_publisher_without_a_trusted_root_is_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("allowlists")).unwrap();
    std::fs::write(
        dir.path().join("allowlists/a.toml"),
        "[[package]]\nname = \"x\"\nversion = \"1\"\nsha256 = [\"1111111111111111111111111111111111111111111111111111111111111111\"]\npublisher = { github = \"o/r\", workflow = \"release.yml\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tollgate.toml"),
        "allowlist_dir = \"allowlists\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(dir.path().join("tollgate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        show(&out).contains("publisher needs trusted_root"),
        "{}",
        show(&out)
    );
}
