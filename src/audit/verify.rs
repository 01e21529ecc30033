//! `audit verify`: the chain walked from its anchor, held against the signed checkpoints.
//!
//! What each finding proves: an entry that does not match its own hash, or does not name the
//! hash of the one before it, was edited without recomputing the chain. A chain that is whole
//! but disagrees with a signed checkpoint was rewritten (hashes recomputed) somewhere between
//! the last checkpoint that still agrees and the first that does not. A signed checkpoint past
//! the end of the log means its tail was removed. Entries after the last signed checkpoint are
//! only as good as the store they sit in; the report says how many there are.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::Digest as _;

use super::checkpoint::{Checkpoint, Unverified, VerifyKey};
use super::{split, AuditEntry, GENESIS};
use crate::store::{Store, StoreError};

/// The outcome of a chain check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChainReport {
    /// Entries that verified (from the first kept one).
    pub entries: u64,
    /// The first entry kept (entries before it were pruned by retention), 0 for an empty log.
    pub first_seq: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// The first entry that breaks the chain, and why; `None`: the chain is whole.
    pub broken: Option<(u64, String)>,
    /// A key was given to check the checkpoints with.
    pub keyed: bool,
    /// Checkpoints whose signature verified and that agree with the chain.
    pub signed_checkpoints: u64,
    /// The last signed checkpoint that agrees with the chain.
    pub last_checkpoint: Option<Checkpoint>,
    /// Entries after the last signed checkpoint (nothing signed vouches for them yet).
    pub unsigned_entries: u64,
    /// What shows the log was changed: a rewritten range, a removed tail, a forged checkpoint.
    pub tampered: Vec<String>,
    /// What the report could not check (checkpoints signed by another key, unsigned ones).
    pub notes: Vec<String>,
    /// The checkpoint of the last entry retention pruned.
    pub anchor: Option<Checkpoint>,
    /// Entries and files in the archive, when it was checked.
    pub archived_entries: u64,
    pub archive_files: usize,
}

impl ChainReport {
    /// Whole, and in agreement with every signed checkpoint.
    pub fn intact(&self) -> bool {
        self.broken.is_none() && self.tampered.is_empty()
    }

    /// `intact`, `unkeyed` (whole, but nothing signed it) or `tampered`.
    pub fn status(&self) -> &'static str {
        if !self.intact() {
            "tampered"
        } else if !self.keyed {
            "unkeyed"
        } else {
            "intact"
        }
    }

    /// The report in sentences, most important first.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((seq, why)) = &self.broken {
            out.push(format!(
                "audit chain broken at entry #{seq}: {why} ({} entries before it verify)",
                self.entries
            ));
        }
        out.extend(self.tampered.iter().cloned());
        if self.intact() {
            out.push(format!(
                "audit chain intact: {} entries (#{}..#{}), head {}",
                self.entries, self.first_seq, self.head_seq, self.head_hash
            ));
        }
        if !self.keyed {
            out.push("unkeyed: no checkpoint key was given ([audit] signing_key_env or signing_key_file, or --public-key), so nothing shows the chain was not rewritten with its hashes recomputed".into());
        } else {
            match &self.last_checkpoint {
                Some(cp) => out.push(format!(
                    "{} signed checkpoints agree; the last covers #{} (signed at {}); {} entries follow it",
                    self.signed_checkpoints, cp.seq, cp.time, self.unsigned_entries
                )),
                None => out.push(format!(
                    "no signed checkpoint covers this log; {} entries are vouched for by nothing",
                    self.unsigned_entries
                )),
            }
        }
        if self.archive_files > 0 && self.intact() {
            out.push(format!(
                "archive intact: {} entries in {} files, joined to the log at #{}",
                self.archived_entries,
                self.archive_files,
                self.anchor.as_ref().map_or(0, |a| a.seq)
            ));
        }
        out.extend(self.notes.iter().cloned());
        out
    }
}

/// Why one stored entry does not continue the chain, if it does not.
fn check_entry(seq: u64, bytes: &[u8], head_seq: u64, head: &str) -> Result<String, String> {
    let (hash, json) = split(bytes).ok_or("the entry is not a hash and a record")?;
    if hex::encode(sha2::Sha256::digest(json)) != hash {
        return Err("the entry does not match its recorded hash (edited)".into());
    }
    let e: AuditEntry =
        serde_json::from_slice(json).map_err(|_| "the entry is not a valid record".to_string())?;
    if e.seq != seq {
        return Err(format!("the entry says it is #{}", e.seq));
    }
    if seq != head_seq + 1 {
        return Err(format!(
            "entries #{}..#{} are missing",
            head_seq + 1,
            seq - 1
        ));
    }
    if e.prev != head {
        return Err(
            "the entry does not follow the one before it (removed, reordered or rewritten)".into(),
        );
    }
    Ok(hash.to_string())
}

