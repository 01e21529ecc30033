//! The OCI pull gate end to end: real docker-registry (distribution 2.8) upstream, images the
//! test builds and pushes itself with real skopeo, the real tollgate binary in between, and real
//! skopeo pulling through it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

struct Env {
    dir: tempfile::TempDir,
    digests: BTreeMap<String, String>,
    registry: Proc,
    gate: Gate,
}

impl Env {
    fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    /// Pushes a layout ref to the registry directly (not through the gate).
    fn push(&self, reference: &str, dest: &str, extra: &[&str]) -> String {
        let src = format!("oci:{}:{reference}", self.layout().display());
        let dst = format!("docker://127.0.0.1:{}/{dest}", self.registry.port);
        let mut args = vec!["copy", "--dest-tls-verify=false"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[src.as_str(), dst.as_str()]);
        let out = skopeo(&args);
        assert!(out.status.success(), "push: {}", show(&out));
        let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &dst]);
        assert!(raw.status.success(), "{}", show(&raw));
        format!(
            "sha256:{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(&raw.stdout)
        )
    }

    fn gate_ref(&self, repo: &str) -> String {
        format!("docker://127.0.0.1:{}/reg/{repo}", self.gate.proc.port)
    }

    /// Pulls through the gate into a fresh `dir:` folder.
    fn pull(&self, reference: &str) -> std::process::Output {
        let dest = self
            .dir
            .path()
            .join(format!("pull-{}", reference.replace(['/', ':', '@'], "_")));
        let _ = std::fs::remove_dir_all(&dest);
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &self.gate_ref(reference),
            &format!("dir:{}", dest.display()),
        ])
    }
}

fn start(rules: impl Fn(&BTreeMap<String, String>) -> String, setup: impl Fn(&Env)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let digests = oci_images(&dir.path().join("layout"));
    let registry = docker_registry(&dir.path().join("registry"), "");
    // The gate is started once the pushes are done, so the allowlist can name their digests.
    let placeholder = Gate::start(&dir.path().join("gate0"), "", "");
    let mut env = Env {
        dir,
        digests,
        registry,
        gate: placeholder,
    };
    setup(&env);
    let cfg = format!(
        "[oci]\ntag_ttl = \"1s\"\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{}\"\n",
        env.registry.port
    );
    env.gate = Gate::start(&env.dir.path().join("gate"), &cfg, &rules(&env.digests));
    env
}

fn rule(repo: &str, digests: &[&str]) -> String {
    let list: Vec<String> = digests.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "[[image]]\nrepository = \"registry.test/{repo}\"\ndigests = [{}]\n\n",
        list.join(", ")
    )
}

