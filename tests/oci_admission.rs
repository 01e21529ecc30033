//! The verification API and the Kubernetes admission webhooks, end to end: real Pod specs in
//! real AdmissionReview v1 bodies, decided by the real gate against a real docker-registry.

mod common;

use base64::Engine;
use serde_json::{json, Value};

use common::*;

struct Env {
    _dir: tempfile::TempDir,
    v1: String,
    gate: Gate,
    _registry: Proc,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let digests = oci_images(&dir.path().join("layout"));
    let registry = docker_registry(&dir.path().join("registry"), "");
    for (r, dest) in [("v1", "demo/app:v1"), ("v2", "demo/app:v2")] {
        let out = skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{r}", dir.path().join("layout").display()),
            &format!("docker://127.0.0.1:{}/{dest}", registry.port),
        ]);
        assert!(out.status.success(), "{}", show(&out));
    }
    let cfg = format!(
        "[oci]\ntag_ttl = \"1s\"\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{}\"\n",
        registry.port
    );
    let rule = format!(
        "[[image]]\nrepository = \"registry.test/demo/app\"\ndigests = [\"{}\"]\n",
        digests["v1"]
    );
    let gate = Gate::start(&dir.path().join("gate"), &cfg, &rule);
    Env {
        v1: digests["v1"].clone(),
        gate,
        _registry: registry,
        _dir: dir,
    }
}

