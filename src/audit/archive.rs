//! Retention: entries older than `retention` are written to the archive and pruned from the
//! store, and `audit export` reads a time range back out of both.
//!
//! The archive is `data_dir/audit-archive/{day}_{first seq}.jsonl`, one file per day (UTC) of
//! entries per retention run: each line an entry's JSON exactly as it was hashed (so the
//! SHA-256 of a line is the hash the next line names as `prev`), and a last line
//! `{"checkpoint": …}` with the checkpoint that covers them. The store keeps that checkpoint
//! as its anchor: the first retained entry names its hash, so the chain stays verifiable from
//! there, and the archive verifies up to it. Exports are written in the same format.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::checkpoint::{Checkpoint, VerifyKey};
use super::{split, AuditEntry, GENESIS};
use crate::policy::units::format_rfc3339;
use crate::store::Store;

/// The archive directory under `data_dir`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit-archive")
}

/// Reads a time given on the command line or in a query: Unix seconds, a date (`2026-12-01`,
/// midnight UTC) or an RFC 3339 timestamp.
pub fn parse_time(raw: &str) -> Result<i64, String> {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<i64>() {
        return Ok(n);
    }
    let full = if raw.len() == 10 {
        format!("{raw}T00:00:00Z")
    } else {
        raw.to_string()
    };
    crate::policy::units::parse_rfc3339(&full).ok_or_else(|| {
        format!("{raw:?} is not a time: write Unix seconds, 2026-12-01 or 2026-12-01T10:00:00Z")
    })
}

