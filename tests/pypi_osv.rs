//! Offline OSV end to end: the real tollgate binary with a `[vulnerabilities]` database between
//! real pip and a local static index. The advisory here is written for the fixture project
//! `demo-a` in the OSV schema (the real PyPA/GHSA records are decided in tests/osv_vectors.rs;
//! no real package they name can be served offline).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const SECRET: &str = "osv-test-bootstrap-token";
const ADVISORY: &str = "GHSA-demo-a000-0001";

/// An OSV record: demo-a from the start, fixed in 1.1, CVSS 3.1 7.5 (high).
fn record(modified: &str) -> String {
    serde_json::json!({
        "schema_version": "1.6.0",
        "id": ADVISORY,
        "aliases": ["CVE-2099-1234"],
        "modified": modified,
        "summary": "demo-a leaks its marker",
        "affected": [{
            "package": {"ecosystem": "PyPI", "name": "Demo_A"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.1"}]}]
        }],
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}]
    })
    .to_string()
}

fn allowlist(fx: &Fixture, extra: &str) -> String {
    format!(
        "[[package]]\nname = \"demo-a\"\nversion = \"1.0\"\nsha256 = [\"{}\"]\n\n\
         [[package]]\nname = \"demo-a\"\nversion = \"1.1\"\nsha256 = [\"{}\"]\n{extra}",
        fx.sha("demo_a-1.0-py3-none-any.whl"),
        fx.sha("demo_a-1.1-py3-none-any.whl"),
    )
}

fn pip(gate: &Gate, fx: &Fixture, version: &str, target: &str) -> std::process::Output {
    let req = requirements(
        fx.dir.path(),
        target,
        &[format!(
            "demo-a=={version} --hash=sha256:{}",
            fx.sha(&format!("demo_a-{version}-py3-none-any.whl"))
        )],
    );
    tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path(target)))
}

