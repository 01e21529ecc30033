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
        let mut shown = raw.to_string();
        super::clip(&mut shown, 64);
        format!("{shown:?} is not a time: write Unix seconds, 2026-12-01 or 2026-12-01T10:00:00Z")
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
        // Opened as the cache opens its files: a FIFO or a link planted here must not hang
        // verify (and with it the gate's start) or lead elsewhere.
        let file = crate::store::cache::open_cached(&path, None)
            .map_err(|e| format!("{}: {e}", path.display()))?;
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

/// Walks the archive as one chain from the genesis: it must start at entry #1, every file
/// must end with the checkpoint that covers it (signed by one of `keys` when given), and every
/// checkpoint of its range (its own, and `trusted`: stored, given or the anchor) must name the
/// hash the archive has at that entry. Two passes (checkpoints, then entries), so only the
/// hashes checked are held in memory.
pub fn verify_archive(
    dir: &Path,
    keys: &[VerifyKey],
    trusted: &std::collections::BTreeMap<u64, Checkpoint>,
) -> Result<ArchiveReport, String> {
    let mut r = ArchiveReport {
        files: files(dir)?.len(),
        ..ArchiveReport::default()
    };
    if r.files == 0 {
        return Ok(r);
    }
    const LOG: &str = "a checkpoint of the log";
    // Pass 1: each file's covering checkpoint.
    let mut file_checkpoints: Vec<(String, Checkpoint)> = Vec::new();
    let mut last_file = String::new();
    let mut ends_with_checkpoint = true;
    let mut unended = Vec::new();
    scan_archive(dir, |path, line| {
        let p = path.display().to_string();
        if p != last_file {
            if !last_file.is_empty() && !ends_with_checkpoint {
                unended.push(last_file.clone());
            }
            last_file = p.clone();
        }
        match line {
            Line::Entry(..) => ends_with_checkpoint = false,
            Line::Checkpoint(cp) => {
                ends_with_checkpoint = true;
                file_checkpoints.push((p, cp));
            }
        }
        true
    })?;
    if !ends_with_checkpoint {
        unended.push(last_file);
    }
    for f in unended {
        r.problems.push(format!(
            "{f}: it does not end with the checkpoint that covers it"
        ));
    }
    let mut needed: std::collections::BTreeMap<u64, Vec<(String, Checkpoint)>> =
        std::collections::BTreeMap::new();
    for (path, cp) in file_checkpoints {
        if !keys.is_empty() && !keys.iter().any(|k| k.check(&cp).is_ok()) {
            r.problems.push(format!(
                "{path}: checkpoint #{} does not verify with the keys given",
                cp.seq
            ));
            continue;
        }
        needed.entry(cp.seq).or_default().push((path, cp));
    }
    for (seq, cp) in trusted {
        needed
            .entry(*seq)
            .or_default()
            .push((LOG.to_string(), cp.clone()));
    }
    // Pass 2: the chain from #1, and the hashes at the checkpoints' entries.
    let (mut seq, mut head) = (0u64, GENESIS.to_string());
    let mut at: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    scan_archive(dir, |path, line| {
        let Line::Entry(e, hash, _) = line else {
            return true;
        };
        let expected = seq + 1;
        if e.seq != expected {
            r.problems.push(format!(
                "{}: entry #{} where #{expected} belongs: entries are missing or out of order",
                path.display(),
                e.seq
            ));
            return false;
        }
        if e.prev != head {
            r.problems.push(format!(
                "{}: entry #{} does not follow the one before it (edited, removed or reordered)",
                path.display(),
                e.seq
            ));
            return false;
        }
        seq = e.seq;
        head = hash.clone();
        if needed.contains_key(&seq) {
            at.insert(seq, hash);
        }
        r.entries += 1;
        true
    })?;
    for (s, cps) in needed.range(..=seq) {
        for (path, cp) in cps {
            match at.get(s) {
                Some(h) if *h == cp.hash => {}
                Some(h) => r.problems.push(format!(
                    "{path}: rewritten: checkpoint #{s} names hash {} but the archive has {h}",
                    cp.hash
                )),
                None => r.problems.push(format!(
                    "{path}: checkpoint #{s} covers an entry the archive does not hold"
                )),
            }
        }
    }
    // A file's own checkpoint past the archive's end: its run's last entries are gone.
    for (s, cps) in needed.range(seq + 1..) {
        for (path, _) in cps.iter().filter(|(p, _)| p != LOG) {
            r.problems.push(format!(
                "{path}: checkpoint #{s} covers entries past the archive's end (#{seq}): archived entries were removed"
            ));
        }
    }
    if r.entries > 0 {
        r.head = Some((seq, head));
    }
    Ok(r)
}

fn write_file(path: &Path, lines: &[String], cp: &Checkpoint) -> Result<(), String> {
    let mut content = String::new();
    for l in lines {
        content.push_str(l);
        content.push('\n');
    }
    content.push_str(&serde_json::json!({ "checkpoint": cp }).to_string());
    content.push('\n');
    // An archive file is evidence: written once. The same content again (a run interrupted
    // between writing and pruning) is fine; anything else is refused, never overwritten.
    let existing = crate::store::cache::open_cached(path, None).and_then(|mut f| {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut b).map(|_| b)
    });
    match existing {
        Ok(existing) if existing == content.as_bytes() => return Ok(()),
        Ok(_) => {
            return Err(format!(
                "{} exists with other content: it is never overwritten (retention paused; run tollgate audit verify)",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let tmp = path.with_extension("jsonl.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
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
    given: &super::verify::Given,
) -> Result<u64, String> {
    let _moving = super::verify::archive_lock();
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
    // Pruning must not launder a change: the log and the archive are checked whole first,
    // keyed or not.
    let report = super::verify::verify_all_locked(store, given, dir)?;
    if !report.intact() {
        return Err(format!(
            "retention paused: audit verify finds the log changed ({})",
            report.lines().join("; ")
        ));
    }
    let upto = if given.keys.is_empty() {
        Checkpoint::unsigned(last_seq, &last_hash, now)
    } else {
        let mut best = None;
        for (seq, bytes) in store.audit_checkpoints().map_err(|e| e.to_string())? {
            if seq > last_seq {
                break;
            }
            if let Ok(cp) = serde_json::from_slice::<Checkpoint>(&bytes) {
                if given.keys.iter().any(|k| k.check(&cp).is_ok()) && seq > anchor_seq {
                    best = Some(cp);
                }
            }
        }
        match best {
            Some(cp) => cp,
            None => return Ok(0),
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
    given: std::sync::Arc<super::verify::Given>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let every = (keep / 10).clamp(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(3600),
    );
    loop {
        tokio::time::sleep(every).await;
        let (s, d, g) = (store.clone(), dir.clone(), given.clone());
        let keep_secs = keep.as_secs() as i64;
        let ran = tokio::task::spawn_blocking(move || {
            s.guard(|| {
                retain(&s, &d, keep_secs, crate::store::cache::now_secs(), &g)
                    .map_err(crate::store::StoreError::Audit)
            })
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
    let mut expected = last_archived + 1;
    store
        .audit_scan(last_archived, |seq, bytes| {
            // Retention may have moved entries after the archive was read: an export never
            // skips entries silently.
            if seq != expected {
                failed = Some(format!(
                    "entries #{expected}..#{} are in neither the archive read nor the store (retention moved them during the export, or the archive is missing): run the export again, or tollgate audit verify",
                    seq - 1
                ));
                return false;
            }
            expected = seq + 1;
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
