//! The deploy files, checked with the real tools: the image built with buildah from the release
//! binary and Debian's packages, run under podman read-only as a non-root user, and pulled by
//! real podman through a running gate by its digest; every kustomize overlay rendered by
//! `kubectl kustomize` and validated by `kubernetes-validate`; the Containerfile, the manifests
//! and the Bicep template scanned by `checkov` (offline). See deploy/README.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Python tool the test script installs in target/tools/deploy (its own virtualenv).
fn tool(name: &str) -> PathBuf {
    let p = repo().join("target/tools/deploy/bin").join(name);
    if p.exists() {
        p
    } else {
        PathBuf::from(name)
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

/// podman as this CI machine runs it: runc (crun cannot drop cgroup v1 controllers here), limits
/// no higher than the sandbox allows, and no systemd timer for the image's health check.
fn podman_run() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "run"])
        .args([
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ])
        .arg("--no-healthcheck");
    c
}

/// Removes the test's containers and images, whatever happens.
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in &self.0 {
            let _ = Command::new("podman").args(args).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_builds_runs_read_only_and_is_pulled_through_the_gate_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    // The release binary the test script built; a debug build works too (only larger).
    let release = repo().join("target/release/tollgate");
    let binary = if release.exists() {
        release
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_tollgate"))
    };
    let id = std::process::id();
    let image = format!("localhost/tollgate-test:{id}");
    let name = format!("tollgate-test-{id}");
    let _cleanup = Cleanup(vec![
        vec![
            "--runtime".into(),
            "runc".into(),
            "rm".into(),
            "-f".into(),
            name.clone(),
        ],
        vec!["rmi".into(), "-f".into(), image.clone()],
    ]);
    let out = run(Command::new("bash")
        .arg(repo().join("deploy/container/build.sh"))
        .arg(&binary)
        .arg(&image));
    assert!(out.status.success(), "build.sh: {}", show(&out));

    // Run it as a cluster would: read-only root, no capabilities, no privilege escalation.
    let port = free_port();
    let cfg = dir.path().join("etc");
    std::fs::create_dir_all(cfg.join("allowlists")).unwrap();
    std::fs::write(
        cfg.join("tollgate.toml"),
        format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"/var/lib/tollgate\"\nallowlist_dir = \"/etc/tollgate/allowlists\"\n"),
    )
    .unwrap();
    let out = run(podman_run()
        .args(["-d", "--name", &name, "--read-only", "--network", "host"])
        .args(["--cap-drop=ALL", "--security-opt", "no-new-privileges"])
        .arg("-v")
        .arg(format!("{}:/etc/tollgate:ro", cfg.display()))
        .arg(&image));
    assert!(out.status.success(), "podman run: {}", show(&out));
    let logs = || {
        let o = run(Command::new("podman").args(["--runtime", "runc", "logs", &name]));
        show(&o)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /healthz: {}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Its own health check needs no shell or curl in the image.
    let out = run(Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "exec",
            &name,
            "/usr/local/bin/tollgate",
            "health",
        ])
        .arg(format!("--url=http://127.0.0.1:{port}")));
    assert!(out.status.success(), "tollgate health: {}", show(&out));
    let out = run(Command::new("podman").args([
        "inspect",
        &name,
        "--format",
        "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10001:10001 true"
    );
    // No shell to run: nothing but the gate is in the image.
    let out = run(Command::new("podman").args([
        "--runtime",
        "runc",
        "exec",
        &name,
        "/bin/sh",
        "-c",
        "true",
    ]));
    assert!(!out.status.success(), "the image has a shell");

    // Pushed to a registry, and pulled by real podman through a running gate, by its digest.
    let registry = docker_registry(&dir.path().join("registry"), "");
    let dest = format!("docker://127.0.0.1:{}/platform/tollgate:v1", registry.port);
    let out = run(Command::new("podman").args(["push", "--tls-verify=false", &image, &dest]));
    assert!(out.status.success(), "podman push: {}", show(&out));
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &dest]);
    assert!(raw.status.success(), "{}", show(&raw));
    // Nothing of it left locally: every layer of the pull below comes through the gate.
    for args in [
        vec!["--runtime", "runc", "rm", "-f", name.as_str()],
        vec!["rmi", "-f", image.as_str()],
    ] {
        let out = run(Command::new("podman").args(&args));
        assert!(out.status.success(), "podman {args:?}: {}", show(&out));
    }
    let digest = format!(
        "sha256:{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(&raw.stdout)
    );
    let gate = Gate::start(
        &dir.path().join("gate"),
        &format!("[[oci.registry]]\nhost = \"registry.internal\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{}\"\n", registry.port),
        &format!("[[image]]\nrepository = \"registry.internal/platform/tollgate\"\ndigests = [\"{digest}\"]\n"),
    );
    let pinned = format!(
        "127.0.0.1:{}/reg/platform/tollgate@{digest}",
        gate.proc.port
    );
    let out = tokio::task::block_in_place(|| {
        run(Command::new("podman").args(["pull", "--tls-verify=false", &pinned]))
    });
    assert!(
        out.status.success(),
        "podman pull: {}\n{}",
        show(&out),
        gate.proc.log_text()
    );
    let _cleanup_pulled = Cleanup(vec![vec!["rmi".into(), "-f".into(), pinned.clone()]]);
    // The pulled image is known by the pinned reference.
    let out = run(Command::new("podman").args([
        "image",
        "inspect",
        &pinned,
        "--format",
        "{{.RepoDigests}}",
    ]));
    let digests = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(digests.contains(&pinned), "{digests}");
    let served = gate.metric("tollgate_cache_misses_total").await;
    assert!(
        served >= 2.0,
        "the layers did not come through the gate ({served})"
    );
    // Another image of the same registry is not on the allowlist: refused.
    let other = format!("127.0.0.1:{}/reg/platform/other:v1", gate.proc.port);
    let out = tokio::task::block_in_place(|| {
        run(Command::new("podman").args(["pull", "--tls-verify=false", &other]))
    });
    assert!(!out.status.success(), "an unlisted image was pulled");
}

