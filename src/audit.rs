//! Audit events: one structured record for every allow and deny.
//!
//! The request path only hands the event to a bounded channel; a background task writes it. A
//! full channel makes the request wait rather than drop the record: an audit trail with gaps is
//! worth less than a slower response.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Unix seconds.
    pub time: i64,
    /// `pypi.page`, `pypi.file`, `pypi.metadata`, `oci.manifest`, `oci.blob`, `oci.tags`.
    pub action: &'static str,
    /// `allow` or `deny`.
    pub decision: &'static str,
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
            action,
            decision: "deny",
            reason: String::new(),
            detail: String::new(),
            subject,
            artifact,
            sha256,
            actual_sha256: None,
            client: client.to_string(),
        }
    }

    /// Allowed by a rule of kind `reason`, written at `source` (file:line).
    pub fn allow(self, reason: &str, source: String) -> AuditEvent {
        AuditEvent {
            decision: "allow",
            reason: reason.to_string(),
            detail: source,
            ..self
        }
    }

    /// Denied, with the reason code and the sentence the client saw.
    pub fn deny(self, reason: &str, detail: String) -> AuditEvent {
        AuditEvent {
            decision: "deny",
            reason: reason.to_string(),
            detail,
            ..self
        }
    }
}

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<AuditEvent>,
    metrics: Arc<Metrics>,
}

impl Audit {
    /// Starts the writer task. It ends when every `Audit` handle is dropped, after writing what
    /// was queued.
    pub fn start(metrics: Arc<Metrics>) -> (Audit, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(65_536);
        let task = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                match serde_json::to_string(&ev) {
                    Ok(json) => tracing::info!(target: "tollgate::audit", event = %json, "audit"),
                    Err(e) => {
                        tracing::error!(target: "tollgate::audit", error = %e, "audit event could not be encoded")
                    }
                }
            }
        });
        (Audit { tx, metrics }, task)
    }

    /// Records a decision (stamping its time) and counts it in the metrics.
    pub async fn record(&self, mut ev: AuditEvent) {
        ev.time = crate::store::cache::now_secs();
        self.metrics.audit_events.fetch_add(1, Relaxed);
        self.metrics.decision(ev.decision == "allow", &ev.reason);
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                let _ = self.tx.send(ev).await;
            }
            Err(mpsc::error::TrySendError::Closed(ev)) => {
                tracing::error!(target: "tollgate::audit", event = ?ev, "audit writer stopped; event logged inline");
            }
        }
    }
}
