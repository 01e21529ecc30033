//! Audit events: one structured record for every allow and deny, every admin change and every
//! failed authentication.
//!
//! The request path only hands the event to a bounded channel; a background task writes it. A
//! full channel makes the request wait rather than drop the record: an audit trail with gaps is
//! worth less than a slower response. The writer appends to the store's hash-chained log with
//! group commit (one durable transaction per batch, so the gate's throughput does not depend on
//! it); identical events within one batch (repeated cache-hit serves) become one entry with a
//! count. Each entry names the SHA-256 of the one before it, so an edited, removed or reordered
//! entry breaks the chain; signed checkpoints ([`checkpoint`]) fix the chain under a key the
//! store does not hold, so a rewrite with recomputed hashes shows too. Denials past a client's
//! allowance fold into counted entries ([`fold`]); old entries move to the archive
//! ([`archive`]).

pub mod archive;
pub mod checkpoint;
pub mod fold;
pub mod verify;
pub mod witness;
mod writer;

pub use verify::{verify, verify_all, ChainReport};
pub use writer::Settings;
use writer::Writer;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// Unix seconds.
    pub time: i64,
    /// `pypi.page`, `pypi.file`, `pypi.metadata`, `oci.manifest`, `oci.blob`, `oci.tags`,
    /// `admin.<what>` for admin changes, `auth` for failed authentications.
    pub action: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// Stable reason code: the rule kind for an allow, the deny code for a deny.
    pub reason: String,
    /// The human sentence (denials) or the rule's file:line (allows).
    pub detail: String,
    /// The project (index) or repository (pull gate) asked for.
    pub subject: String,
    /// The file name, tag or digest within it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_sha256: Option<String>,
    pub client: String,
    /// Who acted (an admin token's name and role), for admin changes and authentications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// An admin change's state before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    /// A folded entry's sample of what its denials asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<String>>,
}

impl AuditEvent {
    /// An event about `subject` (a project or repository) and what in it was asked for; the
    /// decision is filled in by [`AuditEvent::allow`] or [`AuditEvent::deny`].
    pub fn about(
        action: &'static str,
        subject: String,
        artifact: Option<String>,
        sha256: Option<String>,
        client: &str,
    ) -> AuditEvent {
        AuditEvent {
            time: 0,
            action: action.to_string(),
            decision: "deny".into(),
            reason: String::new(),
            detail: String::new(),
            subject,
            artifact,
            sha256,
            actual_sha256: None,
            client: client.to_string(),
            actor: None,
            before: None,
            after: None,
            samples: None,
        }
    }

    /// Allowed by a rule of kind `reason`, written at `source` (file:line).
    pub fn allow(self, reason: &str, source: String) -> AuditEvent {
        AuditEvent {
            decision: "allow".into(),
            reason: reason.to_string(),
            detail: source,
            ..self
        }
    }

    /// Denied, with the reason code and the sentence the client saw.
    pub fn deny(self, reason: &str, detail: String) -> AuditEvent {
        AuditEvent {
            decision: "deny".into(),
            reason: reason.to_string(),
            detail,
            ..self
        }
    }
}

/// A hash of everything but the time, for folding repeated serves of one allowed decision;
/// `None`: never folded (denials, failed authentications and admin changes are each their own
/// entry).
fn fold_key(ev: &AuditEvent) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    if ev.decision != "allow" || ev.before.is_some() || ev.after.is_some() {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &ev.action,
        &ev.decision,
        &ev.reason,
        &ev.detail,
        &ev.subject,
        &ev.artifact,
        &ev.sha256,
        &ev.actual_sha256,
        &ev.client,
        &ev.actor,
    )
        .hash(&mut h);
    Some(h.finish())
}

fn same_decision(a: &AuditEvent, b: &AuditEvent) -> bool {
    a.action == b.action
        && a.decision == b.decision
        && a.reason == b.reason
        && a.detail == b.detail
        && a.subject == b.subject
        && a.artifact == b.artifact
        && a.sha256 == b.sha256
        && a.actual_sha256 == b.actual_sha256
        && a.client == b.client
        && a.actor == b.actor
        && a.before.is_none()
        && b.before.is_none()
        && a.after.is_none()
        && b.after.is_none()
}

/// One stored entry of the chained log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// SHA-256 (hex) of the previous entry's JSON; 64 zeros for the first.
    pub prev: String,
    /// How many identical events this entry stands for (aggregated within one group commit).
    pub count: u64,
    #[serde(flatten)]
    pub event: AuditEvent,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Events written per group commit at most.
