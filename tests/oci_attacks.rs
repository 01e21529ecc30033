//! What someone who can push to an upstream repository tries against the pull gate, end to
//! end: a real docker-registry holding what the attacker pushed (with the registry's own HTTP
//! API), the real gate in front, and real skopeo or plain HTTP requests through it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

struct Env {
    dir: tempfile::TempDir,
    digests: BTreeMap<String, String>,
    registry: Proc,
    http: reqwest::Client,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let digests = oci_images(&dir.path().join("layout"));
        let registry = docker_registry(&dir.path().join("registry"), "");
        let env = Env {
            dir,
            digests,
            registry,
            http: reqwest::Client::new(),
        };
        for tag in ["v1", "v2"] {
            let src = format!("oci:{}:{tag}", env.dir.path().join("layout").display());
            let dst = format!("docker://127.0.0.1:{}/demo/app:{tag}", env.registry.port);
            let out = tokio::task::block_in_place(|| {
                skopeo(&[
                    "copy",
                    "--preserve-digests",
                    "--dest-tls-verify=false",
                    &src,
                    &dst,
                ])
            });
            assert!(out.status.success(), "push: {}", show(&out));
        }
        env
    }

    fn upstream(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/v2/demo/app/{path}", self.registry.port)
    }

    async fn manifest(&self, reference: &str) -> Value {
        self.http
            .get(self.upstream(&format!("manifests/{reference}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Pushes a manifest under `reference` (a tag, or its own digest); returns its digest.
    async fn push_manifest(&self, reference: Option<&str>, m: &Value) -> String {
        self.push_raw(reference, serde_json::to_vec(m).unwrap())
            .await
    }

    /// Pushes manifest bytes as written (key order and spelling kept).
    async fn push_raw(&self, reference: Option<&str>, bytes: Vec<u8>) -> String {
        let digest = format!(
            "sha256:{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(&bytes)
        );
        let r = self
            .http
            .put(self.upstream(&format!("manifests/{}", reference.unwrap_or(&digest))))
            .header("Content-Type", OCI_MANIFEST)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "push manifest: {}", r.status());
        digest
    }

    /// Pushes a blob; returns its descriptor's digest and size.
    async fn push_blob(&self, data: &[u8]) -> (String, usize) {
        let digest = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(data));
        let r = self
            .http
            .post(self.upstream("blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with('/') {
            format!("http://127.0.0.1:{}{loc}", self.registry.port)
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .http
            .put(format!("{loc}{sep}digest={digest}"))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "push blob: {}", r.status());
        (digest, data.len())
    }

    fn gate(&self, name: &str, rule: &str) -> Gate {
        let cfg = format!(
            "[oci]\ntag_ttl = \"1s\"\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{}\"\n",
            self.registry.port
        );
        Gate::start(&self.dir.path().join(name), &cfg, rule)
    }

    async fn get(&self, gate: &Gate, path: &str) -> reqwest::StatusCode {
        self.http
            .get(gate.url(&format!("/v2/reg/demo/app/{path}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap()
            .status()
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
                &format!(
                    "docker://127.0.0.1:{}/reg/demo/app{reference}",
                    gate.proc.port
                ),
                &format!("dir:{}", dest.display()),
            ])
        })
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn pinned(digest: &str) -> String {
    format!("[[image]]\nrepository = \"registry.test/demo/app\"\ndigests = [\"{digest}\"]\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_tag_never_carries_an_unadmitted_images_blobs() {
    let env = Env::new().await;
    let (v1, v2) = (env.digests["v1"].clone(), env.digests["v2"].clone());
    let sig_tag = format!("sha256-{}.sig", &v1[7..]);
    let v2m = env.manifest(&v2).await;
    let v2_blobs: Vec<String> = std::iter::once(&v2m["config"])
        .chain(v2m["layers"].as_array().unwrap())
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();

    // v2's manifest with its layers merely labelled as signatures, under v1's `.sig` tag.
    let mut relabelled = v2m.clone();
    for l in relabelled["layers"].as_array_mut().unwrap() {
        l["mediaType"] = SIMPLE_SIGNING.into();
    }
    env.push_manifest(Some(&sig_tag), &relabelled).await;
    let gate = env.gate("g1", &pinned(&v1));
    assert_eq!(env.get(&gate, &format!("manifests/{sig_tag}")).await, 403);
    for b in &v2_blobs {
        assert_eq!(env.get(&gate, &format!("blobs/{b}")).await, 403, "{b}");
    }

    // A real simple-signing payload as the layer, but v2's image config as the config.
    let payload = json!({"critical": {"identity": {"docker-reference": "registry.test/demo/app"},
        "image": {"docker-manifest-digest": v1}, "type": "cosign container image signature"},
        "optional": null});
    let (pd, ps) = env.push_blob(payload.to_string().as_bytes()).await;
    let with_image_config = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": v2m["config"].clone(),
        "layers": [{"mediaType": SIMPLE_SIGNING, "digest": pd, "size": ps,
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="}}]});
    env.push_manifest(Some(&sig_tag), &with_image_config).await;
    let gate = env.gate("g2", &pinned(&v1));
    assert_eq!(env.get(&gate, &format!("manifests/{sig_tag}")).await, 403);
    assert_eq!(env.get(&gate, &format!("blobs/{}", v2_blobs[0])).await, 403);

    // The same artifact with cosign's own kind of config (its layers' digests as diff_ids):
    // served, payload and config alike, and pulled by skopeo as downstream verifiers do; v2's
    // blobs stay refused.
    let config = json!({"architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [pd]}});
    let (cd, cs) = env.push_blob(config.to_string().as_bytes()).await;
    let genuine = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": with_image_config["layers"].clone()});
    env.push_manifest(Some(&sig_tag), &genuine).await;
    let gate = env.gate("g3", &pinned(&v1));
    let out = env.pull(&gate, &format!(":{sig_tag}"));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(env.get(&gate, &format!("blobs/{pd}")).await, 200);
    assert_eq!(env.get(&gate, &format!("blobs/{cd}")).await, 200);
    for b in &v2_blobs {
        assert_eq!(env.get(&gate, &format!("blobs/{b}")).await, 403, "{b}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_manifest_changes_nothing_in_the_store() {
    let env = Env::new().await;
    let v1 = env.digests["v1"].clone();
    // An unadmitted manifest naming v1's layer with another size (and so another digest).
    let mut m = env.manifest(&v1).await;
    let size = m["layers"][0]["size"].as_u64().unwrap();
    m["layers"][0]["size"] = (size + 1000).into();
    m["annotations"] = json!({"attack": "size"});
    let liar = env.push_manifest(None, &m).await;
    let gate = env.gate("g", &pinned(&v1));
    let cache = gate.dir.join("data/cache");
    assert_eq!(env.get(&gate, &format!("manifests/{liar}")).await, 403);
    // Only the pinned manifest may have been read (to learn what it lists), never the refused
    // one.
    let cached = files_under(&cache);
    assert!(
        cached.iter().all(|f| f.ends_with(&v1[7..])),
        "a refused manifest was cached: {cached:?}"
    );
    // v1 still pulls with its own sizes.
    let out = env.pull(&gate, &format!("@{v1}"));
    assert!(out.status.success(), "{}", show(&out));
}

/// Go clients (skopeo, containerd, podman) read `Layers` as `layers`, the last match winning;
/// a signature tag spelled for them to see v1's image with the attacker's config is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_signature_tag_spelled_for_go_clients_is_refused() {
    let env = Env::new().await;
    let v1 = env.digests["v1"].clone();
    let sig_tag = format!("sha256-{}.sig", &v1[7..]);
    let v1m = env.manifest(&v1).await;
    let v1c: Value = env
        .http
        .get(env.upstream(&format!(
            "blobs/{}",
            v1m["config"]["digest"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let payload = json!({"critical": {"identity": {"docker-reference": "registry.test/demo/app"},
        "image": {"docker-manifest-digest": v1}, "type": "cosign container image signature"},
        "optional": null});
    let (pd, ps) = env.push_blob(payload.to_string().as_bytes()).await;
    let sig_layer = json!([{"mediaType": SIMPLE_SIGNING, "digest": pd, "size": ps,
        "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="}}]);
    // The config: no layers for the gate, v1's for Go, and the attacker's start-up.
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"RootFS":{},"config":{{"Entrypoint":["/bin/sh","-c","echo PWNED"],"User":"0"}}}}"#,
        v1c["rootfs"]
    );
    let (cd, cs) = env.push_blob(config.as_bytes()).await;
    let manifest = |layers_key: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":{sig_layer},"{layers_key}":{}}}"#,
            v1m["layers"]
        )
    };
    // Both spellings, and only Go's: each served as a signature would hand v1's layers to
    // a runtime under the attacker's entrypoint.
    for (name, bytes) in [("g1", manifest("Layers")), ("g2", manifest("layer\\u017f"))] {
        env.push_raw(Some(&sig_tag), bytes.into_bytes()).await;
        let gate = env.gate(name, &pinned(&v1));
        let r = env
            .http
            .get(gate.url(&format!("/v2/reg/demo/app/manifests/{sig_tag}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert!(status == 502 || status == 403, "{name}: {status}");
        assert!(
            body.contains("ambiguous JSON"),
            "{name}: the refusal names why: {body}"
        );
        assert_eq!(env.get(&gate, &format!("blobs/{cd}")).await, 403, "{name}");
        let out = env.pull(&gate, &format!(":{sig_tag}"));
        assert!(!out.status.success(), "{name}: {}", show(&out));
    }
    // A manifest spelled plainly, with that config: the config is no artifact's config.
    let plain = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": sig_layer});
    env.push_manifest(Some(&sig_tag), &plain).await;
    let gate = env.gate("g3", &pinned(&v1));
    assert_eq!(env.get(&gate, &format!("manifests/{sig_tag}")).await, 403);
    assert_eq!(env.get(&gate, &format!("blobs/{cd}")).await, 403);
}
