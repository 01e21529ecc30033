//! Upstream credentials from a managed identity (`auth = "managed-identity"`), end to end with
//! the real binary, real pip and skopeo, and a real docker-registry behind the ACR stand-in.
//! Azure's identity endpoints (IMDS, App Service's, Entra ID's) and ACR's token exchange cannot
//! run here: `tests/support/azure_standin.py` stands in for them on loopback, written to their
//! documented wire formats, and serves an Azure Artifacts-like feed that takes only a bearer
//! token issued for Azure DevOps.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const DEVOPS: &str = "499b84ac-1321-427f-aa17-267ca6975798";
const ACR: &str = "https://containerregistry.azure.net";
const IDENTITY_HEADER: &str = "standin-identity-header";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

struct Azure {
    fx: Fixture,
    standin: Proc,
    _registry: Proc,
    registry_port: u16,
    assertion: std::path::PathBuf,
}

impl Azure {
    fn start() -> Azure {
        let fx = Fixture::build();
        let registry = docker_registry(&fx.path("registry"), "");
        let assertion = fx.path("federated-token");
        std::fs::write(&assertion, "eyJ.service-account-token.1\n").unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(support("azure_standin.py"))
            .arg(fx.root())
            .arg(format!("http://127.0.0.1:{}", registry.port))
            .arg(IDENTITY_HEADER)
            .arg(&assertion)
            .arg(CLIENT_ID);
        let standin = spawn_port(cmd, fx.path("standin.log"));
        Azure {
            registry_port: registry.port,
            _registry: registry,
            fx,
            standin,
            assertion,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.standin.port)
    }