const BATCH: usize = 4096;
/// How long the writer gathers events for one group commit (also the longest a flush waits).
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// Longest subject, artifact or client kept in an entry, in bytes.
pub const MAX_FIELD: usize = 256;
/// Longest detail kept in an entry, in bytes.
const MAX_DETAIL: usize = 1024;

/// Cuts `s` to at most `max` bytes (at a character boundary), saying how long it was.
pub fn clip(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let len = s.len();
    let mut cut = max.saturating_sub(24);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(&format!("…({len} bytes)"));
}

/// Where the chain stands in the store: the last entry, or the retention anchor when every
/// entry was pruned, or the genesis. A head that cannot be read is an error: starting over
/// would overwrite the history.
pub fn chain_head(store: &Store) -> Result<(u64, String), String> {
    if let Some((seq, bytes)) = store.audit_last().map_err(|e| format!("audit log: {e}"))? {
        let hash = split(&bytes).map(|(h, _)| h.to_string()).ok_or_else(|| {
            format!("the last audit entry (#{seq}) is damaged; run tollgate audit verify")
        })?;
        return Ok((seq, hash));
    }
    match store
        .audit_anchor()
        .map_err(|e| format!("audit log: {e}"))?
    {
        Some(bytes) => {
            let a: checkpoint::Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
                format!("the audit anchor is damaged ({e}); run tollgate audit verify")
            })?;
            Ok((a.seq, a.hash))
        }
        None => Ok((0, GENESIS.to_string())),
    }
}

/// Signs a checkpoint of the head and stores it (one-shot commands that appended entries
/// while the gate was stopped); nothing when the head is covered already.
pub fn checkpoint_blocking(
    store: &Store,
    signer: &checkpoint::Signer,
    witness: Option<&std::path::Path>,
) -> Result<(), String> {
    let (seq, hash) = chain_head(store)?;
    if seq == 0 || store.audit_checkpoint_last().map_err(|e| e.to_string())? >= Some(seq) {
        return Ok(());
    }
    let cp = signer.sign(seq, &hash, crate::store::cache::now_secs());
    let json = serde_json::to_string(&cp).map_err(|e| e.to_string())?;
    store
        .audit_checkpoint_put(seq, json.as_bytes())
        .map_err(|e| e.to_string())?;
    tracing::info!(target: "tollgate::audit", checkpoint = %json, "audit checkpoint");
    if let Some(w) = witness {
        witness::write(w, &cp)?;
    }
    Ok(())
}

/// A stored value: `<sha256 hex of the JSON> <JSON>`.
fn encode(entry: &AuditEntry) -> Result<(String, Vec<u8>), serde_json::Error> {
    let json = serde_json::to_vec(entry)?;
    let hash = hex::encode(sha2::Sha256::digest(&json));
    let mut out = Vec::with_capacity(json.len() + 65);
    out.extend_from_slice(hash.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&json);
    Ok((hash, out))
}

/// Splits a stored value into its recorded hash and the entry JSON.
fn split(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let hash = std::str::from_utf8(bytes.get(..64)?).ok()?;
    (bytes.get(64) == Some(&b' ')).then_some((hash, bytes.get(65..)?))
}

/// Decodes a stored value, checking it against its own recorded hash.
pub fn decode(bytes: &[u8]) -> Option<(String, AuditEntry)> {
    let (hash, json) = split(bytes)?;
    if hex::encode(sha2::Sha256::digest(json)) != hash {
        return None;
    }
    Some((hash.to_string(), serde_json::from_slice(json).ok()?))
}

/// Appends one event directly (one-shot commands that hold the store, such as
/// `tollgate token create`), chained to the current head.
pub fn append_blocking(store: &Store, mut ev: AuditEvent) -> Result<(), String> {
    ev.time = crate::store::cache::now_secs();
    append_many_blocking(store, vec![ev])
}

/// Appends events in one transaction, chained to the current head, times as given.
pub fn append_many_blocking(store: &Store, events: Vec<AuditEvent>) -> Result<(), String> {
    // A shared store may have moved on (a replica appended) between reading the head and
    // appending: chained again from the new head, a few times.
    let mut tries = 0;
    loop {
        let (mut seq, mut prev) = chain_head(store)?;
        let mut rows = Vec::with_capacity(events.len());
        for event in &events {
            seq += 1;
            let entry = AuditEntry {
                seq,
                prev,
                count: 1,
                event: event.clone(),
            };
            let (hash, bytes) = encode(&entry).map_err(|e| e.to_string())?;
            prev = hash;
            rows.push((seq, bytes));
        }
        match store.audit_append(&rows) {
            Err(crate::store::StoreError::AuditMoved(_)) if tries < 16 => tries += 1,
            r => return r.map_err(|e| e.to_string()),
        }
    }
}

