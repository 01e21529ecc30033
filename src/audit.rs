//! Audit events: one structured record for every allow and deny, every admin change and every
//! failed authentication.
//!
//! The request path only hands the event to a bounded channel; a background task writes it. A
//! full channel makes the request wait rather than drop the record: an audit trail with gaps is
//! worth less than a slower response. The writer appends to the store's hash-chained log with
//! group commit (one durable transaction per batch, so the gate's throughput does not depend on
//! it); identical events within one batch (repeated cache-hit serves) become one entry with a
//! count. Each entry names the SHA-256 of the one before it, so an edited, removed or reordered
//! entry breaks the chain; the head is logged every minute so that an outside log anchors it.

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
/// How often the chain head is logged for an outside log to anchor.
const HEAD_EVERY_SECS: i64 = 60;

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

/// The outcome of a chain check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChainReport {
    pub entries: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// The first entry that breaks the chain, and why; `None`: intact.
    pub broken: Option<(u64, String)>,
}

/// Walks the whole log: every entry must match its recorded hash, name the previous entry's
/// hash, and follow it without a gap in the sequence numbers.
pub fn verify_chain(store: &Store) -> Result<ChainReport, crate::store::StoreError> {
    let mut report = ChainReport {
        entries: 0,
        head_seq: 0,
        head_hash: GENESIS.to_string(),
        broken: None,
    };
    store.audit_scan(0, |seq, bytes| {
        let why = match split(bytes) {
            None => Some("the entry is not a hash and a record".to_string()),
            Some((hash, json)) => {
                if hex::encode(sha2::Sha256::digest(json)) != hash {
                    Some("the entry does not match its recorded hash (edited)".into())
                } else {
                    match serde_json::from_slice::<AuditEntry>(json) {
                        Err(_) => Some("the entry is not a valid record".into()),
                        Ok(e) if e.seq != seq => Some(format!("the entry says it is #{}", e.seq)),
                        Ok(_) if seq != report.head_seq + 1 => Some(format!(
                            "entries #{}..#{} are missing",
                            report.head_seq + 1,
                            seq - 1
                        )),
                        Ok(e) if e.prev != report.head_hash => Some(
                            "the entry does not follow the one before it (removed or reordered)"
                                .into(),
                        ),
                        Ok(_) => {
                            report.entries += 1;
                            report.head_seq = seq;
                            report.head_hash = hash.to_string();
                            None
                        }
                    }
                }
            }
        };
        match why {
            Some(w) => {
                report.broken = Some((seq, w));
                false
            }
            None => true,
        }
    })?;
    Ok(report)
}

/// Appends one event directly (one-shot commands that hold the store, such as
/// `tollgate token create`), chained to the current head.
pub fn append_blocking(store: &Store, mut ev: AuditEvent) -> Result<(), String> {
    ev.time = crate::store::cache::now_secs();
    append_many_blocking(store, vec![ev])
}

/// Appends events in one transaction, chained to the current head, times as given.
pub fn append_many_blocking(store: &Store, events: Vec<AuditEvent>) -> Result<(), String> {
    let (mut seq, mut prev) = match store.audit_last().map_err(|e| e.to_string())? {
        Some((seq, bytes)) => (
            seq,
            split(&bytes)
                .map(|(h, _)| h.to_string())
                .ok_or("the last audit entry is damaged; run tollgate audit verify")?,
        ),
        None => (0, GENESIS.to_string()),
    };
    let mut rows = Vec::with_capacity(events.len());
    for event in events {
        seq += 1;
        let entry = AuditEntry {
            seq,
            prev,
            count: 1,
            event,
        };
        let (hash, bytes) = encode(&entry).map_err(|e| e.to_string())?;
        prev = hash;
        rows.push((seq, bytes));
    }
    store.audit_append(&rows).map_err(|e| e.to_string())
}

/// A change of the admin API's state, written in the same transaction as its audit entry: the
/// change happens if and only if its entry is stored.
pub type ChangeFn =
    Box<dyn FnOnce(&redb::WriteTransaction) -> Result<(), crate::store::StoreError> + Send>;

enum Msg {
    Event(Box<AuditEvent>),
    Flush(oneshot::Sender<()>),
    Change(
        Box<AuditEvent>,
        ChangeFn,
        oneshot::Sender<Result<(), String>>,
    ),
}

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
}

/// Rows to store, the sequence number and hash they end at, and the events they hold.
type Chained = (Vec<(u64, Vec<u8>)>, u64, String, Vec<(AuditEvent, u64)>);

/// Events kept for a retry when the store refused a batch, at most.
const MAX_PENDING: usize = 1_000_000;

/// The writer's state: where the chain stands, and events still to store.
struct Writer {
    store: Option<Arc<Store>>,
    metrics: Arc<Metrics>,
    seq: u64,
    head: String,
    head_logged: i64,
    pending: Vec<(AuditEvent, u64)>,
}

impl Writer {
    /// Continues the chain where the store has it. A last entry that cannot be read is an
    /// error: starting over would overwrite the history.
    fn new(store: Option<Arc<Store>>, metrics: Arc<Metrics>) -> Result<Writer, String> {
        let (seq, head) = match &store {
            None => (0, GENESIS.to_string()),
            Some(s) => match s.audit_last().map_err(|e| format!("audit log: {e}"))? {
                None => (0, GENESIS.to_string()),
                Some((seq, bytes)) => (
                    seq,
                    split(&bytes).map(|(h, _)| h.to_string()).ok_or_else(|| {
                        format!(
                            "the last audit entry (#{seq}) is damaged; run tollgate audit verify"
                        )
                    })?,
                ),
            },
        };
        Ok(Writer {
            store,
            metrics,
            seq,
            head,
            head_logged: 0,
            pending: Vec::new(),
        })
    }

