//! The pull gate against registries that need credentials: a real docker-registry with
//! htpasswd (Basic) auth, and one with token auth whose token endpoint the test provides
//! (tests/support/token_server.py signs real ES256 JWTs with an x5c chain the registry trusts).

mod common;

use std::process::Command;

use common::*;

fn gate_config(port: u16, with_creds: bool) -> String {
    let creds = if with_creds {
        "username = \"user\"\npassword_env = \"TOLLGATE_REG_PW\"\n"
    } else {
        ""
    };
    format!("[oci]\ntag_ttl = \"1s\"\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{port}\"\n{creds}")
}

fn push_with_creds(layout: &std::path::Path, port: u16) -> String {
    let dst = format!("docker://127.0.0.1:{port}/demo/app:v1");
    let out = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        "user:secret",
        &format!("oci:{}:v1", layout.display()),
        &dst,
    ]);
    assert!(out.status.success(), "push: {}", show(&out));
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "user:secret",
        &dst,
    ]);
    assert!(raw.status.success(), "{}", show(&raw));
    format!(
        "sha256:{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(&raw.stdout)
    )
}

fn pull(gate: &Gate, dest: &std::path::Path) -> std::process::Output {
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://127.0.0.1:{}/reg/demo/app:v1", gate.proc.port),
        &format!("dir:{}", dest.display()),
    ])
}

