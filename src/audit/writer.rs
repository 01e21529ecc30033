//! The audit writer task: group commit of the chained log, signed checkpoints on a clock and
//! at shutdown, and denial folding.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::checkpoint::Signer;
use super::fold::{Folder, Sorted};
use super::{encode, fold_key, same_decision, AuditEntry, AuditEvent, Change, GENESIS};
use crate::metrics::Metrics;
use crate::store::cache::now_secs;
use crate::store::{Store, StoreError};

/// Rows to store, the sequence number and hash they end at, and the events they hold.
type Chained = (Vec<(u64, Vec<u8>)>, u64, String, Vec<(AuditEvent, u64)>);

/// Events kept for a retry when the store refused a batch, at most (each is on the log stream
/// already; past this the oldest are kept there only, and counted).
const MAX_PENDING: usize = 50_000;
/// Times one batch is chained again after other replicas appended first, before it waits for
/// the next batch (a shared store under load from every replica).
const MAX_MOVED: u32 = 16;
/// How often the chain head is logged when there is no key to sign checkpoints with.
const HEAD_EVERY_SECS: i64 = 60;

/// What the writer is told by `[audit]`.
/// The all-clients allowance of allowed requests kept as entries of their own, per hour, in
/// multiples of `max_denials_per_client` (denials: ten).
const ALLOWS_FACTOR: u64 = 100;
/// Distinct folded decisions grouped per batch for the log stream (a linear search each).
const MAX_FOLDED_LINES: usize = 64;

pub struct Settings {
    pub signer: Option<Signer>,
    /// Keys of earlier signers (`previous_public_keys`), whose checkpoints still vouch.
    pub previous: Vec<(super::checkpoint::VerifyKey, Option<u64>)>,
    /// `[audit] witness_file`: written after every checkpoint.
    pub witness: Option<std::path::PathBuf>,
    /// Where retention archives (checked with the log at start); `None`: not checked.
    pub archive_dir: Option<std::path::PathBuf>,
    /// data_dir and `min_free_disk`: below it, every denial folds.
    pub disk: Option<(std::path::PathBuf, u64)>,
    pub checkpoint_every: std::time::Duration,
    pub max_denials: u64,
    pub denial_window: std::time::Duration,
}

impl Settings {
    /// From the configuration; a signing key that cannot be read is an error.
    pub fn from_config(
        cfg: &crate::config::AuditConfig,
        data_dir: &std::path::Path,
        min_free_disk: u64,
    ) -> Result<Settings, String> {
        if let Some(e) = &cfg.signing_key_error {
            return Err(e.clone());
        }
        let signer = match &cfg.signing_key {
            None => None,
            Some(pem) => Some(
                Signer::from_pem(pem.expose()).map_err(|e| format!("[audit] signing key: {e}"))?,
            ),
        };
        let mut previous = Vec::new();
        for (path, pem, last_seq) in &cfg.previous_public_keys {
            let key = super::checkpoint::VerifyKey::from_pem(pem)
                .map_err(|e| format!("[audit] previous_public_keys {}: {e}", path.display()))?;
            previous.push((key, *last_seq));
        }
        Ok(Settings {
            signer,
            previous,
            witness: cfg.witness_file.clone(),
            archive_dir: Some(super::archive::dir(data_dir)),
            disk: Some((data_dir.to_path_buf(), min_free_disk)),
            checkpoint_every: cfg.checkpoint_every,
            max_denials: cfg.max_denials,
            denial_window: cfg.denial_window,
        })
    }

    /// Log stream only, nothing signed or folded (one-shot commands).
    pub fn plain() -> Settings {
        Settings {
            signer: None,
            previous: Vec::new(),
            witness: None,
            archive_dir: None,
            disk: None,
            checkpoint_every: std::time::Duration::from_secs(60),
            max_denials: u64::MAX,
            denial_window: std::time::Duration::from_secs(60),
        }
    }
}

/// The writer's state: where the chain stands, and events still to store.
pub(super) struct Writer {
    store: Option<Arc<Store>>,
    metrics: Arc<Metrics>,
    seq: u64,
    head: String,
    head_logged: i64,
    pub(super) pending: Vec<(AuditEvent, u64)>,
    witness: Option<std::path::PathBuf>,
    /// The last witness write failure, for `/readyz` (cleared by the next success).
    pub(super) witness_problem: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    signer: Option<Signer>,
    every: i64,
    checkpointed: u64,
    checkpointed_at: i64,
    /// The log did not verify at start: nothing more is signed.
    paused: bool,
    disk: Option<(std::path::PathBuf, u64)>,
    pub(super) folder: Folder,
    /// Allowed requests fold the same way, with a larger all-clients allowance.
    allows: Folder,
}

