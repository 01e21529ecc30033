//! Harness for the end-to-end tests: real processes on 127.0.0.1 (the tollgate binary, a
//! static PEP 503 tree served by Python's http.server, pypiserver, a misbehaving upstream) and
//! real clients (pip, uv). Every process is killed when its guard drops.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn support(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(file)
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Dist {
    pub sha256: String,
    pub size: u64,
    pub project: String,
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub dists: BTreeMap<String, Dist>,
}

impl Fixture {
    /// Builds the test distributions and a static PEP 503 tree.
    pub fn build() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("python3")
            .arg(support("fixtures.py"))
            .arg(dir.path().join("upstream"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fixtures.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dists = serde_json::from_slice(&out.stdout).unwrap();
        Fixture { dir, dists }
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("upstream")
    }
    pub fn sha(&self, file: &str) -> &str {
        &self.dists[file].sha256
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// The pinned requirements of demo-b 2.0 and its dependency demo-a 1.0 (their wheels).
    pub fn demo_requirements(&self) -> Vec<String> {
        vec![
            format!(
                "demo-b==2.0 --hash=sha256:{}",
                self.sha("demo_b-2.0-py3-none-any.whl")
            ),
            format!(
                "demo-a==1.0 --hash=sha256:{}",
                self.sha("demo_a-1.0-py3-none-any.whl")
            ),
        ]
    }
}

/// Spawns a process whose first stdout line (after `prefix`) carries its port.
fn spawn_with_port(mut cmd: Command, log: PathBuf, parse: impl Fn(&str) -> Option<u16>) -> Proc {
    let logf = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(logf))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = tx.send(line.clone());
            line.clear();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(p) = parse(line.trim()) {
                    return Proc {
                        child,
                        port: p,
                        log,
                    };
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "process did not report its port; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }
}

/// Python's http.server over a static tree: the plainest PEP 503 upstream.
pub fn static_upstream(root: &Path, log: PathBuf) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", "import http.server,functools,sys\nh=functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\ns=http.server.ThreadingHTTPServer(('127.0.0.1',0),h)\nprint('port',s.server_address[1],flush=True)\ns.serve_forever()"]).arg(root);
    spawn_with_port(cmd, log, |l| {
        l.strip_prefix("port ").and_then(|p| p.parse().ok())
    })
}

/// Any helper that prints "port N" once it listens.
pub fn spawn_port(cmd: Command, log: PathBuf) -> Proc {
    spawn_with_port(cmd, log, |l| {
        l.strip_prefix("port ").and_then(|p| p.parse().ok())
    })
}

pub fn liar_upstream(wheels: &Path, log: PathBuf) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg(support("liar_upstream.py")).arg(wheels);
    spawn_with_port(cmd, log, |l| {
        l.strip_prefix("port ").and_then(|p| p.parse().ok())
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real pypiserver (installed by the test script) over a package folder.
pub fn pypiserver(packages: &Path, log: PathBuf) -> Proc {
    let port = free_port();
    let logf = std::fs::File::create(&log).unwrap();
    let child = Command::new("pypi-server")
        .args([
            "run",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--hash-algo",
            "sha256",
            "-a",
            ".",
            "-P",
            ".",
        ])
        .arg(packages)
        .stdout(Stdio::from(logf.try_clone().unwrap()))
        .stderr(Stdio::from(logf))
        .spawn()
        .expect("pypi-server must be installed (the test script installs it)");
    let p = Proc { child, port, log };
    wait_http(&format!("http://127.0.0.1:{port}/simple/"));
    p
}

pub fn wait_http(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if Command::new("python3")
            .args([
                "-c",
                "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)",
            ])
            .arg(url)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{url} did not come up");
}

pub struct Gate {
    pub proc: Proc,
    pub dir: PathBuf,
}

impl Gate {
    /// Starts the real tollgate binary with `config` (listen/data_dir/allowlist_dir are added)
    /// and the given allowlist file.
    pub fn start(dir: &Path, config: &str, allowlist: &str) -> Gate {
        Self::start_env(dir, config, allowlist, &[])
    }

    pub fn start_env(dir: &Path, config: &str, allowlist: &str, env: &[(&str, &str)]) -> Gate {
        std::fs::create_dir_all(dir.join("allowlists")).unwrap();
        std::fs::write(dir.join("allowlists/test.toml"), allowlist).unwrap();
        let cfg = format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nallowlist_dir = \"allowlists\"\n{config}");
        std::fs::write(dir.join("tollgate.toml"), cfg).unwrap();
        Self::restart_env(dir, env)
    }

    pub fn restart(dir: &Path) -> Gate {
        Self::restart_env(dir, &[])
    }

    pub fn restart_env(dir: &Path, env: &[(&str, &str)]) -> Gate {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(dir.join("tollgate.toml"))
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = spawn_with_port(cmd, dir.join("gate.log"), |l| {
            l.rsplit(':')
                .next()
                .filter(|_| l.starts_with("tollgate listening"))
                .and_then(|p| p.parse().ok())
        });
        Gate {
            proc,
            dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.proc.port)
    }

    pub fn index(&self) -> String {
        self.url("/simple/")
    }

    /// A project page as PEP 691 JSON.
    pub async fn json_page(&self, project: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(self.url(&format!("/simple/{project}/")))
            .header("accept", "application/vnd.pypi.simple.v1+json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn cache_has(&self, sha: &str) -> bool {
        self.dir
            .join("data/cache")
            .join(&sha[..2])
            .join(sha)
            .exists()
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {name_and_labels} not found"))
    }
}

pub fn requirements(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(format!("{name}.txt"));
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

pub fn pip_install(index: &str, req: &Path, target: &Path) -> Output {
    pip_install_with(index, req, target, &[])
}

pub fn pip_install_with(index: &str, req: &Path, target: &Path, extra: &[&str]) -> Output {
    Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-cache-dir",
            "--require-hashes",
            "--only-binary",
            ":all:",
            "--index-url",
            index,
        ])
        .args(extra)
        .arg("--target")
        .arg(target)
        .arg("-r")
        .arg(req)
        // A client configured by nothing but this command: no PIP_* variables (find-links,
        // certs, indexes) from the machine leak into the test.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("PIP_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap()
}

pub fn uv_install(index: &str, req: &Path, target: &Path) -> Output {
    Command::new("uv")
        .args([
            "pip",
            "install",
            "--no-cache",
            "--require-hashes",
            "--python",
            "python3",
            "--index-url",
            index,
        ])
        .arg("--target")
        .arg(target)
        .arg("-r")
        .arg(req)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("UV_NO_CONFIG", "1")
        .output()
        .expect("uv must be installed (the test script installs it)")
}

pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A real registry (Debian's docker-registry, i.e. distribution 2.8) on 127.0.0.1 with its own
/// storage folder. `extra` is appended to its YAML config (auth sections).
pub fn docker_registry(dir: &Path, extra: &str) -> Proc {
    let port = free_port();
    std::fs::create_dir_all(dir).unwrap();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
        dir.join("data").display()
    );
    std::fs::write(dir.join("config.yml"), cfg).unwrap();
    let log = dir.join("registry.log");
    let logf = std::fs::File::create(&log).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::from(logf.try_clone().unwrap()))
        .stderr(Stdio::from(logf))
        .spawn()
        .expect("docker-registry must be installed (the test script installs it)");
    let p = Proc { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "docker-registry did not start:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

/// `skopeo` with no policy file needed (the tests verify nothing through skopeo's policy).
pub fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("skopeo must be installed (the test script installs it)")
}

/// Builds the test images into an OCI layout; returns {ref: digest}.
pub fn oci_images(layout: &Path) -> BTreeMap<String, String> {
    let out = Command::new("python3")
        .arg(support("oci_images.py"))
        .arg(layout)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oci_images.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A pull that must have been refused, with `why` in skopeo's error output.
pub fn refused(out: &std::process::Output, why: &str) {
    assert!(
        !out.status.success(),
        "pulled, but should have been refused ({why})"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(why),
        "expected {why:?}: {}",
        show(out)
    );
}

/// The admin API's bootstrap credential for a test: the environment a gate needs to accept
/// `secret` as an admin token (its SHA-256 in `TOLLGATE_BOOTSTRAP_TOKEN_SHA256`).
pub fn bootstrap_env(secret: &str) -> (&'static str, String) {
    use sha2::Digest as _;
    (
        "TOLLGATE_BOOTSTRAP_TOKEN_SHA256",
        hex::encode(sha2::Sha256::digest(secret.as_bytes())),
    )
}

impl Gate {
    /// [`Gate::start`] with `secret` accepted as the bootstrap admin token.
    pub fn start_admin(dir: &Path, config: &str, allowlist: &str, secret: &str) -> Gate {
        let (k, v) = bootstrap_env(secret);
        Gate::start_env(dir, config, allowlist, &[(k, &v)])
    }

    /// [`Gate::restart`] with `secret` accepted as the bootstrap admin token.
    pub fn restart_admin(dir: &Path, secret: &str) -> Gate {
        let (k, v) = bootstrap_env(secret);
        Gate::restart_env(dir, &[(k, &v)])
    }
}

/// An admin API answer.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub etag: Option<String>,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: serde_json::Value,
    pub text: String,
}

/// One admin API request from the loopback address `from` (the throttle counts per client),
/// with an optional bearer token, `If-Match` and JSON body.
pub async fn admin_request(
    gate: &Gate,
    from: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    if_match: Option<&str>,
    body: Option<serde_json::Value>,
) -> Reply {
    let c = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let mut r = c.request(method.parse().unwrap(), gate.url(path));
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    if let Some(m) = if_match {
        r = r.header("If-Match", m);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let etag = headers.get("etag").map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        etag,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
    }
}