/// Archive files in the order of their entries.
fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().to_string();
        let first = name
            .strip_suffix(".jsonl")
            .and_then(|n| n.split_once('_'))
            .and_then(|(_, seq)| seq.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// One line of an archive or export file.
pub enum Line {
    /// The entry, its hash (the SHA-256 of the line) and the line itself.
    Entry(Box<AuditEntry>, String, String),
    Checkpoint(Checkpoint),
}

fn parse_line(line: &str) -> Option<Line> {
    if line.starts_with("{\"checkpoint\"") {
        return Checkpoint::from_json(line).map(Line::Checkpoint);
    }
    let e: AuditEntry = serde_json::from_str(line).ok()?;
    let hash = hex::encode(sha2::Sha256::digest(line.as_bytes()));
    Some(Line::Entry(Box::new(e), hash, line.to_string()))
}

/// Calls `f` on every line of the archive, in order; a line that is neither an entry nor a
/// checkpoint is an error naming the file and line.
fn scan_archive(dir: &Path, mut f: impl FnMut(&Path, Line) -> bool) -> Result<(), String> {
    for (_, path) in files(dir)? {
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            if line.is_empty() {
                continue;
            }
            let parsed = parse_line(&line).ok_or_else(|| {
                format!(
                    "{} line {}: neither an audit entry nor a checkpoint",
                    path.display(),
                    n + 1
                )
            })?;
            if !f(&path, parsed) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// What the archive holds and whether it verifies.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ArchiveReport {
    pub files: usize,
    pub entries: u64,
    /// The last archived entry (sequence number and hash).
    pub head: Option<(u64, String)>,
    pub problems: Vec<String>,
}

/// Walks the archive as one chain from the genesis, checking each file's checkpoint with
/// `key` (when given) against the chain.
pub fn verify_archive(dir: &Path, key: Option<&VerifyKey>) -> Result<ArchiveReport, String> {
    let mut r = ArchiveReport {
        files: files(dir)?.len(),
        ..ArchiveReport::default()
    };
    let (mut seq, mut head) = (0u64, GENESIS.to_string());
    let mut at: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    let mut checkpoints = Vec::new();
    scan_archive(dir, |path, line| {
        match line {
            Line::Entry(e, hash, _) => {
                // The first archived entry starts the walk (an older archive may have been
                // moved away); every later one must follow it.
                if r.entries > 0 && e.seq != seq + 1 {
                    r.problems.push(format!(
                        "{}: entry #{} follows #{seq}: entries are missing",
                        path.display(),
                        e.seq
                    ));
                    return false;
                }
                if r.entries > 0 && e.prev != head {
                    r.problems.push(format!(
                        "{}: entry #{} does not follow the one before it (edited or reordered)",
                        path.display(),
                        e.seq
                    ));
                    return false;
                }
                seq = e.seq;
                head = hash.clone();
                at.insert(seq, hash);
                r.entries += 1;
            }
            Line::Checkpoint(cp) => checkpoints.push((path.display().to_string(), cp)),
        }
        true
    })?;
    for (path, cp) in checkpoints {
        if let Some(key) = key {
            if key.check(&cp).is_err() {
                r.problems.push(format!(
                    "{path}: checkpoint #{} does not verify with key {}…",
                    cp.seq,
                    &key.id[..16]
                ));
                continue;
            }
        }
        match at.get(&cp.seq) {
            Some(h) if *h == cp.hash => {}
            Some(h) => r.problems.push(format!(
                "{path}: rewritten: checkpoint #{} names hash {} but the archive has {h}",
                cp.seq, cp.hash
            )),
            None => r.problems.push(format!(
                "{path}: checkpoint #{} covers an entry the archive does not hold",
                cp.seq
            )),
        }
    }
    if r.entries > 0 {
        r.head = Some((seq, head));
    }
    Ok(r)
}

fn write_file(path: &Path, lines: &[String], cp: &Checkpoint) -> Result<(), String> {
    let tmp = path.with_extension("jsonl.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for l in lines {
            f.write_all(l.as_bytes())?;
            f.write_all(b"\n")?;
        }
        let cpl = serde_json::json!({ "checkpoint": cp }).to_string();
        f.write_all(cpl.as_bytes())?;
        f.write_all(b"\n")?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs retention once: archives and prunes the entries older than `now - keep` up to the
/// last checkpoint that covers them. A keyed log is pruned only up to a signed checkpoint, and
/// only when the whole log verifies (pruning must not launder a rewrite); an unkeyed one up to
/// its last old entry, with an unsigned anchor. Returns the entries pruned.
pub fn retain(
    store: &Store,
    dir: &Path,
    keep_secs: i64,
    now: i64,
    key: Option<&VerifyKey>,
) -> Result<u64, String> {
    let cutoff = now - keep_secs;
    let anchor_seq = match store.audit_anchor().map_err(|e| e.to_string())? {
        Some(b) => {
            serde_json::from_slice::<Checkpoint>(&b)
                .map_err(|e| format!("audit anchor: {e}"))?
                .seq
        }
        None => 0,
    };
    // The prefix of the log older than the cutoff.
    let mut last_old: Option<(u64, String)> = None;
    store
        .audit_scan(anchor_seq, |seq, bytes| match super::decode(bytes) {
            Some((hash, e)) if e.event.time < cutoff => {
                last_old = Some((seq, hash));
                true
            }
            _ => false,
        })
        .map_err(|e| e.to_string())?;
    let Some((last_seq, last_hash)) = last_old else {
        return Ok(0);
    };
    let upto = match key {
        None => Checkpoint::unsigned(last_seq, &last_hash, now),
        Some(key) => {
            let report =
                super::verify::verify(store, Some(key), Vec::new()).map_err(|e| e.to_string())?;
            if !report.intact() {
                return Err(format!(
                    "retention paused: audit verify finds the log changed ({})",
                    report.lines().join("; ")
                ));
            }
            let mut best = None;
            for (seq, bytes) in store.audit_checkpoints().map_err(|e| e.to_string())? {
                if seq > last_seq {
                    break;
                }
                if let Ok(cp) = serde_json::from_slice::<Checkpoint>(&bytes) {
                    if key.check(&cp).is_ok() && seq > anchor_seq {
                        best = Some(cp);
                    }
                }
            }
            match best {
                Some(cp) => cp,
                None => return Ok(0),
            }
        }
    };
    // The entries to archive, cut into one file per day.
    let mut groups: Vec<(String, u64, Vec<String>)> = Vec::new();
    let mut failed = None;
    store
        .audit_scan(anchor_seq, |seq, bytes| {
            if seq > upto.seq {
                return false;
            }
            let Some((_, json)) = split(bytes) else {
                failed = Some(format!("entry #{seq} is damaged"));
                return false;
            };
            let Ok(e) = serde_json::from_slice::<AuditEntry>(json) else {
                failed = Some(format!("entry #{seq} is damaged"));
                return false;
            };
            let day = format_rfc3339(e.event.time)[..10].to_string();
            let line = String::from_utf8_lossy(json).to_string();
            match groups.last_mut() {
                Some((d, _, lines)) if *d == day => lines.push(line),
                _ => groups.push((day, seq, vec![line])),
            }
            true
        })
        .map_err(|e| e.to_string())?;
    if let Some(f) = failed {
        return Err(format!("retention paused: {f}; run tollgate audit verify"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut pruned = 0u64;
    for (day, first, lines) in &groups {
        write_file(&dir.join(format!("{day}_{first:012}.jsonl")), lines, &upto)?;
        pruned += lines.len() as u64;
    }
    let anchor = serde_json::to_vec(&upto).map_err(|e| e.to_string())?;
    store
        .audit_prune(upto.seq, &anchor)
        .map_err(|e| e.to_string())?;
    Ok(pruned)
}

/// Retention in the background: every tenth of `keep` (between 10 s and an hour).
pub async fn run(
    store: std::sync::Arc<Store>,
    dir: PathBuf,
    keep: std::time::Duration,
    key: Option<VerifyKey>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let every = (keep / 10).clamp(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(3600),
    );
    loop {
        tokio::time::sleep(every).await;
        let (s, d, k) = (store.clone(), dir.clone(), key.clone());
        let keep_secs = keep.as_secs() as i64;
        let ran = tokio::task::spawn_blocking(move || {
            retain(
                &s,
                &d,
                keep_secs,
                crate::store::cache::now_secs(),
                k.as_ref(),
            )
        })
        .await;
        match ran {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                metrics
                    .audit_archived
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(target: "tollgate::audit", entries = n, dir = %dir.display(), "audit entries archived and pruned");
            }
            Ok(Err(e)) => tracing::error!(target: "tollgate::audit", error = %e, "audit retention"),
            Err(e) => tracing::error!(target: "tollgate::audit", error = %e, "audit retention"),
        }
    }
}

/// `audit export`: every entry with `since <= time <= until`, from the archive and then the
/// store, in the archive's line format, each followed by the checkpoints that cover what was
/// written. `emit` gets one line at a time (without the newline) and returns false to stop.
pub fn export(
    store: &Store,
    dir: &Path,
    since: i64,
    until: i64,
    mut emit: impl FnMut(String) -> bool,
) -> Result<(), String> {
    let mut stopped = false;
    let mut wrote_since_checkpoint = false;
    let mut last_archived = 0u64;
    scan_archive(dir, |_, line| {
        let ok = match line {
            Line::Entry(e, _, raw) => {
                last_archived = e.seq;
                if (since..=until).contains(&e.event.time) {
                    wrote_since_checkpoint = true;
                    emit(raw)
                } else {
                    true
                }
            }
            Line::Checkpoint(cp) if wrote_since_checkpoint => {
                wrote_since_checkpoint = false;
                emit(serde_json::json!({ "checkpoint": cp }).to_string())
            }
            Line::Checkpoint(_) => true,
        };
        stopped = !ok;
        ok
    })?;
    if stopped {
        return Ok(());
    }
    let checkpoints: Vec<(u64, Vec<u8>)> = store.audit_checkpoints().map_err(|e| e.to_string())?;
    let mut cps = checkpoints.into_iter().peekable();
    let mut failed = None;
    store
        .audit_scan(last_archived, |seq, bytes| {
            let Some((_, json)) = split(bytes) else {
                failed = Some(format!(
                    "entry #{seq} is damaged; run tollgate audit verify"
                ));
                return false;
            };
            let Ok(e) = serde_json::from_slice::<AuditEntry>(json) else {
                failed = Some(format!(
                    "entry #{seq} is damaged; run tollgate audit verify"
                ));
                return false;
            };
            if (since..=until).contains(&e.event.time) {
                wrote_since_checkpoint = true;
                if !emit(String::from_utf8_lossy(json).to_string()) {
                    return false;
                }
            }
            while let Some((_, cp)) = cps.next_if(|(s, _)| *s <= seq) {
                if wrote_since_checkpoint {
                    if let Ok(cp) = serde_json::from_slice::<Checkpoint>(&cp) {
                        wrote_since_checkpoint = false;
                        if !emit(serde_json::json!({ "checkpoint": cp }).to_string()) {
                            return false;
                        }
                    }
                }
            }
            true
        })
        .map_err(|e| e.to_string())?;
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_seconds_dates_or_timestamps() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_time("1970-01-02"), Ok(86_400));
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Ok(60));
        assert!(parse_time("yesterday").is_err());
    }
}