fn blob_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(blob_files(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_images_pull_by_tag_and_by_digest() {
    let docker_digest = std::sync::Mutex::new(String::new());
    let env = start(
        |d| {
            let dd = docker_digest.lock().unwrap().clone();
            format!(
                "{}{}{}",
                rule("demo/app", &[&d["v1"]]),
                rule("demo/multi", &[&d["multi"]]),
                rule("demo/docker", &[&dd])
            )
        },
        |env| {
            env.push("v1", "demo/app:v1", &["--preserve-digests"]);
            env.push("v1", "demo/app:v0", &["--preserve-digests"]);
            env.push("multi", "demo/multi:v1", &["--all", "--preserve-digests"]);
            *docker_digest.lock().unwrap() =
                env.push("v1", "demo/docker:v1", &["--format", "v2s2"]);
        },
    );
    let dd = docker_digest.lock().unwrap().clone();
    for reference in [
        "demo/app:v1".to_string(),
        format!("demo/app@{}", env.digests["v1"]),
        "demo/multi:v1".to_string(),
        format!("demo/multi@{}", env.digests["multi"]),
        "demo/docker:v1".to_string(),
        format!("demo/docker@{dd}"),
    ] {
        let out = tokio::task::block_in_place(|| env.pull(&reference));
        assert!(out.status.success(), "{reference}: {}", show(&out));
    }

    // HEAD gives the digest the gate computed, the length and the media type.
    let c = reqwest::Client::new();
    let head = |path: String, accept: &'static str| {
        c.head(env.gate.url(&path)).header("accept", accept).send()
    };
    let r = head(
        "/v2/reg/demo/app/manifests/v1".into(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        env.digests["v1"].as_str()
    );
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert!(
        r.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let r = head(
        format!("/v2/reg/demo/docker/manifests/{dd}"),
        "application/vnd.docker.distribution.manifest.v2+json",
    )
    .await
    .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    // /v2/ answers the version check.
    let r = c.get(env.gate.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // containerd's ?ns= names the registry.
    let r = head(
        "/v2/demo/app/manifests/v1?ns=registry.test".to_string(),
        "*/*",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // Referrers: for an admitted subject, distribution 2.8 has no referrers API, so the gate
    // answers 404 (the distribution spec's signal to fall back to the referrers tag), never an
    // empty list that would read as "no signatures"; refused for any other; tags/list passes
    // through.
    let r = c
        .get(
            env.gate
                .url(&format!("/v2/reg/demo/app/referrers/{}", env.digests["v1"])),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let err: serde_json::Value = r.json().await.unwrap();
    assert!(
        err["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("sha256-{}", &env.digests["v1"][7..])),
        "{err}"
    );
    let r = c
        .get(
            env.gate
                .url(&format!("/v2/reg/demo/app/referrers/{}", env.digests["v2"])),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let tags: serde_json::Value = c
        .get(env.gate.url("/v2/reg/demo/app/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut listed: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, vec!["v0", "v1"]);
    // Paging parameters pass through (distribution 2.8 itself answers with the whole list).
    let r = c
        .get(env.gate.url("/v2/reg/demo/app/tags/list?n=1&last=v0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(env.gate.url("/v2/reg/demo/app/tags/list?last=-bad"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    // The platform manifests of the admitted index are served by digest.
    let r = head(
        format!(
            "/v2/reg/demo/multi/manifests/{}",
            env.digests["multi-arm64"]
        ),
        "*/*",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn unlisted_repositories_and_foreign_blobs_are_refused() {
    let env = start(
        |d| rule("demo/app", &[&d["v1"]]),
        |env| {
            env.push("v1", "demo/app:v1", &["--preserve-digests"]);
            env.push("v1", "demo/unlisted:v1", &["--preserve-digests"]);
            env.push("multi", "demo/multi:v1", &["--all", "--preserve-digests"]);
        },
    );
    let before = env.registry.log_text().len();
    let out = tokio::task::block_in_place(|| env.pull("demo/unlisted:v1"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not on the allowlist"),
        "{}",
        show(&out)
    );
    let out =
        tokio::task::block_in_place(|| env.pull(&format!("demo/unlisted@{}", env.digests["v1"])));
    assert!(
        !out.status.success(),
        "the pinned digest under another repository must be refused"
    );
    let after = env.registry.log_text();
    assert!(
        !after[before..].contains("demo/unlisted"),
        "the registry saw a request for the unlisted repository:\n{}",
        &after[before..]
    );
    // A pinned repository's rule does not reach a prefix sibling or a blob of another image.
    let r = reqwest::get(env.gate.url("/v2/reg/demo/app-evil/manifests/v1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(tokio::task::block_in_place(|| env.pull("demo/app:v1"))
        .status
        .success());
    let multi_manifest = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!(
            "docker://127.0.0.1:{}/demo/multi@{}",
            env.registry.port, env.digests["multi-arm64"]
        ),
    ]);
    let m: serde_json::Value = serde_json::from_slice(&multi_manifest.stdout).unwrap();
    let foreign = m["layers"][1]["digest"].as_str().unwrap();
    let r = reqwest::get(env.gate.url(&format!("/v2/reg/demo/app/blobs/{foreign}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("not referenced by an admitted manifest"));
    // A runnable image pushed under the signature tag of an admitted image is not an artifact:
    // refused, and it gains nothing from the attempt.
    let sig_tag = format!("demo/app:{}.sig", env.digests["v1"].replace(':', "-"));
    env.push("v2", &sig_tag, &["--preserve-digests"]);
    let r = reqwest::get(env.gate.url(&format!(
        "/v2/reg/{}",
        sig_tag.replace(":sha256", "/manifests/sha256")
    )))
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let r = reqwest::get(
        env.gate
            .url(&format!("/v2/reg/demo/app/manifests/{}", env.digests["v2"])),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    // Bad names and digests are 400, not a crash or a lookup.
    for bad in [
        "/v2/reg/Demo/App/manifests/v1",
        "/v2/reg/demo/app/manifests/sha256:zz",
        "/v2/reg/demo/app/blobs/sha256:12",
        "/v2/reg/demo/app/manifests/-x",
    ] {
        assert_eq!(
            reqwest::get(env.gate.url(bad)).await.unwrap().status(),
            400,
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tag_is_never_served() {
    let env = start(
        |d| rule("demo/app", &[&d["v1"]]),
        |env| {
            env.push("v1", "demo/app:v1", &["--preserve-digests"]);
        },
    );
    assert!(tokio::task::block_in_place(|| env.pull("demo/app:v1"))
        .status
        .success());
    // The tag moves upstream to an unpinned image.
    env.push("v2", "demo/app:v1", &["--preserve-digests"]);
    tokio::time::sleep(Duration::from_millis(1200)).await; // past tag_ttl
    let out = tokio::task::block_in_place(|| env.pull("demo/app:v1"));
    assert!(!out.status.success(), "the moved tag was served");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a pinned digest"),
        "{}",
        show(&out)
    );
    let out = tokio::task::block_in_place(|| env.pull(&format!("demo/app@{}", env.digests["v1"])));
    assert!(
        out.status.success(),
        "the pinned digest still pulls: {}",
        show(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_blob_is_refused_and_not_cached() {
    let env = start(
        |d| rule("demo/app", &[&d["v1"]]),
        |env| {
            env.push("v1", "demo/app:v1", &["--preserve-digests"]);
        },
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.layout()
                .join("blobs/sha256")
                .join(env.digests["v1"].trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let data = blob_files(&env.registry.log.parent().unwrap().join("data"))
        .into_iter()
        .find(|p| p.ends_with(format!("{layer}/data")))
        .expect("layer blob in the registry's storage");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let out = tokio::task::block_in_place(|| env.pull("demo/app:v1"));
    assert!(!out.status.success(), "a tampered layer was pulled");
    assert!(!env.gate.cache_has(&layer));
    assert!(
        env.gate
            .metric("tollgate_decisions_total{decision=\"deny\",reason=\"hash_mismatch\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_images_pull_with_the_registry_stopped() {
    let mut env = start(
        |d| {
            format!(
                "{}{}",
                rule("demo/app", &[&d["v1"]]),
                rule("demo/multi", &[&d["multi"]])
            )
        },
        |env| {
            env.push("v1", "demo/app:v1", &["--preserve-digests"]);
            env.push("multi", "demo/multi:v1", &["--all", "--preserve-digests"]);
        },
    );
    assert!(tokio::task::block_in_place(|| env.pull("demo/app:v1"))
        .status
        .success());
    env.registry.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await; // past tag_ttl
    let out = tokio::task::block_in_place(|| env.pull("demo/app:v1"));
    assert!(
        out.status.success(),
        "cached image with the registry down: {}",
        show(&out)
    );
    let r = reqwest::get(env.gate.url("/v2/reg/demo/multi/manifests/v1"))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "an image never pulled cannot be served while the registry is down"
    );
    assert!(r.headers().get("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_manifest_pulls_by_digest_before_its_index() {
    let env = start(
        |d| rule("demo/multi", &[&d["multi"]]),
        |env| {
            env.push("multi", "demo/multi:v1", &["--all", "--preserve-digests"]);
        },
    );
    // A fresh gate has never seen the index; a node asks for the arm64 manifest directly.
    let out = tokio::task::block_in_place(|| {
        env.pull(&format!("demo/multi@{}", env.digests["multi-arm64"]))
    });
    assert!(out.status.success(), "{}", show(&out));
    // A digest no pinned index lists stays refused.
    let r = reqwest::get(env.gate.url(&format!(
        "/v2/reg/demo/multi/manifests/{}",
        env.digests["v1"]
    )))
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
}
