//! Downloading an upstream file to learn its hash (approvals, and files an index lists without
//! one), bounded: a file larger than `max_hash_bytes` is not downloaded (refused from its
//! declared size when the index gives one, else cut off there), and one download may take at
//! most `hash_timeout`. An upstream cannot make the gate fetch without end.

use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::Url;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

use super::upstream::Upstream;
use crate::policy::Sha256;
use crate::store::cache::{Cache, TempFile};

#[derive(Debug, Clone, Copy)]
pub struct HashLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{filename} is {size} bytes, more than max_hash_bytes ({max}): the gate does not download it to hash it; pin its sha256 in an allowlist file instead")]
    TooLarge {
        filename: String,
        size: u64,
        max: u64,
    },
    #[error("{filename} took longer than hash_timeout ({}s) to download for hashing", .secs)]
    TimedOut { filename: String, secs: u64 },
    #[error("{0}")]
    Failed(String),
}

impl HashError {
    /// A refusal by the gate's own limits (not an upstream failure).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            HashError::TooLarge { .. } | HashError::TimedOut { .. }
        )
    }
}

/// Downloads `url` while hashing it, into a temp file of the cache when one can be made: the
/// hash, the size, and the bytes (for the caller to cache or remove).
pub async fn hash_remote(
    upstream: &Upstream,
    cache: &Cache,
    url: &str,
    filename: &str,
    declared: Option<u64>,
    limits: HashLimits,
) -> Result<(Sha256, u64, Option<TempFile>), HashError> {
    let too_large = |size: u64| HashError::TooLarge {
        filename: filename.to_string(),
        size,
        max: limits.max_bytes,
    };
    if let Some(size) = declared.filter(|s| *s > limits.max_bytes) {
        return Err(too_large(size));
    }
    // Kept for the cache only while the disk has room above min_free_disk; hashed either way.
    let mut temp = match cache.temp_file().await {
        Ok(t) if cache.room(declared.unwrap_or(0).max(1 << 21)) => Some(t),
        Ok(t) => {
            let _ = tokio::fs::remove_file(&t.path).await;
            None
        }
        Err(_) => None,
    };
    let run = async {
        let url = Url::parse(url).map_err(|e| HashError::Failed(e.to_string()))?;
        let resp = upstream
            .open_file(&url)
            .await
            .map_err(|e| HashError::Failed(e.to_string()))?;
        if let Some(len) = resp.content_length().filter(|l| *l > limits.max_bytes) {
            return Err(too_large(len));
        }
        let mut hasher = sha2::Sha256::new();
        let mut total = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| HashError::Failed(e.to_string()))?;
            total += chunk.len() as u64;
            if total > limits.max_bytes {
                return Err(too_large(total));
            }
            hasher.update(&chunk);
            if temp.is_some()
                && total / crate::fetch::DISK_CHECK_EVERY
                    != (total - chunk.len() as u64) / crate::fetch::DISK_CHECK_EVERY
                && !cache.room(1 << 21)
            {
                if let Some(t) = temp.take() {
                    let _ = tokio::fs::remove_file(&t.path).await;
                }
            }
            if let Some(t) = temp.as_mut() {
                if t.file.write_all(&chunk).await.is_err() {
                    if let Some(t) = temp.take() {
                        let _ = tokio::fs::remove_file(&t.path).await;
                    }
                }
            }
        }
        Ok((Sha256::from_bytes(hasher.finalize().into()), total))
    };
    let result = match tokio::time::timeout(limits.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(HashError::TimedOut {
            filename: filename.to_string(),
            secs: limits.timeout.as_secs(),
        }),
    };
    match result {
        Ok((sha, size)) => Ok((sha, size, temp)),
        Err(e) => {
            if let Some(t) = temp {
                let _ = tokio::fs::remove_file(&t.path).await;
            }
            Err(e)
        }
    }
}
