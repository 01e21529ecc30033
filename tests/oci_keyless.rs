//! Keyless signatures, cosign v3 bundles and attestations on the pull path, end to end. The
//! tests run their own Sigstore (tests/support/sigstore_sign.py: a test Fulcio CA, a test Rekor
//! key, a trusted_root.json naming both, real ECDSA), push cosign's artifacts to a real
//! docker-registry and pull with real skopeo through the real gate. distribution 2.8 has no
//! referrers API, so bundles are found through the referrers tag schema (`sha256-<hex>`); the
//! API itself is exercised with tests/support/referrers_proxy.py, an in-test server in front of
//! the same registry that answers it (and hides the tag, so only the API can have been used).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use common::*;

const ISSUER: &str = "https://issuer.test";
const GITHUB: &str = "https://token.actions.githubusercontent.com";
const WORKFLOW: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.0.0";
const SLSA: &str = "https://slsa.dev/provenance/v1";

struct Env {
    dir: tempfile::TempDir,
    digests: BTreeMap<String, String>,
    registry: Proc,
    trust: PathBuf,
}

impl Env {
    fn new(repos: &[&str]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let digests = oci_images(&dir.path().join("layout"));
        let registry = docker_registry(&dir.path().join("registry"), "");
        let trust = dir.path().join("sigstore");
        let out = Command::new("python3")
            .arg(support("sigstore_sign.py"))
            .arg("init")
            .arg(&trust)
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", show(&out));
        let env = Env {
            dir,
            digests,
            registry,
            trust,
        };
        for repo in repos {
            for tag in ["v1", "v2"] {
                let src = format!("oci:{}:{tag}", env.dir.path().join("layout").display());
                let dst = format!("docker://127.0.0.1:{}/{repo}:{tag}", env.registry.port);
                let out = skopeo(&[
                    "copy",
                    "--preserve-digests",
                    "--dest-tls-verify=false",
                    &src,
                    &dst,
                ]);
                assert!(out.status.success(), "push: {}", show(&out));
            }
        }
        env
    }

    fn v(&self, tag: &str) -> String {
        self.digests[tag].clone()
    }

