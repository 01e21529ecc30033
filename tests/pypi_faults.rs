//! Faults and operator features of the PyPI gate, end to end with the real binary: concurrent
//! first requests, credentials and redirects, the cache quota, a full cache disk, re-published
//! files, TLS, shutdown, and the offline commands.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const PAGE_TTL: &str = "[pypi]\npage_ttl = \"1s\"\nupstream_timeout = \"3s\"\n";

fn exact(project: &str, sha: &str) -> String {
    format!("[[package]]\nname = \"{project}\"\nversion = \"1.0\"\nsha256 = [\"{sha}\"]\n\n")
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_requests_make_one_upstream_fetch() {
    let fx = Fixture::build();
    let liar = liar_upstream(&fx.root().join("packages"), fx.path("liar.log"));
    let sha = fx.sha("good-1.0-py3-none-any.whl").to_string();
    let cfg = format!(
        "{PAGE_TTL}[[pypi.index]]\nname = \"liar\"\nurl = \"http://127.0.0.1:{}/simple/\"\n",
        liar.port
    );
    let gate = Gate::start(&fx.path("gate"), &cfg, &exact("slowfile", &sha));
    let url = gate.url(&format!(
        "/files/slowfile/{sha}/slowfile-1.0-py3-none-any.whl"
    ));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            reqwest::get(url).await.unwrap().bytes().await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(sha256_hex(&t.await.unwrap()), sha);
    }
    let log = liar.log_text();
    assert_eq!(log.matches("/files/slowfile").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_stay_with_the_index_origin() {
    let fx = Fixture::build();
    let liar = liar_upstream(&fx.root().join("packages"), fx.path("liar.log"));
    let sha = fx.sha("good-1.0-py3-none-any.whl").to_string();
    let cfg = format!(
        "{PAGE_TTL}[[pypi.index]]\nname = \"private\"\nurl = \"http://127.0.0.1:{}/simple/\"\nfile_hosts = [\"127.0.0.1:{}\", \"localhost:{}\"]\nusername = \"user\"\npassword_env = \"TOLLGATE_TEST_PW\"\n",
        liar.port, liar.port, liar.port
    );
    let gate = Gate::start_env(
        &fx.path("gate"),
        &cfg,
        &format!("{}{}", exact("authed", &sha), exact("badhtml", &sha)),
        &[("TOLLGATE_TEST_PW", "secret")],
    );
    let page: serde_json::Value = gate.json_page("authed").await;
    assert_eq!(page["files"].as_array().unwrap().len(), 1);
    let body = reqwest::get(gate.url(&format!("/files/authed/{sha}/authed-1.0-py3-none-any.whl")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body), sha);
    let log = liar.log_text();
    let port = liar.port;
    assert!(
        log.contains(&format!("REQ 127.0.0.1:{port} /simple/authed/ auth=yes")),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "REQ 127.0.0.1:{port} /redirect/authed-1.0-py3-none-any.whl auth=yes"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "REQ localhost:{port} /files/authed-1.0-py3-none-any.whl auth=no"
        )),
        "the redirect target got credentials:\n{log}"
    );
    assert!(
        !gate.proc.log_text().contains("secret"),
        "the password reached the log"
    );

    // HTML that is not UTF-8 is refused, never half-read.
    let r = reqwest::get(gate.url("/simple/badhtml/")).await.unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_a_503_not_a_deny() {
    let fx = Fixture::build();
    let liar = liar_upstream(&fx.root().join("packages"), fx.path("liar.log"));
    let sha = fx.sha("good-1.0-py3-none-any.whl").to_string();
    let cfg = format!(
        "{PAGE_TTL}[[pypi.index]]\nname = \"private\"\nurl = \"http://127.0.0.1:{}/simple/\"\nusername = \"user\"\npassword_env = \"TOLLGATE_TEST_PW\"\n",
        liar.port
    );
    let gate = Gate::start_env(
        &fx.path("gate"),
        &cfg,
        &exact("authed", &sha),
        &[("TOLLGATE_TEST_PW", "wrong")],
    );
    let r = reqwest::get(gate.url("/simple/authed/")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("refused the gate's credentials"));
}

fn static_gate(fx: &Fixture, upstream: &Proc, extra: &str, allowlist: &str) -> Gate {
    let cfg = format!("{extra}{PAGE_TTL}[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{}/simple/\"\n", upstream.port);
    Gate::start(&fx.path("gate"), &cfg, allowlist)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_quota_evicts_the_least_recently_used_file() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let a = "demo_a-1.0-py3-none-any.whl";
    let b = "demo_b-2.0-py3-none-any.whl";
    let quota = fx.dists[a].size.max(fx.dists[b].size) + 100;
    let allow = format!(
        "[[package]]\nname = \"demo-a\"\nversion = \"1.0\"\nsha256 = [\"{}\"]\n\n[[package]]\nname = \"demo-b\"\nversion = \"2.0\"\nsha256 = [\"{}\"]\n",
        fx.sha(a),
        fx.sha(b)
    );
    let gate = static_gate(
        &fx,
        &upstream,
        &format!("cache_max_bytes = \"{quota}\"\n"),
        &allow,
    );
    for (p, f) in [("demo-a", a), ("demo-b", b)] {
        let body = reqwest::get(gate.url(&format!("/files/{p}/{}/{f}", fx.sha(f))))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(sha256_hex(&body), fx.sha(f));
    }
    assert!(!gate.cache_has(fx.sha(a)), "the older file must be evicted");
    assert!(gate.cache_has(fx.sha(b)));
    assert_eq!(gate.metric("tollgate_cache_evictions_total").await, 1.0);
    assert!(gate.metric("tollgate_cache_bytes").await <= quota as f64);
}

/// A real full disk: the gate's temp folder is a 64 KiB tmpfs (this needs root, which the test
/// machines and CI have). Verified bytes are still served, just not cached.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_cache_disk_still_serves_verified_bytes() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let big = "big-1.0-py3-none-any.whl";
    let tmp = fx.path("gate/data/tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(tmp.clone());
    let gate = static_gate(&fx, &upstream, "", &exact("big", fx.sha(big)));
    let body = reqwest::get(gate.url(&format!("/files/big/{}/{big}", fx.sha(big))))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len() as u64, fx.dists[big].size);
    assert_eq!(sha256_hex(&body), fx.sha(big));
    assert!(!gate.cache_has(fx.sha(big)));
    assert!(gate.metric("tollgate_cache_store_failures_total").await >= 1.0);
    assert!(gate.proc.log_text().contains("serving without caching"));
    drop(gate);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_republished_file_is_not_listed_and_the_pinned_bytes_stay() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let name = "swapped-1.0-py3-none-any.whl";
    let old = fx.sha(name).to_string();
    let gate = static_gate(&fx, &upstream, "", &exact("swapped", &old));
    let file = |sha: &str| gate.url(&format!("/files/swapped/{sha}/{name}"));
    assert_eq!(
        sha256_hex(
            &reqwest::get(file(&old))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        ),
        old
    );

    // The upstream publishes new bytes under the same name, with their new hash.
    let path = fx.root().join("packages").join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"trailing");
    std::fs::write(&path, &bytes).unwrap();
    let new = sha256_hex(&bytes);
    let page_path = fx.root().join("simple/swapped/index.html");
    let page = std::fs::read_to_string(&page_path)
        .unwrap()
        .replace(&old, &new);
    std::fs::write(&page_path, page).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let listed: serde_json::Value = gate.json_page("swapped").await;
    assert_eq!(
        listed["files"].as_array().unwrap().len(),
        0,
        "the new hash is not pinned"
    );
    let r = reqwest::get(file(&new)).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        sha256_hex(
            &reqwest::get(file(&old))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        ),
        old,
        "the verified bytes stay served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_pip_and_sigterm_shuts_down_cleanly() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let dir = fx.path("gate");
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", show(&ok));
    let a = "demo_a-1.0-py3-none-any.whl";
    let mut gate = static_gate(
        &fx,
        &upstream,
        "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
        &exact("demo-a", fx.sha(a)),
    );
    let index = format!("https://127.0.0.1:{}/simple/", gate.proc.port);
    let req = requirements(
        fx.dir.path(),
        "tls",
        &[format!("demo-a==1.0 --hash=sha256:{}", fx.sha(a))],
    );
    let cert = dir.join("cert.pem");
    let out = tokio::task::block_in_place(|| {
        pip_install_with(
            &index,
            &req,
            &fx.path("t"),
            &["--cert", cert.to_str().unwrap()],
        )
    });
    assert!(out.status.success(), "pip over TLS: {}", show(&out));
    // Plain HTTP to the TLS port gets no page.
    assert!(reqwest::get(gate.url("/simple/demo-a/"))
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true));

    gate.proc.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = gate.proc.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tollgate(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn offline_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("allowlists")).unwrap();
    let h = "ab".repeat(32);
    std::fs::write(
        d.join("allowlists/a.toml"),
        format!("[[package]]\nname = \"demo\"\nversion = \"1.0\"\nsha256 = [\"{h}\"]\n"),
    )
    .unwrap();

    // check: defaults (no config file), then a broken file named with its line.
    let out = tollgate(&["check"], d);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 project(s)"));
    std::fs::write(
        d.join("allowlists/b.toml"),
        "\n[[package]]\nname = \"x\"\nspecifier = \">=1\"\n",
    )
    .unwrap();
    let out = tollgate(&["check"], d);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("allowlists/b.toml:2: x: a release rule needs min_age"),
        "{}",
        show(&out)
    );
    std::fs::remove_file(d.join("allowlists/b.toml")).unwrap();
    std::fs::write(d.join("tollgate.toml"), "bogus = 1\n").unwrap();
    let out = tollgate(&["check"], d);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tollgate.toml:1"),
        "{}",
        show(&out)
    );
    std::fs::remove_file(d.join("tollgate.toml")).unwrap();

    // import: requirements in, allowlist TOML out, which `check` accepts.
    let other = "cd".repeat(32);
    std::fs::write(d.join("req.txt"), format!("# pinned\nDemo==1.0 \\\n  --hash=sha256:{h}\nother[extra]==2.0 ; python_version >= \"3.8\" --hash=sha256:{other}\n")).unwrap();
    let out = tollgate(&["allowlist", "import", "req.txt"], d);
    assert!(out.status.success(), "{}", show(&out));
    std::fs::write(d.join("allowlists/imported.toml"), &out.stdout).unwrap();
    let out = tollgate(&["check"], d);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 project(s)"));

    // allowlist check: per line, exit 1 when any line would fail.
    std::fs::write(
        d.join("want.txt"),
        format!("demo==1.0 --hash=sha256:{h}\nmissing==1.0 --hash=sha256:{h}\nunhashed==1.0\n"),
    )
    .unwrap();
    let out = tollgate(&["allowlist", "check", "want.txt"], d);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("want.txt:1: ok"), "{text}");
    assert!(
        text.contains("want.txt:2: FAIL missing is not on the allowlist"),
        "{text}"
    );
    assert!(
        text.contains("want.txt:3: FAIL unhashed==1.0: no --hash"),
        "{text}"
    );
    assert!(
        text.contains("1 of 3 requirement(s) would install"),
        "{text}"
    );
}

