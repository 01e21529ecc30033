//! Content-addressed cache of verified files under `data_dir/cache/`.
//!
//! A file enters only through [`Cache::commit`], after its hash matched: bytes are written to
//! `data_dir/tmp/`, fsynced, then renamed into place, so a crash never leaves a partial file at
//! a cache path. Paths are built from a [`Sha256`] only, never from a name a client sent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, CACHED};
use crate::metrics::Metrics;
use crate::policy::Sha256;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheRecord {
    pub size: u64,
    /// Unix seconds of the last time it was served (kept in memory, persisted on commit).
    pub last_access: i64,
    /// The distribution filename the bytes were verified as (none for extracted metadata).
    #[serde(default)]
    pub filename: Option<String>,
    /// Hashed and found matching since this process started (bytes on disk are re-checked
    /// once per run: someone may have edited them while the gate was stopped).
    #[serde(skip)]
    pub verified: bool,
}

pub struct Cache {
    root: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    index: Mutex<HashMap<Sha256, CacheRecord>>,
    used: AtomicU64,
    temp_seq: AtomicU64,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// `[limits] min_free_disk`: below it, files are served but not kept.
    min_free: AtomicU64,
    /// Files found changed at start, to be audited once the audit log runs.
    startup_tampered: Mutex<Vec<Sha256>>,
}

/// Opens a cache file for reading: a regular file only, never through a symbolic link (a link
/// planted in data_dir would otherwise serve any file the gate can read), and without blocking
/// on a FIFO or device put in its place; with `size`, only at that length.
pub fn open_cached(path: &Path, size: Option<u64>) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    if !m.file_type().is_file() {
        return Err(bad("not a regular file"));
    }
    if size.is_some_and(|s| s != m.len()) {
        return Err(bad("its length is not the cached length"));
    }
    Ok(f)
}

/// Writes up to this size count as small for [`Cache::room`].
const SMALL_WRITE: u64 = 1 << 20;
/// The free space small writes keep.
const HARD_FLOOR: u64 = 64 << 20;

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A temp file being filled with bytes that are not yet verified.
pub struct TempFile {
    pub path: PathBuf,
    pub file: tokio::fs::File,
}

