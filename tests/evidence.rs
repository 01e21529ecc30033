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

/// A gate on `upstream` with demo-a 1.0 and demo-b 2.0 pinned (one wheel each).
fn two_pinned(fx: &Fixture, upstream: &Proc, dir: &std::path::Path) -> Gate {
    let allow = format!(
        "[[package]]\nname = \"demo-a\"\nversion = \"1.0\"\nsha256 = [\"{}\"]\n\n[[package]]\nname = \"demo-b\"\nversion = \"2.0\"\nsha256 = [\"{}\"]\n",
        fx.sha("demo_a-1.0-py3-none-any.whl"),
        fx.sha("demo_b-2.0-py3-none-any.whl")
    );
    let cfg = format!(
        "{CFG}[[pypi.index]]\nname = \"local\"\nurl = \"http://127.0.0.1:{}/simple/\"\n",
        upstream.port
    );
    Gate::start(dir, &cfg, &allow)
}

#[tokio::test(flavor = "multi_thread")]
async fn edited_or_swapped_cache_files_are_never_served_and_are_fetched_again() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let (a, b) = ("demo_a-1.0-py3-none-any.whl", "demo_b-2.0-py3-none-any.whl");
    let dir = fx.path("gate");
    let gate = two_pinned(&fx, &upstream, &dir);
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

/// Stops the gate as an orchestrator does (SIGTERM) and waits for it to exit, so its last
/// checkpoint and folded denials are written.
/// SIGTERM, and wait for the gate to finish: up to its shutdown grace (20 s, for connections
/// still open) and a margin.
fn stop_gracefully(gate: &mut Gate) {
    gate.proc.signal("TERM");
    for _ in 0..300 {
        if gate.proc.child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "the gate did not stop on SIGTERM; its log:\n{}",
        gate.proc.log_text()
    );
}

/// An Ed25519 key in `dir` (outside any data_dir), as `openssl genpkey` writes it.
fn audit_key(dir: &std::path::Path) -> std::path::PathBuf {
    let key = dir.join("audit-key.pem");
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    key
}

/// Rewrites entry `seq`'s detail and recomputes the chain after it, as someone with write
/// access to data_dir (and this code) would.
fn rewrite_from(store_path: &std::path::Path, seq: u64) {
    use sha2::Digest as _;
    let store = tollgate::store::Store::open(store_path).unwrap();
    let mut rows = Vec::new();
    store
        .audit_scan(seq - 1, |s, bytes| {
            rows.push((s, bytes.to_vec()));
            true
        })
        .unwrap();
    let mut prev: Option<String> = None;
    for (s, bytes) in rows {
        let mut e: tollgate::audit::AuditEntry = serde_json::from_slice(&bytes[65..]).unwrap();
        if s == seq {
            e.event.detail = "nothing happened here".into();
        }
        if let Some(p) = prev.take() {
            e.prev = p;
        }
        let json = serde_json::to_vec(&e).unwrap();
        let hash = hex::encode(sha2::Sha256::digest(&json));
        let mut out = hash.clone().into_bytes();
        out.push(b' ');
        out.extend_from_slice(&json);
        store.audit_overwrite(s, &out).unwrap();
        prev = Some(hash);
    }
}

