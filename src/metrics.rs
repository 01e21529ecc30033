//! Prometheus counters kept in atomics, so counting never takes a lock on the request path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Route classes counted in `tollgate_requests_total`.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    Simple = 0,
    Files = 1,
    Ops = 2,
    Other = 3,
    Oci = 4,
}
const ROUTES: [&str; 5] = ["simple", "files", "ops", "other", "oci"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upstream request kinds.
#[derive(Debug, Clone, Copy)]
pub enum Upstream {
    Page = 0,
    File = 1,
}
const UPSTREAMS: [&str; 2] = ["page", "file"];
/// Every allow reason code: the kind of rule that admitted the request.
pub const ALLOW_CODES: [&str; 7] = [
    "project_rule",
    "exact",
    "release_rule",
    "pinned_digest",
    "signed",
    "repository_rule",
    "artifact_of_admitted",
];
/// Every deny reason code of the index and the pull gate.
pub const DENY_CODES: [&str; 25] = [
    "not_allowlisted",
    "revoked",
    "wheels_only",
    "version_not_allowed",
    "hash_not_pinned",
    "not_yet_seen",
    "superseded_pin",
    "too_new",
    "provenance_unchecked",
    "provenance",
    "vulnerable",
    "hash_mismatch",
    "size_mismatch",
    "upstream_rejected",
    "image_not_allowlisted",
    "tag_not_allowed",
    "digest_not_pinned",
    "blob_not_referenced",
    "unsigned",
    "untrusted_signer",
    "signature_other_repository",
    "signature_other_digest",
    "signature_threshold",
    "attestation_missing",
    "attestation_untrusted",
];
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; 5]; 5],
    allow: [AtomicU64; ALLOW_CODES.len()],
    deny: [AtomicU64; DENY_CODES.len()],
    upstream_requests: [AtomicU64; 2],
    upstream_errors: [AtomicU64; 2],
    upstream_latency: [Histogram; 2],
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_bytes_served: AtomicU64,
    pub cache_bytes_stored: AtomicU64,
    pub cache_store_failures: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub cache_tampered: AtomicU64,
    pub remote_hits: AtomicU64,
    pub remote_stored: AtomicU64,
    pub remote_failures: AtomicU64,
    pub remote_tampered: AtomicU64,
    /// Replicas (this one included) whose allowlist files differ from this one's.
    pub replicas_differing: AtomicU64,
    /// Seconds since the newest record of the vulnerability database changed.
    pub vuln_db_age: AtomicU64,
    /// 1 while that is over `[vulnerabilities] max_age`.
    pub vuln_db_stale: AtomicU64,
    pub policy_followed: AtomicU64,
    pub cache_scrubbed: AtomicU64,
    pub cache_bytes: AtomicU64,
    pub stale_pages_served: AtomicU64,
    pub audit_events: AtomicU64,
    pub audit_write_failures: AtomicU64,
    pub audit_folded: AtomicU64,
    pub audit_checkpoints: AtomicU64,
    pub audit_archived: AtomicU64,
    pub audit_unverified: AtomicU64,
    pub audit_witness_failures: AtomicU64,
    pub store_bytes: AtomicU64,
    pub disk_free_bytes: AtomicU64,
    pub pages_refused: AtomicU64,
    pub pins_refused: AtomicU64,
    pub hashes_refused: AtomicU64,
    pub auth_failures: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_timed_out: AtomicU64,
    signature_checks: AtomicU64,
    signature_check_micros: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: Route, status: u16) {
        let class = ((status / 100).clamp(1, 5) - 1) as usize;
        self.requests[route as usize][class].fetch_add(1, Relaxed);
    }

    /// Counts one decision by its audit reason code.
    pub fn decision(&self, allowed: bool, code: &str) {
        let (codes, counters): (&[&str], &[AtomicU64]) = if allowed {
            (&ALLOW_CODES, &self.allow)
        } else {
            (&DENY_CODES, &self.deny)
        };
        if let Some(i) = codes.iter().position(|c| *c == code) {
            counters[i].fetch_add(1, Relaxed);
        }
    }

    pub fn upstream(&self, kind: Upstream, took: Duration, ok: bool) {
        let k = kind as usize;
        self.upstream_requests[k].fetch_add(1, Relaxed);
        if !ok {
            self.upstream_errors[k].fetch_add(1, Relaxed);
        }
        let h = &self.upstream_latency[k];
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.buckets[i].fetch_add(1, Relaxed);
            }
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// One verification of an image's signature artifacts (the cryptography and the rule,
    /// without the upstream fetches).
    pub fn signature_check(&self, took: Duration) {
        self.signature_checks.fetch_add(1, Relaxed);
        self.signature_check_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP tollgate_requests_total HTTP requests by route and status class.\n# TYPE tollgate_requests_total counter");
        for (r, route) in ROUTES.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "tollgate_requests_total{{route=\"{route}\",status=\"{class}\"}} {}",
                    self.requests[r][c].load(Relaxed)
                );
            }
        }
        let _ = writeln!(o, "# HELP tollgate_decisions_total Policy decisions by outcome and reason.\n# TYPE tollgate_decisions_total counter");
        for (i, rule) in ALLOW_CODES.iter().enumerate() {
            let _ = writeln!(
                o,
                "tollgate_decisions_total{{decision=\"allow\",reason=\"{rule}\"}} {}",
                self.allow[i].load(Relaxed)
            );
        }
        for (i, code) in DENY_CODES.iter().enumerate() {
            let _ = writeln!(
                o,
                "tollgate_decisions_total{{decision=\"deny\",reason=\"{code}\"}} {}",
                self.deny[i].load(Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP tollgate_upstream_requests_total Requests to upstream indexes.\n# TYPE tollgate_upstream_requests_total counter");
        for (k, kind) in UPSTREAMS.iter().enumerate() {
            let _ = writeln!(
                o,
                "tollgate_upstream_requests_total{{kind=\"{kind}\"}} {}",
                self.upstream_requests[k].load(Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP tollgate_upstream_errors_total Upstream requests that failed.\n# TYPE tollgate_upstream_errors_total counter");
        for (k, kind) in UPSTREAMS.iter().enumerate() {
            let _ = writeln!(
                o,
                "tollgate_upstream_errors_total{{kind=\"{kind}\"}} {}",
                self.upstream_errors[k].load(Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP tollgate_signature_check_seconds Time verifying signature and attestation artifacts (cryptography and rule; upstream fetches excluded).\n# TYPE tollgate_signature_check_seconds summary");
        let _ = writeln!(
            o,
            "tollgate_signature_check_seconds_sum {}\ntollgate_signature_check_seconds_count {}",
            self.signature_check_micros.load(Relaxed) as f64 / 1e6,
            self.signature_checks.load(Relaxed)
        );
        let _ = writeln!(o, "# HELP tollgate_upstream_latency_seconds Time to upstream response headers.\n# TYPE tollgate_upstream_latency_seconds histogram");
        for (k, kind) in UPSTREAMS.iter().enumerate() {
            let h = &self.upstream_latency[k];
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "tollgate_upstream_latency_seconds_bucket{{kind=\"{kind}\",le=\"{b}\"}} {}",
                    h.buckets[i].load(Relaxed)
                );
            }
            let count = h.count.load(Relaxed);
            let _ = writeln!(
                o,
                "tollgate_upstream_latency_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                o,
                "tollgate_upstream_latency_seconds_sum{{kind=\"{kind}\"}} {}",
                h.sum_micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                o,
                "tollgate_upstream_latency_seconds_count{{kind=\"{kind}\"}} {count}"
            );
        }
        for (name, help, kind, v) in [
            (
                "tollgate_cache_hits_total",
                "File requests served from the verified cache.",
                "counter",
                &self.cache_hits,
            ),
            (
                "tollgate_cache_misses_total",
                "File requests that had to go upstream.",
                "counter",
                &self.cache_misses,
            ),
            (
                "tollgate_cache_served_bytes_total",
                "Bytes served from the verified cache.",
                "counter",
                &self.cache_bytes_served,
            ),
            (
                "tollgate_cache_stored_bytes_total",
                "Verified bytes written to the cache.",
                "counter",
                &self.cache_bytes_stored,
            ),
            (
                "tollgate_cache_store_failures_total",
                "Verified files that could not be cached (disk full, I/O error).",
                "counter",
                &self.cache_store_failures,
            ),
            (
                "tollgate_cache_tampered_total",
                "Cached files whose bytes no longer matched their hash when re-checked (never served; evicted).",
                "counter",
                &self.cache_tampered,
            ),
            (
                "tollgate_remote_cache_hits_total",
                "Files read from the shared object store (hashed as they streamed out).",
                "counter",
                &self.remote_hits,
            ),
            (
                "tollgate_remote_cache_stored_total",
                "Verified files written to the shared object store.",
                "counter",
                &self.remote_stored,
            ),
            (
                "tollgate_remote_cache_failures_total",
                "Reads or writes of the shared object store that failed (the upstream was used instead).",
                "counter",
                &self.remote_failures,
            ),
            (
                "tollgate_remote_cache_tampered_total",
                "Objects of the shared object store whose bytes did not match their name (cut off, never served whole, removed).",
                "counter",
                &self.remote_tampered,
            ),
            (
                "tollgate_vulnerability_db_age_seconds",
                "Seconds since the newest record of the OSV database in force was modified.",
                "gauge",
                &self.vuln_db_age,
            ),
            (
                "tollgate_vulnerability_db_stale",
                "1 while the OSV database in force is older than [vulnerabilities] max_age.",
                "gauge",
                &self.vuln_db_stale,
            ),
            (
                "tollgate_replicas_allowlists_differing",
                "Replicas seen in the shared store whose allowlist files differ from this replica's.",
                "gauge",
                &self.replicas_differing,
            ),
            (
                "tollgate_policy_followed_total",
                "Policy changes made on another replica and put in force here.",
                "counter",
                &self.policy_followed,
            ),
            (
                "tollgate_cache_scrubbed_total",
                "Cached files re-checked by the background scrub.",
                "counter",
                &self.cache_scrubbed,
            ),
            (
                "tollgate_cache_evictions_total",
                "Files evicted to stay under cache_max_bytes.",
                "counter",
                &self.cache_evictions,
            ),
            (
                "tollgate_cache_bytes",
                "Bytes in the verified cache.",
                "gauge",
                &self.cache_bytes,
            ),
            (
                "tollgate_stale_pages_served_total",
                "Project pages served from an expired copy because the upstream failed.",
                "counter",
                &self.stale_pages_served,
            ),
            (
                "tollgate_audit_events_total",
                "Audit events recorded.",
                "counter",
                &self.audit_events,
            ),
            (
                "tollgate_audit_write_failures_total",
                "Audit batches that could not be stored (their events are on the log stream only).",
                "counter",
                &self.audit_write_failures,
            ),
            (
                "tollgate_audit_folded_total",
                "Denials folded into counted entries (a client past max_denials_per_client); each is counted in its folded entry.",
                "counter",
                &self.audit_folded,
            ),
            (
                "tollgate_audit_checkpoints_total",
                "Signed checkpoints of the audit chain written.",
                "counter",
                &self.audit_checkpoints,
            ),
            (
                "tollgate_audit_unverified",
                "1 when the audit log did not verify at start (checkpoints are then not signed).",
                "gauge",
                &self.audit_unverified,
            ),
            (
                "tollgate_audit_witness_failures_total",
                "Checkpoints stored but not written to witness_file (it then vouches for less).",
                "counter",
                &self.audit_witness_failures,
            ),
            (
                "tollgate_audit_archived_total",
                "Audit entries moved to the archive and pruned by retention.",
                "counter",
                &self.audit_archived,
            ),
            (
                "tollgate_store_bytes",
                "Size of the store file.",
                "gauge",
                &self.store_bytes,
            ),
            (
                "tollgate_disk_free_bytes",
                "Free bytes on the file system of data_dir.",
                "gauge",
                &self.disk_free_bytes,
            ),
            (
                "tollgate_upstream_pages_refused_total",
                "Upstream project pages refused for listing more than max_files_per_page files.",
                "counter",
                &self.pages_refused,
            ),
            (
                "tollgate_pins_refused_total",
                "Files not pinned or listed because their project reached max_pins_per_project.",
                "counter",
                &self.pins_refused,
            ),
            (
                "tollgate_hashes_refused_total",
                "Files the gate would not download to hash (over max_hash_bytes or hash_timeout).",
                "counter",
                &self.hashes_refused,
            ),
            (
                "tollgate_auth_failures_total",
                "Failed authentications on the admin API (missing, unknown, expired or revoked credentials).",
                "counter",
                &self.auth_failures,
            ),
            (
                "tollgate_connections_open",
                "Client connections open, on every listener.",
                "gauge",
                &self.connections_open,
            ),
            (
                "tollgate_connections_refused_total",
                "Connections closed at once: over per_client_connections, or no slot under max_connections within head_timeout.",
                "counter",
                &self.connections_refused,
            ),
            (
                "tollgate_connections_timed_out_total",
                "Connections ended because the client stopped reading a response for idle_timeout.",
                "counter",
                &self.connections_timed_out,
            ),
            (
                "tollgate_allowlist_reloads_total",
                "Allowlist reloads that took effect.",
                "counter",
                &self.reloads_ok,
            ),
            (
                "tollgate_allowlist_reload_failures_total",
                "Allowlist reloads refused; the previous policy stayed in force.",
                "counter",
                &self.reloads_failed,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::oci::{Digest, ImageDeny, Repository, Tag};
    use crate::policy::{DenyReason, ProjectName, Sha256};

    /// Every reason the policy can give has a counter: a new one cannot vanish from /metrics.
    #[test]
    fn every_reason_code_is_counted() {
        let p = ProjectName::parse("p").unwrap();
        let h = Sha256::parse(&"a".repeat(64)).unwrap();
        let f = || "p-1.0.tar.gz".to_string();
        let pypi = [
            DenyReason::NotAllowlisted(p),
            DenyReason::Revoked {
                sha256: h,
                reason: String::new(),
            },
            DenyReason::WheelsOnly(f()),
            DenyReason::VersionNotAllowed { filename: f() },
            DenyReason::HashNotPinned {
                filename: f(),
                sha256: h,
            },
            DenyReason::NotYetSeen { filename: f() },
            DenyReason::SupersededPin {
                filename: f(),
                sha256: h,
            },
            DenyReason::TooNew {
                filename: f(),
                remaining: std::time::Duration::ZERO,
            },
            DenyReason::ProvenanceUnchecked { filename: f() },
            DenyReason::Provenance {
                filename: f(),
                why: String::new(),
            },
            DenyReason::Vulnerable {
                project: ProjectName::parse("p").unwrap(),
                version: "1.0".into(),
                findings: Vec::new(),
            },
        ];
        let repo = Repository::parse("r.io/a").unwrap();
        let d = Digest(h);
        let oci = [
            ImageDeny::NoRule(repo.clone()),
            ImageDeny::TagNotAllowed {
                repo: repo.clone(),
                tag: Tag::parse("t").unwrap(),
            },
            ImageDeny::DigestNotPinned {
                repo: repo.clone(),
                digest: d,
                tag: None,
            },
            ImageDeny::NotReferenced { repo, digest: d },
        ];
        // A reason added to the policy without a line above fails to compile here.
        for r in &pypi {
            match r {
                DenyReason::NotAllowlisted(_)
                | DenyReason::Revoked { .. }
                | DenyReason::WheelsOnly(_)
                | DenyReason::VersionNotAllowed { .. }
                | DenyReason::HashNotPinned { .. }
                | DenyReason::NotYetSeen { .. }
                | DenyReason::SupersededPin { .. }
                | DenyReason::TooNew { .. }
                | DenyReason::ProvenanceUnchecked { .. }
                | DenyReason::Provenance { .. }
                | DenyReason::Vulnerable { .. } => {}
            }
        }
        assert_eq!(pypi.len(), 11, "one of each reason");
        let codes: Vec<&str> = pypi
            .iter()
            .map(|r| r.code())
            .chain(oci.iter().map(|r| r.code()))
            .collect();
        for c in codes {
            assert!(DENY_CODES.contains(&c), "{c} has no counter");
        }
        let m = Metrics::default();
        m.decision(false, "hash_mismatch");
        m.decision(true, "repository_rule");
        let text = m.render();
        assert!(
            text.contains("tollgate_decisions_total{decision=\"deny\",reason=\"hash_mismatch\"} 1")
        );
        assert!(text
            .contains("tollgate_decisions_total{decision=\"allow\",reason=\"repository_rule\"} 1"));
    }
}
