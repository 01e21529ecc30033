//! Signature rules on the pull path, end to end: images and cosign legacy signatures (ECDSA
//! P-256, made by tests/support/cosign_sign.py with real cryptography) pushed to a real
//! docker-registry, pulled with real skopeo through the real gate.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Env {
    dir: tempfile::TempDir,
    digests: BTreeMap<String, String>,
    registry: Proc,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let digests = oci_images(&dir.path().join("layout"));
        let registry = docker_registry(&dir.path().join("registry"), "");
        let env = Env {
            dir,
            digests,
            registry,
        };
        env.push_layout(&env.dir.path().join("layout"), "v1", "demo/app:v1", &[]);
        env.push_layout(&env.dir.path().join("layout"), "v2", "demo/app:v2", &[]);
        env.push_layout(
            &env.dir.path().join("layout"),
            "multi",
            "demo/multi:v1",
            &["--all"],
        );
        env
    }

    fn push_layout(&self, layout: &Path, reference: &str, dest: &str, extra: &[&str]) {
        let src = format!("oci:{}:{reference}", layout.display());
        let dst = format!("docker://127.0.0.1:{}/{dest}", self.registry.port);
        let mut args = vec!["copy", "--preserve-digests", "--dest-tls-verify=false"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&src, &dst]);
        let out = skopeo(&args);
        assert!(out.status.success(), "push {dest}: {}", show(&out));
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Signs `digest` as naming `reference` with the given keys and pushes the artifact as the
    /// `.sig` tag of `image_of` in `repo`.
    fn sign(&self, repo: &str, image_of: &str, digest: &str, reference: &str, keys: &[&str]) {
        let layout = self.dir.path().join(format!(
            "sig-{}-{}",
            repo.replace('/', "_"),
            &image_of.replace(':', "_")
        ));
        let _ = std::fs::remove_dir_all(&layout);
        let out = Command::new("python3")
            .arg(support("cosign_sign.py"))
            .arg(&layout)
            .arg(digest)
            .arg(reference)
            .args(keys.iter().map(|k| self.key(k)))
            .output()
            .unwrap();
        assert!(out.status.success(), "sign: {}", show(&out));
        let tag = format!("{}.sig", image_of.replace(':', "-"));
        self.push_layout(&layout, "sig", &format!("{repo}:{tag}"), &[]);
    }

    fn gate(&self, name: &str, rule: &str, keys: &[&str]) -> Gate {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(dir.join("allowlists/keys")).unwrap();
        for k in keys {
            std::fs::copy(
                self.key(&format!("{k}.pub")),
                dir.join("allowlists/keys").join(format!("{k}.pub")),
            )
            .unwrap();
        }
        let cfg = format!(
            "[oci]\ntag_ttl = \"1s\"\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{}\"\n",
            self.registry.port
        );
        Gate::start(&dir, &cfg, rule)
    }

    fn pull(&self, gate: &Gate, reference: &str) -> std::process::Output {
        let dest = self.dir.path().join(format!(
            "pull-{}-{}",
            gate.proc.port,
            reference.replace(['/', ':', '@'], "_")
        ));
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://127.0.0.1:{}/reg/{reference}", gate.proc.port),
            &format!("dir:{}", dest.display()),
        ])
    }
}