/// A release rule over an upstream that declares no hashes: the gate hashes each file in the
/// background, pins it at first sight, and lists it once older than min_age (here 0s).
#[tokio::test(flavor = "multi_thread")]
async fn release_rule_pins_hashless_files_at_first_sight() {
    let fx = Fixture::build();
    let page_path = fx.root().join("simple/fresh/index.html");
    let sha = fx.sha("fresh-1.0-py3-none-any.whl").to_string();
    let page = std::fs::read_to_string(&page_path)
        .unwrap()
        .replace(&format!("#sha256={sha}"), "");
    std::fs::write(&page_path, page).unwrap();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let gate = static_gate(
        &fx,
        &upstream,
        "",
        "[[package]]\nname = \"fresh\"\nspecifier = \">=1,<2\"\nmin_age = \"0s\"\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let page: serde_json::Value = gate.json_page("fresh").await;
        let files = page["files"].as_array().unwrap().clone();
        if !files.is_empty() {
            break files;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hashless file was never listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        listed[0]["hashes"]["sha256"],
        sha.as_str(),
        "the listed pin is the file's real hash"
    );
    let req = requirements(
        fx.dir.path(),
        "fresh",
        &[format!("fresh==1.0 --hash=sha256:{sha}")],
    );
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t")));
    assert!(out.status.success(), "{}", show(&out));
    // The bytes hashed for the pin are the ones served: one upstream download in all.
    let log = upstream.log_text();
    assert_eq!(
        log.matches("/packages/fresh-1.0-py3-none-any.whl").count(),
        1,
        "{log}"
    );
}

/// A file first seen now that its index dates to 1999: under a release rule it is not listed
/// before min_age unless the operator trusts that index's upload times (`upload_time =
/// "trust"`; by default only https://pypi.org/simple/'s are).
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_time_in_the_past_does_not_skip_the_quarantine() {
    let fx = Fixture::build();
    let liar = liar_upstream(&fx.root().join("packages"), fx.path("liar.log"));
    let rule = "[[package]]\nname = \"backdated\"\nspecifier = \">=1\"\nmin_age = \"7d\"\n";
    let listed = |trust: &str, name: &str| {
        let cfg = format!(
            "{PAGE_TTL}[[pypi.index]]\nname = \"liar\"\nurl = \"http://127.0.0.1:{}/simple/\"\n{trust}",
            liar.port
        );
        let gate = Gate::start(&fx.path(name), &cfg, rule);
        async move {
            let page: serde_json::Value = gate.json_page("backdated").await;
            page["files"].as_array().unwrap().len()
        }
    };
    assert_eq!(
        listed("", "first-seen").await,
        0,
        "dated by the index, seen now"
    );
    assert_eq!(
        listed("upload_time = \"first_seen\"\n", "first-seen2").await,
        0
    );
    assert_eq!(listed("upload_time = \"trust\"\n", "trusted").await, 1);
    // A value that is neither is a config error naming the field.
    let dir = fx.path("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tollgate.toml"),
        format!(
            "[[pypi.index]]\nname = \"liar\"\nurl = \"http://127.0.0.1:{}/simple/\"\nupload_time = \"sometimes\"\n",
            liar.port
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(dir.join("tollgate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(show(&out).contains("upload_time must be"), "{}", show(&out));
}

/// `.metadata` is the wheel's own METADATA: the dist-info of its name and version, never
/// another one in the same zip; two for itself are refused; a METADATA that inflates past its
/// declared size is refused, and the failure is remembered (the listing then stops
/// advertising core metadata, so clients download the wheel).
#[tokio::test(flavor = "multi_thread")]
async fn metadata_comes_from_the_wheels_own_dist_info() {
    let fx = Fixture::build();
    let liar = liar_upstream(&fx.root().join("packages"), fx.path("liar.log"));
    let sha_of = |project: &str| {
        let url = format!("http://127.0.0.1:{}/simple/{project}/", liar.port);
        async move {
            let page: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            page["files"][0]["hashes"]["sha256"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (two, amb, bomb) = (
        sha_of("twometa").await,
        sha_of("ambiguous").await,
        sha_of("zipbomb").await,
    );
    let (corrupt, badoffset) = (sha_of("corrupt").await, sha_of("badoffset").await);
    let cfg = format!(
        "{PAGE_TTL}[[pypi.index]]\nname = \"liar\"\nurl = \"http://127.0.0.1:{}/simple/\"\n",
        liar.port
    );
    let gate = Gate::start(
        &fx.path("gate"),
        &cfg,
        &format!(
            "{}{}{}{}{}",
            exact("twometa", &two),
            exact("ambiguous", &amb),
            exact("zipbomb", &bomb),
            exact("corrupt", &corrupt),
            exact("badoffset", &badoffset)
        ),
    );
    let md = |project: &str, sha: &str| {
        let url = gate.url(&format!(
            "/files/{project}/{sha}/{project}-1.0-py3-none-any.whl.metadata"
        ));
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, body) = md("twometa", &two).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("Version: 1.0"), "{body}");
    let (s, body) = md("ambiguous", &amb).await;
    assert_eq!(s, 502, "{body}");
    assert!(body.contains("2 dist-info/METADATA files"), "{body}");
    let page: serde_json::Value = gate.json_page("zipbomb").await;
    assert!(page["files"][0].get("core-metadata").is_some(), "{page}");
    let (s, body) = md("zipbomb", &bomb).await;
    assert_eq!(s, 502, "{body}");
    assert!(body.contains("does not match"), "{body}");
    let (s, again) = md("zipbomb", &bomb).await;
    assert_eq!((s, again), (502, body), "the failure is remembered");
    let page: serde_json::Value = gate.json_page("zipbomb").await;
    assert!(
        page["files"][0].get("core-metadata").is_none(),
        "a wheel whose METADATA failed is no longer advertised with it: {page}"
    );
    // A broken zip is the wheel's fault too (502, remembered), not the gate's (500).
    for (project, sha) in [("corrupt", &corrupt), ("badoffset", &badoffset)] {
        let (s, body) = md(project, sha).await;
        assert_eq!(s, 502, "{project}: {body}");
        let (s, again) = md(project, sha).await;
        assert_eq!((s, &again), (502, &body), "{project}: remembered");
    }
}

/// A file link on the index's own host but another port is another service: with the
/// default file host (the index's host and port) it is dropped, never fetched, pinned or
/// served, even under a release rule that would hash a link without a hash.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_link_to_another_port_is_never_fetched() {
    let fx = Fixture::build();
    let liar = liar_upstream(&fx.root().join("packages"), fx.path("liar.log"));
    // The other service: a plain file server that logs every request it gets.
    let other = static_upstream(&fx.root(), fx.path("other.log"));
    let project = format!("offport-{}", other.port);
    let cfg = format!(
        "{PAGE_TTL}[[pypi.index]]\nname = \"liar\"\nurl = \"http://127.0.0.1:{}/simple/\"\n",
        liar.port
    );
    let gate = Gate::start(
        &fx.path("gate"),
        &cfg,
        &format!("[[package]]\nname = \"{project}\"\nspecifier = \">=1\"\nmin_age = \"0s\"\n"),
    );
    for _ in 0..5 {
        let page: serde_json::Value = gate.json_page(&project).await;
        assert_eq!(page["files"].as_array().unwrap().len(), 0, "{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !other.log_text().contains("GET"),
        "the gate reached another port: {}",
        other.log_text()
    );
}