/// Every overlay, rendered.
fn overlays() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(repo().join("deploy/kubernetes/overlays")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        let rendered = run(Command::new("kubectl").arg("kustomize").arg(e.path()));
        assert!(
            rendered.status.success(),
            "kubectl kustomize {name}: {}",
            show(&rendered)
        );
        let file =
            std::env::temp_dir().join(format!("tollgate-{name}-{}.yaml", std::process::id()));
        std::fs::write(&file, &rendered.stdout).unwrap();
        out.push((name, file));
    }
    for want in ["single", "ha"] {
        assert!(out.iter().any(|(n, _)| n == want), "{want}: {out:?}");
    }
    out
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schema() {
    for (name, file) in overlays() {
        let out = run(Command::new(tool("kubernetes-validate"))
            .arg("--strict")
            .arg(&file));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name}: {text}");
        // Every object validated, but cert-manager's custom resources (no schema there).
        for line in text.lines().filter(|l| !l.starts_with("INFO")) {
            assert!(
                line.contains("cert-manager.io/v1"),
                "{name}: unexpected: {line}\n{text}"
            );
        }
        let passed = text.matches("passed for resource").count();
        assert!(passed >= 13, "{name}: {passed} objects validated\n{text}");
        // What the cluster relies on, read from the rendered objects.
        let check = run(Command::new(tool("python3"))
            .arg("-c")
            .arg(RENDERED_CHECKS)
            .arg(&file));
        assert!(check.status.success(), "{name}: {}", show(&check));
        if name == "ha" {
            let check = run(Command::new(tool("python3"))
                .arg("-c")
                .arg(HA_CHECKS)
                .arg(&file));
            assert!(check.status.success(), "ha: {}", show(&check));
            // The ha config is one the gate accepts (its store and cache sections parse).
            let cfg = tempfile::tempdir().unwrap();
            let text =
                std::fs::read_to_string(repo().join("deploy/kubernetes/overlays/ha/tollgate.toml"))
                    .unwrap();
            let text = text
                .replace("/etc/tollgate/allowlists", "allowlists")
                .replace("[tls]", "[tls_unused]")
                .replace("[admission]", "[admission_unused]");
            let kept: String = text
                .split("\n[")
                .filter(|sec| {
                    !sec.starts_with("tls_unused") && !sec.starts_with("admission_unused")
                })
                .collect::<Vec<_>>()
                .join("\n[");
            std::fs::create_dir_all(cfg.path().join("allowlists")).unwrap();
            std::fs::write(cfg.path().join("tollgate.toml"), kept).unwrap();
            let out = run(Command::new(env!("CARGO_BIN_EXE_tollgate"))
                .args(["check", "--config"])
                .arg(cfg.path().join("tollgate.toml")));
            assert!(out.status.success(), "ha tollgate.toml: {}", show(&out));
        }
        let _ = std::fs::remove_file(&file);
    }
}

/// Properties of the rendered manifests a user relies on (PyYAML, from checkov's environment).
const RENDERED_CHECKS: &str = r#"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {}
for d in docs:
    kinds.setdefault(d["kind"], []).append(d)