async fn readyz(gate: &Gate) -> (u16, String) {
    let r = reqwest::get(gate.url("/readyz")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn admin(gate: &Gate, method: &str, path: &str) -> Reply {
    admin_request(gate, "127.0.0.1", method, path, Some(SECRET), None, None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn affected_release_is_refused_with_its_advisory_until_an_exception() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let db = fx.path("gate/osv");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(
        db.join(format!("{ADVISORY}.json")),
        record("2024-05-01T00:00:00Z"),
    )
    .unwrap();
    // Three advisories about other projects, so that a one-record update is a shrink.
    for i in 0..3 {
        std::fs::write(
            db.join(format!("OTHER-{i}.json")),
            record("2024-05-01T00:00:00Z")
                .replace(ADVISORY, &format!("OTHER-{i}"))
                .replace("CVE-2099-1234", &format!("CVE-2099-900{i}"))
                .replace("Demo_A", &format!("other-{i}")),
        )
        .unwrap();
    }
    let config = format!(
        "[pypi]\npage_ttl = \"1s\"\n[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{}/simple/\"\n\
         [vulnerabilities]\ndatabase = \"osv\"\nblock = \"high\"\nmax_age = \"3d\"\n",
        upstream.port
    );
    let gate = Gate::start_admin(&fx.path("gate"), &config, &allowlist(&fx, ""), SECRET);

    // The affected release is not installable; the fixed one is.
    let out = pip(&gate, &fx, "1.0", "t1");
    assert!(
        !out.status.success(),
        "pip installed an affected release: {}",
        show(&out)
    );
    let out = pip(&gate, &fx, "1.1", "t2");
    assert!(out.status.success(), "pip: {}", show(&out));
    let page = gate.json_page("demo-a").await;
    let listed: Vec<&str> = page["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["demo_a-1.1-py3-none-any.whl"]);

    // The file itself, asked for directly, is refused with the advisory and the fix.
    let sha10 = fx.sha("demo_a-1.0-py3-none-any.whl").to_string();
    let r = reqwest::get(gate.url(&format!(
        "/files/demo-a/{sha10}/demo_a-1.0-py3-none-any.whl"
    )))
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let sentence = format!("demo-a 1.0: {ADVISORY} (high), fixed in 1.1");
    assert!(r.text().await.unwrap().contains(&sentence));

    // The audit says why pip found nothing; explain and the admin API say the same.
    let audit = admin(&gate, "GET", "/admin/v1/audit?action=pypi.page").await;
    assert!(audit.text.contains(&sentence), "{}", audit.text);
    assert!(audit.text.contains("vulnerable"), "{}", audit.text);
    let explained = admin(
        &gate,
        "GET",
        &format!(
            "/admin/v1/explain?package=demo-a&filename=demo_a-1.0-py3-none-any.whl&sha256={sha10}"
        ),
    )
    .await;
    assert_eq!(explained.body["reason"], "vulnerable", "{}", explained.text);
    assert!(explained.text.contains(&sentence));
    let rules = admin(&gate, "GET", "/admin/v1/packages").await;
    assert!(rules.text.contains(&sentence), "{}", rules.text);
    let req = requirements(
        fx.dir.path(),
        "check",
        &[format!("demo-a==1.0 --hash=sha256:{sha10}")],
    );
    let check = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["allowlist", "check"])
        .arg(&req)
        .args(["--gate", &gate.url("")])
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(show(&check).contains(&sentence), "{}", show(&check));

    // The database is older than max_age: /readyz still 200, but says so, as does a metric.
    let (status, body) = readyz(&gate).await;
    assert_eq!(status, 200);
    assert!(body.contains("is stale"), "{body}");
    assert_eq!(gate.metric("tollgate_vulnerability_db_stale").await, 1.0);

    // An exception with a reason and an expiry lets the release through until it expires.
    let expires = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 6;
        format_rfc3339(t as i64)
    };
    let file = gate.dir.join("allowlists/test.toml");
    std::fs::write(
        &file,
        allowlist(
            &fx,
            &format!(
                "\n[[vulnerability_exception]]\nid = \"cve-2099-1234\"\nreason = \"the leaking path is not used\"\nexpires = \"{expires}\"\n"
            ),
        ),
    )
    .unwrap();
    gate.proc.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = pip(&gate, &fx, "1.0", "t3");
    assert!(
        out.status.success(),
        "pip with an exception: {}",
        show(&out)
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    let out = pip(&gate, &fx, "1.0", "t4");
    assert!(
        !out.status.success(),
        "the exception expired: {}",
        show(&out)
    );
    let r = reqwest::get(gate.url(&format!(
        "/files/demo-a/{sha10}/demo_a-1.0-py3-none-any.whl"
    )))
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        403,
        "the cached file is refused once the exception expired"
    );

    // `osv update` from a zip over http: checked, put in place, in force at the next reload.
    let zip_dir = fx.path("serve");
    std::fs::create_dir_all(&zip_dir).unwrap();
    let now = format_rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    );
    let made = Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_DEFLATED)\nz.writestr(sys.argv[2],sys.argv[3])\nz.close()",
        ])
        .arg(zip_dir.join("all.zip"))
        .arg(format!("{ADVISORY}.json"))
        .arg(record(&now))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(zip_dir.join("broken.zip"), b"not a zip").unwrap();
    let server = static_upstream(&zip_dir, fx.path("zip.log"));
    let update = |what: &str, shrink: bool| {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["osv", "update"])
            .args(if shrink { &["--allow-shrink"][..] } else { &[] })
            .arg(format!("http://127.0.0.1:{}/{what}", server.port))
            .arg("--config")
            .arg(gate.dir.join("tollgate.toml"))
            .output()
            .unwrap()
    };
    // A broken download changes nothing.
    let out = update("broken.zip", false);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(db.join(format!("{ADVISORY}.json")).exists());
    // A database with a quarter of the advisories is refused unless that is said to be meant.
    let out = update("all.zip", false);
    assert!(show(&out).contains("fewer than half"), "{}", show(&out));
    assert!(db.join("OTHER-0.json").exists());
    let out = update("all.zip", true);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("1 PyPI advisories"), "{}", show(&out));
    // The running gate does not take a database that lost most of its advisories on a
    // reload (a sync cut short looks the same); a restart does.
    gate.proc.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gate
        .proc
        .log_text()
        .contains("fewer than half of the 4 in force"));
    assert_eq!(gate.metric("tollgate_vulnerability_db_stale").await, 1.0);
    let dir = gate.dir.clone();
    drop(gate);
    let gate = Gate::restart_admin(&dir, SECRET);
    let (status, body) = readyz(&gate).await;
    assert_eq!(status, 200);
    assert!(!body.contains("stale"), "{body}");
    assert_eq!(gate.metric("tollgate_vulnerability_db_stale").await, 0.0);
    let out = pip(&gate, &fx, "1.0", "t5");
    assert!(
        !out.status.success(),
        "still refused by the new database: {}",
        show(&out)
    );

    // A database that no longer parses fails the reload; the one in force stays.
    std::fs::write(db.join("bad.json"), b"{\"id\": 1}").unwrap();
    gate.proc.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gate.proc.log_text().contains("not an OSV record"));
    let out = pip(&gate, &fx, "1.0", "t6");
    assert!(!out.status.success(), "{}", show(&out));
    drop(upstream);
}

/// The inverse of the gate's RFC 3339 parser, for an expiry a few seconds ahead.
fn format_rfc3339(secs: i64) -> String {
    tollgate::policy::units::format_rfc3339(secs)
}
