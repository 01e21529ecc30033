//! A store written by the previous release is read and served by this one: the records'
//! bytes are the format, whatever the types that read them.

mod common;

use std::process::Command;

use common::*;
use sha2::Digest as _;

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_written_by_the_previous_release_is_served() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-previous");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("gate");
    copy_tree(&fixture, &dir);
    // Kept compressed in git (mostly empty pages).
    let gz = dir.join("data/tollgate.redb.gz");
    let mut redb = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap()),
        &mut redb,
    )
    .unwrap();
    std::fs::write(dir.join("data/tollgate.redb"), redb).unwrap();
    std::fs::remove_file(gz).unwrap();
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("facts.json")).unwrap()).unwrap();
    // Same configuration, fresh ports; the index is gone (nothing listens on the discard
    // port), so whatever is served comes from the store and the cache.
    let admin_port = free_port();
    let config = std::fs::read_to_string(dir.join("tollgate.toml")).unwrap();
    let config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") && !config.split("[admin]").next().unwrap().contains(l) {
                format!("listen = \"127.0.0.1:{admin_port}\"")
            } else if l.starts_with("listen = ") {
                "listen = \"127.0.0.1:0\"".to_string()
            } else if l.starts_with("url = ") {
                "url = \"http://127.0.0.1:9/simple/\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("tollgate.toml"), config + "\n").unwrap();

    let mut gate = Gate::restart(&dir);
    // Pins from the file allowlist, an API approval and a first-sight release rule; the cached
    // bytes behind each, served under their pinned hash.
    for (name, f) in facts["cached"].as_object().unwrap() {
        let sha = f["sha256"].as_str().unwrap();
        let project = f["project"].as_str().unwrap();
        let r = reqwest::get(gate.url(&format!("/files/{project}/{sha}/{name}")))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let body = r.bytes().await.unwrap();
        assert_eq!(hex::encode(sha2::Sha256::digest(&body)), sha, "{name}");
    }
    // The stored admin token still authenticates; the pins are listed by the API.
    let token = facts["token"].as_str().unwrap();
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{admin_port}/admin/v1/pins"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pins = r.text().await.unwrap();
    for f in facts["cached"].as_object().unwrap().values() {
        assert!(pins.contains(f["sha256"].as_str().unwrap()), "{pins}");
    }
    // What was refused stays refused.
    assert_eq!(
        reqwest::get(gate.url("/simple/evil/"))
            .await
            .unwrap()
            .status(),
        403
    );
    gate.proc.signal("TERM");
    for _ in 0..100 {
        if gate.proc.child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The previous release's audit chain and its signed checkpoints, continued by this one.
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["audit", "verify", "--config"])
        .arg(dir.join("tollgate.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("audit chain intact"), "{}", show(&out));
    assert!(
        show(&out).contains("; 0 entries follow it"),
        "{}",
        show(&out)
    );
}
