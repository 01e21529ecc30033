//! The PyPI gate end to end: the real tollgate binary between real pip / uv and a real local
//! upstream (a static PEP 503 tree, pypiserver, or an upstream that misbehaves on purpose).

mod common;

use std::time::Duration;

use common::*;

const PAGE_TTL: &str = "[pypi]\npage_ttl = \"1s\"\nupstream_timeout = \"2s\"\n";

fn allowlist(fx: &Fixture) -> String {
    format!(
        "[[package]]\nname = \"demo-a\"\nversion = \"1.0\"\nsha256 = [\"{}\", \"{}\"]\n\n\
         [[package]]\nname = \"demo_b\"\nversion = \"2.0\"\nsha256 = [\"{}\"]\n\n\
         [[package]]\nname = \"swapped\"\nversion = \"1.0\"\nsha256 = [\"{}\"]\n\n\
         [[package]]\nname = \"fresh\"\nspecifier = \">=1\"\nmin_age = \"7d\"\n",
        fx.sha("demo_a-1.0-py3-none-any.whl"),
        fx.sha("demo_a-1.0.tar.gz"),
        fx.sha("demo_b-2.0-py3-none-any.whl"),
        fx.sha("swapped-1.0-py3-none-any.whl"),
    )
}

fn index_config(port: u16) -> String {
    format!(
        "{PAGE_TTL}[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{port}/simple/\"\n"
    )
}

struct Env {
    fx: Fixture,
    upstream: Proc,
    gate: Gate,
}

fn static_env() -> Env {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let gate = Gate::start(
        &fx.path("gate"),
        &index_config(upstream.port),
        &allowlist(&fx),
    );
    Env { fx, upstream, gate }
}

