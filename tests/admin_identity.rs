//! Who may talk to the gate beyond stored tokens: OIDC JWTs on the admin API (a test issuer
//! signs real RS256/ES256 tokens: tests/support/jwt_sign.py), the admin API on a listener of its
//! own, and `[oci] require_auth` with real skopeo pulling through the gate from a real
//! docker-registry.

mod common;

use std::process::Command;

use serde_json::json;

use common::*;

const BOOTSTRAP: &str = "tg_bootstrap-for-identity";
const ISSUER: &str = "https://login.example.test/tenant/v2.0";
const AUDIENCE: &str = "00000000-0000-0000-0000-0000000000aa";

fn jwt(dir: &std::path::Path, kid: &str, alg: &str, claims: serde_json::Value) -> String {
    let out = Command::new("python3")
        .arg(support("jwt_sign.py"))
        .arg("sign")
        .arg(dir)
        .args([kid, alg, &claims.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn status(url: String, bearer: Option<&str>) -> u16 {
    let mut r = reqwest::Client::new().get(url);
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_tokens_and_a_separate_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = dir.path().join("issuer");
    let out = Command::new("python3")
        .arg(support("jwt_sign.py"))
        .arg("init")
        .arg(&issuer)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let admin_port = free_port();
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[admin.oidc]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks = \"{}\"\nrole_claim = \"roles\"\n",
        issuer.join("jwks.json").display()
    );
    let (k, v) = bootstrap_env(BOOTSTRAP);
    let gate = Gate::start_env(&dir.path().join("gate"), &cfg, "", &[(k, &v)]);
    let admin = |path: &str| format!("http://127.0.0.1:{admin_port}{path}");

    // With [admin] listen, /admin is absent from the main listener.
    assert_eq!(
        status(gate.url("/admin/v1/tokens"), Some(BOOTSTRAP)).await,
        404
    );
    assert_eq!(
        status(admin("/admin/v1/tokens"), Some(BOOTSTRAP)).await,
        200
    );
    assert_eq!(status(admin("/admin/v1/tokens"), None).await, 401);
    assert_eq!(status(admin("/simple/"), Some(BOOTSTRAP)).await, 404);

    let claims = |roles: serde_json::Value| json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "ci-workload", "exp": "+300", "nbf": "-10", "roles": roles });
    // RS256 and ES256, a role as a string or the highest of a list.
    let admin_jwt = jwt(&issuer, "rsa1", "RS256", claims(json!("admin")));
    assert_eq!(
        status(admin("/admin/v1/tokens"), Some(&admin_jwt)).await,
        200
    );
    let approver = jwt(
        &issuer,
        "ec1",
        "ES256",
        claims(json!(["reader", "approver", "somethingelse"])),
    );
    assert_eq!(
        status(admin("/admin/v1/packages"), Some(&approver)).await,
        200
    );
    assert_eq!(
        status(admin("/admin/v1/tokens"), Some(&approver)).await,
        403
    );
    // The audit names the workload.
    let audit = reqwest::Client::new()
        .get(admin("/admin/v1/audit?decision=deny&action=auth"))
        .bearer_auth(&admin_jwt)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(audit.contains("oidc:ci-workload (approver)"), "{audit}");

    // Everything else is 401.
    let mut wrong = claims(json!("admin"));
    wrong["aud"] = json!("someone-else");
    let mut expired = claims(json!("admin"));
    expired["exp"] = json!("-3600");
    let mut early = claims(json!("admin"));
    early["nbf"] = json!("+3600");
    let mut issuer_b = claims(json!("admin"));
    issuer_b["iss"] = json!("https://evil.example/");
    let mut no_exp = claims(json!("admin"));
    no_exp.as_object_mut().unwrap().remove("exp");
    let bad = [
        jwt(&issuer, "rsa1", "RS256", wrong),
        jwt(&issuer, "rsa1", "RS256", expired),
        jwt(&issuer, "rsa1", "RS256", early),
        jwt(&issuer, "rsa1", "RS256", issuer_b),
        jwt(&issuer, "rsa1", "RS256", no_exp),
        jwt(&issuer, "rsa1", "RS256", claims(json!("root"))),
        jwt(&issuer, "rsa1", "none", claims(json!("admin"))),
        // A key outside the JWKS, under a known kid's name and under its own.
        jwt(&issuer, "other:ec1", "ES256", claims(json!("admin"))),
        jwt(&issuer, "other", "ES256", claims(json!("admin"))),
        // The claims edited after signing.
        {
            let t = jwt(&issuer, "ec1", "ES256", claims(json!("reader")));
            let parts: Vec<&str> = t.split('.').collect();
            let forged = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                claims(json!("admin"))
                    .to_string()
                    .replace("\"+300\"", "9999999999"),
            );
            format!("{}.{forged}.{}", parts[0], parts[2])
        },
        "a.b.c".to_string(),
    ];
    for (i, t) in bad.iter().enumerate() {
        assert_eq!(
            status(admin("/admin/v1/packages"), Some(t)).await,
            401,
            "bad token {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn require_auth_guards_pulls_and_verification() {
    let dir = tempfile::tempdir().unwrap();
    let digests = oci_images(&dir.path().join("layout"));
    let registry = docker_registry(&dir.path().join("registry"), "");
    let out = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", dir.path().join("layout").display()),
        &format!("docker://127.0.0.1:{}/demo/app:v1", registry.port),
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let cfg = format!(
        "[oci]\nrequire_auth = true\n[[oci.registry]]\nhost = \"registry.test\"\nprefix = \"reg\"\nurl = \"http://127.0.0.1:{}\"\n",
        registry.port
    );
    let rule = format!(
        "[[image]]\nrepository = \"registry.test/demo/app\"\ndigests = [\"{}\"]\n",
        digests["v1"]
    );
    let (k, v) = bootstrap_env(BOOTSTRAP);
    let gate = Gate::start_env(&dir.path().join("gate"), &cfg, &rule, &[(k, &v)]);
    let mk = |role: &str| {
        let gate_url = gate.url("/admin/v1/tokens");
        let role = role.to_string();
        async move {
            let v: serde_json::Value = reqwest::Client::new()
                .post(gate_url)
                .bearer_auth(BOOTSTRAP)
                .json(&json!({ "role": role, "name": format!("{role}-pull") }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["token"].as_str().unwrap().to_string()
        }
    };
    let puller = mk("puller").await;

    // /v2/ challenges with Basic, as registries do.
    let r = reqwest::get(gate.url("/v2/")).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let pull = |creds: Option<&str>, to: &str| {
        let mut args = vec!["copy".to_string(), "--src-tls-verify=false".to_string()];
        if let Some(c) = creds {
            args.push(format!("--src-creds={c}"));
        }
        args.push(format!(
            "docker://127.0.0.1:{}/reg/demo/app:v1",
            gate.proc.port
        ));
        args.push(format!("dir:{}", dir.path().join(to).display()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tokio::task::block_in_place(|| skopeo(&args))
    };
    let out = pull(None, "anon");
    assert!(!out.status.success(), "pulled without a credential");
    let out = pull(Some("me:tg_wrong"), "wrong");
    assert!(!out.status.success(), "pulled with a wrong credential");
    let out = pull(Some(&format!("anyone:{puller}")), "ok");
    assert!(out.status.success(), "puller token: {}", show(&out));

    // The verification API too; the admin API still needs more than puller.
    let verify = |bearer: Option<String>| {
        let url = gate.url("/api/v1/verify");
        async move {
            let mut r = reqwest::Client::new()
                .post(url)
                .json(&json!({ "image": "registry.test/demo/app:v1" }));
            if let Some(b) = bearer {
                r = r.bearer_auth(b);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(verify(None).await, 401);
    assert_eq!(verify(Some(puller.clone())).await, 200);
    assert_eq!(
        status(gate.url("/admin/v1/packages"), Some(&puller)).await,
        403
    );
    // Operations endpoints stay open.
    assert_eq!(status(gate.url("/healthz"), None).await, 200);
    let failures = gate.metric("tollgate_auth_failures_total").await;
    assert!(failures >= 2.0, "{failures}");
}

/// The machine's first non-loopback IPv4 address (the test needs one to be a remote client).
fn non_loopback_address() -> String {
    let out = Command::new("hostname").arg("-I").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .expect("this test needs a non-loopback IPv4 address on the machine (hostname -I)")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_clear_from_the_network_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addr = non_loopback_address();
    let admin_port = free_port();
    let cfg = format!("[admin]\nlisten = \"0.0.0.0:{admin_port}\"\n");
    let (k, v) = bootstrap_env(BOOTSTRAP);
    let _gate = Gate::start_env(&dir.path().join("gate"), &cfg, "", &[(k, &v)]);
    // The same valid credential: accepted from loopback, refused over plain HTTP from the
    // network (it has crossed the wire in clear), and the refusal is audited.
    assert_eq!(
        status(
            format!("http://127.0.0.1:{admin_port}/admin/v1/tokens"),
            Some(BOOTSTRAP)
        )
        .await,
        200
    );
    let remote = reqwest::Client::builder()
        .local_address(addr.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = remote
        .get(format!("http://{addr}:{admin_port}/admin/v1/tokens"))
        .bearer_auth(BOOTSTRAP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("over TLS"));
    let audit = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{admin_port}/admin/v1/audit?action=auth"
        ))
        .bearer_auth(BOOTSTRAP)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        audit.contains("plain HTTP from a non-loopback address"),
        "{audit}"
    );
}