impl Cache {
    /// Opens the cache, dropping leftovers of a crash: temp files, index rows whose file is
    /// gone, and files no index row names.
    pub fn open(
        data_dir: &Path,
        max_bytes: u64,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Cache, StoreError> {
        let root = data_dir.join("cache");
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let mut index = HashMap::new();
        let mut gone = Vec::new();
        let mut tampered = Vec::new();
        for (k, rec) in store.all::<CacheRecord>(CACHED)? {
            let Ok(sha) = Sha256::parse(&k) else {
                gone.push(k);
                continue;
            };
            match std::fs::symlink_metadata(path_in(&root, &sha)) {
                Ok(m) if m.file_type().is_file() && m.len() == rec.size => {
                    index.insert(sha, rec);
                }
                // There, but not what was kept: edited while the gate was stopped.
                Ok(_) => {
                    let _ = std::fs::remove_file(path_in(&root, &sha));
                    tampered.push(sha);
                    gone.push(k);
                }
                Err(_) => gone.push(k),
            }
        }
        if !tampered.is_empty() {
            metrics
                .cache_tampered
                .fetch_add(tampered.len() as u64, Relaxed);
            tracing::error!(files = tampered.len(), "cached files changed length or kind while the gate was stopped; evicted, never served");
        }
        store.remove_many(CACHED, &gone)?;
        for shard in std::fs::read_dir(&root)?.flatten() {
            if let Ok(files) = std::fs::read_dir(shard.path()) {
                for f in files.flatten() {
                    let known = Sha256::parse(&f.file_name().to_string_lossy())
                        .is_ok_and(|s| index.contains_key(&s));
                    if !known {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
        let used = index.values().map(|r| r.size).sum();
        metrics.cache_bytes.store(used, Relaxed);
        Ok(Cache {
            root,
            tmp,
            max_bytes,
            index: Mutex::new(index),
            used: AtomicU64::new(used),
            temp_seq: AtomicU64::new(0),
            store,
            metrics,
            min_free: AtomicU64::new(0),
            startup_tampered: Mutex::new(tampered),
        })
    }

    pub fn path(&self, sha: &Sha256) -> PathBuf {
        path_in(&self.root, sha)
    }

    /// The size of a cached file, marking it used.
    pub fn lookup(&self, sha: &Sha256) -> Option<u64> {
        let mut idx = self.index.lock().ok()?;
        let rec = idx.get_mut(sha)?;
        rec.last_access = now_secs();
        Some(rec.size)
    }

    /// Have these cached bytes been hashed and found matching since the process started?
    pub fn is_verified(&self, sha: &Sha256) -> bool {
        self.index
            .lock()
            .ok()
            .and_then(|i| i.get(sha).map(|r| r.verified))
            .unwrap_or(false)
    }

    pub fn mark_verified(&self, sha: &Sha256) {
        if let Ok(mut idx) = self.index.lock() {
            if let Some(r) = idx.get_mut(sha) {
                r.verified = true;
            }
        }
    }

    /// Files in the cache not yet re-checked in this run (for the background scrub).
    pub fn unverified(&self, at_most: usize) -> Vec<(Sha256, u64)> {
        self.index
            .lock()
            .map(|i| {
                i.iter()
                    .filter(|(_, r)| !r.verified)
                    .take(at_most)
                    .map(|(s, r)| (*s, r.size))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes a cached file whose bytes no longer match their name.
    pub async fn evict(&self, sha: &Sha256) {
        let removed = self.index.lock().ok().and_then(|mut i| i.remove(sha));
        let _ = tokio::fs::remove_file(self.path(sha)).await;
        let store = self.store.clone();
        let key = sha.hex();
        let _ = tokio::task::spawn_blocking(move || store.remove_many(CACHED, &[key])).await;
        if let Some(r) = removed {
            let used = self.used.fetch_sub(r.size, Relaxed) - r.size;
            self.metrics.cache_bytes.store(used, Relaxed);
        }
    }

    /// Were these bytes verified under this filename? (True for records that name none.)
    pub fn verified_as(&self, sha: &Sha256, filename: &str) -> bool {
        let Ok(idx) = self.index.lock() else {
            return false;
        };
        idx.get(sha)
            .is_some_and(|r| r.filename.as_deref().is_none_or(|f| f == filename))
    }

    pub async fn temp_file(&self) -> std::io::Result<TempFile> {
        let n = self.temp_seq.fetch_add(1, Relaxed);
        let path = self.tmp.join(format!("{}-{n}", std::process::id()));
        let file = tokio::fs::File::create(&path).await?;
        Ok(TempFile { path, file })
    }

    /// Is there room on the disk for `more` bytes above `min_free_disk`? Writes of a few KiB
    /// (manifests, METADATA) need only a hard floor of 64 MiB (or min_free_disk when lower).
    pub fn room(&self, more: u64) -> bool {
        let floor = self.min_free.load(Relaxed);
        if floor == 0 {
            return true;
        }
        let need = if more <= SMALL_WRITE {
            floor.min(HARD_FLOOR)
        } else {
            floor.saturating_add(more)
        };
        super::disk_free(&self.root).is_none_or(|free| free >= need)
    }

    /// The files found changed at start (each reported once).
    pub fn take_startup_tampered(&self) -> Vec<Sha256> {
        self.startup_tampered
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Reads a small cached file whole (a manifest), as [`open_cached`] opens it.
    pub async fn read_small(&self, sha: &Sha256) -> std::io::Result<Vec<u8>> {
        let path = self.path(sha);
        let size = self.lookup(sha);
        tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            let mut f = open_cached(&path, size)?;
            let mut out = Vec::new();
            f.read_to_end(&mut out)?;
            Ok(out)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Sets `[limits] min_free_disk`.
    pub fn set_min_free(&self, bytes: u64) {
        self.min_free.store(bytes, Relaxed);
    }

    /// Small bytes already checked against `sha` (a manifest, a METADATA file), into the
    /// cache through a temp file; false when they were not kept (quota, disk floor).
    pub async fn commit_bytes(&self, sha: Sha256, bytes: &[u8]) -> Result<bool, StoreError> {
        use tokio::io::AsyncWriteExt as _;
        let mut temp = self.temp_file().await?;
        temp.file.write_all(bytes).await?;
        self.commit(temp, sha, bytes.len() as u64, None).await
    }

    /// Moves a verified temp file into the cache. The caller has checked its hash. Makes room
    /// by evicting least-recently-used files; a file larger than the whole quota is not kept.
    pub async fn commit(
        &self,
        temp: TempFile,
        sha: Sha256,
        size: u64,
        filename: Option<&str>,
    ) -> Result<bool, StoreError> {
        let TempFile { path, file } = temp;
        file.sync_all().await?;
        drop(file);
        if size > self.max_bytes {
            let _ = tokio::fs::remove_file(&path).await;
            return Ok(false);
        }
        if self.lookup(&sha).is_some() {
            let _ = tokio::fs::remove_file(&path).await;
            return Ok(true);
        }
        // A nearly full disk: the file was served (verified) and is not kept, so the store and
        // the audit log keep the space they need to go on recording decisions. Small files
        // (manifests, METADATA) only need the hard floor.
        if !self.room(size) {
            let _ = tokio::fs::remove_file(&path).await;
            tracing::warn!(%sha, size, "disk nearly full (below min_free_disk): the file was served and not cached");
            return Ok(false);
        }
        self.make_room(size).await?;
        let dest = self.path(&sha);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(&path, &dest).await?;
        if let Some(parent) = dest.parent() {
            // fsync the directory so the rename itself survives a crash.
            if let Ok(d) = tokio::fs::File::open(parent).await {
                let _ = d.sync_all().await;
            }
        }
        let rec = CacheRecord {
            size,
            last_access: now_secs(),
            filename: filename.map(str::to_string),
            // The caller checked these bytes' hash just now.
            verified: true,
        };
        let store = self.store.clone();
        let key = sha.hex();
        let rec2 = rec.clone();
        tokio::task::spawn_blocking(move || store.put(CACHED, &key, &rec2))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        if let Ok(mut idx) = self.index.lock() {
            idx.insert(sha, rec);
        }
        let used = self.used.fetch_add(size, Relaxed) + size;
        self.metrics.cache_bytes.store(used, Relaxed);
        self.metrics.cache_bytes_stored.fetch_add(size, Relaxed);
        Ok(true)
    }

    async fn make_room(&self, size: u64) -> Result<(), StoreError> {
        loop {
            let used = self.used.load(Relaxed);
            if used + size <= self.max_bytes {
                return Ok(());
            }
            let victim = {
                let idx = match self.index.lock() {
                    Ok(i) => i,
                    Err(_) => return Ok(()),
                };
                idx.iter()
                    .min_by_key(|(_, r)| r.last_access)
                    .map(|(s, r)| (*s, r.size))
            };
            let Some((sha, vsize)) = victim else {
                return Ok(());
            };
            if let Ok(mut idx) = self.index.lock() {
                idx.remove(&sha);
            }
            // An open handle keeps serving an evicted file: unlink does not cut a response.
            let _ = tokio::fs::remove_file(self.path(&sha)).await;
            let store = self.store.clone();
            let key = sha.hex();
            let _ = tokio::task::spawn_blocking(move || store.remove_many(CACHED, &[key])).await;
            let used = self.used.fetch_sub(vsize, Relaxed) - vsize;
            self.metrics.cache_bytes.store(used, Relaxed);
            self.metrics.cache_evictions.fetch_add(1, Relaxed);
        }
    }
}

fn path_in(root: &Path, sha: &Sha256) -> PathBuf {
    let hex = sha.hex();
    root.join(&hex[..2]).join(hex)
}
