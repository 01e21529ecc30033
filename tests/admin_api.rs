//! The admin API against the real gate: credentials and roles (the whole role × endpoint
//! matrix), tokens, failed authentications (audited, counted, throttled), the hash-chained audit
//! log (query, pagination, verify, an edited entry detected, restarts), reloads, explain, and
//! the offline commands beside a running gate.

mod common;

use std::process::Command;

use serde_json::{json, Value};
use sha2::Digest as _;

use common::*;

const BOOTSTRAP: &str = "tg_bootstrap-secret-for-tests";
const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn allowlist() -> String {
    format!("[[package]]\nname = \"demo\"\nversion = \"1.0\"\nsha256 = [\"{H1}\"]\n")
}

fn start(dir: &std::path::Path) -> Gate {
    Gate::start_admin(dir, "", &allowlist(), BOOTSTRAP)
}

fn restart(dir: &std::path::Path) -> Gate {
    Gate::restart_admin(dir, BOOTSTRAP)
}

/// SIGTERM and wait: the gate flushes its audit queue on the way out.
fn stop(mut gate: Gate) {
    gate.proc.signal("TERM");
    let _ = gate.proc.child.wait();
}

async fn call(
    gate: &Gate,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, String) {
    call_from(gate, "127.0.0.1", method, path, token, body).await
}

/// As [`call`], from another loopback address (the throttle counts per client address).
async fn call_from(
    gate: &Gate,
    from: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = admin_request(gate, from, method, path, token, None, body).await;
    (r.status, r.headers, r.text)
}

