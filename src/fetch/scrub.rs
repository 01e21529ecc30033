//! Cached files re-checked without being asked for: those found changed at start, and the
//! background scrub of files not yet re-hashed in this run.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::Fetcher;

impl Fetcher {
    /// Audits the cached files found changed at start (their eviction is counted already).
    pub async fn report_startup_tampering(&self) {
        for sha in self.cache.take_startup_tampered() {
            self.audit
                .record(super::cache_verify(
                    &sha,
                    None,
                    "cache_tampered",
                    "the cached file changed length or kind while the gate was stopped; evicted and fetched again when asked for".into(),
                ))
                .await;
        }
    }

    /// Re-checks cached files not yet verified in this run, `rate` bytes per second at most,
    /// so that tampering is found even in files nobody asks for.
    pub async fn scrub(self: Arc<Self>, rate: u64) {
        if rate == 0 {
            return;
        }
        loop {
            let batch = self.cache.unverified(64);
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
            for (sha, size) in batch {
                let started = std::time::Instant::now();
                if self.cache.lookup(&sha).is_some() && !self.cache.is_verified(&sha) {
                    self.check_cached(&sha).await;
                    self.metrics.cache_scrubbed.fetch_add(1, Relaxed);
                }
                let budget = Duration::from_secs_f64(size as f64 / rate as f64);
                if let Some(rest) = budget.checked_sub(started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        }
    }
}