pub use crate::store::Change;

enum Msg {
    Event(Box<AuditEvent>),
    Flush(oneshot::Sender<()>),
    /// Shutdown: folded denials written and the head signed.
    Close(oneshot::Sender<()>),
    Change(Box<AuditEvent>, Change, oneshot::Sender<Result<(), String>>),
}

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
    /// The public half of the checkpoint key (empty: unkeyed).
    keys: Arc<Vec<checkpoint::VerifyKey>>,
    /// Ids of the retired keys among them, the witness file, checkpoint_every.
    retired: Arc<Vec<(String, Option<u64>)>>,
    witness: Option<std::path::PathBuf>,
    witness_problem: Arc<std::sync::Mutex<Option<String>>>,
    every: std::time::Duration,
    /// Why the log did not verify at start (checkpoints are then not signed).
    integrity: Arc<std::sync::Mutex<Option<String>>>,
}

impl Audit {
    /// Starts the writer task over the store's audit log (`None`: the log stream only, for
    /// one-shot commands). It ends when every `Audit` handle is dropped, after writing what was
    /// queued, folded denials and a last checkpoint.
    pub fn start(
        metrics: Arc<Metrics>,
        store: Option<Arc<Store>>,
        settings: Settings,
    ) -> Result<(Audit, tokio::task::JoinHandle<()>), String> {
        let (tx, mut rx) = mpsc::channel::<Msg>(65_536);
        let keys: Vec<checkpoint::VerifyKey> = settings
            .signer
            .iter()
            .map(|s| s.public.clone())
            .chain(settings.previous.iter().map(|(k, _)| k.clone()))
            .collect();
        let archive_dir = settings.archive_dir.clone();
        let every = settings.checkpoint_every;
        let retired: Vec<(String, Option<u64>)> = settings
            .previous
            .iter()
            .map(|(k, last)| (k.id.clone(), *last))
            .collect();
        let witness = settings.witness.clone();
        let mut writer = Writer::new(store.clone(), metrics.clone(), settings)?;
        let witness_problem = writer.witness_problem.clone();
        // The log is checked before the gate signs anything more: a head rewritten while the
        // gate was stopped must not be vouched for by its next checkpoint.
        let mut integrity = None;
        if let (Some(store), Some(dir)) = (&store, &archive_dir) {
            let given = verify::Given {
                keys: keys.clone(),
                external: Vec::new(),
                retired: retired.clone(),
                witness: witness.clone(),
                checkpoint_every: Some(every),
            };
            let checked = store
                .guard(|| verify_all(store, &given, dir).map_err(crate::store::StoreError::Audit));
            let problem = match checked {
                Ok(r) if r.intact() => None,
                Ok(r) => Some(r.lines().join("; ")),
                Err(e) => Some(e.to_string()),
            };
            if let Some(p) = problem {
                tracing::error!(target: "tollgate::audit", problem = %p, "the audit log does not verify: no checkpoint is signed until it is resolved (README: \"When the store is damaged\")");
                metrics.audit_unverified.store(1, Relaxed);
                writer.pause_signing();
                integrity = Some(p);
            }
        }
        let task = tokio::spawn(async move {
            let mut clock = tokio::time::interval(std::time::Duration::from_secs(1));
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    _ = clock.tick() => {
                        writer.tick().await;
                        continue;
                    }
                };
                let mut events = Vec::new();
                let mut flushes = Vec::new();
                let mut closes = Vec::new();
                let mut change = None;
                // Group commit: after a first event, wait GATHER for more (one wake-up per
                // batch, not per event), then take everything queued, up to BATCH. A flush or
                // a change as the first message is served at once.
                if matches!(first, Msg::Event(_)) {
                    tokio::time::sleep(GATHER).await;
                }
                let mut next = Some(first);
                while let Some(m) = next.take() {
                    match m {
                        Msg::Event(e) => events.push(*e),
                        Msg::Flush(done) => flushes.push(done),
                        Msg::Close(done) => closes.push(done),
                        Msg::Change(e, apply, done) => {
                            change = Some((*e, apply, done));
                            break;
                        }
                    }
                    if events.len() >= BATCH {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
                // Events recorded before a change are stored before it.
                if !events.is_empty() || !writer.pending.is_empty() {
                    writer.write(events).await;
                }
                if let Some((event, apply, done)) = change {
                    let _ = done.send(writer.change(event, apply).await);
                }
                for done in flushes {
                    let _ = done.send(());
                }
                if !closes.is_empty() {
                    writer.close().await;
                    for done in closes {
                        let _ = done.send(());
                    }
                }
            }
            writer.close().await;
        });
        Ok((
            Audit {
                tx,
                metrics,
                keys: Arc::new(keys),
                retired: Arc::new(retired),
                witness,
                witness_problem,
                every,
                integrity: Arc::new(std::sync::Mutex::new(integrity)),
            },
            task,
        ))
    }