async fn make_token(gate: &Gate, role: &str, extra: Value) -> (String, String) {
    let mut body = json!({ "role": role, "name": format!("{role}-token") });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    let (s, _, text) = call(
        gate,
        "POST",
        "/admin/v1/tokens",
        Some(BOOTSTRAP),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let gate = start(dir.path());
    let mut tokens = vec![
        ("none", None),
        ("invalid", Some("tg_not-a-real-token".to_string())),
    ];
    for role in ["puller", "reader", "approver", "admin"] {
        tokens.push((role, Some(make_token(&gate, role, json!({})).await.0)));
    }
    let rank = |r: &str| {
        ["puller", "reader", "approver", "admin"]
            .iter()
            .position(|x| *x == r)
    };
    let id = "0123456789abcdef";
    // CONTRACT.md's table: method, path, the least role.
    let table: Vec<(&str, String, &str)> = vec![
        ("GET", "/admin/v1/packages".into(), "reader"),
        ("GET", "/admin/v1/images".into(), "reader"),
        ("GET", format!("/admin/v1/packages/{id}"), "reader"),
        ("GET", format!("/admin/v1/images/{id}"), "reader"),
        ("POST", "/admin/v1/packages".into(), "approver"),
        ("POST", "/admin/v1/images".into(), "approver"),
        ("PUT", format!("/admin/v1/packages/{id}"), "approver"),
        ("PUT", format!("/admin/v1/images/{id}"), "approver"),
        ("DELETE", format!("/admin/v1/packages/{id}"), "admin"),
        ("DELETE", format!("/admin/v1/images/{id}"), "admin"),
        ("POST", "/admin/v1/approvals".into(), "approver"),
        ("GET", "/admin/v1/pins".into(), "reader"),
        ("POST", format!("/admin/v1/pins/{id}/revoke"), "approver"),
        ("GET", "/admin/v1/explain?package=demo".into(), "reader"),
        ("GET", "/admin/v1/audit".into(), "reader"),
        ("GET", "/admin/v1/audit/verify".into(), "reader"),
        ("GET", "/admin/v1/export".into(), "reader"),
        ("POST", "/admin/v1/reload".into(), "admin"),
        ("GET", "/admin/v1/tokens".into(), "admin"),
        ("POST", "/admin/v1/tokens".into(), "admin"),
        ("DELETE", format!("/admin/v1/tokens/{id}"), "admin"),
    ];
    for (i, (method, path, need)) in table.iter().enumerate() {
        for (who, token) in &tokens {
            // Wrong credentials from an address of their own, so the throttle never mixes in.
            let from = if *who == "invalid" {
                format!("127.0.1.{i}")
            } else {
                "127.0.0.1".into()
            };
            let (s, h, text) = call_from(
                &gate,
                &from,
                method,
                path,
                token.as_deref(),
                Some(json!({})),
            )
            .await;
            match rank(who) {
                None => {
                    assert_eq!(s, 401, "{who} {method} {path}: {text}");
                    assert!(h.contains_key("www-authenticate"));
                }
                Some(r) if r < rank(need).unwrap() => {
                    assert_eq!(s, 403, "{who} {method} {path}: {text}")
                }
                Some(_) => assert!(s != 401 && s != 403, "{who} {method} {path}: {s} {text}"),
            }
        }
    }
    // Paths that do not exist are 401 without a credential, 404 with one.
    for path in [
        "/admin/v1/nothing",
        "/admin/v2/packages",
        "/admin",
        "/admin/v1/../v1/tokens",
    ] {
        let (s, _, _) = call(&gate, "GET", path, None, None).await;
        assert_eq!(s, 401, "{path}");
    }
    let (s, _, _) = call(&gate, "GET", "/admin/v1/nothing", Some(BOOTSTRAP), None).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_failed_logins_and_the_audit_chain() {
    let dir = tempfile::tempdir().unwrap();
    let gate = start(dir.path());
    // A token is shown once; the listing has neither the secret nor its hash.
    let (reader, reader_id) = make_token(&gate, "reader", json!({})).await;
    let (s, _, text) = call(&gate, "GET", "/admin/v1/tokens", Some(BOOTSTRAP), None).await;
    assert_eq!(s, 200);
    assert!(text.contains(&reader_id) && text.contains("reader-token"));
    assert!(
        !text.contains(&reader)
            && !text.contains(&hex::encode(sha2::Sha256::digest(reader.as_bytes())))
    );
    // Bad input is 400 and says what is wrong.
    for (body, want) in [
        (json!({ "role": "root", "name": "x" }), "role"),
        (json!({ "role": "admin" }), "name"),
        (
            json!({ "role": "admin", "name": "x", "extra": 1 }),
            "unknown field",
        ),
        (json!({ "role": 5, "name": "x" }), "invalid type"),
        (
            json!({ "role": "admin", "name": "x", "expires": "soon" }),
            "expires",
        ),
    ] {
        let (s, _, text) = call(
            &gate,
            "POST",
            "/admin/v1/tokens",
            Some(BOOTSTRAP),
            Some(body),
        )
        .await;
        assert_eq!(s, 400, "{text}");
        assert!(text.contains(want), "{want}: {text}");
    }
    let (s, _, _) = call(
        &gate,
        "DELETE",
        "/admin/v1/tokens/..%2F..%2Fetc",
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert_eq!(s, 400);
    // An expired token and a deleted token no longer work. (Expiry counts whole seconds: a
    // 1-s token can be over before its first use on a loaded machine, so it lives 3 s.)
    let (short, _) = make_token(&gate, "reader", json!({ "expires": "3s" })).await;
    assert_eq!(
        call(&gate, "GET", "/admin/v1/audit/verify", Some(&short), None)
            .await
            .0,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(4100)).await;
    assert_eq!(
        call(&gate, "GET", "/admin/v1/audit/verify", Some(&short), None)
            .await
            .0,
        401
    );
    assert_eq!(
        call(&gate, "GET", "/admin/v1/audit/verify", Some(&reader), None)
            .await
            .0,
        200
    );
    let (s, _, _) = call(
        &gate,
        "DELETE",
        &format!("/admin/v1/tokens/{reader_id}"),
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        call(&gate, "GET", "/admin/v1/audit/verify", Some(&reader), None)
            .await
            .0,
        401
    );

    // Decisions of the gate are in the log too.
    let r = reqwest::get(gate.url("/simple/not-on-the-list/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Failed authentications are counted, audited and, past ten a minute, throttled.
    let before = gate.metric("tollgate_auth_failures_total").await;
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(
            call_from(
                &gate,
                "127.0.0.9",
                "GET",
                "/admin/v1/packages",
                Some("tg_wrong"),
                None,
            )
            .await
            .0,
        );
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(
        gate.metric("tollgate_auth_failures_total").await,
        before + 20.0
    );
    // Other clients are not locked out; the throttled one is, even with a valid token.
    assert_eq!(
        call(&gate, "GET", "/admin/v1/packages", Some(BOOTSTRAP), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call_from(
            &gate,
            "127.0.0.9",
            "GET",
            "/admin/v1/packages",
            Some(BOOTSTRAP),
            None
        )
        .await
        .0,
        429
    );

    // The audit log: filters, JSON lines, pagination.
    let (s, h, text) = call(
        &gate,
        "GET",
        "/admin/v1/audit?decision=deny&action=auth",
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(h["content-type"], "application/x-ndjson");
    let denied: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        denied.iter().any(|e| e["detail"] == "unknown token"),
        "{text}"
    );
    assert!(
        denied
            .iter()
            .any(|e| e["detail"].as_str().unwrap().starts_with("expired token")),
        "{text}"
    );
    let (_, _, text) = call(
        &gate,
        "GET",
        "/admin/v1/audit?subject=not-on-the-list",
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert!(text.contains("\"reason\":\"not_allowlisted\""), "{text}");
    let (_, _, text) = call(
        &gate,
        "GET",
        "/admin/v1/audit?action=admin.tokens.delete",
        Some(BOOTSTRAP),
        None,
    )
    .await;
    let del: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(del["actor"], "bootstrap (admin)");
    assert_eq!(del["before"]["id"], reader_id.as_str());
    let (_, h, page1) = call(
        &gate,
        "GET",
        "/admin/v1/audit?limit=2",
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert_eq!(page1.lines().count(), 2);
    let next = h["link"].to_str().unwrap().to_string();
    let url = next
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let (_, _, page2) = call(
        &gate,
        "GET",
        &format!("{url}&limit=2"),
        Some(BOOTSTRAP),
        None,
    )
    .await;
    let seq = |l: &str| {
        serde_json::from_str::<Value>(l).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        seq(page2.lines().next().unwrap()),
        seq(page1.lines().last().unwrap()) + 1
    );
    for bad in [
        "/admin/v1/audit?limit=x",
        "/admin/v1/audit?decision=maybe",
        "/admin/v1/audit?bogus=1",
    ] {
        assert_eq!(
            call(&gate, "GET", bad, Some(BOOTSTRAP), None).await.0,
            400,
            "{bad}"
        );
    }
    let (_, _, text) = call(
        &gate,
        "GET",
        "/admin/v1/audit/verify",
        Some(BOOTSTRAP),
        None,
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["intact"], true, "{v}");
    let entries = v["entries"].as_u64().unwrap();
    assert!(entries >= 10, "{v}");

    // While the gate runs, the offline commands say where to go instead.
    let cfg = dir.path().join("tollgate.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["audit", "verify", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        show(&out).contains("GET /admin/v1/audit/verify"),
        "{}",
        show(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["token", "create", "--role", "admin", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        show(&out).contains("POST /admin/v1/tokens"),
        "{}",
        show(&out)
    );

    // Stopped: the chain verifies offline; a token made offline works after a restart, and
    // the chain continues across restarts.
    stop(gate);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["audit", "verify", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("audit chain intact"), "{}", show(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "token", "create", "--role", "reader", "--name", "offline", "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let offline = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(offline.starts_with("tg_"));
    let gate = restart(dir.path());
    assert_eq!(
        call(&gate, "GET", "/admin/v1/packages", Some(&offline), None)
            .await
            .0,
        200
    );
    let (_, _, text) = call(&gate, "GET", "/admin/v1/audit/verify", Some(&offline), None).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["intact"], true, "{v}");
    assert!(v["entries"].as_u64().unwrap() > entries);
    stop(gate);

    // An entry edited on disk is found, and named.
    let store = tollgate::store::Store::open(&dir.path().join("data/tollgate.redb")).unwrap();
    let mut target = None;
    store
        .audit_scan(0, |seq, bytes| {
            if seq == 3 {
                target = Some(bytes.to_vec());
            }
            seq < 3
        })
        .unwrap();
    let edited =
        String::from_utf8(target.unwrap())
            .unwrap()
            .replacen("\"count\":", "\"count\":1", 1);
    store.audit_overwrite(3, edited.as_bytes()).unwrap();
    drop(store);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["audit", "verify", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(show(&out).contains("broken at entry #3"), "{}", show(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_reload_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let gate = start(dir.path());
    let (reader, _) = make_token(&gate, "reader", json!({})).await;
    let (admin, _) = make_token(&gate, "admin", json!({})).await;
    let (_, _, text) = call(&gate, "GET", "/admin/v1/packages", Some(&reader), None).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let rule = &v["packages"][0];
    assert_eq!(rule["name"], "demo");
    assert_eq!(rule["source"]["managed"], "git");
    assert_eq!(rule["sha256"][0], H1);
    let id = rule["id"].as_str().unwrap();
    let (s, _, one) = call(
        &gate,
        "GET",
        &format!("/admin/v1/packages/{id}"),
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(serde_json::from_str::<Value>(&one).unwrap(), *rule);

    // Explain answers with the gate's own decision.
    let ask = |q: &str| format!("/admin/v1/explain?{q}");
    let (_, _, t) = call(&gate, "GET", &ask("package=Not_There"), Some(&reader), None).await;
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(
        (v["allowed"].clone(), v["reason"].clone()),
        (json!(false), json!("not_allowlisted"))
    );
    let (_, _, t) = call(
        &gate,
        "GET",
        &ask(&format!(
            "package=demo&filename=demo-1.0-py3-none-any.whl&sha256={H1}"
        )),
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["allowed"],
        true,
        "{t}"
    );
    let other = "2".repeat(64);
    let (_, _, t) = call(
        &gate,
        "GET",
        &ask(&format!(
            "package=demo&filename=demo-1.0-py3-none-any.whl&sha256={other}"
        )),
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["reason"],
        "hash_not_pinned",
        "{t}"
    );
    let (_, _, t) = call(
        &gate,
        "GET",
        &ask("image=quay.io/evil/miner:latest"),
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["allowed"],
        false,
        "{t}"
    );
    for bad in [
        "package=demo&image=x",
        "",
        "package=not%20a%20name",
        "package=demo&filename=x.whl&sha256=zz",
    ] {
        assert_eq!(
            call(&gate, "GET", &ask(bad), Some(&reader), None).await.0,
            400,
            "{bad}"
        );
    }

    // Reload: a file with an error changes nothing and says why; a good one applies.
    let file = dir.path().join("allowlists/test.toml");
    std::fs::write(
        &file,
        format!("{}[[package]]\nname = \"broken\"\n", allowlist()),
    )
    .unwrap();
    let (s, _, t) = call(&gate, "POST", "/admin/v1/reload", Some(&admin), None).await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("test.toml"), "{t}");
    let (_, _, t) = call(&gate, "GET", "/admin/v1/packages", Some(&reader), None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["packages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    std::fs::write(
        &file,
        format!(
            "{}[[package]]\nname = \"more\"\nversion = \"2.0\"\nsha256 = [\"{other}\"]\n",
            allowlist()
        ),
    )
    .unwrap();
    let (s, _, t) = call(&gate, "POST", "/admin/v1/reload", Some(&admin), None).await;
    assert_eq!(s, 200, "{t}");
    let (_, _, t) = call(&gate, "GET", "/admin/v1/packages", Some(&reader), None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["packages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (_, _, t) = call(
        &gate,
        "GET",
        "/admin/v1/audit?action=admin.reload",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(t.lines().count(), 2, "{t}");
}
