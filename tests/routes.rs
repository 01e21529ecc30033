//! Route-level tests: the whole router (`tollgate::app`) called in process with
//! `Router::oneshot`, beside the end-to-end tests: the one error map (statuses, bodies and
//! headers per surface) and the admin API's guard (credentials, roles, loopback).

use std::net::SocketAddr;
use std::process::Command;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

struct App {
    _dir: tempfile::TempDir,
    router: axum::Router,
    reader: String,
}

/// A gate on an empty store with one rule, and a reader token made as an operator would.
async fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("allowlists")).unwrap();
    std::fs::write(
        dir.path().join("allowlists/a.toml"),
        format!(
            "[[package]]\nname = \"demo\"\nversion = \"1.0\"\nsha256 = [\"{}\"]\n",
            "1".repeat(64)
        ),
    )
    .unwrap();
    let text = "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nallowlist_dir = \"allowlists\"\n";
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, text).unwrap();
    let made = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["token", "create", "--role", "reader", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(made.status.success());
    let reader = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let config = tollgate::config::Config::from_text(text, Some(&path), dir.path()).unwrap();
    let state = tollgate::AppState::open(config).unwrap();
    App {
        _dir: dir,
        router: tollgate::app(state),
        reader,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

/// One request from `peer`, as the listener would hand it to the router.
async fn call(app: &App, peer: [u8; 4], method: &str, uri: &str, bearer: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = req.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).to_string(),
    }
}

const LOCAL: [u8; 4] = [127, 0, 0, 1];
const REMOTE: [u8; 4] = [10, 1, 2, 3];

#[tokio::test(flavor = "multi_thread")]
async fn each_surface_answers_errors_in_its_own_form() {
    let app = app().await;
    // The index: a sentence pip shows, never cached.
    let r = call(&app, LOCAL, "GET", "/simple/unknown-project/", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(r.body.contains("not on the allowlist"), "{}", r.body);
    // The distribution API: its JSON error body with a spec code.
    let r = call(&app, LOCAL, "GET", "/v2/not-a-pull-endpoint", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNSUPPORTED", "{}", r.body);
    assert_eq!(r.headers["docker-distribution-api-version"], "registry/2.0");
    // The admin API: {"error": …}, with the challenge on 401.
    let r = call(&app, LOCAL, "GET", "/admin/v1/pins", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key("www-authenticate"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["error"].is_string(), "{}", r.body);
    // Anything else: a plain 404.
    let r = call(&app, LOCAL, "GET", "/nowhere", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_guard_checks_the_credential_its_role_and_the_peer() {
    let app = app().await;
    let reader = app.reader.clone();
    let r = call(&app, LOCAL, "GET", "/admin/v1/pins", Some(&reader)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(serde_json::from_str::<serde_json::Value>(&r.body).is_ok());
    // A reader may not reload.
    let r = call(&app, LOCAL, "POST", "/admin/v1/reload", Some(&reader)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // A token in clear from another machine is refused, whatever it is worth.
    let r = call(&app, REMOTE, "GET", "/admin/v1/pins", Some(&reader)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.body.contains("loopback only"), "{}", r.body);
    assert!(!r.body.contains(&reader));
    // A wrong token is 401, and it is not echoed.
    let r = call(&app, LOCAL, "GET", "/admin/v1/pins", Some("tg_wrong")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!r.body.contains("tg_wrong"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_are_found_by_their_typed_id_and_shown_in_their_view() {
    let app = app().await;
    let reader = app.reader.clone();
    let r = call(&app, LOCAL, "GET", "/admin/v1/packages", Some(&reader)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let rule = &v["packages"][0];
    // The rule as an allowlist table would write it, plus its id and where it is written.
    assert_eq!(rule["name"], "demo");
    assert_eq!(rule["version"], "1.0");
    assert_eq!(rule["sha256"][0], "1".repeat(64));
    assert!(rule.get("specifier").is_none(), "{rule}");
    assert_eq!(rule["source"]["managed"], "git");
    assert_eq!(rule["source"]["file"], "a.toml");
    assert_eq!(rule["source"]["line"], 1);
    let id = rule["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16);
    // The same rule by its id, whatever the case of its hex digits.
    let one = call(
        &app,
        LOCAL,
        "GET",
        &format!("/admin/v1/packages/{}", id.to_uppercase()),
        Some(&reader),
    )
    .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&one.body).unwrap(),
        *rule
    );
    // A package rule's id is not an image rule's; an id of the right form names nothing: 404.
    let r = call(
        &app,
        LOCAL,
        "GET",
        &format!("/admin/v1/images/{id}"),
        Some(&reader),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // Not an id at all: 400, saying what an id is.
    let r = call(&app, LOCAL, "GET", "/admin/v1/packages/demo", Some(&reader)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("16 hexadecimal digits"), "{}", r.body);
}
