//! The first hour of a new user, with the real binary, real pip and a real HTTPS upstream: which
//! certificates the gate trusts (the platform's store and `SSL_CERT_FILE`, not only its own
//! built-in roots), a TLS failure named in the answer rather than a 503 that pip waits out, and a
//! refused install explained without an admin (`allowlist check --gate`).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A CA and a certificate for localhost it signs, in `dir`.
fn make_ca(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("bash")
        .arg(support("make_ca.sh"))
        .arg(dir)
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success(), "make_ca.sh: {}", show(&out));
}

fn tls_upstream(root: &Path, ca: &Path, log: std::path::PathBuf) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(support("tls_upstream.py"))
        .arg(root)
        .arg(ca.join("leaf.pem"))
        .arg(ca.join("leaf.key"));
    spawn_port(cmd, log)
}

fn allowlist(fx: &Fixture) -> String {
    format!(
        "[[package]]\nname = \"demo-b\"\nversion = \"2.0\"\nsha256 = [\"{}\"]\n\n\
         [[package]]\nname = \"demo-a\"\nversion = \"1.0\"\nsha256 = [\"{}\"]\n",
        fx.sha("demo_b-2.0-py3-none-any.whl"),
        fx.sha("demo_a-1.0-py3-none-any.whl"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_upstream_certificate_is_named_and_the_system_store_is_trusted() {
    let fx = Fixture::build();
    let ca = fx.path("ca");
    make_ca(&ca, "Egress Re-signing CA");
    let upstream = tls_upstream(&fx.root(), &ca, fx.path("upstream.log"));
    let config = format!(
        "[pypi]\npage_ttl = \"1s\"\n[[pypi.index]]\nname = \"corp\"\nurl = \"https://localhost:{}/simple/\"\n",
        upstream.port
    );
    // A trust store without the upstream's CA: what a new user behind a re-signing proxy has
    // before adding the proxy's CA.
    let other = fx.path("other");
    make_ca(&other, "Some Other CA");
    let other_store = other.join("ca.pem");
    let dir = fx.path("gate");
    let mut gate = Gate::start_env(
        &dir,
        &config,
        &allowlist(&fx),
        &[("SSL_CERT_FILE", other_store.to_str().unwrap())],
    );
    let client = reqwest::Client::new();
    let r = client
        .get(gate.url("/simple/demo-b/"))
        .send()
        .await
        .unwrap();
    // Not a 503 with Retry-After, which pip retries and waits out: a 502 naming the cause.
    assert_eq!(r.status(), 502, "{}", gate.proc.log_text());
    assert!(r.headers().get("retry-after").is_none());
    let body = r.text().await.unwrap();
    assert!(body.contains("unknown CA"), "{body}");
    assert!(body.contains("SSL_CERT_FILE"), "{body}");
    // The same answer while the failure is remembered, and the cause is in the log.
    let r = client
        .get(gate.url("/simple/demo-b/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let log = gate.proc.log_text();
    assert!(log.contains("upstream TLS failed"), "{log}");
    // A log written to a file carries no terminal colours.
    assert!(!log.contains('\u{1b}'), "{log}");
    assert!(log.contains("unknown CA"), "{log}");
    gate.proc.stop();

    // With the CA in the store the process trusts (SSL_CERT_FILE, as OpenSSL reads it), the
    // same README command installs.
    let gate = Gate::restart_env(
        &dir,
        &[("SSL_CERT_FILE", ca.join("ca.pem").to_str().unwrap())],
    );
    let req = requirements(fx.dir.path(), "demo", &fx.demo_requirements());
    let target = fx.path("target");
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &target));
    assert!(out.status.success(), "pip: {}", show(&out));
    assert!(target.join("demo_b/__init__.py").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_learns_why_an_install_fails_from_the_running_gate() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let config = format!(
        "[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{}/simple/\"\n",
        upstream.port
    );
    let gate = Gate::start(&fx.path("gate"), &config, &allowlist(&fx));
    let req = requirements(
        fx.dir.path(),
        "mixed",
        &[
            format!(
                "demo-b==2.0 --hash=sha256:{}",
                fx.sha("demo_b-2.0-py3-none-any.whl")
            ),
            // A release that is not pinned.
            format!(
                "demo-a==1.1 --hash=sha256:{}",
                fx.sha("demo_a-1.1-py3-none-any.whl")
            ),
            // The pinned release, but other bytes than the gate serves.
            format!("demo-a==1.0 --hash=sha256:{}", "ab".repeat(32)),
            // Not on the allowlist at all.
            format!("swapped==1.0 --hash=sha256:{}", "cd".repeat(32)),
        ],
    );
    // pip says only that it failed.
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t")));
    assert!(!out.status.success());
    // The gate says why, line by line, with no config file, store or admin token.
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["allowlist", "check"])
            .arg(&req)
            .args(["--gate", &gate.url("")])
            .current_dir(fx.dir.path())
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].contains(":1: ok") && lines[0].contains("demo_b-2.0-py3-none-any.whl is served"),
        "{text}"
    );
    assert!(
        lines[1].contains(":2: FAIL") && lines[1].contains("1.1"),
        "{text}"
    );
    assert!(
        lines[2].contains(":3: FAIL") && lines[2].contains("hash asked for"),
        "{text}"
    );
    assert!(
        lines[3].contains(":4: FAIL") && lines[3].contains("not on the allowlist"),
        "{text}"
    );
    assert!(lines[4].starts_with("1 of 4 requirement(s)"), "{text}");

    // The endpoint behind it, for curl: every file of the release with its verdict.
    let v: serde_json::Value = reqwest::get(gate.url("/api/v1/packages/demo-a/1.1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["installable"], false, "{v}");
    assert!(!v["files"].as_array().unwrap().is_empty(), "{v}");
    // A release no rule admits: said so, without its files' hashes.
    assert!(v["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["reason"] == "version_not_allowed" && f["sha256"].is_null()));
    assert!(v["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["allowed"] == false && f["reason"].is_string()));
    let r = reqwest::get(gate.url("/api/v1/packages/demo-a/not-a-version"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A gate that is not there is an error of the command (2), not a verdict.
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["allowlist", "check"])
        .arg(&req)
        .args(["--gate", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

/// mitmproxy's `mitmdump`, installed by the test script in its own virtualenv (it is a Python
/// application with pinned dependencies of its own), or from PATH.
fn mitmdump() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/mitm/bin/mitmdump");
    if venv.exists() {
        venv
    } else {
        "mitmdump".into()
    }
}

/// The README's first command on a fresh machine behind an egress proxy that re-signs TLS:
/// `tollgate serve` with no config file (the embedded default: pypi.org, 127.0.0.1:8080,
/// ./allowlists), `HTTPS_PROXY` pointing at a real mitmproxy that re-signs every TLS connection
/// with its own CA, and that CA in `SSL_CERT_FILE`. Nothing reaches the internet: the proxy
/// answers for pypi.org from a local HTTPS index (`--map-remote`), which it reaches over TLS it
/// verifies against the index's own CA.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_default_installs_behind_a_re_signing_proxy() {
    let fx = Fixture::build();
    let ca = fx.path("upstream-ca");
    make_ca(&ca, "Index CA");
    // Pages link to files.pythonhosted.org, as PyPI's do (the default's only file host).
    for entry in std::fs::read_dir(fx.root().join("simple")).unwrap() {
        let page = entry.unwrap().path().join("index.html");
        if let Ok(text) = std::fs::read_to_string(&page) {
            let text = text.replace(
                "../../packages/",
                "https://files.pythonhosted.org/packages/",
            );
            std::fs::write(&page, text).unwrap();
        }
    }
    let upstream = tls_upstream(&fx.root(), &ca, fx.path("upstream.log"));
    // The proxy: regular (explicit) mode, connecting upstream only once the request is known, so
    // the mapped host is the only one it ever contacts.
    let confdir = fx.path("mitm");
    std::fs::create_dir_all(&confdir).unwrap();
    let proxy_port = free_port();
    let proxy_log = std::fs::File::create(fx.path("mitm.log")).unwrap();
    let mut proxy = Command::new(mitmdump())
        .args([
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            &proxy_port.to_string(),
        ])
        .args(["--set", &format!("confdir={}", confdir.display())])
        .args(["--set", "connection_strategy=lazy"])
        .args([
            "--set",
            &format!(
                "ssl_verify_upstream_trusted_ca={}",
                ca.join("ca.pem").display()
            ),
        ])
        .args([
            "--map-remote",
            &format!("|//pypi.org/|//localhost:{}/", upstream.port),
        ])
        .args([
            "--map-remote",
            &format!("|//files.pythonhosted.org/|//localhost:{}/", upstream.port),
        ])
        .stdout(proxy_log.try_clone().unwrap())
        .stderr(proxy_log)
        .spawn()
        .expect("mitmdump must be installed (scripts/test.sh installs it)");
    let proxy_ca = confdir.join("mitmproxy-ca-cert.pem");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !(proxy_ca.exists() && std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_ok()) {
        assert!(
            std::time::Instant::now() < deadline,
            "mitmdump did not start: {}",
            std::fs::read_to_string(fx.path("mitm.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A fresh working directory holding only the allowlist, as the README's example has it.
    let work = fx.path("work");
    std::fs::create_dir_all(work.join("allowlists")).unwrap();
    std::fs::write(work.join("allowlists/team.toml"), allowlist(&fx)).unwrap();
    assert!(
        std::net::TcpListener::bind("127.0.0.1:8080").is_ok(),
        "the embedded default listens on 127.0.0.1:8080, which is taken on this machine"
    );
    let log = fx.path("gate.log");
    let mut gate = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .current_dir(&work)
        .env_remove("TOLLGATE_CONFIG")
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy_port}"))
        .env("SSL_CERT_FILE", &proxy_ca)
        .stdout(std::fs::File::create(fx.path("gate.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_http("http://127.0.0.1:8080/healthz");
    let req = requirements(fx.dir.path(), "pinned", &fx.demo_requirements());
    let target = fx.path("target");
    let out =
        tokio::task::block_in_place(|| pip_install("http://127.0.0.1:8080/simple/", &req, &target));
    let _ = gate.kill();
    let _ = gate.wait();
    let _ = proxy.kill();
    let _ = proxy.wait();
    let gate_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "pip: {}\ngate log:\n{gate_log}",
        show(&out)
    );
    assert!(target.join("demo_b/__init__.py").exists());
    // The bytes came through the proxy, from the mapped local index.
    let proxied = std::fs::read_to_string(fx.path("mitm.log")).unwrap_or_default();
    assert!(proxied.contains("GET https://localhost:"), "{proxied}");
    assert!(proxied.contains("/packages/demo_b-2.0-py3"), "{proxied}");
    assert!(upstream
        .log_text()
        .contains("/packages/demo_b-2.0-py3-none-any.whl"));
}

/// The README's registry example with a port and no prefix loads (the prefix is the host
/// without its port), and `check` says what it found, image rules and registries included.
#[test]
fn check_counts_image_rules_and_registries_and_a_port_needs_no_prefix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("allowlists")).unwrap();
    std::fs::write(
        dir.path().join("allowlists/a.toml"),
        format!(
            "[[package]]\nname = \"six\"\nversion = \"1.16.0\"\nsha256 = [\"{}\"]\n\n\
             [[image]]\nrepository = \"localhost:5000/team/app\"\ndigests = [\"sha256:{}\"]\n",
            "a".repeat(64),
            "b".repeat(64)
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tollgate.toml"),
        "data_dir = \"data\"\nallowlist_dir = \"allowlists\"\n[[oci.registry]]\nhost = \"localhost:5000\"\nurl = \"http://127.0.0.1:5000\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(dir.path().join("tollgate.toml"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 exact release rule(s)"), "{text}");
    assert!(text.contains("1 image rule(s)"), "{text}");
    assert!(text.contains("registries: localhost:5000"), "{text}");
}

/// A "gate" that is not one: its error sentences reach the user's terminal without control
/// characters (no escape sequences, no forged lines).
#[test]
fn allowlist_check_prints_no_control_characters_from_a_hostile_gate() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"error": "\x1b]0;owned\x07\x1b[2J\r\nrequirements.txt:9: ok   fake\u202e lanif\u2028x\u200b"}).encode()
        self.send_response(400 if "six" in self.path else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("port", s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", script]);
    let evil = spawn_port(cmd, dir.path().join("evil.log"));
    let req = requirements(
        dir.path(),
        "r",
        &[format!("six==1.16.0 --hash=sha256:{}", "a".repeat(64))],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["allowlist", "check"])
        .arg(&req)
        .args(["--gate", &format!("http://127.0.0.1:{}", evil.port)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    // Nor the invisible characters that reorder or split what a terminal shows.
    assert!(
        !text.contains(['\u{202e}', '\u{2028}', '\u{200b}']),
        "{text:?}"
    );
    assert_eq!(text.lines().count(), 2, "{text:?}");
}