    /// Chains entries after the current head (not yet stored): the rows and the new head.
    fn chain(&self, grouped: Vec<(AuditEvent, u64)>) -> Chained {
        let mut rows = Vec::with_capacity(grouped.len());
        let (mut seq, mut head) = (self.seq, self.head.clone());
        let mut kept = Vec::with_capacity(grouped.len());
        for (event, count) in grouped {
            let entry = AuditEntry {
                seq: seq + 1,
                prev: head.clone(),
                count,
                event,
            };
            match encode(&entry) {
                Ok((hash, bytes)) => {
                    seq += 1;
                    head = hash;
                    rows.push((seq, bytes));
                    kept.push((entry.event, count));
                }
                Err(e) => {
                    tracing::error!(target: "tollgate::audit", error = %e, "audit entry could not be encoded")
                }
            }
        }
        (rows, seq, head, kept)
    }

    fn log_head(&mut self) {
        let now = crate::store::cache::now_secs();
        if now - self.head_logged >= HEAD_EVERY_SECS {
            self.head_logged = now;
            tracing::info!(target: "tollgate::audit", head_seq = self.seq, head_hash = %self.head, "audit chain head");
        }
    }

    /// Writes one batch: repeated allows fold into one entry with a count. A batch the store
    /// refuses is kept and tried again with the next one.
    async fn write(&mut self, events: Vec<AuditEvent>) {
        let mut grouped: Vec<(AuditEvent, u64)> = std::mem::take(&mut self.pending);
        let mut index: std::collections::HashMap<u64, Vec<usize>> =
            std::collections::HashMap::new();
        let carried = grouped.len();
        for ev in events {
            // Identical apart from the time: the same allowed decision served again.
            let Some(key) = fold_key(&ev) else {
                grouped.push((ev, 1));
                continue;
            };
            let same = index.entry(key).or_default();
            match same.iter().find(|&&i| same_decision(&grouped[i].0, &ev)) {
                Some(&i) => grouped[i].1 += 1,
                None => {
                    same.push(grouped.len());
                    grouped.push((ev, 1));
                }
            }
        }
        if grouped.is_empty() {
            return;
        }
        // The log stream gets what the store gets: one line per entry, with its count (events
        // carried over from a failed batch were logged already).
        for (ev, count) in &grouped[carried..] {
            match serde_json::to_string(ev) {
                Ok(json) => {
                    tracing::info!(target: "tollgate::audit", event = %json, count, "audit")
                }
                Err(e) => {
                    tracing::error!(target: "tollgate::audit", error = %e, "audit event could not be encoded")
                }
            }
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        let (rows, seq, head, kept) = self.chain(grouped);
        let written = tokio::task::spawn_blocking(move || store.audit_commit(&rows, None)).await;
        match written {
            Ok(Ok(())) => {
                self.seq = seq;
                self.head = head;
            }
            failed => {
                self.metrics.audit_write_failures.fetch_add(1, Relaxed);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(())) => String::new(),
                };
                tracing::error!(target: "tollgate::audit", error = %why, pending = kept.len(), "audit entries could not be stored; kept for the next batch");
                self.pending = kept;
                if self.pending.len() > MAX_PENDING {
                    let drop_n = self.pending.len() - MAX_PENDING;
                    tracing::error!(target: "tollgate::audit", dropped = drop_n, "audit backlog full; the oldest unstored events are on the log stream only");
                    self.pending.drain(..drop_n);
                }
            }
        }
        self.log_head();
    }

    /// An admin change and its entry, in one transaction.
    async fn change(&mut self, event: AuditEvent, apply: ChangeFn) -> Result<(), String> {
        if let Ok(json) = serde_json::to_string(&event) {
            tracing::info!(target: "tollgate::audit", event = %json, "audit");
        }
        let Some(store) = self.store.clone() else {
            return Err("no audit log to record the change in".into());
        };
        if !self.pending.is_empty() {
            return Err("the audit log cannot be written (earlier entries are still unstored); nothing was changed".into());
        }
        let (rows, seq, head, _) = self.chain(vec![(event, 1)]);
        let written =
            tokio::task::spawn_blocking(move || store.audit_commit(&rows, Some(apply))).await;
        match written {
            Ok(Ok(())) => {
                self.seq = seq;
                self.head = head;
                self.log_head();
                Ok(())
            }
            Ok(Err(e)) => {
                self.metrics.audit_write_failures.fetch_add(1, Relaxed);
                Err(format!(
                    "the change and its audit entry could not be stored: {e}"
                ))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Audit {
    /// Starts the writer task over the store's audit log (`None`: the log stream only, for
    /// one-shot commands). It ends when every `Audit` handle is dropped, after writing what was
    /// queued.
    pub fn start(
        metrics: Arc<Metrics>,
        store: Option<Arc<Store>>,
    ) -> Result<(Audit, tokio::task::JoinHandle<()>), String> {
        let (tx, mut rx) = mpsc::channel::<Msg>(65_536);
        let mut writer = Writer::new(store, metrics.clone())?;
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut events = Vec::new();
                let mut flushes = Vec::new();
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
            }
        });
        Ok((Audit { tx, metrics }, task))
    }

    /// Records an event (stamping its time) and counts it in the metrics.
    pub async fn record(&self, mut ev: AuditEvent) {
        ev.time = crate::store::cache::now_secs();
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
    pub async fn commit_change(&self, mut ev: AuditEvent, apply: ChangeFn) -> Result<(), String> {
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
