//! Rules, approvals, pins and export through the admin API, against the real gate with a static
//! PEP 503 upstream and real pip: writes validated like the files and guarded by ETags, bad
//! input refused with what is wrong, conflicting writes, a kill -9 mid-write, and restarts.

mod common;

use std::process::Command;

use serde_json::{json, Value};
use sha2::Digest as _;

use common::*;

const BOOTSTRAP: &str = "tg_bootstrap-for-rules";

fn start(dir: &std::path::Path, port: u16, allow: &str) -> Gate {
    let cfg = format!(
        "[limits]\nadmin_body_bytes = \"4KiB\"\n[pypi]\npage_ttl = \"1s\"\n[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{port}/simple/\"\n"
    );
    Gate::start_admin(dir, &cfg, allow, BOOTSTRAP)
}

fn restart(dir: &std::path::Path) -> Gate {
    Gate::restart_admin(dir, BOOTSTRAP)
}

async fn call(
    gate: &Gate,
    method: &str,
    path: &str,
    if_match: Option<&str>,
    body: Option<Value>,
) -> Reply {
    admin_request(
        gate,
        "127.0.0.1",
        method,
        path,
        Some(BOOTSTRAP),
        if_match,
        body,
    )
    .await
}

async fn raw(gate: &Gate, method: &str, path: &str, body: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .request(method.parse().unwrap(), gate.url(path))
        .bearer_auth(BOOTSTRAP)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_pins_and_revocations_with_real_pip() {
    let fx = Fixture::build();
    // The upstream now serves other bytes for swapped-1.0 than the hash its page declares.
    let swapped = fx.root().join("packages/swapped-1.0-py3-none-any.whl");
    std::fs::write(&swapped, b"not the wheel the page declares").unwrap();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let gate = start(&fx.path("gate"), upstream.port, "");
    let wheel = "demo_a-1.0-py3-none-any.whl";
    let sdist = "demo_a-1.0.tar.gz";

    // Nothing approved yet: pip cannot install demo-a.
    let req = requirements(
        fx.dir.path(),
        "a",
        &[format!("demo-a==1.0 --hash=sha256:{}", fx.sha(wheel))],
    );
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t0")));
    assert!(!out.status.success());

    // Approve: every file of the release fetched, hashed and pinned; the answer shows them.
    let r = call(
        &gate,
        "POST",
        "/admin/v1/approvals",
        None,
        Some(json!({ "name": "Demo_A", "version": "1.0" })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let files = r.body["source"]["approval"]["files"]
        .as_array()
        .unwrap()
        .clone();
    let mut got: Vec<(String, String, u64)> = files
        .iter()
        .map(|f| {
            (
                f["filename"].as_str().unwrap().to_string(),
                f["sha256"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, u64)> = [sdist, wheel]
        .iter()
        .map(|f| (f.to_string(), fx.sha(f).to_string(), fx.dists[*f].size))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(r.body["name"], "demo-a");
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t1")));
    assert!(out.status.success(), "pip after approval: {}", show(&out));

    // An upstream whose bytes differ from its declared hash: nothing is approved.
    let r = call(
        &gate,
        "POST",
        "/admin/v1/approvals",
        None,
        Some(json!({ "name": "swapped", "version": "1.0" })),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert!(r.text.contains("nothing was approved"), "{}", r.text);
    let list = call(&gate, "GET", "/admin/v1/packages", None, None).await;
    assert!(!list.text.contains("swapped"), "{}", list.text);
    // Unknown release, bad version, unknown index, unknown field.
    for (body, status) in [
        (json!({ "name": "demo-a", "version": "9.9" }), 404),
        (json!({ "name": "demo-a", "version": "not a version" }), 400),
        (
            json!({ "name": "demo-b", "version": "2.0", "index": "elsewhere" }),
            400,
        ),
        (
            json!({ "name": "demo-a", "version": "1.0", "extra": true }),
            400,
        ),
        (json!({ "name": "../../etc", "version": "1.0" }), 400),
    ] {
        let r = call(
            &gate,
            "POST",
            "/admin/v1/approvals",
            None,
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
    }

    // Pins name their origin; a revoked pin is refused at once and stays revoked, across a
    // second approval and a restart.
    let pins = call(&gate, "GET", "/admin/v1/pins", None, None).await;
    let pin = pins.body["pins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sha256"] == fx.sha(wheel))
        .unwrap()
        .clone();
    assert_eq!(pin["origin"], "approval", "{pin}");
    let r = call(
        &gate,
        "POST",
        &format!("/admin/v1/pins/{}/revoke", fx.sha(wheel)),
        None,
        Some(json!({ "reason": "CVE-2099-1" })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t2")));
    assert!(!out.status.success(), "a revoked file was installed");
    let direct = reqwest::get(gate.url(&format!("/files/demo-a/{}/{wheel}", fx.sha(wheel))))
        .await
        .unwrap();
    assert_eq!(direct.status(), 403);
    assert!(direct.text().await.unwrap().contains("CVE-2099-1"));
    let r = call(
        &gate,
        "POST",
        "/admin/v1/approvals",
        None,
        Some(json!({ "name": "demo-a", "version": "1.0" })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for bad in ["/admin/v1/pins/zz/revoke", "/admin/v1/pins/..%2Fx/revoke"] {
        assert_eq!(
            call(&gate, "POST", bad, None, Some(json!({ "reason": "x" })))
                .await
                .status,
            400,
            "{bad}"
        );
    }
    assert_eq!(
        call(
            &gate,
            "POST",
            &format!("/admin/v1/pins/{}/revoke", fx.sha(sdist)),
            None,
            Some(json!({ "reason": " " }))
        )
        .await
        .status,
        400
    );
    let dir = gate.dir.clone();
    drop(gate);
    let gate = restart(&dir);
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t3")));
    assert!(
        !out.status.success(),
        "a revoked file was installed after a restart"
    );
    let pins = call(&gate, "GET", "/admin/v1/pins", None, None).await;
    let pin = pins.body["pins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sha256"] == fx.sha(wheel))
        .unwrap()
        .clone();
    assert_eq!(pin["revoked"]["reason"], "CVE-2099-1", "{pin}");
    drop(upstream);
}

#[tokio::test(flavor = "multi_thread")]
async fn rule_writes_are_validated_and_guarded_by_etags() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let git = format!(
        "[[package]]\nname = \"demo-b\"\nversion = \"2.0\"\nsha256 = [\"{}\"]\nindex = \"local\"\n",
        fx.sha("demo_b-2.0-py3-none-any.whl")
    );
    let gate = start(&fx.path("gate"), upstream.port, &git);
    let a = fx.sha("demo_a-1.0-py3-none-any.whl").to_string();
    let rule = json!({ "name": "demo-a", "version": "1.0", "sha256": [a], "index": "local" });
    let r = call(
        &gate,
        "POST",
        "/admin/v1/packages",
        None,
        Some(rule.clone()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let etag1 = r.etag.clone().unwrap();
    assert_eq!(r.body["source"]["managed"], "api");
    // The rule is in force: real pip installs demo-b (git) and demo-a (API) together.
    let req = requirements(
        fx.dir.path(),
        "ab",
        &[
            format!(
                "demo-b==2.0 --hash=sha256:{}",
                fx.sha("demo_b-2.0-py3-none-any.whl")
            ),
            format!("demo-a==1.0 --hash=sha256:{a}"),
        ],
    );
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t1")));
    assert!(out.status.success(), "{}", show(&out));
    let got = call(
        &gate,
        "GET",
        &format!("/admin/v1/packages/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(got.etag.as_deref(), Some(etag1.as_str()));

    // Changes name the version they change.
    let newer =
        json!({ "name": "demo-a", "specifier": ">=1.0", "min_age": "0s", "index": "local" });
    let path = format!("/admin/v1/packages/{id}");
    assert_eq!(
        call(&gate, "PUT", &path, None, Some(newer.clone()))
            .await
            .status,
        428
    );
    assert_eq!(
        call(
            &gate,
            "PUT",
            &path,
            Some("\"stale-0\""),
            Some(newer.clone())
        )
        .await
        .status,
        412
    );
    let r = call(&gate, "PUT", &path, Some(&etag1), Some(newer.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let etag2 = r.etag.clone().unwrap();
    assert_ne!(etag1, etag2);
    assert_eq!(
        call(&gate, "DELETE", &path, Some(&etag1), None)
            .await
            .status,
        412
    );
    // Two changes from the same version at once: one wins, the other is told it is stale.
    let (x, y) = tokio::join!(
        call(&gate, "PUT", &path, Some(&etag2), Some(rule.clone())),
        call(&gate, "PUT", &path, Some(&etag2), Some(newer.clone()))
    );
    let mut statuses = [x.status, y.status];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{} / {}", x.text, y.text);
    let current = call(&gate, "GET", &path, None, None).await.etag.unwrap();

    // Rules in git are read-only through the API.
    let list = call(&gate, "GET", "/admin/v1/packages", None, None).await;
    let git_id = list.body["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["source"]["managed"] == "git")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = call(
        &gate,
        "PUT",
        &format!("/admin/v1/packages/{git_id}"),
        Some("\"x\""),
        Some(rule.clone()),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("managed in git"));

    // Bad input: 400 naming what is wrong, nothing changed.
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({ "name": "demo-a", "version": "1.0", "sha256": ["zz"] }),
            "sha256",
        ),
        (
            json!({ "name": "demo-a", "version": "1.0", "sha256": [] }),
            "sha256 is empty",
        ),
        (
            json!({ "name": "demo-a", "version": "1.0", "sha256": [a], "colour": "red" }),
            "unknown field",
        ),
        (
            json!({ "name": "demo-a", "version": 1, "sha256": [a] }),
            "version",
        ),
        (
            json!({ "name": "demo-a", "version": "1.0", "sha256": [a], "index": null }),
            "index: null",
        ),
        (json!({ "name": "demo-a", "specifier": ">=1" }), "min_age"),
        (
            json!({ "name": "demo-b", "version": "2.0", "sha256": [a], "index": "other" }),
            "index",
        ),
        (json!(["not", "an", "object"]), "object"),
        (
            json!({ "name": "demo-a", "specifier": ">=x", "min_age": "1d" }),
            "specifier",
        ),
        (
            json!({ "name": "demo-a", "specifier": ">=1", "min_age": "soon" }),
            "min_age",
        ),
    ];
    for (body, want) in bad {
        let r = call(
            &gate,
            "POST",
            "/admin/v1/packages",
            None,
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.text.contains(want), "{body}: want {want:?} in {}", r.text);
    }
    let (s, t) = raw(&gate, "POST", "/admin/v1/packages", "{\"name\": ").await;
    assert_eq!(s, 400, "{t}");
    let (s, _) = raw(
        &gate,
        "POST",
        "/admin/v1/packages",
        &format!("{{\"name\": \"{}\"}}", "x".repeat(8192)),
    )
    .await;
    assert_eq!(s, 413);
    let r = call(
        &gate,
        "POST",
        "/admin/v1/images",
        None,
        Some(json!({ "repository": "quay.io/x/y", "digests": [format!("sha256:{a}")] })),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("not configured"), "{}", r.text);
    let after = call(&gate, "GET", "/admin/v1/packages", None, None).await;
    assert_eq!(
        after.body["packages"].as_array().unwrap().len(),
        2,
        "{}",
        after.text
    );

    // Export: every rule as allowlist TOML, which the loader accepts as a file.
    let exp = reqwest::Client::new()
        .get(gate.url("/admin/v1/export"))
        .bearer_auth(BOOTSTRAP)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        exp.contains("# from git:") && exp.contains("# from the admin API"),
        "{exp}"
    );
    let check = fx.path("check");
    std::fs::create_dir_all(check.join("allowlists")).unwrap();
    std::fs::write(check.join("allowlists/export.toml"), &exp).unwrap();
    std::fs::write(check.join("tollgate.toml"), format!("allowlist_dir = \"allowlists\"\n[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{}/simple/\"\n", upstream.port)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(check.join("tollgate.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{exp}\n{}", show(&out));

    // Moving the API rule into git: the same rule in both is one rule, git's copy shown.
    let moved = format!("{git}[[package]]\nname = \"demo-a\"\nversion = \"1.0\"\nsha256 = [\"{a}\"]\nindex = \"local\"\n");
    let r = call(&gate, "PUT", &path, Some(&current), Some(rule.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let api_etag = r.etag.clone().unwrap();
    std::fs::write(gate.dir.join("allowlists/test.toml"), moved).unwrap();
    assert_eq!(
        call(&gate, "POST", "/admin/v1/reload", None, None)
            .await
            .status,
        200
    );
    let list = call(&gate, "GET", "/admin/v1/packages", None, None).await;
    let rules = list.body["packages"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{}", list.text);
    assert!(
        rules.iter().all(|r| r["source"]["managed"] == "git"),
        "{}",
        list.text
    );

    // The audit has who, before and after; the hidden API copy can still be deleted by its id
    // and version, and git's rule stays.
    let audit = call(
        &gate,
        "GET",
        "/admin/v1/audit?action=admin.packages.update",
        None,
        None,
    )
    .await;
    assert!(
        audit.text.contains("\"before\"") && audit.text.contains("bootstrap (admin)"),
        "{}",
        audit.text
    );
    assert_eq!(
        call(&gate, "DELETE", &path, Some(&api_etag), None)
            .await
            .status,
        204
    );
    let list = call(&gate, "GET", "/admin/v1/packages", None, None).await;
    assert_eq!(
        list.body["packages"].as_array().unwrap().len(),
        2,
        "{}",
        list.text
    );
    drop(upstream);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_mid_write_loses_no_committed_change() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let mut gate = start(&fx.path("gate"), upstream.port, "");
    let dir = gate.dir.clone();
    // Writers run until the gate dies under them.
    let base = gate.url("");
    let writer = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut committed = Vec::new();
        for i in 0..400 {
            let sha = hex::encode(sha2::Sha256::digest(format!("{i}").as_bytes()));
            let body = json!({ "name": format!("p{i}"), "version": "1.0", "sha256": [sha], "index": "local" });
            match client
                .post(format!("{base}/admin/v1/packages"))
                .bearer_auth(BOOTSTRAP)
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status() == 201 => committed.push(format!("p{i}")),
                _ => break,
            }
        }
        committed
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    gate.proc.signal("KILL");
    let committed = writer.await.unwrap();
    let _ = gate.proc.child.wait();
    assert!(!committed.is_empty(), "no write finished before the kill");
    let gate = restart(&dir);
    let list = call(&gate, "GET", "/admin/v1/packages", None, None).await;
    let names: Vec<String> = list.body["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    for c in &committed {
        assert!(
            names.contains(c),
            "{c} was answered 201 but is gone after kill -9"
        );
    }
    // Every rule that is there is whole (the listing parsed each one), and the audit chain holds.
    assert!(names.len() <= committed.len() + 1);
    let v = call(&gate, "GET", "/admin/v1/audit/verify", None, None).await;
    assert_eq!(v.body["intact"], true, "{}", v.text);
    drop(upstream);
}