#[tokio::test(flavor = "multi_thread")]
async fn pip_and_uv_install_allowlisted_packages() {
    let env = static_env();
    let req = requirements(env.fx.dir.path(), "demo", &env.fx.demo_requirements());
    let pip_target = env.fx.path("pip-target");
    let out = tokio::task::block_in_place(|| pip_install(&env.gate.index(), &req, &pip_target));
    assert!(out.status.success(), "pip: {}", show(&out));
    assert!(pip_target.join("demo_b/__init__.py").exists());
    assert!(pip_target.join("demo_a/__init__.py").exists());

    let uv_target = env.fx.path("uv-target");
    let out = tokio::task::block_in_place(|| uv_install(&env.gate.index(), &req, &uv_target));
    assert!(out.status.success(), "uv: {}", show(&out));
    assert!(uv_target.join("demo_b/__init__.py").exists());

    // Both downloads were verified into the cache; the second client was served from it.
    assert!(env
        .gate
        .cache_has(env.fx.sha("demo_b-2.0-py3-none-any.whl")));
    assert!(env.gate.metric("tollgate_cache_hits_total").await >= 2.0);
    let upstream_log = env.upstream.log_text();
    assert_eq!(
        upstream_log
            .matches("/packages/demo_b-2.0-py3-none-any.whl")
            .count(),
        1,
        "one upstream fetch per file:\n{upstream_log}"
    );

    // A release that is not pinned is neither listed nor installable.
    let req = requirements(
        env.fx.dir.path(),
        "unpinned",
        &[format!(
            "demo-a==1.1 --hash=sha256:{}",
            env.fx.sha("demo_a-1.1-py3-none-any.whl")
        )],
    );
    let out =
        tokio::task::block_in_place(|| pip_install(&env.gate.index(), &req, &env.fx.path("t3")));
    assert!(
        !out.status.success(),
        "demo-a 1.1 must not install: {}",
        show(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unlisted_project_is_refused_without_an_upstream_request() {
    let env = static_env();
    let req = requirements(
        env.fx.dir.path(),
        "evil",
        &[format!(
            "evil==1.0 --hash=sha256:{}",
            env.fx.sha("evil-1.0-py3-none-any.whl")
        )],
    );
    let out =
        tokio::task::block_in_place(|| pip_install(&env.gate.index(), &req, &env.fx.path("t")));
    assert!(!out.status.success());
    let resp = reqwest::get(env.gate.url("/simple/evil/")).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.text().await.unwrap().trim(),
        "project evil is not on the allowlist; ask the security team to approve it"
    );
    let file = format!(
        "/files/evil/{}/evil-1.0-py3-none-any.whl",
        env.fx.sha("evil-1.0-py3-none-any.whl")
    );
    assert_eq!(
        reqwest::get(env.gate.url(&file)).await.unwrap().status(),
        403
    );
    assert!(
        !env.upstream.log_text().contains("evil"),
        "the upstream saw a request for evil:\n{}",
        env.upstream.log_text()
    );
    assert!(
        env.gate
            .metric("tollgate_decisions_total{decision=\"deny\",reason=\"not_allowlisted\"}")
            .await
            >= 2.0
    );
    // the deny is audited
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(env.gate.proc.log_text().contains("not_allowlisted"));
}

#[tokio::test(flavor = "multi_thread")]
async fn swapped_bytes_are_refused_and_never_cached() {
    let env = static_env();
    let name = "swapped-1.0-py3-none-any.whl";
    let sha = env.fx.sha(name).to_string();
    // The upstream keeps advertising the old hash but now serves other bytes of the same size.
    let path = env.fx.root().join("packages").join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let req = requirements(
        env.fx.dir.path(),
        "swapped",
        &[format!("swapped==1.0 --hash=sha256:{sha}")],
    );
    let out =
        tokio::task::block_in_place(|| pip_install(&env.gate.index(), &req, &env.fx.path("t")));
    assert!(!out.status.success(), "pip must fail: {}", show(&out));

    // A raw client never receives the whole body: the response is cut before its last byte
    // (for a one-chunk file that can be before the status line is even flushed).
    let url = env.gate.url(&format!("/files/swapped/{sha}/{name}"));
    if let Ok(resp) = reqwest::get(url).await {
        let body = resp.bytes().await;
        assert!(
            body.is_err() || body.as_ref().is_ok_and(|b| b.len() < bytes.len()),
            "got a complete body"
        );
    }
    assert!(!env.gate.cache_has(&sha));
    assert!(
        std::fs::read_dir(env.gate.dir.join("data/tmp"))
            .unwrap()
            .next()
            .is_none(),
        "temp file left behind"
    );
    assert!(
        env.gate
            .metric("tollgate_decisions_total{decision=\"deny\",reason=\"hash_mismatch\"}")
            .await
            >= 1.0
    );
    let log = env.gate.proc.log_text();
    assert!(log.contains("upstream bytes do not match the pin") && log.contains(&sha));
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_packages_install_with_the_upstream_stopped() {
    let mut env = static_env();
    let req = requirements(env.fx.dir.path(), "demo", &env.fx.demo_requirements());
    let out =
        tokio::task::block_in_place(|| pip_install(&env.gate.index(), &req, &env.fx.path("t1")));
    assert!(out.status.success(), "{}", show(&out));
    env.upstream.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await; // past page_ttl: pages are stale now
    let out =
        tokio::task::block_in_place(|| pip_install(&env.gate.index(), &req, &env.fx.path("t2")));
    assert!(
        out.status.success(),
        "stale pages + cached files must install: {}",
        show(&out)
    );
    let out =
        tokio::task::block_in_place(|| uv_install(&env.gate.index(), &req, &env.fx.path("t3")));
    assert!(out.status.success(), "{}", show(&out));
    assert!(env.gate.metric("tollgate_stale_pages_served_total").await >= 1.0);

    // Not cached and the upstream is down: 503 with Retry-After, never a deny.
    let sdist = format!(
        "/files/demo-a/{}/demo_a-1.0.tar.gz",
        env.fx.sha("demo_a-1.0.tar.gz")
    );
    let resp = reqwest::get(env.gate.url(&sdist)).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let resp = reqwest::get(env.gate.url("/simple/swapped/"))
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        503,
        "a page never fetched cannot be served while the upstream is down"
    );

    // After a restart the pages and files come from the store.
    let dir = env.gate.dir.clone();
    env.gate.proc.stop();
    let gate = Gate::restart(&dir);
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &env.fx.path("t4")));
    assert!(out.status.success(), "after restart: {}", show(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn pypiserver_upstream() {
    let fx = Fixture::build();
    let upstream = pypiserver(&fx.root().join("packages"), fx.path("pypiserver.log"));
    let gate = Gate::start(
        &fx.path("gate"),
        &index_config(upstream.port),
        &allowlist(&fx),
    );
    let req = requirements(fx.dir.path(), "demo", &fx.demo_requirements());
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t1")));
    assert!(out.status.success(), "pip via pypiserver: {}", show(&out));
    let out = tokio::task::block_in_place(|| uv_install(&gate.index(), &req, &fx.path("t2")));
    assert!(out.status.success(), "uv via pypiserver: {}", show(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_api_surface() {
    let env = static_env();
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, accept: &str| c.get(env.gate.url(path)).header("accept", accept).send();

    // Normalisation and trailing-slash redirects are relative.
    let r = get("/simple/Demo_A/", "text/html").await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["location"].to_str().unwrap()
        ),
        (301, "../demo-a/")
    );
    let r = get("/simple/demo-a", "text/html").await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["location"].to_str().unwrap()
        ),
        (301, "demo-a/")
    );

    // Negotiation.
    let r = get(
        "/simple/demo-a/",
        "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.pypi.simple.v1+json"
    );
    assert_eq!(r.headers()["vary"], "Accept");
    let etag = r.headers()["etag"].clone();
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["meta"]["api-version"], "1.3");
    let files: Vec<&str> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        vec!["demo_a-1.0-py3-none-any.whl", "demo_a-1.0.tar.gz"],
        "1.1 is not pinned and must not be listed"
    );
    assert_eq!(json["versions"], serde_json::json!(["1.0"]));
    assert_eq!(json["files"][0]["requires-python"], ">=3.8");
    let wheel_sha = env.fx.sha("demo_a-1.0-py3-none-any.whl");
    assert_eq!(
        json["files"][0]["url"],
        format!("/files/demo-a/{wheel_sha}/demo_a-1.0-py3-none-any.whl")
    );
    let r = c
        .get(env.gate.url("/simple/demo-a/"))
        .header("accept", "application/vnd.pypi.simple.v1+json")
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = get("/simple/demo-a/", "text/html").await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let html = r.text().await.unwrap();
    assert!(
        html.contains(&format!("#sha256={wheel_sha}"))
            && html.contains("data-requires-python=\"&gt;=3.8\"")
    );
    assert_eq!(
        get("/simple/demo-a/", "application/xml")
            .await
            .unwrap()
            .status(),
        406
    );
    assert_eq!(
        c.get(
            env.gate
                .url("/simple/demo-a/?format=application/vnd.pypi.simple.v1+json")
        )
        .send()
        .await
        .unwrap()
        .headers()["content-type"],
        "application/vnd.pypi.simple.v1+json"
    );
    let idx: serde_json::Value = get("/simple/", "application/vnd.pypi.simple.v1+json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(idx["projects"].as_array().unwrap().len(), 4);

    // Release rule: a file seen for the first time is pinned but not listed before min_age.
    let fresh: serde_json::Value = get("/simple/fresh/", "application/vnd.pypi.simple.v1+json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["files"].as_array().unwrap().len(), 0);
    let r = get(
        &format!(
            "/files/fresh/{}/fresh-1.0-py3-none-any.whl",
            env.fx.sha("fresh-1.0-py3-none-any.whl")
        ),
        "*/*",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("min_age"));

    // Bad input.
    for bad in [
        "/simple/..%2Fetc/",
        "/simple/a%00b/",
        "/simple/-x-/",
        "/files/demo-a/notahash/demo_a-1.0.tar.gz",
        &format!(
            "/files/demo-a/{}/demo_a-1.0.tar.gz",
            wheel_sha.to_uppercase()
        ),
    ] {
        assert_eq!(get(bad, "*/*").await.unwrap().status(), 400, "{bad}");
    }
    assert_eq!(
        get(
            &format!("/files/demo-a/{wheel_sha}/..%2F..%2Fetc%2Fpasswd"),
            "*/*"
        )
        .await
        .unwrap()
        .status(),
        404
    );
    assert_eq!(
        get(&format!("/simple/{}/", "a".repeat(300)), "*/*")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get(&format!("/simple/{}/", "a".repeat(9000)), "*/*")
            .await
            .unwrap()
            .status(),
        414
    );
    let big = c
        .get(env.gate.url("/simple/"))
        .header("x-big", "a".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 431);

    // Files: HEAD, Range from verified bytes, PEP 658 metadata from the wheel itself.
    let wheel = format!("/files/demo-a/{wheel_sha}/demo_a-1.0-py3-none-any.whl");
    let full = get(&wheel, "*/*").await.unwrap();
    assert_eq!(
        full.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let full = full.bytes().await.unwrap();
    assert_eq!(
        full.len() as u64,
        env.fx.dists["demo_a-1.0-py3-none-any.whl"].size
    );
    let head = c.head(env.gate.url(&wheel)).send().await.unwrap();
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        full.len().to_string()
    );
    let part = c
        .get(env.gate.url(&wheel))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), full.slice(10..20));
    // Cached bytes are served only under the name they were verified as.
    let renamed = format!("/files/demo-a/{wheel_sha}/demo_a-1.0.tar.gz");
    assert_eq!(get(&renamed, "*/*").await.unwrap().status(), 404);
    let md = get(&format!("{wheel}.metadata"), "*/*").await.unwrap();
    assert_eq!(md.status(), 200);
    let md = md.text().await.unwrap();
    assert!(
        md.contains("Name: demo-a") && md.contains("tollgate test fixture A1"),
        "{md}"
    );
    let listed: serde_json::Value = get("/simple/demo-a/", "application/vnd.pypi.simple.v1+json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let md_sha = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(md.as_bytes())
    );
    assert_eq!(listed["files"][0]["core-metadata"]["sha256"], md_sha);

    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(path, "*/*").await.unwrap().status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_is_atomic_and_revocation_applies() {
    let env = static_env();
    let wheel_sha = env.fx.sha("demo_a-1.0-py3-none-any.whl").to_string();
    let wheel = env.gate.url(&format!(
        "/files/demo-a/{wheel_sha}/demo_a-1.0-py3-none-any.whl"
    ));
    assert_eq!(reqwest::get(&wheel).await.unwrap().status(), 200);
    let file = env.gate.dir.join("allowlists/test.toml");
    let good = std::fs::read_to_string(&file).unwrap();

    // A broken file: the old policy stays in force and the log says why.
    std::fs::write(
        &file,
        format!("{good}\n[[package]]\nname = \"x\"\nversion = \"1\"\nsha256 = []\n"),
    )
    .unwrap();
    env.gate.proc.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reqwest::get(&wheel).await.unwrap().status(), 200);
    assert!(env.gate.proc.log_text().contains("sha256 is empty"));
    assert_eq!(
        env.gate
            .metric("tollgate_allowlist_reload_failures_total")
            .await,
        1.0
    );

    // A revocation: the cached file is refused from then on.
    std::fs::write(
        &file,
        format!("{good}\n[[revoke]]\nsha256 = \"{wheel_sha}\"\nreason = \"CVE-2099-0001\"\n"),
    )
    .unwrap();
    env.gate.proc.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = reqwest::get(&wheel).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("CVE-2099-0001"));
    let page: serde_json::Value = env.gate.json_page("demo-a").await;
    assert_eq!(
        page["files"].as_array().unwrap().len(),
        1,
        "the revoked wheel is no longer listed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lying_and_failing_upstreams() {
    let fx = Fixture::build();
    let liar = liar_upstream(&fx.root().join("packages"), fx.path("liar.log"));
    let good_sha = fx.sha("good-1.0-py3-none-any.whl").to_string();
    let mut allow = String::new();
    for p in [
        "err500",
        "badjson",
        "slow",
        "offhost",
        "truncated",
        "longer",
        "good",
    ] {
        allow.push_str(&format!(
            "[[package]]\nname = \"{p}\"\nversion = \"1.0\"\nsha256 = [\"{good_sha}\"]\n\n"
        ));
    }
    let gate = Gate::start(&fx.path("gate"), &index_config(liar.port), &allow);
    let c = reqwest::Client::new();
    let page = |p: &str| {
        c.get(gate.url(&format!("/simple/{p}/")))
            .header("accept", "application/vnd.pypi.simple.v1+json")
            .send()
    };
    let file = |p: &str| {
        c.get(gate.url(&format!("/files/{p}/{good_sha}/{p}-1.0-py3-none-any.whl")))
            .send()
    };

    for p in ["err500", "badjson", "slow"] {
        let r = page(p).await.unwrap();
        assert_eq!(r.status(), 503, "{p}");
        assert!(r.headers().get("retry-after").is_some());
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("127.0.0.1"),
            "internal detail leaked: {body}"
        );
    }
    let off: serde_json::Value = page("offhost").await.unwrap().json().await.unwrap();
    assert_eq!(
        off["files"].as_array().unwrap().len(),
        0,
        "links to other hosts are dropped"
    );
    // A line break in what an upstream names does not start a log line of its own.
    let log = gate.proc.log_text();
    assert!(log.contains("FORGED"), "the dropped link is logged");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "an upstream wrote a line of the gate's log:\n{log}"
    );

    // Truncated body: cut off, not cached.
    assert_eq!(page("truncated").await.unwrap().status(), 200);
    // The cut can come before the first byte reaches the client (no response head at all) or
    // after (a body that ends early); either way the client never gets a whole file.
    match file("truncated").await {
        Ok(r) => assert!(r.bytes().await.is_err()),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    // Longer than listed: refused before anything is streamed.
    assert_eq!(page("longer").await.unwrap().status(), 200);
    let r = file("longer").await.unwrap();
    assert_eq!(r.status(), 502);
    // Neither left a file in the cache (the bytes are the same as "good"'s, so order matters).
    assert!(walk(&gate.dir.join("data/cache")).is_empty());
    assert_eq!(page("good").await.unwrap().status(), 200);
    assert_eq!(
        file("good").await.unwrap().bytes().await.unwrap().len() as u64,
        fx.dists["good-1.0-py3-none-any.whl"].size
    );
    assert!(gate.cache_has(&good_sha));
    assert!(!liar.log_text().contains("/simple/other"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