fn rule(digest: &str) -> String {
    format!("[[image]]\nrepository = \"registry.test/demo/app\"\ndigests = [\"{digest}\"]\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_registry() {
    let dir = tempfile::tempdir().unwrap();
    oci_images(&dir.path().join("layout"));
    let reg_dir = dir.path().join("registry");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let h = Command::new("htpasswd")
        .args(["-Bbn", "user", "secret"])
        .output()
        .expect("htpasswd (apache2-utils) must be installed");
    assert!(h.status.success());
    std::fs::write(reg_dir.join("htpasswd"), &h.stdout).unwrap();
    let registry = docker_registry(
        &reg_dir,
        &format!(
            "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            reg_dir.join("htpasswd").display()
        ),
    );
    let digest = push_with_creds(&dir.path().join("layout"), registry.port);

    let gate = Gate::start_env(
        &dir.path().join("gate"),
        &gate_config(registry.port, true),
        &rule(&digest),
        &[("TOLLGATE_REG_PW", "secret")],
    );
    let out = tokio::task::block_in_place(|| pull(&gate, &dir.path().join("out")));
    assert!(
        out.status.success(),
        "pull through the gate with Basic credentials: {}",
        show(&out)
    );
    assert!(!gate.proc.log_text().contains("secret"));

    let bad = Gate::start_env(
        &dir.path().join("gate-bad"),
        &gate_config(registry.port, true),
        &rule(&digest),
        &[("TOLLGATE_REG_PW", "wrong")],
    );
    let r = reqwest::get(bad.url("/v2/reg/demo/app/manifests/v1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "refused credentials are 503, never a deny");
    assert!(r.headers().get("retry-after").is_some());
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("refused the gate's credentials"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_registry() {
    let dir = tempfile::tempdir().unwrap();
    oci_images(&dir.path().join("layout"));
    let cert = dir.path().join("token-cert.pem");
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg(support("token_server.py")).arg(&cert);
    let tokens = spawn_port(cmd, dir.path().join("token.log"));
    let registry = docker_registry(
        &dir.path().join("registry"),
        &format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
            tokens.port,
            cert.display()
        ),
    );
    let digest = push_with_creds(&dir.path().join("layout"), registry.port);
    let before = tokens.log_text().len();

    // The token endpoint is another port of the registry's host: another origin, so the
    // registry's credentials go there only once auth_hosts names it, host and port.
    let unlisted = Gate::start_env(
        &dir.path().join("gate-unlisted"),
        &gate_config(registry.port, true),
        &rule(&digest),
        &[("TOLLGATE_REG_PW", "secret")],
    );
    let r = reqwest::get(unlisted.url("/v2/reg/demo/app/manifests/v1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "a token realm on another port is refused");
    assert_eq!(
        tokens.log_text().len(),
        before,
        "the unlisted token endpoint was called:\n{}",
        tokens.log_text()
    );
    let gate = Gate::start_env(
        &dir.path().join("gate"),
        &format!(
            "{}auth_hosts = [\"127.0.0.1:{}\"]\n",
            gate_config(registry.port, true),
            tokens.port
        ),
        &rule(&digest),
        &[("TOLLGATE_REG_PW", "secret")],
    );
    let out = tokio::task::block_in_place(|| pull(&gate, &dir.path().join("out")));
    assert!(
        out.status.success(),
        "pull through the gate with a bearer token: {}",
        show(&out)
    );
    let log = tokens.log_text();
    let gate_requests = &log[before..];
    assert!(
        gate_requests.contains("TOKEN auth=yes granted=yes scope=repository:demo/app:pull"),
        "{gate_requests}"
    );
    // Tokens are cached per scope: one pull (manifest, config, layers) needs one token.
    assert_eq!(gate_requests.matches("TOKEN").count(), 1, "{gate_requests}");

    // Without credentials the token grants nothing: 503, the gate never calls it "denied".
    let anon = Gate::start(
        &dir.path().join("gate-anon"),
        &format!(
            "{}auth_hosts = [\"127.0.0.1:{}\"]\n",
            gate_config(registry.port, false),
            tokens.port
        ),
        &rule(&digest),
    );
    let r = reqwest::get(anon.url("/v2/reg/demo/app/manifests/v1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

/// Blob redirects (object-storage registries): followed by the gate without credentials, and
/// only to a private or loopback host listed in `redirect_hosts`.
#[tokio::test(flavor = "multi_thread")]
async fn blob_redirects_carry_no_credentials_and_stay_public_unless_listed() {
    let dir = tempfile::tempdir().unwrap();
    let digests = oci_images(&dir.path().join("layout"));
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(support("redirecting_registry.py"))
        .arg(dir.path().join("layout"));
    let registry = spawn_port(cmd, dir.path().join("registry.log"));
    let rule = rule(&digests["v1"]);

    // Not listed: the loopback redirect target is refused (502), nothing is served.
    let closed = Gate::start_env(
        &dir.path().join("gate-closed"),
        &gate_config(registry.port, true),
        &rule,
        &[("TOLLGATE_REG_PW", "secret")],
    );
    let out = tokio::task::block_in_place(|| pull(&closed, &dir.path().join("out-closed")));
    assert!(
        !out.status.success(),
        "a redirect to a loopback host not in redirect_hosts was followed"
    );
    assert!(
        !registry.log_text().contains("/storage/"),
        "the gate connected to the refused target:\n{}",
        registry.log_text()
    );

    // Listed: the pull works, and the storage host never sees the registry's credentials.
    // Listed by host alone, the storage's port is not the one named: still refused.
    let other_port = Gate::start_env(
        &dir.path().join("gate-port"),
        &format!(
            "{}redirect_hosts = [\"localhost\"]\n",
            gate_config(registry.port, true)
        ),
        &rule,
        &[("TOLLGATE_REG_PW", "secret")],
    );
    let out = tokio::task::block_in_place(|| pull(&other_port, &dir.path().join("out-port")));
    assert!(!out.status.success(), "redirect_hosts names host and port");
    assert!(!registry.log_text().contains("/storage/"));
    let cfg = format!(
        "{}redirect_hosts = [\"localhost:{}\"]\n",
        gate_config(registry.port, true),
        registry.port
    );
    let open = Gate::start_env(
        &dir.path().join("gate-open"),
        &cfg,
        &rule,
        &[("TOLLGATE_REG_PW", "secret")],
    );
    let out = tokio::task::block_in_place(|| pull(&open, &dir.path().join("out-open")));
    assert!(out.status.success(), "{}", show(&out));
    let log = registry.log_text();
    assert!(log.contains("/storage/sha256:"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("/storage/") && l.ends_with("auth=yes")),
        "credentials followed a redirect:\n{log}"
    );
    assert!(log
        .lines()
        .any(|l| l.contains("/blobs/") && l.ends_with("auth=yes")));
}

/// A blob redirect to another port of the registry's own host (an internal service there), or
/// one carrying credentials, is refused before any connection: the host may resolve privately
/// only on its configured port.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_another_port_of_the_registry_host_is_never_connected() {
    let dir = tempfile::tempdir().unwrap();
    let digests = oci_images(&dir.path().join("layout"));
    // The "internal service": counts the connections it is offered.
    let internal = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let internal_port = internal.local_addr().unwrap().port();
    internal.set_nonblocking(true).unwrap();
    for (i, (target, why)) in [
        (
            format!("https://localhost:{internal_port}/internal/admin"),
            "a port of a configured host",
        ),
        (
            format!("https://u:p@localhost:{internal_port}/internal/admin"),
            "carries credentials",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(support("redirecting_registry.py"))
            .arg(dir.path().join("layout"))
            .arg(&target);
        let registry = spawn_port(cmd, dir.path().join(format!("registry{i}.log")));
        let cfg = format!(
            "[oci]\ntag_ttl = \"1s\"\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://localhost:{}\"\nusername = \"user\"\npassword_env = \"TOLLGATE_REG_PW\"\n",
            registry.port
        );
        let gate = Gate::start_env(
            &dir.path().join(format!("gate{i}")),
            &cfg,
            &rule(&digests["v1"]),
            &[("TOLLGATE_REG_PW", "secret")],
        );
        let out = tokio::task::block_in_place(|| pull(&gate, &dir.path().join(format!("out{i}"))));
        assert!(!out.status.success(), "{target}: the redirect was followed");
        let offered = std::iter::from_fn(|| internal.accept().ok()).count();
        assert_eq!(
            offered, 0,
            "{target}: the gate connected to the internal port"
        );
        let log = gate.proc.log_text();
        assert!(log.contains(why), "{target}: {log}");
    }
}