    /// Signs or attests `digest` in `repo` (see sigstore_sign.py for `kind` and `opts`);
    /// returns the pushed artifact manifest's digest.
    fn sign(&self, repo: &str, digest: &str, kind: &str, opts: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(support("sigstore_sign.py"))
            .arg("sign")
            .arg(&self.trust)
            .arg(format!("http://127.0.0.1:{}", self.registry.port))
            .arg(repo)
            .arg(digest)
            .arg(kind)
            .args(opts.iter().map(|o| {
                // Key options name files under the test directory.
                o.strip_prefix("key:")
                    .map(|k| self.dir.path().join(k).display().to_string())
                    .unwrap_or_else(|| o.to_string())
            }))
            .output()
            .unwrap();
        assert!(out.status.success(), "sign: {}", show(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn gate(&self, name: &str, rule: &str, keys: &[&str], port: u16) -> Gate {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(dir.join("allowlists/keys")).unwrap();
        for k in keys {
            std::fs::copy(
                self.dir.path().join(format!("{k}.pub")),
                dir.join("allowlists/keys").join(format!("{k}.pub")),
            )
            .unwrap();
        }
        std::fs::copy(
            self.trust.join("trusted_root.json"),
            dir.join("trusted_root.json"),
        )
        .unwrap();
        let cfg = format!(
            "[oci]\ntag_ttl = \"1s\"\ntrusted_root = \"trusted_root.json\"\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{port}\"\n"
        );
        Gate::start(&dir, &cfg, rule)
    }

    fn pull(&self, gate: &Gate, reference: &str) -> std::process::Output {
        let dest = self.dir.path().join(format!(
            "pull-{}-{}",
            gate.proc.port,
            reference.replace(['/', ':', '@'], "_")
        ));
        tokio::task::block_in_place(|| {
            skopeo(&[
                "copy",
                "--src-tls-verify=false",
                &format!("docker://127.0.0.1:{}/reg/{reference}", gate.proc.port),
                &format!("dir:{}", dest.display()),
            ])
        })
    }
}

fn keyless_rule(repo: &str, identity: &str, extra: &str) -> String {
    format!("[[image]]\nrepository = \"registry.test/{repo}\"\n[image.signature]\nkeyless = [{identity}]\n{extra}")
}

fn exact(issuer: &str, subject: &str) -> String {
    format!("{{ issuer = \"{issuer}\", subject = \"{subject}\" }}")
}

fn pulled(out: &std::process::Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", show(out));
}

#[tokio::test(flavor = "multi_thread")]
async fn keyless_legacy_signatures_and_every_forgery() {
    let env = Env::new(&["demo/app"]);
    let (v1, v2) = (env.v("v1"), env.v("v2"));
    let me = exact(ISSUER, "builder@example.com");
    env.sign(
        "demo/app",
        &v1,
        "legacy-sig",
        &[
            "--identity",
            "builder@example.com",
            "--issuer",
            ISSUER,
            "--reference",
            "registry.test/demo/app",
            "--save",
            "good",
        ],
    );
    let port = env.registry.port;
    let gate = env.gate("g1", &keyless_rule("demo/app", &me, ""), &[], port);
    pulled(&env.pull(&gate, "demo/app:v1"), "keyless signed image");
    // The verification API answers the same.
    let v: serde_json::Value = reqwest::Client::new()
        .post(gate.url("/api/v1/verify"))
        .json(&serde_json::json!({ "image": "registry.test/demo/app:v1" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["allowed"], true, "{v}");
    // An anchored pattern admits it; another identity or issuer does not, and says who signed.
    let by_regex = keyless_rule(
        "demo/app",
        &format!("{{ issuer = \"{ISSUER}\", subject_regex = \".+@example\\\\.com\" }}"),
        "",
    );
    pulled(
        &env.pull(&env.gate("g2", &by_regex, &[], port), "demo/app:v1"),
        "regex identity",
    );
    let other = keyless_rule("demo/app", &exact(ISSUER, "someone@example.com"), "");
    refused(
        &env.pull(&env.gate("g3", &other, &[], port), "demo/app:v1"),
        "signed, but by no trusted signer (found: builder@example.com from https://issuer.test)",
    );
    let other_issuer = keyless_rule(
        "demo/app",
        &exact("https://accounts.google.com", "builder@example.com"),
        "",
    );
    refused(
        &env.pull(&env.gate("g4", &other_issuer, &[], port), "demo/app:v1"),
        "no trusted signer",
    );

    // v2, signed in turn by: a certificate without an SCT; a CA outside the trusted root; a
    // certificate not valid at the log's
    // integrated time; and the real certificate and log entry of v1's signing reused with a
    // signature of v2 by the same key (everything verifies except the entry's binding).
    let forgeries: [(&[&str], &str); 4] = [
        // Not logged for certificate transparency (the test root lists a CT log).
        (&["--no-sct"], "carries no SCT that verifies"),
        (&["--rogue"], "does not chain to a CA of the trusted root"),
        (
            &["--cert-window", "-7200", "-3600"],
            "not valid at the log's integrated time",
        ),
        (&["--reuse", "good"], "records another artifact"),
    ];
    for (i, (opts, why)) in forgeries.iter().enumerate() {
        let mut args = vec![
            "--identity",
            "builder@example.com",
            "--issuer",
            ISSUER,
            "--reference",
            "registry.test/demo/app",
        ];
        args.extend_from_slice(opts);
        env.sign("demo/app", &v2, "legacy-sig", &args);
        let g = env.gate(
            &format!("forgery{i}"),
            &keyless_rule("demo/app", &me, ""),
            &[],
            port,
        );
        refused(&env.pull(&g, "demo/app:v2"), why);
    }
    // v1's genuine signature artifact copied onto v2's tag: it signs another image.
    let sig = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/v2/demo/app/manifests/sha256-{}.sig",
            &v1[7..]
        ))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let put = reqwest::Client::new()
        .put(format!(
            "http://127.0.0.1:{port}/v2/demo/app/manifests/sha256-{}.sig",
            &v2[7..]
        ))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(sig)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let g = env.gate("copied", &keyless_rule("demo/app", &me, ""), &[], port);
    refused(
        &env.pull(&g, "demo/app:v2"),
        "signature is for another image",
    );
    // A keyless rule without a trusted root is refused at load, not left to admit nothing.
    let dir = env.dir.path().join("noroot");
    std::fs::create_dir_all(dir.join("allowlists")).unwrap();
    std::fs::write(
        dir.join("allowlists/test.toml"),
        keyless_rule("demo/app", &me, ""),
    )
    .unwrap();
    std::fs::write(
        dir.join("tollgate.toml"),
        format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nallowlist_dir = \"allowlists\"\n[[oci.registry]]\nhost = \"registry.test\"\nurl = \"http://127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(dir.join("tollgate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        show(&out).contains("keyless identities need trusted_root"),
        "{}",
        show(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn v3_bundles_through_the_referrers_tag_and_the_referrers_api() {
    let env = Env::new(&["demo/app", "demo/keyed"]);
    let (v1, v2) = (env.v("v1"), env.v("v2"));
    let port = env.registry.port;
    let ci = format!(
        "{{ issuer = \"{GITHUB}\", subject_regex = \"https://github.com/acme/.+@refs/tags/v.*\" }}"
    );
    let bundle = env.sign(
        "demo/app",
        &v1,
        "bundle",
        &["--identity", WORKFLOW, "--issuer", GITHUB],
    );
    // v2's bundle is a real one, but its statement is about v1.
    env.sign(
        "demo/app",
        &v2,
        "bundle",
        &[
            "--identity",
            WORKFLOW,
            "--issuer",
            GITHUB,
            "--statement-digest",
            &v1,
        ],
    );
    let rule = keyless_rule("demo/app", &ci, "");
    let gate = env.gate("tagged", &rule, &[], port);
    pulled(
        &env.pull(&gate, "demo/app:v1"),
        "bundle found through the referrers tag",
    );
    refused(
        &env.pull(&gate, "demo/app:v2"),
        "signature is for another image",
    );

    // Downstream verifiers fetch the referrers tag's index, the bundle manifest and the bundle
    // through the gate for an admitted image; not for a refused one.
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let url = gate.url(&path);
        async move {
            client
                .get(url)
                .header(
                    "Accept",
                    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
                )
                .send()
                .await
                .unwrap()
        }
    };
    let index = get(format!("/v2/reg/demo/app/manifests/sha256-{}", &v1[7..])).await;
    assert_eq!(index.status(), 200);
    let index: serde_json::Value = index.json().await.unwrap();
    assert_eq!(index["manifests"][0]["digest"], bundle.as_str());
    let m = get(format!("/v2/reg/demo/app/manifests/{bundle}")).await;
    assert_eq!(m.status(), 200);
    let m: serde_json::Value = m.json().await.unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let b = get(format!("/v2/reg/demo/app/blobs/{layer}")).await;
    assert_eq!(b.status(), 200);
    let b: serde_json::Value = b.json().await.unwrap();
    assert_eq!(
        b["mediaType"],
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    );
    let refused_index = get(format!("/v2/reg/demo/app/manifests/sha256-{}", &v2[7..])).await;
    assert_eq!(refused_index.status(), 403);

    // The referrers API: a registry that has it (and hides the tag).
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(support("referrers_proxy.py"))
        .arg(port.to_string());
    let proxy = spawn_port(cmd, env.dir.path().join("proxy.log"));
    let gate2 = env.gate("api", &rule, &[], proxy.port);
    pulled(
        &env.pull(&gate2, "demo/app:v1"),
        "bundle found through the referrers API",
    );
    assert!(
        proxy
            .log_text()
            .contains(&format!("REQ GET /v2/demo/app/referrers/{v1}")),
        "the gate did not ask the referrers API:\n{}",
        proxy.log_text()
    );
    refused(
        &env.pull(&gate2, "demo/app:v2"),
        "signature is for another image",
    );

    // The gate's own referrers endpoint, in front of a registry that has the API, lists the
    // bundle for downstream verifiers.
    let listed = reqwest::Client::new()
        .get(gate2.url(&format!("/v2/reg/demo/app/referrers/{v1}")))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(
        listed["manifests"][0]["digest"],
        bundle.as_str(),
        "{listed}"
    );

    // A key-based v3 bundle (no log entry needed) by a trusted key, and one by another key.
    env.sign("demo/keyed", &v1, "bundle", &["--key", "key:trusted"]);
    env.sign("demo/keyed", &v2, "bundle", &["--key", "key:stranger"]);
    let keyed = "[[image]]\nrepository = \"registry.test/demo/keyed\"\n[image.signature]\nkeys = [\"trusted.pub\"]\n";
    let g = env.gate("keyed", keyed, &["trusted"], port);
    pulled(&env.pull(&g, "demo/keyed:v1"), "key-signed bundle");
    refused(
        &env.pull(&g, "demo/keyed:v2"),
        "signed, but by no trusted signer",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rekor_v2_entries_dated_by_a_timestamp_authority() {
    // Rekor v2 entries carry no integrated time and no SET: the signature is dated by an RFC
    // 3161 timestamp of a TSA in the trusted root, and the entry proven by its inclusion proof
    // and the log's signed checkpoint (sigstore_sign.py --rekor-v2; the entry is the log's
    // first, index 0, which protobuf JSON leaves out).
    let env = Env::new(&["v2/app", "v2/other"]);
    let (v1, v2) = (env.v("v1"), env.v("v2"));
    let port = env.registry.port;
    let keyless = ["--identity", WORKFLOW, "--issuer", GITHUB, "--rekor-v2"];
    env.sign("v2/app", &v1, "bundle", &keyless);
    let mut rogue_tsa = keyless.to_vec();
    rogue_tsa.push("--rogue-tsa");
    env.sign("v2/app", &v2, "bundle", &rogue_tsa);
    let mut rogue_log = keyless.to_vec();
    rogue_log.push("--rogue-log");
    env.sign("v2/other", &v1, "bundle", &rogue_log);
    let rule = keyless_rule("v2/*", &exact(GITHUB, WORKFLOW), "");
    let gate = env.gate("rekor2", &rule, &[], port);
    pulled(
        &env.pull(&gate, "v2/app:v1"),
        "Rekor v2 entry with a timestamp",
    );
    refused(
        &env.pull(&gate, "v2/app:v2"),
        "an RFC 3161 timestamp does not verify with a timestamp authority of the trusted root",
    );
    refused(
        &env.pull(&gate, "v2/other:v1"),
        "the log's signed checkpoint does not verify",
    );
    // Another identity is still another identity.
    let other = keyless_rule(
        "v2/*",
        &exact(
            GITHUB,
            "https://github.com/acme/app/.github/workflows/other.yml@refs/tags/v1.0.0",
        ),
        "",
    );
    refused(
        &env.pull(&env.gate("rekor2-other", &other, &[], port), "v2/app:v1"),
        &format!("signed, but by no trusted signer (found: {WORKFLOW} from {GITHUB})"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_signatures_are_named_and_do_not_crowd_out_a_bundle() {
    // Anyone with push rights can add signature layers that verify with nothing. Each kind of
    // artifact is read up to [limits] signatures on its own budget, so junk `.sig` layers do not
    // hide a real v3 bundle, and what was not read is named in a refusal.
    let env = Env::new(&["junk/app"]);
    let (v1, v2) = (env.v("v1"), env.v("v2"));
    let port = env.registry.port;
    env.sign(
        "junk/app",
        &v1,
        "bundle",
        &["--identity", WORKFLOW, "--issuer", GITHUB],
    );
    env.sign("junk/app", &v1, "junk-sig", &["--layers", "6"]);
    env.sign("junk/app", &v2, "junk-sig", &["--layers", "6"]);
    let dir = env.dir.path().join("limited");
    std::fs::create_dir_all(dir.join("allowlists")).unwrap();
    std::fs::copy(
        env.trust.join("trusted_root.json"),
        dir.join("trusted_root.json"),
    )
    .unwrap();
    let cfg = format!(
        "trusted_root = \"trusted_root.json\"\n[limits]\nsignatures = 4\n[oci]\ntag_ttl = \"1s\"\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{port}\"\n"
    );
    let gate = Gate::start(
        &dir,
        &cfg,
        &keyless_rule("junk/app", &exact(GITHUB, WORKFLOW), ""),
    );
    pulled(
        &env.pull(&gate, "junk/app:v1"),
        "bundle beside junk .sig layers",
    );
    refused(
        &env.pull(&gate, "junk/app:v2"),
        "the .sig artifact has 6 layers; the first 4 ([limits] signatures) were read",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_platform_children_need_their_own_attestations_too() {
    let env = Env::new(&[]);
    let src = format!("oci:{}:multi", env.dir.path().join("layout").display());
    let dst = format!("docker://127.0.0.1:{}/att/multi:multi", env.registry.port);
    let out = skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src,
        &dst,
    ]);
    assert!(out.status.success(), "push: {}", show(&out));
    let (index, amd) = (env.v("multi"), env.v("multi-amd64"));
    let by_key = |who: &'static str| vec!["--key", who, "--reference", "registry.test/att/multi"];
    // The index and its amd64 platform are signed; only the index carries the attestation.
    for d in [&index, &amd] {
        env.sign("att/multi", d, "legacy-sig", &by_key("key:trusted"));
    }
    env.sign(
        "att/multi",
        &index,
        "legacy-att",
        &["--key", "key:builder", "--predicate-type", SLSA],
    );
    let rule = format!(
        "[[image]]\nrepository = \"registry.test/att/multi\"\n[image.signature]\nkeys = [\"trusted.pub\"]\nper_platform = true\n[[image.attestation]]\npredicate_type = \"{SLSA}\"\nkeys = [\"builder.pub\"]\n"
    );
    let port = env.registry.port;
    let gate = env.gate("per", &rule, &["trusted", "builder"], port);
    // With per_platform, a platform manifest needs its own evidence: its own signature is not
    // enough while the required attestation is only on the index, whether the index is pulled
    // (it lists the amd64 platform) or the platform by digest after it.
    refused(
        &env.pull(&gate, "att/multi:multi"),
        &format!("attestation {SLSA} missing"),
    );
    refused(
        &env.pull(&gate, &format!("att/multi@{amd}")),
        &format!("attestation {SLSA} missing"),
    );
    env.sign(
        "att/multi",
        &amd,
        "legacy-att",
        &["--key", "key:builder", "--predicate-type", SLSA],
    );
    let gate = env.gate("per2", &rule, &["trusted", "builder"], port);
    pulled(
        &env.pull(&gate, &format!("att/multi@{amd}")),
        "signed and attested platform manifest",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn attestations_present_absent_wrong_or_untrusted() {
    let repos = ["att/a", "att/b", "att/c", "att/d", "att/e", "att/f"];
    let env = Env::new(&repos);
    let v1 = env.v("v1");
    let port = env.registry.port;
    for repo in repos {
        env.sign(
            repo,
            &v1,
            "legacy-sig",
            &[
                "--key",
                "key:trusted",
                "--reference",
                &format!("registry.test/{repo}"),
            ],
        );
    }
    let keyless = ["--identity", WORKFLOW, "--issuer", GITHUB];
    // a: SLSA provenance by the builder key; b: none; c: SLSA by another key; d: an SPDX
    // document by the builder key; e: SLSA as a keyless v3 bundle; f: SLSA as a keyless legacy
    // .att (logged as an intoto entry).
    env.sign(
        "att/a",
        &v1,
        "legacy-att",
        &["--key", "key:builder", "--predicate-type", SLSA],
    );
    env.sign(
        "att/c",
        &v1,
        "legacy-att",
        &["--key", "key:stranger", "--predicate-type", SLSA],
    );
    env.sign(
        "att/d",
        &v1,
        "legacy-att",
        &[
            "--key",
            "key:builder",
            "--predicate-type",
            "https://spdx.dev/Document",
        ],
    );
    let mut e = keyless.to_vec();
    e.extend_from_slice(&["--predicate-type", SLSA]);
    env.sign("att/e", &v1, "bundle", &e);
    env.sign("att/f", &v1, "legacy-att", &e);
    let rule = format!(
        "[[image]]\nrepository = \"registry.test/att/*\"\n[image.signature]\nkeys = [\"trusted.pub\"]\n[[image.attestation]]\npredicate_type = \"{SLSA}\"\nkeys = [\"builder.pub\"]\nkeyless = [{}]\n",
        exact(GITHUB, WORKFLOW)
    );
    let gate = env.gate("att", &rule, &["trusted", "builder"], port);
    pulled(&env.pull(&gate, "att/a:v1"), "signed and attested");
    refused(
        &env.pull(&gate, "att/b:v1"),
        &format!("attestation {SLSA} missing"),
    );
    refused(
        &env.pull(&gate, "att/c:v1"),
        &format!("attestation {SLSA} present, but by no trusted signer"),
    );
    refused(
        &env.pull(&gate, "att/d:v1"),
        &format!("attestation {SLSA} missing"),
    );
    pulled(&env.pull(&gate, "att/e:v1"), "keyless bundle attestation");
    pulled(&env.pull(&gate, "att/f:v1"), "keyless legacy attestation");
    // The attestation artifact of an admitted image is served downstream.
    pulled(
        &env.pull(&gate, &format!("att/a:sha256-{}.att", &v1[7..])),
        "attestation artifact",
    );
    // Attestations are required in addition to pins: a pinned digest without one is refused.
    let pinned = format!(
        "[[image]]\nrepository = \"registry.test/att/*\"\ndigests = [\"{v1}\"]\n[[image.attestation]]\npredicate_type = \"{SLSA}\"\nkeys = [\"builder.pub\"]\n"
    );
    let g = env.gate("pinned", &pinned, &["builder"], port);
    pulled(&env.pull(&g, "att/a:v1"), "pinned and attested");
    refused(
        &env.pull(&g, "att/b:v1"),
        &format!("attestation {SLSA} missing"),
    );
}