impl Writer {
    /// Continues the chain where the store has it. A last entry that cannot be read is an
    /// error: starting over would overwrite the history.
    pub(super) fn new(
        store: Option<Arc<Store>>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Result<Writer, String> {
        let (seq, head) = match &store {
            Some(s) => super::chain_head(s)?,
            None => (0, GENESIS.to_string()),
        };
        let checkpointed = match &store {
            Some(s) => s
                .audit_checkpoint_last()
                .map_err(|e| format!("audit log: {e}"))?
                .unwrap_or(0),
            None => 0,
        };
        if settings.signer.is_some() && seq > checkpointed {
            // Entries a checkpoint does not cover yet: written before a crash, or the
            // checkpoints were removed. They are signed with the next checkpoint; the log
            // stream's earlier checkpoints show which is the case (audit verify --checkpoint).
            tracing::warn!(target: "tollgate::audit", from = checkpointed + 1, to = seq, "audit entries follow the last signed checkpoint (a stop without one, or checkpoints removed); the next checkpoint covers them");
        }
        Ok(Writer {
            store,
            metrics,
            seq,
            head,
            head_logged: 0,
            pending: Vec::new(),
            every: (settings.checkpoint_every.as_secs() as i64).max(1),
            witness: settings.witness,
            witness_problem: Default::default(),
            signer: settings.signer,
            checkpointed,
            checkpointed_at: now_secs(),
            paused: false,
            disk: settings.disk,
            folder: Folder::new(settings.max_denials, settings.denial_window),
            allows: Folder::of(
                "allow",
                ALLOWS_FACTOR,
                settings.max_denials,
                settings.denial_window,
            ),
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

    /// Takes the head another replica left in the shared store as this writer's own.
    async fn follow(&mut self, store: &Arc<Store>) {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || super::chain_head(&s)).await {
            Ok(Ok((seq, head))) => {
                self.seq = seq;
                self.head = head;
            }
            Ok(Err(e)) => {
                tracing::error!(target: "tollgate::audit", error = %e, "the audit chain's head could not be read")
            }
            Err(e) => {
                tracing::error!(target: "tollgate::audit", error = %e, "the audit chain's head could not be read")
            }
        }
    }

    fn log_head(&mut self) {
        let now = now_secs();
        if self.signer.is_none() && now - self.head_logged >= HEAD_EVERY_SECS {
            self.head_logged = now;
            tracing::info!(target: "tollgate::audit", head_seq = self.seq, head_hash = %self.head, "audit chain head");
        }
    }

    pub(super) fn pause_signing(&mut self) {
        self.paused = true;
    }

    /// Signs the chain head when a checkpoint is due (`force`: whenever entries are not
    /// covered yet, as at shutdown), stores it and writes it to the log stream.
    pub(super) async fn checkpoint(&mut self, force: bool) {
        let now = now_secs();
        let Some(signer) = &self.signer else {
            return;
        };
        if self.paused {
            return;
        }
        if self.seq <= self.checkpointed || (!force && now - self.checkpointed_at < self.every) {
            return;
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        let cp = signer.sign(self.seq, &self.head, now);
        let json = match serde_json::to_string(&cp) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(target: "tollgate::audit", error = %e, "audit checkpoint could not be encoded");
                return;
            }
        };
        let bytes = json.clone().into_bytes();
        let seq = self.seq;
        let witness = self.witness.clone();
        let stored = tokio::task::spawn_blocking(move || {
            store.audit_checkpoint_put(seq, &bytes)?;
            // The witness follows the store: a checkpoint that is in the witness and not in
            // the store would read as a removed tail.
            let witnessed = match witness {
                Some(w) => super::witness::write(&w, &cp).map_err(Some),
                None => Ok(()),
            };
            Ok::<_, crate::store::StoreError>(witnessed)
        })
        .await;
        let stored = match stored {
            Ok(Ok(Err(Some(e)))) => {
                self.metrics.audit_witness_failures.fetch_add(1, Relaxed);
                tracing::error!(target: "tollgate::audit", error = %e, "audit witness could not be written: it vouches only up to its last checkpoint");
                *self
                    .witness_problem
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e);
                Ok(Ok(()))
            }
            Ok(Ok(_)) => {
                *self
                    .witness_problem
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                Ok(Ok(()))
            }
            Ok(Err(e)) => Ok(Err(e)),
            Err(e) => Err(e),
        };
        match stored {
            Ok(Ok(())) => {
                self.checkpointed = seq;
                self.checkpointed_at = now;
                self.metrics.audit_checkpoints.fetch_add(1, Relaxed);
                // The copy an outside system keeps: audit verify --checkpoint reads this line.
                tracing::info!(target: "tollgate::audit", checkpoint = %json, "audit checkpoint");
            }
            failed => {
                self.metrics.audit_write_failures.fetch_add(1, Relaxed);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(())) => String::new(),
                };
                tracing::error!(target: "tollgate::audit", error = %why, seq, "audit checkpoint could not be stored");
            }
        }
    }

    /// The clock: folded denials of windows that ended are written, a due checkpoint signed,
    /// and the disk looked at (below min_free_disk every denial folds).
    pub(super) async fn tick(&mut self) {
        if let Some((dir, floor)) = &self.disk {
            let low = *floor > 0 && crate::store::disk_free(dir).is_some_and(|f| f < *floor);
            if low != self.folder.fold_all {
                if low {
                    tracing::warn!(target: "tollgate::audit", "disk below min_free_disk: every denial now folds into counted entries");
                } else {
                    tracing::info!(target: "tollgate::audit", "disk above min_free_disk again: denials are entries of their own again");
                }
                self.folder.fold_all = low;
                self.allows.fold_all = low;
            }
        }
        let now = now_secs();
        let mut due = self.folder.due(Some(now));
        due.extend(self.allows.due(Some(now)));
        if !due.is_empty() || !self.pending.is_empty() {
            self.write_grouped(Vec::new(), due).await;
        }
        self.checkpoint(false).await;
    }

    /// At shutdown: every folded denial written, and the head signed.
    pub(super) async fn close(&mut self) {
        let mut due = self.folder.due(None);
        due.extend(self.allows.due(None));
        if !due.is_empty() || !self.pending.is_empty() {
            self.write_grouped(Vec::new(), due).await;
        }
        self.checkpoint(true).await;
    }

    /// Writes one batch: denials past a client's allowance fold, repeated allows become one
    /// entry with a count. A batch the store refuses is kept and tried again with the next.
    pub(super) async fn write(&mut self, events: Vec<AuditEvent>) {
        let mut kept = Vec::with_capacity(events.len());
        let mut folded_lines: Vec<(AuditEvent, u64)> = Vec::new();
        for ev in events {
            // A folded event is counted in the store and still written to the log stream whole:
            // the store stays bounded, and who asked for what stays attributable off the box
            // (a flood cannot hide a client's request among counts). Repeats of one decision
            // in the batch are one line with their count.
            let sorted = match self.folder.sort(ev) {
                Sorted::Kept(ev) => self.allows.sort(ev),
                folded => folded,
            };
            match sorted {
                Sorted::Kept(ev) => kept.push(ev),
                Sorted::Folded(copy) => {
                    self.metrics.audit_folded.fetch_add(1, Relaxed);
                    let full = folded_lines.len() >= MAX_FOLDED_LINES;
                    match folded_lines
                        .iter_mut()
                        .find(|(e, _): &&mut (AuditEvent, u64)| same_decision(e, &copy))
                    {
                        Some((_, n)) => *n += 1,
                        None if !full => folded_lines.push((copy, 1)),
                        None => {
                            if let Ok(json) = serde_json::to_string(&copy) {
                                tracing::info!(target: "tollgate::audit", event = %json, count = 1, "audit folded");
                            }
                        }
                    }
                }
            }
        }
        for (ev, count) in folded_lines {
            if let Ok(json) = serde_json::to_string(&ev) {
                tracing::info!(target: "tollgate::audit", event = %json, count, "audit folded");
            }
        }
        let mut ready = self.folder.due_ready();
        ready.extend(self.allows.due_ready());
        self.write_grouped(kept, ready).await;
    }

    async fn write_grouped(&mut self, events: Vec<AuditEvent>, folded: Vec<(AuditEvent, u64)>) {
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
        grouped.extend(folded);
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
        let mut moved = 0;
        let (written, seq, head, kept) = loop {
            let (rows, seq, head, kept) = self.chain(grouped);
            let s = store.clone();
            let written = tokio::task::spawn_blocking(move || s.audit_commit(&rows, None)).await;
            // Another replica appended first (a shared store): chain again after its entries.
            if matches!(written, Ok(Err(StoreError::AuditMoved(_)))) && moved < MAX_MOVED {
                moved += 1;
                self.follow(&store).await;
                grouped = kept;
                continue;
            }
            break (written, seq, head, kept);
        };
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
    pub(super) async fn change(&mut self, event: AuditEvent, apply: Change) -> Result<(), String> {
        // Logged once stored: the log stream must not show a change that did not happen.
        let logged = serde_json::to_string(&event).ok();
        let Some(store) = self.store.clone() else {
            return Err("no audit log to record the change in".into());
        };
        if !self.pending.is_empty() {
            return Err("the audit log cannot be written (earlier entries are still unstored); nothing was changed".into());
        }
        let mut grouped = vec![(event, 1)];
        let mut moved = 0;
        let (written, seq, head) = loop {
            let (rows, seq, head, kept) = self.chain(grouped);
            let (s, change) = (store.clone(), apply.clone());
            let written =
                tokio::task::spawn_blocking(move || s.audit_commit(&rows, Some(&change))).await;
            if matches!(written, Ok(Err(StoreError::AuditMoved(_)))) && moved < MAX_MOVED {
                moved += 1;
                self.follow(&store).await;
                grouped = kept;
                continue;
            }
            break (written, seq, head);
        };
        match written {
            Ok(Ok(())) => {
                if let Some(json) = logged {
                    tracing::info!(target: "tollgate::audit", event = %json, "audit");
                }
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
