//! More than one gate: replicas sharing a real PostgreSQL (Debian's, a throwaway cluster with
//! TLS) and a real Azure Blob container (Azurite, the Azure Storage emulator), both started once
//! per run by `scripts/services.sh` (scripts/test.sh does it). Real pip, uv and skopeo go
//! through the replicas, alone and behind a round-robin load balancer
//! (tests/support/round_robin.py) that sends each request to the next replica. Nothing is
//! mocked.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const BOOTSTRAP: &str = "replica-bootstrap-secret";

/// The services of this run, from the environment scripts/services.sh prints.
struct Services {
    pg: String,
    pg_ca: String,
    azurite: String,
}

fn services() -> Services {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is not set: run the suite with scripts/test.sh, which starts PostgreSQL and Azurite once per run (eval \"$(scripts/services.sh)\" does it by hand)")
        })
    };
    Services {
        pg: var("TOLLGATE_TEST_PG"),
        pg_ca: var("TOLLGATE_TEST_PG_CA"),
        azurite: var("TOLLGATE_TEST_AZURITE"),
    }
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).unwrap();
    format!("{prefix}{}", hex::encode(b))
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-XAtq", url, "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {sql}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn azurite(args: &[&str]) -> std::process::Output {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/azure/bin/python");
    Command::new(py)
        .arg(support("azurite.py"))
        .args(args)
        .output()
        .expect("target/tools/azure (azure-storage-blob) is made by scripts/test.sh")
}

/// A database and a container of their own for one test, and the config that names them.
struct Shared {
    svc: Services,
    db_url: String,
    container: String,
}

impl Shared {
    fn new() -> Shared {
        let svc = services();
        let db = unique("tg_");
        psql(&svc.pg, &format!("CREATE DATABASE {db}"));
        let base = svc.pg.rsplit_once('/').unwrap().0.to_string();
        let container = unique("tg");
        let out = azurite(&["create", &container]);
        assert!(out.status.success(), "{}", show(&out));
        Shared {
            db_url: format!("{base}/{db}"),
            svc,
            container,
        }
    }

    /// The `[store]` and `[cache]` sections: TLS to PostgreSQL, its certificate checked
    /// against the run's CA.
    fn config(&self) -> String {
        format!(
            "[store]\nurl = \"{}?sslmode=verify-full\"\nca_file = \"{}\"\n[cache]\nurl = \"az://{}/gate\"\n",
            self.db_url, self.svc.pg_ca, self.container
        )
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let (k, v) = bootstrap_env(BOOTSTRAP);
        vec![
            (k, v),
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.svc.azurite.clone()),
        ]
    }

    fn start(&self, dir: &Path, config: &str, allowlist: &str) -> Gate {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Gate::start_env(dir, &format!("{config}{}", self.config()), allowlist, &env)
    }

    fn restart(&self, dir: &Path) -> Gate {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Gate::restart_env(dir, &env)
    }

    fn sql(&self, sql: &str) -> String {
        psql(&self.db_url, sql)
    }

    fn blobs(&self) -> Vec<String> {
        let out = azurite(&["list", &self.container]);
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn index_config(port: u16) -> String {
    format!("[pypi]\npage_ttl = \"1s\"\n[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{port}/simple/\"\n[[pypi.index]]\nname = \"mirror\"\nurl = \"http://127.0.0.1:{port}/simple/\"\n")
}

async fn admin(gate: &Gate, method: &str, path: &str, body: Option<serde_json::Value>) -> Reply {
    admin_request(gate, "127.0.0.1", method, path, Some(BOOTSTRAP), None, body).await
}

fn balancer(dir: &Path, ports: &[u16]) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(support("round_robin.py"))
        .arg(dir.join("balancer-requests.log"));
    for p in ports {
        cmd.arg(p.to_string());
    }
    spawn_port(cmd, dir.join("balancer.log"))
}

/// `tollgate audit verify` with a replica's config: walks the chain in PostgreSQL.
fn audit_verify(gate_dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["audit", "verify", "--config"])
        .arg(gate_dir.join("tollgate.toml"))
        .output()
        .unwrap()
}