    /// Records an event (stamping its time) and counts it in the metrics.
    pub async fn record(&self, mut ev: AuditEvent) {
        ev.time = crate::store::cache::now_secs();
        // What a client chose (a path, a name) is kept to a bounded length: an 8 KB request
        // target must not become an 8 KB entry.
        clip(&mut ev.subject, MAX_FIELD);
        clip(&mut ev.detail, MAX_DETAIL);
        clip(&mut ev.client, MAX_FIELD);
        if let Some(a) = ev.artifact.as_mut() {
            clip(a, MAX_FIELD);
        }
        self.metrics.audit_events.fetch_add(1, Relaxed);
        self.metrics.decision(ev.decision == "allow", &ev.reason);
        match self.tx.try_send(Msg::Event(Box::new(ev))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                let _ = self.tx.send(m).await;
            }
            Err(mpsc::error::TrySendError::Closed(Msg::Event(ev))) => {
                tracing::error!(target: "tollgate::audit", event = ?ev, "audit writer stopped; event logged inline");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Applies an admin change together with its audit entry, in one durable transaction:
    /// either both are stored or neither.
    pub async fn commit_change(&self, mut ev: AuditEvent, apply: Change) -> Result<(), String> {
        ev.time = crate::store::cache::now_secs();
        self.metrics.audit_events.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Change(Box::new(ev), apply, tx))
            .await
            .map_err(|_| "the audit writer has stopped".to_string())?;
        rx.await
            .map_err(|_| "the audit writer has stopped".to_string())?
    }

    /// The checkpoint key's public half (empty: unkeyed).
    pub fn keys(&self) -> Vec<checkpoint::VerifyKey> {
        self.keys.as_ref().clone()
    }

    /// What verifying this gate's log is given: its keys (retired ones named), its witness
    /// file and checkpoint_every.
    pub fn given(&self) -> verify::Given {
        verify::Given {
            keys: self.keys(),
            external: Vec::new(),
            retired: self.retired.as_ref().clone(),
            witness: self.witness.clone(),
            checkpoint_every: Some(self.every),
        }
    }

    /// Why the last checkpoint could not be written to `witness_file`, if it could not.
    pub fn witness_problem(&self) -> Option<String> {
        self.witness_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the audit log did not verify at start, if it did not.
    pub fn integrity(&self) -> Option<String> {
        self.integrity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// At shutdown: writes what is queued and the denials folded so far, and signs the head.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits until everything recorded so far has been written (or kept for a retry).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repeated_allows_fold() {
        let allow = AuditEvent::about("pypi.page", "numpy".into(), None, None, "10.0.0.1")
            .allow("project_rule", "index pypi".into());
        let mut later = allow.clone();
        later.time = 99;
        assert_eq!(fold_key(&allow), fold_key(&later));
        assert!(same_decision(&allow, &later));
        let mut other_client = allow.clone();
        other_client.client = "10.0.0.2".into();
        assert!(!same_decision(&allow, &other_client));
        let deny = AuditEvent::about("auth", "/admin/v1".into(), None, None, "10.0.0.1")
            .deny("auth_failed", "unknown token".into());
        assert_eq!(fold_key(&deny), None);
        let mut change = allow.clone();
        change.after = Some(serde_json::json!({ "id": 1 }));
        assert_eq!(fold_key(&change), None);
    }

    #[test]
    fn client_chosen_fields_are_clipped() {
        let mut s = "é".repeat(1000);
        clip(&mut s, MAX_FIELD);
        assert!(s.len() <= MAX_FIELD, "{}", s.len());
        assert!(s.ends_with("…(2000 bytes)"));
        let mut short = "numpy".to_string();
        clip(&mut short, MAX_FIELD);
        assert_eq!(short, "numpy");
    }

    #[test]
    fn stored_entries_check_their_own_hash() {
        let e = AuditEntry {
            seq: 1,
            prev: GENESIS.into(),
            count: 1,
            event: AuditEvent::about("x", "s".into(), None, None, "c").allow("r", "d".into()),
        };
        let (hash, bytes) = encode(&e).unwrap();
        assert_eq!(decode(&bytes).map(|(h, _)| h), Some(hash));
        let mut edited = bytes.clone();
        let last = edited.len() - 2;
        edited[last] ^= 1;
        assert!(decode(&edited).is_none());
        assert!(decode(b"short").is_none());
    }
}