/// What `verify` is given besides the store.
#[derive(Default)]
pub struct Given {
    /// Keys whose checkpoints vouch (the configured key, and others with `--public-key`, as
    /// after a rotation). Empty: unkeyed.
    pub keys: Vec<VerifyKey>,
    /// Checkpoints kept outside the store (the log stream's copies).
    pub external: Vec<Checkpoint>,
    /// Ids of keys retired by a rotation (`previous_public_keys`): a checkpoint of theirs past
    /// the first one by a current key was not made by the gate.
    /// With the last sequence number each signed, when the configuration says
    /// (`previous_public_keys = [{ file, last_seq }]`).
    pub retired: Vec<(String, Option<u64>)>,
    /// `[audit] witness_file`: the latest checkpoint, kept where the store's writer cannot
    /// reach; checked like a copy from the log stream.
    pub witness: Option<std::path::PathBuf>,
    /// The configured `checkpoint_every`: entries much older than the newest one must be
    /// covered by a checkpoint.
    pub checkpoint_every: Option<std::time::Duration>,
}

fn check_any(keys: &[VerifyKey], cp: &Checkpoint) -> Result<(), Unverified> {
    let Some(id) = &cp.key else {
        return Err(Unverified::Unsigned);
    };
    match keys.iter().find(|k| k.id == *id) {
        Some(k) => k.check(cp),
        None => Err(Unverified::OtherKey(id.clone())),
    }
}