async fn post(gate: &Gate, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(gate.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn review(
    operation: &str,
    sub: Option<&str>,
    containers: &[&str],
    init: &[&str],
    ephemeral: &[&str],
) -> Value {
    let c = |list: &[&str]| {
        list.iter()
            .enumerate()
            .map(|(i, img)| json!({ "name": format!("c{i}"), "image": img }))
            .collect::<Vec<_>>()
    };
    let mut request = json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": { "group": "", "version": "v1", "kind": "Pod" },
        "resource": { "group": "", "version": "v1", "resource": "pods" },
        "namespace": "ml",
        "operation": operation,
        "userInfo": { "username": "system:serviceaccount:ml:trainer" },
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": "trainer", "namespace": "ml" },
            "spec": { "containers": c(containers), "initContainers": c(init), "ephemeralContainers": c(ephemeral) }
        },
        "dryRun": false
    });
    if let Some(s) = sub {
        request["subResource"] = json!(s);
    }
    json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request })
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_api() {
    let env = env();
    let (s, v) = post(
        &env.gate,
        "/api/v1/verify",
        &json!({ "image": "registry.test/demo/app:v1" }),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(v["digest"], env.v1.as_str());
    let (_, v) = post(
        &env.gate,
        "/api/v1/verify",
        &json!({ "image": "registry.test/demo/app:v2" }),
    )
    .await;
    assert_eq!(v["allowed"], false);
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("not a pinned digest"),
        "{v}"
    );
    let (_, v) = post(
        &env.gate,
        "/api/v1/verify",
        &json!({ "image": format!("registry.test/demo/app@{}", env.v1) }),
    )
    .await;
    assert_eq!(v["allowed"], true);
    let (_, v) = post(
        &env.gate,
        "/api/v1/verify",
        &json!({ "image": "quay.io/evil/miner:latest" }),
    )
    .await;
    assert_eq!(v["allowed"], false);
    assert!(v["reasons"][0].as_str().unwrap().contains("not configured"));
    let (_, v) = post(
        &env.gate,
        "/api/v1/verify",
        &json!({ "image": "registry.test/demo/other:v1" }),
    )
    .await;
    assert!(v["reasons"][0]
        .as_str()
        .unwrap()
        .contains("not on the allowlist"));
    for bad in [
        json!({}),
        json!({ "image": 3 }),
        json!({ "image": "x", "extra": 1 }),
        json!({ "image": "UPPER/x" }),
    ] {
        let (s, _) = post(&env.gate, "/api/v1/verify", &bad).await;
        assert_eq!(s, 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn validating_webhook() {
    let env = env();
    let ok = "registry.test/demo/app:v1";
    let bad = "registry.test/demo/app:v2";
    let (s, v) = post(
        &env.gate,
        "/k8s/admission",
        &review("CREATE", None, &[ok], &[ok], &[]),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(v["response"]["allowed"], true, "{v}");
    for r in [
        review("CREATE", None, &[ok], &[bad], &[]),
        review("UPDATE", None, &[bad], &[], &[]),
        review("UPDATE", Some("ephemeralcontainers"), &[ok], &[], &[bad]),
        review(
            "CREATE",
            None,
            &["docker.io/library/ubuntu:latest"],
            &[],
            &[],
        ),
    ] {
        let (s, v) = post(&env.gate, "/k8s/admission", &r).await;
        assert_eq!(s, 200);
        assert_eq!(v["response"]["allowed"], false, "{v}");
        assert_eq!(v["response"]["status"]["code"], 403);
    }
    let (_, v) = post(
        &env.gate,
        "/k8s/admission",
        &review("CREATE", None, &[bad], &[], &[]),
    )
    .await;
    assert!(v["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("registry.test/demo/app:v2"));
    // UPDATE judges only new or changed images: an unchanged one is not re-decided.
    let mut upd = review("UPDATE", None, &[bad], &[], &[]);
    upd["request"]["oldObject"] = upd["request"]["object"].clone();
    let (_, v) = post(&env.gate, "/k8s/admission", &upd).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    let mut upd = review("UPDATE", None, &[ok, bad], &[], &[]);
    upd["request"]["oldObject"] =
        review("CREATE", None, &[ok], &[], &[])["request"]["object"].clone();
    let (_, v) = post(&env.gate, "/k8s/admission", &upd).await;
    assert_eq!(v["response"]["allowed"], false, "a changed image is judged");
    // A running container's image is no pass for a new ephemeral container naming it: only
    // the same image at the same place is unchanged.
    let mut upd = review("UPDATE", Some("ephemeralcontainers"), &[bad], &[], &[bad]);
    upd["request"]["oldObject"] =
        review("CREATE", None, &[bad], &[], &[])["request"]["object"].clone();
    let (_, v) = post(&env.gate, "/k8s/admission", &upd).await;
    assert_eq!(v["response"]["allowed"], false, "{v}");
    // Image volumes (spec.volumes[].image.reference) are decided like containers.
    let mut vol = review("CREATE", None, &[ok], &[], &[]);
    vol["request"]["object"]["spec"]["volumes"] = json!([
        { "name": "data", "emptyDir": {} },
        { "name": "weights", "image": { "reference": bad, "pullPolicy": "IfNotPresent" } }
    ]);
    let (_, v) = post(&env.gate, "/k8s/admission", &vol).await;
    assert_eq!(v["response"]["allowed"], false, "{v}");
    assert!(v["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains(bad));
    vol["request"]["object"]["spec"]["volumes"][1]["image"] = json!({ "pullPolicy": "Always" });
    let (_, v) = post(&env.gate, "/k8s/admission", &vol).await;
    assert_eq!(
        v["response"]["allowed"], false,
        "an image volume without a reference: {v}"
    );
    vol["request"]["object"]["spec"]["volumes"][1]["image"]["reference"] = json!(ok);
    let (_, v) = post(&env.gate, "/k8s/admission", &vol).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    // A container whose image is not a string admits nothing.
    let mut odd = review("CREATE", None, &[ok], &[], &[]);
    odd["request"]["object"]["spec"]["containers"][0]["image"] = json!(42);
    let (_, v) = post(&env.gate, "/k8s/admission", &odd).await;
    assert_eq!(v["response"]["allowed"], false);
    // A Pod review with no spec is refused, not waved through.
    let mut nospec = review("CREATE", None, &[ok], &[], &[]);
    nospec["request"]["object"] = json!({ "kind": "Pod" });
    let (_, v) = post(&env.gate, "/k8s/admission", &nospec).await;
    assert_eq!(v["response"]["allowed"], false, "{v}");
    // DELETE is not ours to judge; a body that is not a review is 400.
    let (_, v) = post(
        &env.gate,
        "/k8s/admission",
        &review("DELETE", None, &[bad], &[], &[]),
    )
    .await;
    assert_eq!(v["response"]["allowed"], true);
    let (s, _) = post(&env.gate, "/k8s/admission", &json!({ "kind": "Pod" })).await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn mutating_webhook_pins_digests() {
    let env = env();
    let (s, v) = post(
        &env.gate,
        "/k8s/mutate",
        &review(
            "CREATE",
            None,
            &["registry.test/demo/app:v1"],
            &[&format!("registry.test/demo/app@{}", env.v1)],
            &[],
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["response"]["allowed"], true, "{v}");
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        patch,
        json!([{ "op": "replace", "path": "/spec/containers/0/image", "value": format!("registry.test/demo/app@{}", env.v1) }])
    );
    let (_, v) = post(
        &env.gate,
        "/k8s/mutate",
        &review("CREATE", None, &["registry.test/demo/app:v2"], &[], &[]),
    )
    .await;
    assert_eq!(v["response"]["allowed"], false);
    assert!(v["response"].get("patch").is_none());
    // An image volume is pinned like a container.
    let mut vol = review(
        "CREATE",
        None,
        &[&format!("registry.test/demo/app@{}", env.v1)],
        &[],
        &[],
    );
    vol["request"]["object"]["spec"]["volumes"] =
        json!([{ "name": "weights", "image": { "reference": "registry.test/demo/app:v1" } }]);
    let (_, v) = post(&env.gate, "/k8s/mutate", &vol).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        patch,
        json!([{ "op": "replace", "path": "/spec/volumes/0/image/reference", "value": format!("registry.test/demo/app@{}", env.v1) }])
    );
}

#[test]
fn image_verify_command() {
    let env = env();
    let run = |image: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["image", "verify", image, "--config"])
            .arg(env.gate.dir.join("tollgate.toml"))
            .output()
            .unwrap()
    };
    // Beside the running gate (its store is in use): the command uses a scratch store.
    let out = run("registry.test/demo/app:v1");
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ALLOW") && text.contains(&env.v1), "{text}");
    let out = run("registry.test/demo/app:v2");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a pinned digest"));
}