    async fn control(&self, query: &str) {
        let r = reqwest::Client::new()
            .post(self.url(&format!("/control?{query}")))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    async fn stats(&self) -> serde_json::Value {
        reqwest::get(self.url("/control/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn imds_env(&self) -> Vec<(&'static str, String)> {
        vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", self.url(""))]
    }

    fn allowlist(&self) -> String {
        format!(
            "[[package]]\nname = \"demo-b\"\nversion = \"2.0\"\nsha256 = [\"{}\"]\n\n\
             [[package]]\nname = \"demo-a\"\nversion = \"1.0\"\nsha256 = [\"{}\"]\n\n\
             [[package]]\nname = \"swapped\"\nversion = \"1.0\"\nsha256 = [\"{}\"]\n{}",
            self.fx.sha("demo_b-2.0-py3-none-any.whl"),
            self.fx.sha("demo_a-1.0-py3-none-any.whl"),
            self.fx.sha("swapped-1.0-py3-none-any.whl"),
            (0..40)
                .map(|i| format!(
                    "\n[[package]]\nname = \"p{i}\"\nspecifier = \">=0\"\nmin_age = \"1d\"\n"
                ))
                .collect::<String>(),
        )
    }

    fn feed_config(&self, client_id: &str) -> String {
        format!(
            "[pypi]\npage_ttl = \"1s\"\nupstream_timeout = \"5s\"\n[[pypi.index]]\nname = \"feed\"\nurl = \"{}\"\nauth = \"managed-identity\"\n{client_id}",
            self.url("/feed/simple/")
        )
    }
}

fn start_gate(
    dir: &std::path::Path,
    config: &str,
    allowlist: &str,
    env: &[(&str, String)],
) -> Gate {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gate::start_env(dir, config, allowlist, &env)
}

/// Requests `/simple/p{i}/` for every i of `projects` at once; each must be 503.
async fn assert_all_503(gate: &Gate, projects: std::ops::Range<usize>) {
    let asks: Vec<_> = projects
        .map(|i| {
            let url = gate.url(&format!("/simple/p{i}/"));
            tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for a in asks {
        assert_eq!(a.await.unwrap().unwrap(), 503);
    }
}

async fn status(gate: &Gate, path: &str) -> (u16, Option<String>, String) {
    let r = reqwest::get(gate.url(path)).await.unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), retry, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_artifacts_feed_with_imds_tokens_refreshed_renewed_and_never_anonymous() {
    let az = Azure::start();
    az.control("lifetime=3").await;
    let gate = start_gate(
        &az.fx.path("gate"),
        &az.feed_config("client_id = \"uami-client\"\n"),
        &az.allowlist(),
        &az.imds_env(),
    );
    // Real pip, through the gate, from a feed that takes only the identity's bearer token.
    let req = requirements(az.fx.dir.path(), "demo", &az.fx.demo_requirements());
    let target = az.fx.path("target");
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &target));
    assert!(
        out.status.success(),
        "pip: {}\n{}",
        show(&out),
        gate.proc.log_text()
    );
    let s = az.stats().await;
    assert!(s["feed_ok"].as_u64().unwrap() >= 4, "{s}");
    assert_eq!(
        s["issued"][DEVOPS], 1,
        "one token serves every request: {s}"
    );
    assert_eq!(s["client_ids"][0], "uami-client", "{s}");
    assert_eq!(s["anonymous"], 0, "{s}");

    // Tokens live 3 s here: the gate replaces one before it expires, so the feed never sees
    // an expired token.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(status(&gate, "/simple/demo-a/").await.0, 200);
    let s = az.stats().await;
    assert!(s["issued"][DEVOPS].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["refused"], 0, "{s}");

    // The feed stops taking the token the gate holds (revoked): the gate gets a new one and
    // the request succeeds. (First the gate takes a long-lived token, so the revoked token is
    // the one it would otherwise still use.)
    az.control("lifetime=3600").await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(status(&gate, "/simple/demo-a/").await.0, 200);
    az.control("revoke=1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = az.stats().await["issued"][DEVOPS].as_u64().unwrap();
    let (code, _, body) = status(&gate, "/simple/demo-b/").await;
    assert_eq!(code, 200, "{body}");
    let s = az.stats().await;
    assert!(s["refused"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["issued"][DEVOPS].as_u64().unwrap(), before + 1, "{s}");

    // The identity endpoint is down and the held token is refused: 503 to the client (a retry
    // may succeed), and the feed is never asked without a token.
    az.control("down=1&revoke=1").await;
    let calls = az.stats().await["identity_calls"].as_u64().unwrap();
    let (code, retry, body) = status(&gate, "/simple/swapped/").await;
    assert_eq!(code, 503, "{body}");
    assert!(retry.is_some());
    assert!(body.contains("managed identity"), "{body}");
    // The client learns that, not where the identity endpoint is (the log says).
    assert!(
        !body.contains("127.0.0.1") && !body.contains("metadata/identity"),
        "{body}"
    );
    // Many projects at once while the endpoint fails: it is asked once, then left alone for
    // the failure backoff (IMDS limits the whole machine's calls).
    assert_all_503(&gate, 0..20).await;
    let s = az.stats().await;
    assert!(
        s["identity_calls"].as_u64().unwrap() - calls <= 2,
        "the identity endpoint was asked per request: {s}"
    );
    assert_eq!(s["anonymous"], 0, "{s}");
    // Tokens never reach the log; the cause does.
    let log = gate.proc.log_text();
    assert!(!log.contains("aad-"), "{log}");
    assert!(log.contains("managed identity: no token"), "{log}");

    // A token due for refresh but not expired keeps serving while the endpoint is down: no
    // stall and no 503 for the refresh window (4-s tokens here, refreshed after 2 s).
    az.control("down=0&lifetime=4").await;
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(status(&gate, "/simple/demo-a/").await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    az.control("down=1").await;
    let started = std::time::Instant::now();
    let (code, _, body) = status(&gate, "/simple/demo-b/").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// An identity the feed does not accept (no Reader right): after a refused token and a refused
/// replacement, the gate stops asking the identity endpoint for every request.
#[tokio::test(flavor = "multi_thread")]
async fn an_identity_without_the_right_does_not_flood_the_identity_endpoint() {
    let az = Azure::start();
    az.control("refuse=1").await;
    let gate = start_gate(
        &az.fx.path("gate"),
        &az.feed_config(""),
        &az.allowlist(),
        &az.imds_env(),
    );
    let (code, _, body) = status(&gate, "/simple/demo-b/").await;
    assert_eq!(code, 503, "{body}");
    assert_all_503(&gate, 0..20).await;
    let s = az.stats().await;
    assert!(s["identity_calls"].as_u64().unwrap() <= 3, "{s}");
    // Once the replacement was refused too, the gate holds back: another wave of requests, for
    // other projects (no page backoff stands for them), reaches neither the identity endpoint
    // nor the feed.
    assert_all_503(&gate, 20..40).await;
    let again = az.stats().await;
    assert_eq!(again["identity_calls"], s["identity_calls"], "{again}");
    assert_eq!(again["refused"], s["refused"], "{again}");
    assert_eq!(again["anonymous"], 0, "{again}");
    assert!(gate
        .proc
        .log_text()
        .contains("does the identity have the right"));
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_identity_and_the_app_service_endpoint() {
    let az = Azure::start();
    // AKS workload identity: the federated service-account token as a client assertion.
    let env = vec![
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            az.assertion.display().to_string(),
        ),
        ("AZURE_TENANT_ID", "tenant-1".to_string()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURE_AUTHORITY_HOST", az.url("/")),
    ];
    let mut gate = start_gate(
        &az.fx.path("wi"),
        &az.feed_config(""),
        &az.allowlist(),
        &env,
    );
    let (code, _, body) = status(&gate, "/simple/demo-b/").await;
    assert_eq!(code, 200, "{body}\n{}", gate.proc.log_text());
    // The kubelet rotates the file: the next token is asked for with the new assertion.
    std::fs::write(&az.assertion, "eyJ.service-account-token.2\n").unwrap();
    az.control("revoke=1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, _, body) = status(&gate, "/simple/demo-b/").await;
    assert_eq!(code, 200, "{body}");
    gate.proc.stop();

    // App Service / Container Apps: IDENTITY_ENDPOINT with its IDENTITY_HEADER.
    let env = vec![
        ("IDENTITY_ENDPOINT", az.url("/msi/token")),
        ("IDENTITY_HEADER", IDENTITY_HEADER.to_string()),
    ];
    let mut gate = start_gate(
        &az.fx.path("app"),
        &az.feed_config(""),
        &az.allowlist(),
        &env,
    );
    let (code, _, body) = status(&gate, "/simple/demo-a/").await;
    assert_eq!(code, 200, "{body}");
    gate.proc.stop();
    // A wrong header is refused by the endpoint: no token, so 503, and nothing anonymous.
    let env = vec![
        ("IDENTITY_ENDPOINT", az.url("/msi/token")),
        ("IDENTITY_HEADER", "wrong".to_string()),
    ];
    let gate = start_gate(
        &az.fx.path("app2"),
        &az.feed_config(""),
        &az.allowlist(),
        &env,
    );
    let (code, _, body) = status(&gate, "/simple/demo-a/").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(az.stats().await["anonymous"], 0);
    // A federated token file without its tenant is a start-up error, said plainly.
    let dir = az.fx.path("bad");
    std::fs::create_dir_all(dir.join("allowlists")).unwrap();
    std::fs::write(
        dir.join("tollgate.toml"),
        format!(
            "data_dir = \"data\"\nallowlist_dir = \"allowlists\"\n{}",
            az.feed_config("")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(dir.join("tollgate.toml"))
        .env("AZURE_FEDERATED_TOKEN_FILE", &az.assertion)
        .env_remove("AZURE_TENANT_ID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AZURE_TENANT_ID"),
        "{}",
        show(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acr_pull_with_the_identity_exchanged_for_a_refresh_token() {
    let az = Azure::start();
    let layout = az.fx.path("layout");
    let images = oci_images(&layout);
    let src = format!("oci:{}:v1", layout.display());
    let dst = format!("docker://127.0.0.1:{}/demo/app:v1", az.registry_port);
    let out = skopeo(&["copy", "--dest-tls-verify=false", &src, &dst]);
    assert!(out.status.success(), "push: {}", show(&out));
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &dst]);
    let digest = format!(
        "sha256:{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(&raw.stdout)
    );
    assert!(!images.is_empty());
    let config = format!(
        "[oci]\ntag_ttl = \"1s\"\n[[oci.registry]]\nhost = \"tollgate.azurecr.io\"\nprefix = \"acr\"\nurl = \"{}\"\nauth = \"managed-identity\"\n",
        az.url("")
    );
    let rule = format!(
        "[[image]]\nrepository = \"tollgate.azurecr.io/demo/app\"\ndigests = [\"{digest}\"]\n"
    );
    let gate = start_gate(&az.fx.path("gate"), &config, &rule, &az.imds_env());
    let pull = |to: &str| {
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://127.0.0.1:{}/acr/demo/app:v1", gate.proc.port),
            &format!("dir:{}", az.fx.path(to).display()),
        ])
    };
    let out = tokio::task::block_in_place(|| pull("p1"));
    assert!(
        out.status.success(),
        "pull: {}\n{}",
        show(&out),
        gate.proc.log_text()
    );
    let s = az.stats().await;
    assert_eq!(s["issued"][ACR], 1, "{s}");
    assert_eq!(s["exchanges"], 1, "{s}");
    assert!(s["v2_ok"].as_u64().unwrap() >= 3, "{s}");

    // Everything the gate holds is revoked: the registry's token, the refresh token and the
    // Entra ID token are all replaced, and the pull succeeds.
    az.control("revoke=1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = tokio::task::block_in_place(|| pull("p2"));
    assert!(
        out.status.success(),
        "pull: {}\n{}",
        show(&out),
        gate.proc.log_text()
    );
    let s = az.stats().await;
    assert_eq!(s["issued"][ACR], 2, "{s}");
    assert_eq!(s["exchanges"], 2, "{s}");

    // With the identity endpoint down, a pull that needs the registry (a tag never resolved;
    // a known tag is served from its last resolution while the upstream is down) is refused
    // as unavailable (retryable), never tried without credentials.
    az.control("down=1&revoke=1").await;
    let (code, retry, body) = status(&gate, "/v2/acr/demo/app/manifests/v2").await;
    assert_eq!(code, 503, "{body}");
    assert!(retry.is_some());
    assert!(body.contains("UNAVAILABLE"), "{body}");
    assert!(!gate.proc.log_text().contains("acr-refresh-"));
}