/// Sorts checkpoints into those that vouch for the chain (signature verified with a given key,
/// or all of them when no key is given). With a key, a checkpoint that does not verify is a
/// finding: the gate writes only signed checkpoints, so an unsigned one, or one under a key not
/// given, was altered (or its key was not given: the message says how).
fn trusted(
    all: Vec<(Checkpoint, &'static str)>,
    keys: &[VerifyKey],
    report: &mut ChainReport,
) -> BTreeMap<u64, Checkpoint> {
    let mut out: BTreeMap<u64, Checkpoint> = BTreeMap::new();
    for (cp, from) in all {
        if !keys.is_empty() {
            let why = match check_any(keys, &cp) {
                Ok(()) => None,
                Err(Unverified::Unsigned) => Some("is unsigned, and the gate writes only signed checkpoints: altered".to_string()),
                Err(Unverified::OtherKey(id)) => Some(format!(
                    "is signed by key {}…, not a key given: altered, or signed by a rotated key (give that key too with --public-key)",
                    &id[..id.len().min(16)]
                )),
                Err(Unverified::BadSignature) => {
                    Some("carries a signature that does not verify: forged or damaged".to_string())
                }
            };
            if let Some(why) = why {
                report.tampered.push(format!(
                    "checkpoint #{} ({from}, time {}) {why}",
                    cp.seq, cp.time
                ));
                continue;
            }
        }
        match out.get(&cp.seq) {
            Some(prev) if prev.hash != cp.hash => report.tampered.push(format!(
                "two checkpoints of #{} name different hashes ({} and {}): one log was replaced by another",
                cp.seq, prev.hash, cp.hash
            )),
            Some(_) => {}
            None => {
                out.insert(cp.seq, cp);
            }
        }
    }
    out
}

/// A key retired by a rotation signs nothing after the current key's first checkpoint: one
/// that does was made with the old key (leaked, which is why keys are rotated), not by the gate.
fn retired_after_rotation(
    checkpoints: &BTreeMap<u64, Checkpoint>,
    retired: &[(String, Option<u64>)],
    report: &mut ChainReport,
) {
    let retired_of = |cp: &Checkpoint| {
        cp.key
            .as_ref()
            .and_then(|k| retired.iter().find(|(id, _)| id == k))
    };
    let is_retired = |cp: &Checkpoint| retired_of(cp).is_some();
    // The bound from the configuration holds whatever the store says: a data_dir writer
    // who removed every checkpoint of the current key cannot lift it.
    for cp in checkpoints.values() {
        if let Some((_, Some(last))) = retired_of(cp) {
            if cp.seq > *last {
                report.tampered.push(format!(
                    "checkpoint #{} is signed by a retired key whose last checkpoint was #{last}: made with the old key, not by the gate",
                    cp.seq
                ));
            }
        }
    }
    let Some(first_current) = checkpoints
        .values()
        .find(|cp| cp.key.is_some() && !is_retired(cp))
        .map(|cp| cp.seq)
    else {
        return;
    };
    for cp in checkpoints.range(first_current + 1..).map(|(_, c)| c) {
        if is_retired(cp) {
            report.tampered.push(format!(
                "checkpoint #{} is signed by a retired key after the current key's first checkpoint #{first_current}: made with the old key, not by the gate",
                cp.seq
            ));
        }
    }
}

/// Verifies the log: from the anchor retention left (or the genesis), every entry, against
/// the stored checkpoints and the given ones, with the given keys.
pub fn verify(store: &Store, given: &Given) -> Result<ChainReport, StoreError> {
    Ok(walk(store, given)?.0)
}

/// [`verify`], and the checkpoints that vouched (for the archive check).
fn walk(
    store: &Store,
    given: &Given,
) -> Result<(ChainReport, BTreeMap<u64, Checkpoint>), StoreError> {
    let anchor: Option<Checkpoint> = match store.audit_anchor()? {
        None => None,
        Some(bytes) => Some(
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
                path: "audit anchor".into(),
                detail: e.to_string(),
            })?,
        ),
    };
    let keyed = !given.keys.is_empty();
    let mut report = ChainReport {
        entries: 0,
        first_seq: 0,
        head_seq: anchor.as_ref().map_or(0, |a| a.seq),
        head_hash: anchor
            .as_ref()
            .map_or_else(|| GENESIS.to_string(), |a| a.hash.clone()),
        broken: None,
        keyed,
        signed_checkpoints: 0,
        last_checkpoint: None,
        unsigned_entries: 0,
        tampered: Vec::new(),
        notes: Vec::new(),
        anchor: anchor.clone(),
        archived_entries: 0,
        archive_files: 0,
    };
    let mut all = Vec::new();
    for (seq, bytes) in store.audit_checkpoints()? {
        match serde_json::from_slice::<Checkpoint>(&bytes) {
            Ok(cp) if cp.seq == seq => all.push((cp, "stored")),
            _ => report.tampered.push(format!(
                "the checkpoint stored for #{seq} is not a checkpoint of #{seq} (edited or damaged)"
            )),
        }
    }
    all.extend(given.external.iter().cloned().map(|c| (c, "given")));
    match &anchor {
        // Retention run by a gate without a key leaves an unsigned anchor: it ties the log to
        // the archive, and vouches for nothing.
        Some(a) if a.signature.is_none() => report.notes.push(format!(
            "the retention anchor (#{}) is unsigned (retention ran without a key)",
            a.seq
        )),
        Some(a) => all.push((a.clone(), "retention anchor")),
        None => {}
    }
    if let Some(path) = &given.witness {
        let newest_stored = all
            .iter()
            .filter(|(c, from)| *from == "stored" && c.signature.is_some())
            .map(|(c, _)| c.seq)
            .max();
        match (super::witness::read(path), newest_stored) {
            (Ok(Some(cp)), newest) => {
                if let Some(n) = newest.filter(|n| *n > cp.seq) {
                    report.notes.push(format!(
                        "the witness file {} holds checkpoint #{} but the store's newest is #{n}: witness writes failed, or it was put back from an older copy (it vouches up to #{} only)",
                        path.display(),
                        cp.seq,
                        cp.seq
                    ));
                }
                all.push((cp, "witness"));
            }
            (Ok(None), None) => report.notes.push(format!(
                "the witness file {} is not written yet (the first checkpoint writes it)",
                path.display()
            )),
            // The gate writes the witness with every checkpoint it stores: signed checkpoints
            // and no witness means it was removed (or witness_file was only now configured).
            (Ok(None), Some(n)) => report.tampered.push(format!(
                "witness: {} is missing, and the store holds signed checkpoints up to #{n}: it was removed (if witness_file was only now configured, run tollgate audit witness-init once, with the gate stopped)",
                path.display()
            )),
            (Err(e), _) => report.tampered.push(format!("witness: {e}")),
        }
    }
    let checkpoints = trusted(all, &given.keys, &mut report);
    retired_after_rotation(&checkpoints, &given.retired, &mut report);
    let mut pending = checkpoints
        .range(report.head_seq.saturating_add(1)..)
        .map(|(_, c)| c.clone())
        .collect::<Vec<_>>()
        .into_iter()
        .peekable();
    let mut agreed: Option<Checkpoint> = anchor
        .as_ref()
        .and_then(|a| checkpoints.get(&a.seq).cloned());
    let mut disagree: Option<(Checkpoint, String)> = None;
    // Entry times after the last agreeing checkpoint: uncovered, oldest first.
    let mut uncovered_since: Option<(u64, i64)> = None;
    let mut newest_time = i64::MIN;
    store.audit_scan(report.head_seq, |seq, bytes| {
        if report.first_seq == 0 {
            report.first_seq = seq;
        }
        match check_entry(seq, bytes, report.head_seq, &report.head_hash) {
            Err(why) => {
                report.broken = Some((seq, why));
                return false;
            }
            Ok(hash) => {
                report.entries += 1;
                report.head_seq = seq;
                report.head_hash = hash;
            }
        }
        let time = split(bytes)
            .and_then(|(_, j)| serde_json::from_slice::<AuditEntry>(j).ok())
            .map_or(0, |e| e.event.time);
        newest_time = newest_time.max(time);
        if uncovered_since.is_none() {
            uncovered_since = Some((seq, time));
        }
        // Checkpoints skipped over (a sequence number the log does not have) are found
        // below as past its end or in a gap the chain check names.
        while pending.peek().is_some_and(|c| c.seq < seq) {
            pending.next();
        }
        if let Some(cp) = pending.next_if(|c| c.seq == seq) {
            if cp.hash == report.head_hash {
                if disagree.is_none() {
                    report.signed_checkpoints += 1;
                    agreed = Some(cp);
                    uncovered_since = None;
                }
            } else if disagree.is_none() {
                disagree = Some((cp, report.head_hash.clone()));
            }
        }
        true
    })?;
    if let Some((cp, found)) = disagree {
        let from = agreed
            .as_ref()
            .map_or(report.first_seq.max(1), |a| a.seq + 1);
        report.tampered.push(format!(
            "rewritten: an entry in #{from}..#{} was changed after checkpoint #{} was signed at {} (it names hash {}, the log has {found})",
            cp.seq, cp.seq, cp.time, cp.hash
        ));
    }
    if report.broken.is_none() {
        if let Some((_, past)) = checkpoints.range(report.head_seq + 1..).next_back() {
            report.tampered.push(format!(
                "truncated: the log ends at #{} but checkpoint #{} (signed at {}) covers entries up to #{}: entries #{}..#{} were removed",
                report.head_seq, past.seq, past.time, past.seq, report.head_seq + 1, past.seq
            ));
        }
    }
    report.unsigned_entries = match &agreed {
        Some(a) => report.head_seq.saturating_sub(a.seq),
        None => report.entries,
    };
    // A running gate signs the head every checkpoint_every: entries that stayed unsigned while
    // much newer ones were written mean checkpoints were removed. (A gate killed without its
    // last checkpoint leaves only its last moments unsigned.)
    if let (true, Some(every), Some((from, time))) =
        (keyed, given.checkpoint_every, uncovered_since)
    {
        let slack = 2 * every.as_secs() as i64 + 60;
        if newest_time - time > slack {
            report.tampered.push(format!(
                "unsigned: entries #{from}..#{} span {}s although checkpoints are made every {}s, and no checkpoint covers them: checkpoints were removed (or the key was configured after they were written: start the gate once to sign them)",
                report.head_seq,
                newest_time - time,
                every.as_secs()
            ));
        }
    }
    report.last_checkpoint = agreed;
    Ok((report, checkpoints))
}