/// Waits until `check` holds, at most `limit`; returns how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Adds an allowlist file pinning `project` `version` (index "local") to one replica only, and
/// has it reload its files (SIGHUP).
fn add_file_rule(gate: &Gate, project: &str, version: &str, sha: &str) {
    std::fs::write(
        gate.dir.join(format!("allowlists/{project}.toml")),
        format!("[[package]]\nname = \"{project}\"\nversion = \"{version}\"\nsha256 = [\"{sha}\"]\nindex = \"local\"\n"),
    )
    .unwrap();
    gate.proc.signal("HUP");
}

/// Revokes `sha` on `gate`; whether `file` (on another replica) is refused within 2 s of the
/// revocation's answer.
async fn revoke_and_wait(gate: &Gate, sha: &str, file: &str) -> bool {
    let path = format!("/admin/v1/pins/{sha}/revoke");
    let r = admin(gate, "POST", &path, Some(json!({ "reason": "CVE-2099-1" }))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    within(Duration::from_secs(2), async || status(file).await != 200)
        .await
        .is_some()
}

async fn body_of(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

async fn status(url: &str) -> u16 {
    reqwest::get(url).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_one_policy_and_one_audit_chain() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let shared = Shared::new();
    let b_wheel = "demo_b-2.0-py3-none-any.whl";
    let a_wheel = "demo_a-1.0-py3-none-any.whl";
    let git = format!(
        "[[package]]\nname = \"demo-b\"\nversion = \"2.0\"\nsha256 = [\"{}\"]\nindex = \"local\"\n",
        fx.sha(b_wheel)
    );
    let cfg = index_config(upstream.port);
    // Both replicas start at once on an empty database: one migrates, the other waits for it.
    let (a, b) = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let ta = s.spawn(|| shared.start(&fx.path("a"), &cfg, &git));
            let tb = s.spawn(|| shared.start(&fx.path("b"), &cfg, &git));
            (ta.join().unwrap(), tb.join().unwrap())
        })
    });
    assert_eq!(
        shared.sql("SELECT string_agg(version::text, ',') FROM tollgate_schema"),
        "1"
    );
    let req = requirements(fx.dir.path(), "demo", &fx.demo_requirements());

    // demo-a is not approved anywhere yet: neither replica installs demo-b's dependency.
    let out = tokio::task::block_in_place(|| pip_install(&b.index(), &req, &fx.path("t0")));
    assert!(!out.status.success(), "installed before approval");

    // An approval on A is in force on B within 2 s, and pip installs through B.
    let r = admin(
        &a,
        "POST",
        "/admin/v1/approvals",
        Some(json!({ "name": "demo-a", "version": "1.0" })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let a_file = b.url(&format!("/files/demo-a/{}/{a_wheel}", fx.sha(a_wheel)));
    let took = within(Duration::from_secs(2), async || {
        status(&a_file).await == 200
    })
    .await;
    assert!(took.is_some(), "B did not follow A's approval within 2 s");
    let out = tokio::task::block_in_place(|| pip_install(&b.index(), &req, &fx.path("t1")));
    assert!(out.status.success(), "pip through B: {}", show(&out));
    let out = tokio::task::block_in_place(|| uv_install(&a.index(), &req, &fx.path("t2")));
    assert!(out.status.success(), "uv through A: {}", show(&out));

    // Behind one address: every request goes to the other replica than the one before.
    let lb = balancer(fx.dir.path(), &[a.proc.port, b.proc.port]);
    let lb_index = format!("http://127.0.0.1:{}/simple/", lb.port);
    for (i, tool) in ["pip", "uv", "pip"].iter().enumerate() {
        let target = fx.path(&format!("lb{i}"));
        let out = tokio::task::block_in_place(|| match *tool {
            "pip" => pip_install(&lb_index, &req, &target),
            _ => uv_install(&lb_index, &req, &target),
        });
        assert!(
            out.status.success(),
            "{tool} behind the balancer: {}",
            show(&out)
        );
    }
    let routed = std::fs::read_to_string(fx.dir.path().join("balancer-requests.log")).unwrap();
    for port in [a.proc.port, b.proc.port] {
        assert!(
            routed
                .lines()
                .any(|l| l.starts_with(&format!("{port} GET /files/"))),
            "replica {port} served no file behind the balancer:\n{routed}"
        );
    }

    // A revocation on A refuses on B within 2 s, and from then on.
    assert!(
        revoke_and_wait(&a, fx.sha(a_wheel), &a_file).await,
        "B still served a file revoked on A after 2 s"
    );
    for _ in 0..20 {
        assert_ne!(
            status(&a_file).await,
            200,
            "a revoked file was served again"
        );
    }
    let out = tokio::task::block_in_place(|| pip_install(&b.index(), &req, &fx.path("t3")));
    assert!(!out.status.success(), "B installed a file revoked on A");

    // Concurrent writes on both replicas (decisions, and admin changes each in its own
    // transaction): one chain, no fork, no gap.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let gate = if i % 2 == 0 { a.url("") } else { b.url("") };
        tasks.push(tokio::spawn(async move {
            reqwest::get(format!("{gate}/simple/unlisted-{i}/"))
                .await
                .unwrap()
                .status()
        }));
    }
    for i in 0..10 {
        let gate = if i % 2 == 0 { &a } else { &b };
        let r = admin(
            gate,
            "POST",
            "/admin/v1/tokens",
            Some(json!({ "role": "reader", "name": format!("t{i}") })),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 403);
    }
    // Group commit holds entries for a moment; let both writers flush.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (n, lo, hi) = {
        let row = shared.sql("SELECT count(*), min(seq), max(seq) FROM audit");
        let v: Vec<i64> = row.split('|').map(|x| x.parse().unwrap()).collect();
        (v[0], v[1], v[2])
    };
    assert_eq!(
        n,
        hi - lo + 1,
        "the chain has a gap ({n} entries, #{lo}..#{hi})"
    );
    assert!(n >= 20, "{n} entries");
    let out = audit_verify(&a.dir);
    assert!(out.status.success(), "audit verify: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("audit chain intact"),
        "{}",
        show(&out)
    );
    // A token made on A authenticates on B (one set of credentials).
    let r = admin(
        &a,
        "POST",
        "/admin/v1/tokens",
        Some(json!({ "role": "reader", "name": "shared" })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_string();
    let r = admin_request(
        &b,
        "127.0.0.1",
        "GET",
        "/admin/v1/pins",
        Some(&token),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Files that differ between replicas: both say so in /readyz (still 200) and a metric.
    add_file_rule(&b, "demo-a", "1.1", fx.sha("demo_a-1.1-py3-none-any.whl"));
    let said = within(Duration::from_secs(15), async || {
        let r = reqwest::get(a.url("/readyz")).await.unwrap();
        r.status() == 200 && r.text().await.unwrap().contains("allowlist files differ")
    })
    .await;
    assert!(said.is_some(), "A's /readyz never named the difference");
    let body = body_of(&b.url("/readyz")).await;
    assert!(body.contains("allowlist files differ"), "{body}");
    assert!(b.metric("tollgate_replicas_allowlists_differing").await >= 1.0);

    // An API rule made on A that does not load with B's files (B binds `good` to another
    // index): B keeps the rules it had and says so, and a revocation made after it is still in
    // force on B within 2 s.
    add_file_rule(&b, "good", "1.0", fx.sha("good-1.0-py3-none-any.whl"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = admin(
        &a,
        "POST",
        "/admin/v1/packages",
        Some(json!({ "name": "good", "version": "1.0", "sha256": [fx.sha("good-1.0-py3-none-any.whl")], "index": "mirror" })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let b_file = b.url(&format!("/files/demo-b/{}/{b_wheel}", fx.sha(b_wheel)));
    assert_eq!(status(&b_file).await, 200);
    assert!(
        revoke_and_wait(&a, fx.sha(b_wheel), &b_file).await,
        "B served a revoked file while an API rule did not load there"
    );
    let r = reqwest::get(b.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("does not load here"), "{body}");
    drop(lb);
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_with_manifests_and_blobs_from_different_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let digests = oci_images(&dir.path().join("layout"));
    let registry = docker_registry(&dir.path().join("registry"), "");
    for (reference, dest, all) in [
        ("v1", "demo/app:v1", false),
        ("multi", "demo/multi:v1", true),
    ] {
        let src = format!("oci:{}:{reference}", dir.path().join("layout").display());
        let dst = format!("docker://127.0.0.1:{}/{dest}", registry.port);
        let mut args = vec!["copy", "--dest-tls-verify=false", "--preserve-digests"];
        if all {
            args.push("--all");
        }
        args.extend_from_slice(&[&src, &dst]);
        let out = tokio::task::block_in_place(|| skopeo(&args));
        assert!(out.status.success(), "push: {}", show(&out));
    }
    let shared = Shared::new();
    let cfg = format!(
        "[oci]\ntag_ttl = \"1s\"\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{}\"\n",
        registry.port
    );
    let rules = format!(
        "[[image]]\nrepository = \"registry.test/demo/app\"\ndigests = [\"{}\"]\n\n[[image]]\nrepository = \"registry.test/demo/multi\"\ndigests = [\"{}\"]\n",
        digests["v1"], digests["multi"]
    );
    let a = shared.start(&dir.path().join("a"), &cfg, &rules);
    let b = shared.start(&dir.path().join("b"), &cfg, &rules);
    let lb = balancer(dir.path(), &[a.proc.port, b.proc.port]);
    for reference in ["demo/app:v1", "demo/multi:v1"] {
        let dest = dir
            .path()
            .join(format!("pull-{}", reference.replace(['/', ':'], "_")));
        let out = tokio::task::block_in_place(|| {
            skopeo(&[
                "copy",
                "--src-tls-verify=false",
                &format!("docker://127.0.0.1:{}/reg/{reference}", lb.port),
                &format!("dir:{}", dest.display()),
            ])
        });
        assert!(
            out.status.success(),
            "{reference} behind the balancer: {}",
            show(&out)
        );
    }
    // The manifest of a pull came from one replica and blobs of it from the other: the links
    // one replica recorded (manifest → blob, index → child) admitted them on the other.
    let routed = std::fs::read_to_string(dir.path().join("balancer-requests.log")).unwrap();
    let served = |kind: &str, port: u16| {
        routed.lines().any(|l| {
            l.starts_with(&format!("{port} GET /v2/reg/"))
                && l.contains(kind)
                && l.ends_with(" 200")
        })
    };
    for port in [a.proc.port, b.proc.port] {
        assert!(
            served("/blobs/", port),
            "replica {port} served no blob:\n{routed}"
        );
        assert!(
            served("/manifests/", port),
            "replica {port} served no manifest:\n{routed}"
        );
    }
    assert!(
        !routed
            .lines()
            .any(|l| l.ends_with(" 403") || l.ends_with(" 404")),
        "{routed}"
    );
    // Blob links are in the shared store, whichever replica wrote them.
    let links: i64 = shared
        .sql("SELECT count(*) FROM kv WHERE tbl = 'blobrefs'")
        .parse()
        .unwrap();
    assert!(links > 0, "no blob links in the shared store");
    drop(lb);
}

/// A large file served from `dir/upstream` (a page for project `huge` and its wheel).
fn huge_file(fx: &Fixture, mib: usize) -> (String, String) {
    use sha2::Digest as _;
    let name = "huge-1.0-py3-none-any.whl".to_string();
    let mut bytes = Vec::with_capacity(mib << 20);
    let mut block = sha2::Sha256::digest(b"huge").to_vec();
    while bytes.len() < mib << 20 {
        block = sha2::Sha256::digest(&block).to_vec();
        bytes.extend_from_slice(&block);
    }
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    std::fs::write(fx.root().join("packages").join(&name), &bytes).unwrap();
    let page = fx.root().join("simple/huge");
    std::fs::create_dir_all(&page).unwrap();
    std::fs::write(
        page.join("index.html"),
        format!("<a href=\"../../packages/{name}#sha256={sha}\">{name}</a>\n"),
    )
    .unwrap();
    (name, sha)
}

async fn get_all(url: &str) -> Result<Vec<u8>, String> {
    let r = reqwest::get(url).await.map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    r.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

fn sha_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_download_loses_nothing_and_the_shared_cache_is_verified() {
    let fx = Fixture::build();
    let (name, sha) = huge_file(&fx, 48);
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let shared = Shared::new();
    let rule = format!(
        "[[package]]\nname = \"huge\"\nversion = \"1.0\"\nsha256 = [\"{sha}\"]\nindex = \"local\"\n"
    );
    let cfg = index_config(upstream.port);
    let mut a = shared.start(&fx.path("a"), &cfg, &rule);
    let b = shared.start(&fx.path("b"), &cfg, &rule);
    let path = format!("/files/huge/{sha}/{name}");

    // A client starts the download on A and stops reading; A is killed (-9) with the
    // download half done.
    let mut resp = reqwest::get(a.url(&path)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    a.proc.stop();
    let mut rest = Ok(());
    loop {
        match resp.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                rest = Err(e);
                break;
            }
        }
    }
    assert!(rest.is_err(), "the killed replica's response ended cleanly");

    // B serves the whole file, verified; nothing half-written reached the shared cache.
    assert!(shared.blobs().is_empty(), "{:?}", shared.blobs());
    let body = get_all(&b.url(&path)).await.unwrap();
    assert_eq!(sha_of(&body), sha);
    let object = format!("gate/sha256/{}/{sha}", &sha[..2]);
    let stored = within(Duration::from_secs(20), async || {
        shared.blobs().contains(&object)
    })
    .await;
    assert!(
        stored.is_some(),
        "B did not write the verified file to the shared cache"
    );
    let out = tokio::task::block_in_place(|| audit_verify(&b.dir));
    assert!(out.status.success(), "audit verify: {}", show(&out));

    // A back (same data_dir, nothing of the file on its disk) reads it from the shared cache,
    // hashing it as it streams out.
    let a = shared.restart(&a.dir);
    assert!(!a.cache_has(&sha));
    let body = get_all(&a.url(&path)).await.unwrap();
    assert_eq!(sha_of(&body), sha);
    assert!(a.metric("tollgate_remote_cache_hits_total").await >= 1.0);
    assert!(
        a.cache_has(&sha),
        "a verified shared copy is kept on the local disk"
    );

    // A Range request to a replica without a local copy is answered after a whole verified
    // read, never from unverified bytes.
    let c = shared.start(&fx.path("c"), &cfg, &rule);
    let r = reqwest::Client::new()
        .get(c.url(&path))
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let part = r.bytes().await.unwrap();
    assert_eq!(&part[..], &body[1000..2000]);
    assert!(c.cache_has(&sha));

    // Someone with write access to the storage account replaces the object's bytes: a replica
    // reading it cuts the response off, removes the object and audits it; the next request is
    // served from the upstream, verified.
    let forged = fx.path("forged.bin");
    let mut bad = body.clone();
    bad[12345] ^= 0xff;
    std::fs::write(&forged, &bad).unwrap();
    let out = azurite(&[
        "overwrite",
        &shared.container,
        &object,
        forged.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let d = shared.start(&fx.path("d"), &cfg, &rule);
    let got = get_all(&d.url(&path)).await;
    assert!(got.is_err(), "a forged shared copy was served whole");
    assert!(!d.cache_has(&sha));
    assert!(d.metric("tollgate_remote_cache_tampered_total").await >= 1.0);
    let audited = within(Duration::from_secs(5), async || {
        shared.sql(
            "SELECT count(*) FROM audit WHERE convert_from(substring(entry from 66), 'UTF8')::jsonb ->> 'reason' = 'remote_cache_tampered'",
        ) == "1"
    })
    .await;
    assert!(audited.is_some(), "the forged object was not audited");
    let body = get_all(&d.url(&path)).await.unwrap();
    assert_eq!(
        sha_of(&body),
        sha,
        "after the forgery, the upstream's bytes"
    );
    let out = tokio::task::block_in_place(|| audit_verify(&d.dir));
    assert!(out.status.success(), "audit verify: {}", show(&out));

    // A client that reads slowly while others wait for the same download does not hold their
    // copy: a fresh replica reads the file from the shared cache for a stalled first client,
    // and a second request gets the whole file meanwhile.
    let e = shared.start(&fx.path("e"), &cfg, &rule);
    let mut stalled = reqwest::get(e.url(&path)).await.unwrap();
    assert_eq!(stalled.status(), 200);
    stalled.chunk().await.unwrap().unwrap();
    let second = tokio::time::timeout(Duration::from_secs(20), get_all(&e.url(&path))).await;
    let body = second
        .expect("a second request waited on a stalled first client")
        .unwrap();
    assert_eq!(sha_of(&body), sha);
    drop(stalled);

    // A transfer under way when the file is revoked (on another replica) is cut off at its
    // next chunk; it is not served to its end.
    let mut slow = reqwest::get(e.url(&path)).await.unwrap();
    assert_eq!(slow.status(), 200);
    let mut got = slow.chunk().await.unwrap().unwrap().len();
    let r = admin(
        &d,
        "POST",
        &format!("/admin/v1/pins/{sha}/revoke"),
        Some(json!({ "reason": "CVE-2099-3" })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ended = loop {
        match slow.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(ended.is_err(), "a revoked file was served to its end");
    assert!(got < 48 << 20, "{got} bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lockouts_count_across_replicas() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let shared = Shared::new();
    let cfg = index_config(upstream.port);
    let a = shared.start(&fx.path("a"), &cfg, "");
    let b = shared.start(&fx.path("b"), &cfg, "");
    // 20 wrong tokens, split between the replicas: the shared count locks the client out.
    for i in 0..20 {
        let gate = if i % 2 == 0 { &a } else { &b };
        let r = admin_request(
            gate,
            "127.0.0.9",
            "GET",
            "/admin/v1/pins",
            Some("wrong"),
            None,
            None,
        )
        .await;
        assert!(r.status == 401 || r.status == 429, "{}", r.text);
    }
    for gate in [&a, &b] {
        let locked = within(Duration::from_secs(3), async || {
            admin_request(
                gate,
                "127.0.0.9",
                "GET",
                "/admin/v1/pins",
                Some(BOOTSTRAP),
                None,
                None,
            )
            .await
            .status
                == 429
        })
        .await;
        assert!(
            locked.is_some(),
            "replica {} did not lock the client out",
            gate.proc.port
        );
    }
    // Another client is not affected.
    let r = admin(&b, "GET", "/admin/v1/pins", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_is_reached_over_verified_tls_and_an_unreachable_store_is_not_ready() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let shared = Shared::new();
    let cfg = index_config(upstream.port);
    // Without the CA, the server's certificate is not trusted: the gate does not start.
    let dir = fx.path("untrusted");
    std::fs::create_dir_all(dir.join("allowlists")).unwrap();
    std::fs::write(
        dir.join("tollgate.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nallowlist_dir = \"allowlists\"\n{cfg}[store]\nurl = \"{}?sslmode=verify-full\"\n",
            shared.db_url
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(dir.join("tollgate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = show(&out);
    assert!(
        text.contains("cannot be reached") && text.contains("certificate"),
        "{text}"
    );

    // A password in the URL is refused before anything is sent.
    std::fs::write(
        dir.join("tollgate.toml"),
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nallowlist_dir = \"allowlists\"\n[store]\nurl = \"postgres://u:secret@db.example:5432/x\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(dir.join("tollgate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        show(&out).contains("password_env or password_file"),
        "{}",
        show(&out)
    );
    assert!(
        !show(&out).contains("secret"),
        "the password was echoed: {}",
        show(&out)
    );

    // A replica whose database goes away is not ready (503), and ready again once it is back.
    let gate = shared.start(&fx.path("g"), &cfg, "");
    // A replica stuck inside an append (stopped, partitioned) holds the chain's lock: here a
    // session that takes it and sleeps. An admin change elsewhere gives up within seconds
    // (503, nothing changed) instead of hanging, and works once the lock is free.
    let holder = std::process::Command::new("psql")
        .args([
            "-XAtq",
            &shared.db_url,
            "-c",
            "BEGIN; SELECT pg_advisory_xact_lock(8390043843661231106); SELECT pg_sleep(8); COMMIT;",
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let body = json!({ "role": "reader", "name": "during-lock" });
    let r = admin(&gate, "POST", "/admin/v1/tokens", Some(body.clone())).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    tokio::task::block_in_place(|| holder.wait_with_output().unwrap());
    let r = admin(&gate, "POST", "/admin/v1/tokens", Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(status(&gate.url("/readyz")).await, 200);
    let db = shared.db_url.rsplit('/').next().unwrap().to_string();
    // The replica's sessions are cut and new ones refused while the database is renamed away.
    psql(
        &shared.svc.pg,
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
    );
    psql(
        &shared.svc.pg,
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"),
    );
    let down = within(Duration::from_secs(10), async || {
        status(&gate.url("/readyz")).await == 503
    })
    .await;
    assert!(
        down.is_some(),
        "/readyz stayed 200 with the store unreachable"
    );
    let r = body_of(&gate.url("/readyz")).await;
    assert!(
        r.contains("cannot be reached") || r.contains("has not been read"),
        "{r}"
    );
    // And it serves nothing meanwhile: a revocation made elsewhere could not reach it.
    let page = gate.url("/simple/demo-b/");
    let refused = within(Duration::from_secs(3), async || status(&page).await == 503).await;
    assert!(
        refused.is_some(),
        "a replica cut off from the store went on deciding"
    );
    psql(
        &shared.svc.pg,
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"),
    );
    let up = within(Duration::from_secs(10), async || {
        status(&gate.url("/readyz")).await == 200
    })
    .await;
    assert!(up.is_some(), "/readyz did not recover with the store");
    assert_ne!(status(&page).await, 503);
}

/// PEP 740 verdicts live in the shared store: a replica that never fetched a file's
/// provenance lists it from the verdict another replica kept (and serves the kept object).
#[tokio::test(flavor = "multi_thread")]
async fn provenance_verdicts_are_kept_in_postgres_for_every_replica() {
    let shared = Shared::new();
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pep740");
    let out = Command::new("python3")
        .arg(support("pep740_index.py"))
        .arg(&fixtures)
        .arg(dir.path().join("up"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let shas: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).unwrap();
    let up = static_upstream(&dir.path().join("up"), dir.path().join("up.log"));
    let wheel = "circleci_sign_publish_example-0.0.1.dev137-py3-none-any.whl";
    let config = format!(
        "trusted_root = \"{}\"\n[pypi]\npage_ttl = \"1s\"\n[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{}/simple/\"\n",
        fixtures.join("trust/production.trusted_root.json").display(),
        up.port
    );
    let allow = format!(
        "[[package]]\nname = \"circleci-sign-publish-example\"\nversion = \"0.0.1.dev137\"\nsha256 = [\"{}\"]\npublisher = {{ circleci = \"fdd9283f-e619-46af-8f9c-851f7d3e8b2b\", pipeline_definition_id = \"8e4f8ab2-8d7c-4827-9f15-de076d6d647f\" }}\n",
        shas[wheel]
    );
    let a = shared.start(&dir.path().join("a"), &config, &allow);
    let listed = within(Duration::from_secs(20), async || {
        a.json_page("circleci-sign-publish-example").await["files"]
            .as_array()
            .is_some_and(|f| f.len() == 1)
    })
    .await;
    assert!(
        listed.is_some(),
        "replica A never listed the attested wheel"
    );
    assert_eq!(
        shared.sql("SELECT count(*) FROM kv WHERE tbl = 'provenance'"),
        "1"
    );
    // The upstream loses its provenance; replica B has never seen the file.
    std::fs::remove_dir_all(dir.path().join("up/integrity")).unwrap();
    let b = shared.start(&dir.path().join("b"), &config, &allow);
    let page = b.json_page("circleci-sign-publish-example").await;
    let files = page["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "B lists from the shared verdict: {page}");
    let r = reqwest::get(b.url(files[0]["provenance"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!b
        .proc
        .log_text()
        .contains("provenance could not be fetched"));
}