fn signed_rule(repo: &str, keys: &[&str], extra: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}.pub\"")).collect();
    format!(
        "[[image]]\nrepository = \"registry.test/{repo}\"\n{extra}[image.signature]\nkeys = [{}]\n",
        keys.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_by_a_trusted_key_is_pulled_and_every_forgery_is_refused() {
    let env = Env::new();
    let (v1, v2) = (env.digests["v1"].clone(), env.digests["v2"].clone());
    // v1 signed by the trusted key; v2 signed by another key.
    env.sign("demo/app", &v1, &v1, "registry.test/demo/app", &["trusted"]);
    env.sign(
        "demo/app",
        &v2,
        &v2,
        "registry.test/demo/app",
        &["stranger"],
    );
    let gate = env.gate(
        "g1",
        &signed_rule("demo/app", &["trusted"], ""),
        &["trusted"],
    );

    let out = tokio::task::block_in_place(|| env.pull(&gate, "demo/app:v1"));
    assert!(out.status.success(), "signed image: {}", show(&out));
    let out = tokio::task::block_in_place(|| env.pull(&gate, "demo/app:v2"));
    refused(&out, "signed, but by no trusted signer");
    // The signature artifact of an admitted image is served, so cosign and friends work
    // downstream; the artifact of a refused image is not.
    let sig_tag = |d: &str| format!("demo/app:{}.sig", d.replace(':', "-"));
    let out = tokio::task::block_in_place(|| env.pull(&gate, &sig_tag(&v1)));
    assert!(
        out.status.success(),
        "signature artifact of an admitted image: {}",
        show(&out)
    );
    refused(
        &tokio::task::block_in_place(|| env.pull(&gate, &sig_tag(&v2))),
        "signed, but by no trusted signer",
    );

    // Unsigned: the multi-arch image carries no signature at all.
    let gate_multi = env.gate(
        "g2",
        &signed_rule("demo/multi", &["trusted"], ""),
        &["trusted"],
    );
    let out = tokio::task::block_in_place(|| env.pull(&gate_multi, "demo/multi:v1"));
    refused(&out, "unsigned");

    // A genuine signature of v2 moved onto v1's signature tag (another digest), and one that
    // names another repository: both by the trusted key, both refused.
    env.sign("demo/app", &v1, &v2, "registry.test/demo/app", &["trusted"]);
    let gate3 = env.gate(
        "g3",
        &signed_rule("demo/app", &["trusted"], ""),
        &["trusted"],
    );
    refused(
        &tokio::task::block_in_place(|| env.pull(&gate3, "demo/app:v1")),
        "signature is for another image",
    );
    env.sign(
        "demo/app",
        &v1,
        &v1,
        "registry.test/demo/other",
        &["trusted"],
    );
    let gate4 = env.gate(
        "g4",
        &signed_rule("demo/app", &["trusted"], ""),
        &["trusted"],
    );
    refused(
        &tokio::task::block_in_place(|| env.pull(&gate4, "demo/app:v1")),
        "signature names another repository",
    );
    // ...unless the rule says signatures name that repository.
    let gate5 = env.gate(
        "g5",
        &signed_rule(
            "demo/app",
            &["trusted"],
            "signed_identity = \"registry.test/demo/other\"\n",
        ),
        &["trusted"],
    );
    assert!(
        tokio::task::block_in_place(|| env.pull(&gate5, "demo/app:v1"))
            .status
            .success()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thresholds_and_require() {
    let env = Env::new();
    let (v1, v2) = (env.digests["v1"].clone(), env.digests["v2"].clone());
    env.sign("demo/app", &v1, &v1, "registry.test/demo/app", &["k1"]);
    env.sign(
        "demo/app",
        &v2,
        &v2,
        "registry.test/demo/app",
        &["k1", "k2"],
    );
    // Keys k2 exists only once v2 was signed; make sure both public keys are there.
    let two =
        signed_rule("demo/app", &["k1", "k2"], "").replace("keys = [", "threshold = 2\nkeys = [");
    let gate = env.gate("t2", &two, &["k1", "k2"]);
    refused(
        &tokio::task::block_in_place(|| env.pull(&gate, "demo/app:v1")),
        "signed by 1 trusted signer(s)",
    );
    assert!(
        tokio::task::block_in_place(|| env.pull(&gate, "demo/app:v2"))
            .status
            .success(),
        "two distinct keys"
    );

    // Pinned v2 and a signature: "all" needs both, "any" either.
    let pinned = format!("digests = [\"{v2}\"]\n");
    let all = env.gate("all", &signed_rule("demo/app", &["k2"], &pinned), &["k2"]);
    refused(
        &tokio::task::block_in_place(|| env.pull(&all, "demo/app:v1")),
        "not a pinned digest",
    );
    assert!(
        tokio::task::block_in_place(|| env.pull(&all, "demo/app:v2"))
            .status
            .success()
    );
    let any = env.gate(
        "any",
        &signed_rule("demo/app", &["k2"], &format!("{pinned}require = \"any\"\n")),
        &["k2"],
    );
    refused(
        &tokio::task::block_in_place(|| env.pull(&any, "demo/app:v1")),
        "signed, but by no trusted signer",
    );
    let any_k1 = env.gate(
        "any1",
        &signed_rule("demo/app", &["k1"], &format!("{pinned}require = \"any\"\n")),
        &["k1"],
    );
    assert!(
        tokio::task::block_in_place(|| env.pull(&any_k1, "demo/app:v1"))
            .status
            .success(),
        "signed, not pinned, any"
    );
    assert!(
        tokio::task::block_in_place(|| env.pull(&any_k1, "demo/app:v2"))
            .status
            .success(),
        "pinned, any"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_signed_as_a_whole_or_per_platform() {
    let env = Env::new();
    let index = env.digests["multi"].clone();
    env.sign(
        "demo/multi",
        &index,
        &index,
        "registry.test/demo/multi",
        &["trusted"],
    );
    let whole = env.gate(
        "whole",
        &signed_rule("demo/multi", &["trusted"], ""),
        &["trusted"],
    );
    let out = tokio::task::block_in_place(|| env.pull(&whole, "demo/multi:v1"));
    assert!(
        out.status.success(),
        "the index signature admits its platforms: {}",
        show(&out)
    );
    let per = env.gate(
        "per",
        &signed_rule("demo/multi", &["trusted"], "")
            .replace("keys = [", "per_platform = true\nkeys = ["),
        &["trusted"],
    );
    refused(
        &tokio::task::block_in_place(|| env.pull(&per, "demo/multi:v1")),
        "unsigned",
    );
    // Admission applies per_platform to the index as a whole: a node pulling past the gate
    // would run an unsigned platform manifest.
    let v: serde_json::Value = reqwest::Client::new()
        .post(per.url("/api/v1/verify"))
        .json(&serde_json::json!({ "image": "registry.test/demo/multi:v1" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["allowed"], false, "{v}");
    let amd = env.digests["multi-amd64"].clone();
    env.sign(
        "demo/multi",
        &amd,
        &amd,
        "registry.test/demo/multi",
        &["trusted"],
    );
    let per2 = env.gate(
        "per2",
        &signed_rule("demo/multi", &["trusted"], "")
            .replace("keys = [", "per_platform = true\nkeys = ["),
        &["trusted"],
    );
    assert!(
        tokio::task::block_in_place(|| env.pull(&per2, "demo/multi:v1"))
            .status
            .success(),
        "signed platform manifest"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_is_down_is_never_read_as_unsigned() {
    let mut env = Env::new();
    let v1 = env.digests["v1"].clone();
    env.sign("demo/app", &v1, &v1, "registry.test/demo/app", &["trusted"]);
    let gate = env.gate(
        "down",
        &signed_rule("demo/app", &["trusted"], ""),
        &["trusted"],
    );
    env.registry.stop();
    let r = reqwest::get(gate.url(&format!("/v2/reg/demo/app/manifests/{v1}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    // And a missing key file is a load error, not a rule that admits nothing.
    let dir = env.dir.path().join("nokey");
    std::fs::create_dir_all(dir.join("allowlists")).unwrap();
    std::fs::write(
        dir.join("allowlists/a.toml"),
        signed_rule("demo/app", &["absent"], ""),
    )
    .unwrap();
    check_refuses(&env, &dir, "absent.pub");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_added_after_a_refusal_is_seen_after_tag_ttl() {
    let env = Env::new();
    let v1 = env.digests["v1"].clone();
    // Two keys must sign; only one has, so far.
    env.sign("demo/app", &v1, &v1, "registry.test/demo/app", &["a"]);
    env.sign(
        "demo/app",
        &env.digests["v2"],
        &env.digests["v2"],
        "registry.test/demo/app",
        &["b"],
    );
    let rule =
        signed_rule("demo/app", &["a", "b"], "").replace("keys = [", "threshold = 2\nkeys = [");
    let gate = env.gate("late", &rule, &["a", "b"]);
    refused(
        &tokio::task::block_in_place(|| env.pull(&gate, "demo/app:v1")),
        "1 trusted signer(s)",
    );
    // The second signer signs v1 too (cosign appends a layer to the same .sig tag).
    env.sign("demo/app", &v1, &v1, "registry.test/demo/app", &["a", "b"]);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await; // past tag_ttl
    let out = tokio::task::block_in_place(|| env.pull(&gate, "demo/app:v1"));
    assert!(out.status.success(), "{}", show(&out));

    // One key saved under two names does not make two signers: refused at load.
    let dir = env.dir.path().join("twice");
    std::fs::create_dir_all(dir.join("allowlists/keys")).unwrap();
    std::fs::copy(env.key("a.pub"), dir.join("allowlists/keys/a.pub")).unwrap();
    std::fs::copy(env.key("a.pub"), dir.join("allowlists/keys/copy.pub")).unwrap();
    std::fs::write(dir.join("allowlists/r.toml"), "[[image]]\nrepository = \"registry.test/demo/app\"\n[image.signature]\nkeys = [\"a.pub\", \"copy.pub\"]\nthreshold = 2\n").unwrap();
    check_refuses(&env, &dir, "are the same key");
}

/// `tollgate check` on the allowlists already written under `dir` must fail, saying `why`.
fn check_refuses(env: &Env, dir: &Path, why: &str) {
    let cfg = dir.join("tollgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[oci.registry]]\nhost = \"registry.test\"\nurl = \"http://127.0.0.1:{}\"\n",
            env.registry.port
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(why),
        "{}",
        show(&out)
    );
}