hooks = kinds["MutatingWebhookConfiguration"] + kinds["ValidatingWebhookConfiguration"]
assert len(hooks) == 2, hooks
for h in hooks:
    assert h["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "tollgate/tollgate-tls"
    for w in h["webhooks"]:
        assert w["failurePolicy"] == "Fail", w
        left_out = [e for e in w["namespaceSelector"]["matchExpressions"] if e["operator"] == "NotIn"][0]["values"]
        assert set(left_out) >= {"tollgate", "kube-system"}, w
        assert w["clientConfig"]["service"]["namespace"] == "tollgate"
(dep,) = kinds["Deployment"]
pod = dep["spec"]["template"]["spec"]
assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
(c,) = pod["containers"]
sc = c["securityContext"]
assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
assert "@sha256:" in c["image"], c["image"]
for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
    assert probe in c, probe
assert c["resources"]["limits"] and c["resources"]["requests"]
assert pod["topologySpreadConstraints"]
assert kinds["PodDisruptionBudget"] and len(kinds["NetworkPolicy"]) >= 3
assert any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in kinds["NetworkPolicy"])
assert all(d["metadata"].get("namespace", "tollgate") == "tollgate" for d in docs if d["kind"] not in ("Namespace", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"))
print("ok")
"#;

/// What the ha overlay adds: replicas that roll, a budget that keeps two, no claim on a volume
/// (the store and the cache tier are shared services), the database password as a mounted file.
const HA_CHECKS: &str = r#"
import sys, yaml, tomllib
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {}
for d in docs:
    kinds.setdefault(d["kind"], []).append(d)
(dep,) = kinds["Deployment"]
assert dep["spec"]["replicas"] >= 2, dep["spec"]["replicas"]
assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
(pdb,) = kinds["PodDisruptionBudget"]
assert pdb["spec"]["minAvailable"] >= 2 and "maxUnavailable" not in pdb["spec"], pdb["spec"]
assert "PersistentVolumeClaim" not in kinds
pod = dep["spec"]["template"]["spec"]
vols = {v["name"]: v for v in pod["volumes"]}
assert "emptyDir" in vols["data"] and "persistentVolumeClaim" not in vols["data"], vols["data"]
assert vols["store"]["secret"]["secretName"] == "tollgate-store"
(c,) = pod["containers"]
assert not any("valueFrom" in e for e in c.get("env", [])), "a secret in an environment variable"
cm = [d for d in kinds["ConfigMap"] if d["metadata"]["name"].startswith("tollgate-config")][0]
cfg = tomllib.loads(cm["data"]["tollgate.toml"])
assert cfg["store"]["url"].startswith("postgres://") and "sslmode=verify-full" in cfg["store"]["url"]
assert cfg["store"]["password_file"].startswith("/etc/tollgate/store/")
assert cfg["cache"]["url"].startswith("az://")
egress = [p for p in kinds["NetworkPolicy"] if p["metadata"]["name"] == "tollgate-egress-store"][0]
ports = {p["port"] for r in egress["spec"]["egress"] for p in r["ports"]}
assert ports == {5432, 443}, ports
print("ok")
"#;

/// checkov's JSON report of one scan: (passed, failed, skipped, parsing errors, resources).
fn checkov(args: &[&str], target: &Path) -> (usize, usize, usize, usize, Vec<String>) {
    let out = run(Command::new(tool("checkov"))
        .args(args)
        .arg(target)
        .args(["--skip-download", "-o", "json"])
        .env("BC_SKIP_MAPPING", "TRUE"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checkov {args:?}: {e}: {}", show(&out)));
    let report = if v.is_array() { v[0].clone() } else { v };
    let s = &report["summary"];
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| format!("{} {} {}", c["check_id"], c["resource"], c["file_path"]))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        failed.is_empty(),
        "checkov {args:?} failed checks: {failed:#?}"
    );
    let resources = report["results"]["passed_checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["resource"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX) as usize;
    (
        n("passed"),
        n("failed"),
        n("skipped"),
        n("parsing_errors"),
        resources,
    )
}

#[test]
fn checkov_finds_nothing_to_fix_in_the_image_the_manifests_or_the_bicep() {
    // The Containerfile, under the name checkov's Dockerfile scanner recognises.
    let cf = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("deploy/container/Containerfile"),
        cf.path().join("Dockerfile"),
    )
    .unwrap();
    let (passed, failed, skipped, errors, _) =
        checkov(&["--framework", "dockerfile", "-d"], cf.path());
    assert_eq!((failed, skipped, errors), (0, 0, 0));
    assert!(passed >= 10, "{passed}");

    for (name, file) in overlays() {
        let (passed, failed, skipped, errors, _) =
            checkov(&["--framework", "kubernetes", "-f"], &file);
        assert_eq!((failed, skipped, errors), (0, 0, 0), "{name}");
        assert!(passed >= 80, "{name}: {passed}");
        let _ = std::fs::remove_file(&file);
    }

    let (passed, failed, skipped, errors, resources) = checkov(
        &["--framework", "bicep", "-d"],
        &repo().join("deploy/azure"),
    );
    assert_eq!((failed, skipped, errors), (0, 0, 0));
    assert!(passed >= 10, "{passed}");
    for r in [
        "Microsoft.Storage/storageAccounts.storage",
        "Microsoft.Network/networkSecurityGroups.nsg",
        "Microsoft.Storage/storageAccounts/blobServices/containers.cache",
    ] {
        assert!(
            resources.iter().any(|x| x == r),
            "{r} not scanned: {resources:?}"
        );
    }
}