/// [`verify`], and the archive in `archive_dir` checked as the chain's beginning: it must
/// start at the first entry, verify on its own, agree with every checkpoint of its range, and
/// end where the log's anchor says.
pub fn verify_all(
    store: &Store,
    given: &Given,
    archive_dir: &std::path::Path,
) -> Result<ChainReport, String> {
    let _moving = archive_lock();
    verify_all_locked(store, given, archive_dir)
}

/// Retention writes an archive file and then prunes the store: a verify between the two would
/// see the archive ahead of the store's anchor and report a change that did not happen. Both
/// hold this lock (one process owns the store).
pub(super) fn archive_lock() -> std::sync::MutexGuard<'static, ()> {
    static MOVING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    MOVING.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`verify_all`] for a caller that holds [`archive_lock`].
pub(super) fn verify_all_locked(
    store: &Store,
    given: &Given,
    archive_dir: &std::path::Path,
) -> Result<ChainReport, String> {
    let (mut r, checkpoints) = walk(store, given).map_err(|e| e.to_string())?;
    let a = super::archive::verify_archive(archive_dir, &given.keys, &checkpoints)?;
    r.archive_files = a.files;
    r.archived_entries = a.entries;
    r.tampered
        .extend(a.problems.iter().map(|p| format!("archive: {p}")));
    match (&a.head, &r.anchor) {
        (Some((seq, hash)), Some(anchor)) if (*seq, hash) != (anchor.seq, &anchor.hash) => {
            r.tampered.push(format!(
                "archive: it ends at #{seq} (hash {hash}) but the log continues from anchor #{} (hash {}): archived entries were removed or changed",
                anchor.seq, anchor.hash
            ))
        }
        (None, Some(anchor)) => r.tampered.push(format!(
            "archive: entries #1..#{} were archived, and no archive is in {} (give its place with --archive if it was moved)",
            anchor.seq,
            archive_dir.display()
        )),
        (Some((seq, _)), None) => r.tampered.push(format!(
            "archive: it holds entries up to #{seq} but the store has no anchor: the store was replaced or emptied"
        )),
        _ => {}
    }
    Ok(r)
}