async fn deny_some(gate: &Gate, from: usize, n: usize) {
    let c = reqwest::Client::new();
    for i in from..from + n {
        let r = c
            .get(gate.url(&format!("/simple/not-listed-{i}/")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
}

/// A rewritten entry (the chain recomputed after it) and a removed tail are named by audit
/// verify against the signed checkpoints; checkpoints removed with the tail are still caught
/// with the copies on the log stream; a gate without a key says its chain is unkeyed.
#[tokio::test(flavor = "multi_thread")]
async fn signed_checkpoints_name_a_rewritten_entry_and_a_removed_tail() {
    let work = tempfile::tempdir().unwrap();
    let key = audit_key(work.path());
    let cfg = format!(
        "[audit]\nsigning_key_file = \"{}\"\ncheckpoint_every = \"1s\"\n",
        key.display()
    );
    let dir = work.path().join("gate");
    let mut gate = Gate::start(&dir, &cfg, "");
    deny_some(&gate, 0, 20).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    deny_some(&gate, 20, 20).await;
    stop_gracefully(&mut gate);
    let config = dir.join("tollgate.toml");
    let out = tollgate(&["audit", "verify"], &config);
    let text = show(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("audit chain intact: 40 entries"), "{text}");
    assert!(text.contains("; 0 entries follow it"), "{text}");
    // The log stream holds the checkpoints too.
    let log = dir.join("gate.log");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("audit checkpoint"));

    // Copies of the stopped gate's data_dir, each attacked one way.
    let copy = |name: &str| {
        let d = work.path().join(name);
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::create_dir_all(d.join("allowlists")).unwrap();
        std::fs::copy(dir.join("data/tollgate.redb"), d.join("data/tollgate.redb")).unwrap();
        std::fs::copy(&config, d.join("tollgate.toml")).unwrap();
        d
    };
    let rewritten = copy("rewritten");
    rewrite_from(&rewritten.join("data/tollgate.redb"), 5);
    let out = tollgate(&["audit", "verify"], &rewritten.join("tollgate.toml"));
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // The range named holds the entry changed.
    let range = text
        .split("rewritten: an entry in #")
        .nth(1)
        .and_then(|r| r.split_once(' '))
        .map(|(r, _)| r.to_string())
        .unwrap_or_else(|| panic!("{text}"));
    let (a, b) = range.split_once("..#").unwrap();
    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
    assert!(a <= 5 && 5 <= b, "{text}");

    let cut = copy("cut");
    let store = tollgate::store::Store::open(&cut.join("data/tollgate.redb")).unwrap();
    store.audit_truncate(30, false).unwrap();
    drop(store);
    let out = tollgate(&["audit", "verify"], &cut.join("tollgate.toml"));
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("truncated: the log ends at #30"), "{text}");

    // The tail and its checkpoints removed: the store alone cannot tell, the log's copies can.
    let cut2 = copy("cut2");
    let store = tollgate::store::Store::open(&cut2.join("data/tollgate.redb")).unwrap();
    store.audit_truncate(30, true).unwrap();
    drop(store);
    let log_arg = log.display().to_string();
    let out = tollgate(
        &["audit", "verify", "--checkpoint", &log_arg],
        &cut2.join("tollgate.toml"),
    );
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("truncated: the log ends at #30"), "{text}");

    // The rewrite hidden by re-labelling the checkpoints that cover it (another key's id, or
    // no signature): still named, and a gate started on it signs nothing more.
    let demoted = copy("demoted");
    let store_path = demoted.join("data/tollgate.redb");
    rewrite_from(&store_path, 5);
    let store = tollgate::store::Store::open(&store_path).unwrap();
    for (seq, bytes) in store.audit_checkpoints().unwrap() {
        let mut cp: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        if seq % 2 == 0 {
            cp["key"] = "00".repeat(32).into();
        } else {
            cp.as_object_mut().unwrap().remove("signature");
        }
        store
            .audit_checkpoint_put(seq, &serde_json::to_vec(&cp).unwrap())
            .unwrap();
    }
    drop(store);
    let out = tollgate(&["audit", "verify"], &demoted.join("tollgate.toml"));
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not a key given") || text.contains("is unsigned"),
        "{text}"
    );
    let mut restarted = Gate::restart(&demoted);
    let ready = reqwest::get(restarted.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        ready
            .text()
            .await
            .unwrap()
            .contains("audit log does not verify"),
        "readyz names it"
    );
    deny_some(&restarted, 100, 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stop_gracefully(&mut restarted);
    assert!(
        !restarted
            .proc
            .log_text()
            .contains("audit checkpoint checkpoint="),
        "the gate signed over a log that does not verify"
    );

    // An auditor with the public key only.
    let public = tollgate(&["audit", "public-key"], &config);
    assert!(public.status.success(), "{}", show(&public));
    let pem = work.path().join("audit-public.pem");
    std::fs::write(&pem, &public.stdout).unwrap();
    let unkeyed_cfg = rewritten.join("unkeyed.toml");
    std::fs::write(
        &unkeyed_cfg,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n",
    )
    .unwrap();
    let pem_arg = pem.display().to_string();
    let out = tollgate(&["audit", "verify", "--public-key", &pem_arg], &unkeyed_cfg);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(show(&out).contains("rewritten"), "{}", show(&out));

    // A rotated key: the old key's checkpoints vouch only when its public half is named in
    // previous_public_keys; without it the gate starting on the new key signs nothing.
    let rotated = copy("rotated");
    let new_key_dir = work.path().join("new-key");
    std::fs::create_dir_all(&new_key_dir).unwrap();
    let new_key = audit_key(&new_key_dir);
    let original = std::fs::read_to_string(&config).unwrap();
    let rotated_cfg = original.replace(&key.display().to_string(), &new_key.display().to_string());
    assert_ne!(rotated_cfg, original);
    std::fs::write(rotated.join("tollgate.toml"), &rotated_cfg).unwrap();
    let mut gate = Gate::restart(&rotated);
    let ready = reqwest::get(gate.url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ready.contains("audit log does not verify"), "{ready}");
    stop_gracefully(&mut gate);
    std::fs::write(
        rotated.join("tollgate.toml"),
        rotated_cfg.replace(
            "[audit]\n",
            &format!("[audit]\nprevious_public_keys = [\"{}\"]\n", pem.display()),
        ),
    )
    .unwrap();
    let mut gate = Gate::restart(&rotated);
    let ready = reqwest::get(gate.url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!ready.contains("does not verify"), "{ready}");
    deny_some(&gate, 200, 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    deny_some(&gate, 203, 2).await;
    stop_gracefully(&mut gate);
    assert!(gate
        .proc
        .log_text()
        .contains("audit checkpoint checkpoint="));
    let out = tollgate(&["audit", "verify"], &rotated.join("tollgate.toml"));
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        show(&out).contains("audit chain intact: 45 entries"),
        "{}",
        show(&out)
    );
    // The retired key (leaked: why keys are rotated) signs the head after the rotation: not
    // the gate's doing, and named.
    let store_path = rotated.join("data/tollgate.redb");
    let store = tollgate::store::Store::open(&store_path).unwrap();
    let (seq, bytes) = store.audit_checkpoints().unwrap().pop().unwrap();
    let real: tollgate::audit::checkpoint::Checkpoint = serde_json::from_slice(&bytes).unwrap();
    let old =
        tollgate::audit::checkpoint::Signer::from_pem(&std::fs::read_to_string(&key).unwrap())
            .unwrap();
    let forged = old.sign(seq, &real.hash, real.time);
    store
        .audit_checkpoint_put(seq, &serde_json::to_vec(&forged).unwrap())
        .unwrap();
    drop(store);
    let out = tollgate(&["audit", "verify"], &rotated.join("tollgate.toml"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        show(&out).contains("signed by a retired key"),
        "{}",
        show(&out)
    );
    // Every checkpoint of the new key removed as well: the store alone cannot tell; the
    // retired key's last_seq, from the configuration, can.
    let store = tollgate::store::Store::open(&store_path).unwrap();
    for (s, _) in store.audit_checkpoints().unwrap() {
        if s > 40 && s != seq {
            store.audit_checkpoint_remove(s).unwrap();
        }
    }
    drop(store);
    let text = std::fs::read_to_string(rotated.join("tollgate.toml")).unwrap();
    let bound = text.replace(
        &format!("previous_public_keys = [\"{}\"]", pem.display()),
        &format!(
            "previous_public_keys = [{{ file = \"{}\", last_seq = 40 }}]",
            pem.display()
        ),
    );
    assert_ne!(bound, text);
    std::fs::write(rotated.join("tollgate.toml"), bound).unwrap();
    let out = tollgate(&["audit", "verify"], &rotated.join("tollgate.toml"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        show(&out).contains("whose last checkpoint was #40"),
        "{}",
        show(&out)
    );

    // A gate without a key: its chain verifies, and says nothing vouches for it.
    let plain = work.path().join("plain");
    let mut gate = Gate::start(&plain, "", "");
    deny_some(&gate, 0, 3).await;
    stop_gracefully(&mut gate);
    let out = tollgate(&["audit", "verify"], &plain.join("tollgate.toml"));
    let text = show(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("unkeyed"), "{text}");
}

/// Retention moves old entries to the archive with their checkpoint and prunes them; the log
/// and the archive verify as one chain, and export reads both back.
#[tokio::test(flavor = "multi_thread")]
async fn retention_archives_prunes_and_the_chain_still_verifies() {
    let work = tempfile::tempdir().unwrap();
    let key = audit_key(work.path());
    let dir = work.path().join("gate");
    let cfg = format!(
        "[audit]\nsigning_key_file = \"{}\"\ncheckpoint_every = \"1s\"\nretention = \"2s\"\n",
        key.display()
    );
    let admin_port = free_port();
    // A reader token, made before the gate holds the store.
    std::fs::create_dir_all(dir.join("allowlists")).unwrap();
    std::fs::write(dir.join("allowlists/test.toml"), "").unwrap();
    std::fs::write(
        dir.join("tollgate.toml"),
        format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nallowlist_dir = \"allowlists\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{cfg}"),
    )
    .unwrap();
    let config = dir.join("tollgate.toml");
    let made = tollgate(&["token", "create", "--role", "reader"], &config);
    assert!(made.status.success(), "{}", show(&made));
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let mut gate = Gate::restart(&dir);
    deny_some(&gate, 0, 30).await;
    // The first retention run comes 10 s after start (a tenth of retention, at least 10 s).
    let mut archived = 0.0;
    for _ in 0..80 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        archived = gate.metric("tollgate_audit_archived_total").await;
        if archived > 0.0 {
            break;
        }
    }
    assert!(
        archived >= 30.0,
        "archived {archived}; the gate's log:\n{}",
        gate.proc.log_text()
    );
    deny_some(&gate, 30, 5).await;
    let c = reqwest::Client::new();
    let v: serde_json::Value = c
        .get(format!(
            "http://127.0.0.1:{admin_port}/admin/v1/audit/verify"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "intact", "{v}");
    assert!(v["archive"]["entries"].as_u64().unwrap() >= 30, "{v}");
    let export = c
        .get(format!(
            "http://127.0.0.1:{admin_port}/admin/v1/audit/export?since=0"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // No idle connection of ours for the shutdown to wait on.
    drop(c);
    stop_gracefully(&mut gate);
    let archive: Vec<_> = std::fs::read_dir(dir.join("data/audit-archive"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!archive.is_empty());
    let out = tollgate(&["audit", "verify"], &config);
    let text = show(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("archive intact"), "{text}");
    // Export: every entry from #1 on, in order, archived or not, with checkpoints.
    let out = tollgate(&["audit", "export", "--since", "1970-01-01"], &config);
    assert!(out.status.success(), "{}", show(&out));
    let lines = String::from_utf8(out.stdout).unwrap();
    for text in [&lines, &export] {
        let seqs: Vec<u64> = text
            .lines()
            .filter(|l| !l.starts_with("{\"checkpoint\""))
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs.first(), Some(&1), "{text}");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert!(text.lines().any(|l| l.starts_with("{\"checkpoint\"")));
    }
    // The archive's beginning removed, the whole archive removed, the store emptied: each
    // named (each on a copy of the stopped gate's directory).
    let copy = |name: &str| {
        let d = work.path().join(name);
        let ok = Command::new("cp")
            .arg("-r")
            .arg(&dir)
            .arg(&d)
            .status()
            .unwrap();
        assert!(ok.success());
        d
    };
    let verify_fails = |d: &std::path::Path, why: &str| {
        let out = tollgate(&["audit", "verify"], &d.join("tollgate.toml"));
        let text = show(&out);
        assert_eq!(out.status.code(), Some(1), "{why}: {text}");
        assert!(text.contains(why), "{why}: {text}");
    };
    let mut names: Vec<_> = archive.iter().map(|e| e.file_name()).collect();
    names.sort();
    let head_cut = copy("head-cut");
    std::fs::remove_file(head_cut.join("data/audit-archive").join(&names[0])).unwrap();
    verify_fails(
        &head_cut,
        if names.len() > 1 {
            "where #1 belongs"
        } else {
            "no archive is in"
        },
    );
    let gone = copy("archive-gone");
    std::fs::remove_dir_all(gone.join("data/audit-archive")).unwrap();
    verify_fails(&gone, "no archive is in");
    // An export cannot pass off the store's part as the whole log.
    let out = tollgate(
        &["audit", "export", "--since", "1970-01-01"],
        &gone.join("tollgate.toml"),
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        show(&out).contains("are in neither the archive"),
        "{}",
        show(&out)
    );
    let emptied = copy("store-emptied");
    std::fs::File::create(emptied.join("data/tollgate.redb")).unwrap();
    verify_fails(&emptied, "the store has no anchor");
    // A FIFO planted among the archive files is named, not waited on.
    let fifo = copy("archive-fifo");
    let ok = Command::new("mkfifo")
        .arg(fifo.join("data/audit-archive/2026-12-09_000000000777.jsonl"))
        .status()
        .unwrap();
    assert!(ok.success());
    verify_fails(&fifo, "not a regular file");

    // An archived line edited: named.
    let first = archive[0].path();
    let edited =
        std::fs::read_to_string(&first)
            .unwrap()
            .replacen("not-listed-0", "not-listed-X", 1);
    std::fs::write(&first, edited).unwrap();
    let out = tollgate(&["audit", "verify"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(show(&out).contains("archive:"), "{}", show(&out));
}

/// With `witness_file` outside data_dir, a log rewritten from its start with every stored
/// checkpoint removed (and the times made to agree), or cut with its checkpoints, is named by
/// plain `audit verify` and a gate started on it signs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_witness_outside_data_dir_names_what_the_store_alone_cannot() {
    let work = tempfile::tempdir().unwrap();
    let key = audit_key(work.path());
    std::fs::create_dir_all(work.path().join("witness")).unwrap();
    let witness = work.path().join("witness/checkpoint.json");
    let cfg = format!(
        "[audit]\nsigning_key_file = \"{}\"\nwitness_file = \"{}\"\ncheckpoint_every = \"1s\"\n",
        key.display(),
        witness.display()
    );
    let dir = work.path().join("gate");
    let mut gate = Gate::start(&dir, &cfg, "");
    deny_some(&gate, 0, 20).await;
    stop_gracefully(&mut gate);
    let kept: tollgate::audit::checkpoint::Checkpoint =
        serde_json::from_str(std::fs::read_to_string(&witness).unwrap().trim()).unwrap();
    assert_eq!(kept.seq, 20);
    let config = dir.join("tollgate.toml");
    let out = tollgate(&["audit", "verify"], &config);
    assert!(out.status.success(), "{}", show(&out));

    let copy = |name: &str| {
        let d = work.path().join(name);
        let ok = Command::new("cp")
            .arg("-r")
            .arg(&dir)
            .arg(&d)
            .status()
            .unwrap();
        assert!(ok.success());
        d
    };
    // Rewritten from #5 on, every stored checkpoint removed.
    let rewritten = copy("rewritten");
    let store_path = rewritten.join("data/tollgate.redb");
    rewrite_from(&store_path, 5);
    let store = tollgate::store::Store::open(&store_path).unwrap();
    for (seq, _) in store.audit_checkpoints().unwrap() {
        store.audit_checkpoint_remove(seq).unwrap();
    }
    drop(store);
    let out = tollgate(&["audit", "verify"], &rewritten.join("tollgate.toml"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(show(&out).contains("rewritten"), "{}", show(&out));
    let mut restarted = Gate::restart(&rewritten);
    let ready = reqwest::get(restarted.url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ready.contains("audit log does not verify"), "{ready}");
    stop_gracefully(&mut restarted);
    assert!(!restarted
        .proc
        .log_text()
        .contains("audit checkpoint checkpoint="));
    // The tail cut with its checkpoints.
    let cut = copy("cut");
    let store = tollgate::store::Store::open(&cut.join("data/tollgate.redb")).unwrap();
    store.audit_truncate(12, true).unwrap();
    drop(store);
    let out = tollgate(&["audit", "verify"], &cut.join("tollgate.toml"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        show(&out).contains("truncated: the log ends at #12"),
        "{}",
        show(&out)
    );
    // The witness removed: named (the gate writes it with every checkpoint it stores);
    // witness-init writes it again once the log verifies.
    std::fs::remove_file(&witness).unwrap();
    let out = tollgate(&["audit", "verify"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(show(&out).contains("is missing"), "{}", show(&out));
    let out = tollgate(&["audit", "witness-init"], &config);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("checkpoint #20"), "{}", show(&out));
    let out = tollgate(&["audit", "verify"], &config);
    assert!(out.status.success(), "{}", show(&out));
    // witness-init never replaces a genuine witness with a checkpoint it disagrees with.
    let forged_cfg = rewritten.join("tollgate.toml");
    let before = std::fs::read(&witness).unwrap();
    let out = tollgate(&["audit", "witness-init"], &forged_cfg);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(std::fs::read(&witness).unwrap(), before);
    // A witness the store's writer could reach is refused.
    let inside = copy("inside");
    let text = std::fs::read_to_string(inside.join("tollgate.toml")).unwrap();
    std::fs::write(
        inside.join("tollgate.toml"),
        text.replace(
            &witness.display().to_string(),
            &inside.join("data/w.json").display().to_string(),
        ),
    )
    .unwrap();
    let out = tollgate(&["audit", "verify"], &inside.join("tollgate.toml"));
    assert!(!out.status.success());
    assert!(show(&out).contains("inside data_dir"), "{}", show(&out));
}

/// The store file removed while the gate runs: noticed within seconds, `/readyz` 503 naming
/// it, nothing written to a file no one will read again, and no empty store made in its place.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_file_removed_while_running_fails_closed() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("gate");
    let mut gate = Gate::start(&dir, "", "");
    deny_some(&gate, 0, 3).await;
    std::fs::remove_file(dir.join("data/tollgate.redb")).unwrap();
    let mut ready = (0, String::new());
    for _ in 0..50 {
        let r = reqwest::get(gate.url("/readyz")).await.unwrap();
        ready = (r.status().as_u16(), r.text().await.unwrap());
        if ready.0 == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert!(
        ready.1.contains("was removed while the gate runs"),
        "{}",
        ready.1
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    stop_gracefully(&mut gate);
    assert!(gate.proc.log_text().contains("store file lost"));
    assert!(
        !dir.join("data/tollgate.redb").exists(),
        "an empty store was made in place of the removed one"
    );
    // Replaced by a link to itself (the path then leads nowhere): the same.
    let dir = work.path().join("gate2");
    let mut gate = Gate::start(&dir, "", "");
    let store = dir.join("data/tollgate.redb");
    std::fs::remove_file(&store).unwrap();
    std::os::unix::fs::symlink("tollgate.redb", &store).unwrap();
    let mut status = 0;
    for _ in 0..50 {
        status = reqwest::get(gate.url("/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 503);
    stop_gracefully(&mut gate);
}

/// One client's flood of distinct denials: the first max_denials_per_client are entries, the
/// rest fold into counted entries; the counts add up exactly, and the store stays small.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_denials_folds_with_an_exact_count() {
    const FLOOD: usize = 20_000;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("gate");
    let mut gate = Gate::start(&dir, "", "");
    let store = dir.join("data/tollgate.redb");
    let before = std::fs::metadata(&store).unwrap().len();
    let c = reqwest::Client::new();
    // One unauthenticated admin request with a 7,000-byte path: its entry keeps it clipped.
    let long = "x".repeat(7000);
    let r = c
        .get(gate.url(&format!("/admin/v1/{long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, next, url) = (c.clone(), next.clone(), gate.url("/simple/"));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= FLOOD {
                    break;
                }
                let r = c.get(format!("{url}flood-{i}/")).send().await.unwrap();
                assert_eq!(r.status(), 403);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The writer counts a fold when it takes the event from its queue: read once it is idle.
    let mut folded = gate.metric("tollgate_audit_folded_total").await;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = gate.metric("tollgate_audit_folded_total").await;
        if now == folded {
            break;
        }
        folded = now;
    }
    stop_gracefully(&mut gate);
    // Each folded denial is still in the log stream whole, with its client.
    let logged = gate
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("audit folded") && l.contains("flood-"))
        .map(|l| {
            l.split(" count=")
                .nth(1)
                .and_then(|c| c.split_whitespace().next())
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum::<u64>();
    assert_eq!(
        logged as f64, folded,
        "folded denials written to the log stream"
    );
    let grown = std::fs::metadata(&store)
        .unwrap()
        .len()
        .saturating_sub(before);
    let out = tollgate(&["audit", "export"], &dir.join("tollgate.toml"));
    assert!(out.status.success(), "{}", show(&out));
    let (mut entries, mut denials, mut folded_entries) = (0u64, 0u64, 0u64);
    let exported = String::from_utf8(out.stdout).unwrap();
    assert!(
        exported.lines().all(|l| l.len() < 4096),
        "an entry longer than 4 KiB"
    );
    for l in exported.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["decision"] == "deny" && v["client"] == "127.0.0.1" {
            entries += 1;
            denials += v["count"].as_u64().unwrap();
            if v["action"] == "audit.folded" {
                folded_entries += 1;
                assert!(
                    v["samples"].as_array().is_some_and(|s| !s.is_empty()),
                    "{v}"
                );
            }
        }
    }
    // The flood and the one admin request, each counted once.
    assert_eq!(denials, FLOOD as u64 + 1, "every denial is counted");
    assert_eq!(folded as u64 + entries - folded_entries, FLOOD as u64 + 1);
    assert!(entries <= 1000 + 10, "{entries} entries");
    assert!(folded_entries >= 1);
    // The stated bound: 1,000 entries of ~1 KB and a few folded ones.
    assert!(grown < 4 << 20, "the store grew by {grown} bytes");
}

/// What an upstream may make the gate keep is bounded: a page listing more files than
/// max_files_per_page is refused, a project's first-sight pins stop at max_pins_per_project,
/// and a file over max_hash_bytes is neither approved nor hashed in the background.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_pages_and_files_cannot_grow_the_store_without_bound() {
    let fx = Fixture::build();
    let liar = liar_upstream(&fx.root().join("packages"), fx.path("liar.log"));
    let dir = fx.path("gate");
    let admin_port = free_port();
    std::fs::create_dir_all(dir.join("allowlists")).unwrap();
    std::fs::write(
        dir.join("allowlists/test.toml"),
        "[[package]]\nname = \"huge\"\nspecifier = \">=1\"\nmin_age = \"0s\"\n\n\
         [[package]]\nname = \"many\"\nspecifier = \">=1\"\nmin_age = \"0s\"\n\n\
         [[package]]\nname = \"bignohash\"\nspecifier = \">=1\"\nmin_age = \"0s\"\n\n\
         [[package]]\nname = \"manynohash\"\nspecifier = \">=1\"\nmin_age = \"0s\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tollgate.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nallowlist_dir = \"allowlists\"\n\
             [limits]\npage_bytes = \"32MiB\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
             {CFG}max_pins_per_project = 100\nmax_hash_bytes = \"1MiB\"\n\
             [[pypi.index]]\nname = \"liar\"\nurl = \"http://127.0.0.1:{}/simple/\"\n",
            liar.port
        ),
    )
    .unwrap();
    let config = dir.join("tollgate.toml");
    let made = tollgate(&["token", "create", "--role", "approver"], &config);
    assert!(made.status.success(), "{}", show(&made));
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let gate = Gate::restart(&dir);

    // 50,000 files: refused, with the reason.
    let r = reqwest::get(gate.url("/simple/huge/")).await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("lists 50000 files") && body.contains("max_files_per_page (40000)"),
        "{body}"
    );
    assert_eq!(
        gate.metric("tollgate_upstream_pages_refused_total").await,
        1.0
    );

    // 300 new files under a release rule: 100 pinned and listed, and no more on a new view.
    for _ in 0..2 {
        let page = gate.json_page("many").await;
        assert_eq!(page["files"].as_array().unwrap().len(), 100, "{page}");
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    assert!(gate.metric("tollgate_pins_refused_total").await >= 200.0);

    // 300 files without a hash: at most the pin cap's worth is ever downloaded to be hashed.
    for _ in 0..30 {
        gate.json_page("manynohash").await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let fetched = std::fs::read_to_string(fx.path("liar.log"))
        .unwrap()
        .matches("/files/manynohash")
        .count();
    assert!(
        fetched > 0 && fetched <= 100,
        "{fetched} hashless files downloaded"
    );

    // A file without a hash, over max_hash_bytes: not downloaded past the cap, not listed.
    for _ in 0..20 {
        let page = gate.json_page("bignohash").await;
        assert_eq!(page["files"].as_array().unwrap().len(), 0, "{page}");
        if gate.metric("tollgate_hashes_refused_total").await >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(gate.metric("tollgate_hashes_refused_total").await, 1.0);
    assert!(gate.proc.log_text().contains("max_hash_bytes"));

    // An approval of a file over max_hash_bytes: refused with the reason, nothing approved.
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{admin_port}/admin/v1/approvals"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "name": "bigfile", "version": "1.0" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("bigfile-1.0-py3-none-any.whl is 2097152 bytes, more than max_hash_bytes"),
        "{body}"
    );
    let log = std::fs::read_to_string(fx.path("liar.log")).unwrap();
    assert!(
        !log.contains("/files/bigfile"),
        "the oversized file was downloaded:\n{log}"
    );
}

/// A cached file replaced while the gate runs, after it was checked: by a link to another file
/// (which would serve anything the gate can read) or by a FIFO (which would block a reader for
/// ever): never served, never waited on; evicted, counted and fetched again.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_file_replaced_by_a_link_or_a_fifo_is_not_served() {
    let fx = Fixture::build();
    let upstream = static_upstream(&fx.root(), fx.path("upstream.log"));
    let (a, b) = ("demo_a-1.0-py3-none-any.whl", "demo_b-2.0-py3-none-any.whl");
    let dir = fx.path("gate");
    let gate = two_pinned(&fx, &upstream, &dir);
    let url = |project: &str, f: &str| gate.url(&format!("/files/{project}/{}/{f}", fx.sha(f)));
    let fetch = |u: String| async move {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), reqwest::get(u))
            .await
            .expect("the gate answered within 10 s")
            .unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap_or_default().to_vec())
    };
    let cached = |f: &str| {
        let sha = fx.sha(f);
        dir.join("data/cache").join(&sha[..2]).join(sha)
    };
    for (p, f) in [("demo-a", a), ("demo-b", b)] {
        assert_eq!(fetch(url(p, f)).await.0, 200);
    }
    // a: verified in this run, then replaced by a link to a file outside data_dir.
    let secret = fx.path("secret.txt");
    std::fs::write(&secret, "TOP-SECRET").unwrap();
    std::fs::remove_file(cached(a)).unwrap();
    std::os::unix::fs::symlink(&secret, cached(a)).unwrap();
    let (status, body) = fetch(url("demo-a", a)).await;
    assert!(!String::from_utf8_lossy(&body).contains("TOP-SECRET"));
    assert_ne!(status, 200, "a link was served");
    assert_eq!(gate.metric("tollgate_cache_tampered_total").await, 1.0);
    let (status, body) = fetch(url("demo-a", a)).await;
    assert_eq!(status, 200, "fetched again");
    assert_eq!(
        format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&body)),
        fx.sha(a)
    );
    drop(gate);
    // b: replaced by a FIFO while the gate is stopped; after a restart it is checked before it
    // is served, and the check does not block on the FIFO.
    std::fs::remove_file(cached(b)).unwrap();
    let ok = Command::new("mkfifo").arg(cached(b)).status().unwrap();
    assert!(ok.success());
    let check = tollgate(&["cache", "verify"], &dir.join("tollgate.toml"));
    assert_eq!(check.status.code(), Some(1), "{}", show(&check));
    std::fs::remove_file(cached(b)).ok();
    let ok = Command::new("mkfifo").arg(cached(b)).status().unwrap();
    assert!(ok.success());
    let gate = Gate::restart(&dir);
    let url_b = gate.url(&format!("/files/demo-b/{}/{b}", fx.sha(b)));
    let (status, body) = fetch(url_b).await;
    assert_eq!(status, 200);
    assert_eq!(
        format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&body)),
        fx.sha(b)
    );
}
