//! What the gate keeps on disk, attacked by someone who can write `data_dir` while the gate is
//! stopped, and by clients who try to fill it: cached files edited or swapped, a damaged store,
//! the audit chain rewritten or cut, floods of denials, upstream pages that would fill the pin
//! table. The real binary, real pip, a real static upstream.

mod common;

use std::process::Command;

use common::*;

const CFG: &str = "[pypi]\npage_ttl = \"1s\"\nupstream_timeout = \"3s\"\n";

fn tollgate(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn edited_or_swapped_cache_files_are_never_served_and_are_fetched_again() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let (a, b) = ("demo_a-1.0-py3-none-any.whl", "demo_b-2.0-py3-none-any.whl");
    let allow = format!(
        "[[package]]\nname = \"demo-a\"\nversion = \"1.0\"\nsha256 = [\"{}\"]\n\n[[package]]\nname = \"demo-b\"\nversion = \"2.0\"\nsha256 = [\"{}\"]\n",
        fx.sha(a),
        fx.sha(b)
    );
    let cfg = format!(
        "{CFG}[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{}/simple/\"\n",
        upstream.port
    );
    let dir = fx.path("gate");
    let gate = Gate::start(&dir, &cfg, &allow);
    let req = requirements(
        fx.dir.path(),
        "r",
        &[
            format!("demo-a==1.0 --hash=sha256:{}", fx.sha(a)),
            format!("demo-b==2.0 --hash=sha256:{}", fx.sha(b)),
        ],
    );
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t1")));
    assert!(out.status.success(), "{}", show(&out));
    drop(gate);
    // While the gate is stopped: one wheel edited in place, the other replaced by other bytes
    // of the same size (what swapping two same-size files does to each).
    let cached = |f: &str| {
        let sha = fx.sha(f);
        dir.join("data/cache").join(&sha[..2]).join(sha)
    };
    let mut edited = std::fs::read(cached(a)).unwrap();
    let mid = edited.len() / 2;
    edited[mid] ^= 0xff;
    std::fs::write(cached(a), &edited).unwrap();
    let len = std::fs::metadata(cached(b)).unwrap().len() as usize;
    let mut swapped = std::fs::read(cached(a)).unwrap();
    swapped.resize(len, b'x');
    std::fs::write(cached(b), &swapped).unwrap();
    // `tollgate cache verify` names both, beside a stopped or a running gate.
    let check = tollgate(&["cache", "verify"], &dir.join("tollgate.toml"));
    assert_eq!(check.status.code(), Some(1), "{}", show(&check));
    let text = show(&check);
    assert!(
        text.contains(fx.sha(a)) && text.contains(fx.sha(b)) && text.contains("2 damaged"),
        "{text}"
    );
    // After a restart, pip gets the right bytes: the damaged copies are refused, evicted and
    // fetched again from the upstream.
    let gate = Gate::restart(&dir);
    let before = upstream.log_text().matches(".whl").count();
    let out = tokio::task::block_in_place(|| pip_install(&gate.index(), &req, &fx.path("t2")));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(gate.metric("tollgate_cache_tampered_total").await, 2.0);
    assert_eq!(
        upstream.log_text().matches(".whl").count(),
        before + 2,
        "both wheels fetched again"
    );
    let check = tollgate(&["cache", "verify"], &dir.join("tollgate.toml"));
    assert!(check.status.success(), "{}", show(&check));
    // The tampering is in the audit log.
    let token = "t0ken-for-the-audit-query";
    drop(gate);
    let sha = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes())
    );
    let gate = Gate::restart_env(&dir, &[("TOLLGATE_BOOTSTRAP_TOKEN_SHA256", &sha)]);
    let log = reqwest::Client::new()
        .get(gate.url("/admin/v1/audit?action=cache.verify"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
}

#[test]
fn a_damaged_store_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tollgate.toml");
    std::fs::create_dir_all(dir.path().join("allowlists")).unwrap();
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n").unwrap();
    let store = dir.path().join("data/tollgate.redb");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    // A store made by a run of the gate's own commands, then cut in half.
    let made = tollgate(&["token", "create", "--role", "reader"], &cfg);
    assert!(made.status.success(), "{}", show(&made));
    let len = std::fs::metadata(&store).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    for args in [
        &["serve"][..],
        &["token", "create", "--role", "reader"],
        &["audit", "verify"],
    ] {
        let out = tollgate(args, &cfg);
        let text = show(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(text.contains("is damaged"), "{args:?}: {text}");
        assert!(text.contains("tollgate.redb"), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}
