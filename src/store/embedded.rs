//! The embedded store: one redb file in data_dir, for one gate process.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use redb::{Database, ReadableTable, TableDefinition};

use super::{
    cache, Change, StoreError, Table, Write, AUDIT, AUDIT_CHECKPOINTS, AUDIT_META, TABLES,
};

/// The store's page cache in memory.
const STORE_CACHE_BYTES: usize = 32 << 20;

pub struct Embedded {
    /// `None` after an I/O error the database could not be reopened from (see [`Store::run`]).
    db: std::sync::RwLock<Option<Database>>,
    path: std::path::PathBuf,
    /// Unix seconds of the last reopen attempt (at most one every few seconds).
    reopened_at: std::sync::atomic::AtomicI64,
    /// The file opened (device, inode): the path must go on naming it.
    file_id: (u64, u64),
    /// A handle of our own on that file: its link count says whether it was unlinked,
    /// whatever the path now holds.
    handle: std::fs::File,
    /// Set when the path no longer names the opened file (removed or replaced while the gate
    /// runs): everything written would go to a file no one will read again, so the store
    /// refuses from then on (fail closed) until the gate is restarted on a store.
    lost: std::sync::Mutex<Option<String>>,
}

fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl Embedded {
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        // redb keeps up to 1 GiB of pages in memory by default; the gate's working set (pins,
        // links, the recent audit tail) is far smaller, and a flood of audited denials must
        // not turn into resident memory.
        let damaged = |detail: String| StoreError::Damaged {
            path: path.display().to_string(),
            detail,
        };
        // redb asserts (panics) on some damaged files, a truncated one among them: that is a
        // damaged store to report, not a crash with a backtrace. The hook is silenced for the
        // open only (start-up, before anything else runs).
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(|| {
            Database::builder()
                .set_cache_size(STORE_CACHE_BYTES)
                .create(path)
        });
        std::panic::set_hook(hook);
        let db = match opened {
            Err(p) => {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unreadable".into());
                return Err(damaged(why));
            }
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(StoreError::Locked(path.display().to_string()))
            }
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(d)))) => {
                return Err(damaged(d))
            }
            Ok(Err(e)) => return Err(StoreError::Db(Box::new(e.into()))),
        };
        let w = db.begin_write()?;
        for t in TABLES {
            w.open_table(t)?;
        }
        w.open_table(AUDIT)?;
        w.open_table(AUDIT_CHECKPOINTS)?;
        w.commit()?;
        let file_id = file_id(path).map_err(|e| damaged(e.to_string()))?;
        let handle = std::fs::File::open(path).map_err(|e| damaged(e.to_string()))?;
        Ok(Embedded {
            db: std::sync::RwLock::new(Some(db)),
            path: path.to_path_buf(),
            reopened_at: std::sync::atomic::AtomicI64::new(0),
            file_id,
            handle,
            lost: std::sync::Mutex::new(None),
        })
    }

    /// Appends audit entries, and applies `change` in the same durable transaction (an admin
    /// change is stored if and only if its entry is). An entry never replaces an existing one.
    pub fn audit_commit(
        &self,
        entries: &[(u64, Vec<u8>)],
        change: Option<&Change>,
    ) -> Result<(), StoreError> {
        self.run(|db| {
            if entries.is_empty() && change.is_none() {
                return Ok(());
            }
            let w = db.begin_write()?;
            for write in change.map(|c| c.writes()).unwrap_or_default() {
                match write {
                    Write::Put(table, key, value) => {
                        w.open_table(*table)?
                            .insert(key.as_str(), value.as_slice())?;
                    }
                    Write::Remove(table, key) => {
                        w.open_table(*table)?.remove(key.as_str())?;
                    }
                }
            }
            {
                let mut t = w.open_table(AUDIT)?;
                for (seq, bytes) in entries {
                    if t.insert(*seq, bytes.as_slice())?.is_some() {
                        // The chain would lose an entry: abort the whole transaction.
                        return Err(StoreError::Conflict(format!(
                            "audit entry #{seq} exists already"
                        )));
                    }
                }
            }
            w.commit()?;
            Ok(())
        })
    }

    /// The last audit entry, if any.
    pub fn audit_last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(AUDIT)?;
            let last = t.last()?.map(|(k, v)| (k.value(), v.value().to_vec()));
            Ok(last)
        })
    }

    /// The first audit entry still kept, if any.
    pub fn audit_first(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(AUDIT)?;
            let first = t.first()?.map(|(k, v)| (k.value(), v.value().to_vec()));
            Ok(first)
        })
    }

    /// Stores a signed checkpoint of the chain head.
    pub fn audit_checkpoint_put(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.run(|db| {
            let w = db.begin_write()?;
            w.open_table(AUDIT_CHECKPOINTS)?.insert(seq, bytes)?;
            w.commit()?;
            Ok(())
        })
    }

    /// The sequence number the last stored checkpoint covers.
    pub fn audit_checkpoint_last(&self) -> Result<Option<u64>, StoreError> {
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(AUDIT_CHECKPOINTS)?;
            let last = t.last()?.map(|(k, _)| k.value());
            Ok(last)
        })
    }

    /// Every stored checkpoint, by the sequence number it covers.
    pub fn audit_checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(AUDIT_CHECKPOINTS)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// The anchor left by retention: the checkpoint of the last pruned entry.
    pub fn audit_anchor(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(AUDIT_META)?;
            let anchor = t.get("anchor")?.map(|v| v.value().to_vec());
            Ok(anchor)
        })
    }

    /// Retention: removes the entries up to and including `upto` and the checkpoints before it,
    /// and records `anchor` (the checkpoint of entry `upto`), in one transaction: the log is
    /// never left without the anchor its first entry follows.
    pub fn audit_prune(&self, upto: u64, anchor: &[u8]) -> Result<(), StoreError> {
        self.run(|db| {
            let w = db.begin_write()?;
            w.open_table(AUDIT)?.retain_in(..=upto, |_, _| false)?;
            w.open_table(AUDIT_CHECKPOINTS)?
                .retain_in(..upto, |_, _| false)?;
            w.open_table(AUDIT_META)?.insert("anchor", anchor)?;
            w.commit()?;
            Ok(())
        })
    }

    /// Runs one operation on the database. redb refuses every operation after an I/O error
    /// (a full disk) until the database is closed and opened again; so after one, the store
    /// reopens itself (waiting for operations in flight), instead of failing until a restart.
    fn run<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if let Some(why) = self.lost() {
            return Err(StoreError::Lost(why));
        }
        let out = {
            let g = self.db.read().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(db) => f(db),
                None => Err(StoreError::Unusable(self.path.display().to_string())),
            }
        };
        let io = match &out {
            Err(StoreError::Db(e)) => matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo),
            Err(StoreError::Unusable(_)) => true,
            _ => false,
        };
        if io {
            self.reopen();
        }
        out
    }

    /// Closes and opens the database again (at most once every 2 s).
    fn reopen(&self) {
        let now = cache::now_secs();
        let last = self.reopened_at.swap(now, Relaxed);
        if now - last < 2 {
            return;
        }
        let mut g = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle goes first: redb allows one per file.
        *g = None;
        // Opened, never created: a store file that is gone is not replaced by an empty one.
        if self.check_file().is_err() {
            return;
        }
        match Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .open(&self.path)
        {
            Ok(db) => {
                tracing::warn!(path = %self.path.display(), "store reopened after an I/O error (was the disk full?)");
                *g = Some(db);
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "store could not be reopened after an I/O error; trying again on the next operation");
            }
        }
    }

    /// Creates `tables` if they are not there yet (a gate's tables, at its construction), so
    /// that reading one before anything was written finds it empty.
    pub fn ensure(&self, tables: &[Table]) -> Result<(), StoreError> {
        self.run(|db| {
            let w = db.begin_write()?;
            for t in tables {
                w.open_table(*t)?;
            }
            w.commit()?;
            Ok(())
        })
    }

    /// Whether the database is open (false after an I/O error it could not recover from yet,
    /// or once its file was removed or replaced).
    pub fn usable(&self) -> bool {
        self.check_file().is_ok() && self.db.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks that the store's path still names the file the gate opened; once it does not
    /// (removed, or another file put in its place while the gate runs), says why from then on.
    pub fn check_file(&self) -> Result<(), String> {
        if let Some(why) = self.lost() {
            return Err(why);
        }
        use std::os::unix::fs::MetadataExt as _;
        let unlinked = self.handle.metadata().is_ok_and(|m| m.nlink() == 0);
        let why = match file_id(&self.path) {
            Ok(id) if id == self.file_id && !unlinked => return Ok(()),
            _ if unlinked => format!(
                "{} was removed while the gate runs (the file the gate writes has no name any more): nothing more is written to it; restore it and restart the gate (README: \"When the store is damaged\")",
                self.path.display()
            ),
            Ok(_) => format!(
                "{} was replaced by another file while the gate runs: the store refuses until the gate is restarted (README: \"When the store is damaged\")",
                self.path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "{} was removed while the gate runs: nothing more is written to it; restore it and restart the gate (README: \"When the store is damaged\")",
                self.path.display()
            ),
            // Cannot be asked because a permission changed: not proof of a swap.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(()),
            // A link loop, a file where data_dir was, …: the path no longer leads to the store.
            Err(e) => format!(
                "{} no longer leads to the store ({e}) while the gate runs: nothing more is written; restore it and restart the gate (README: \"When the store is damaged\")",
                self.path.display()
            ),
        };
        tracing::error!(path = %self.path.display(), problem = %why, "store file lost");
        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        Err(why)
    }

    /// Runs `f` over the store, turning a panic inside redb (it asserts on some damaged pages)
    /// into a damaged-store error naming the file.
    pub fn guard<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => Err(StoreError::Damaged {
                path: self.path.display().to_string(),
                detail: p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a page could not be read".into()),
            }),
        }
    }

    /// The store file's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Test support: removes audit entries after `seq` and, when `checkpoints`, the
    /// checkpoints that cover them (a truncated tail, as an attacker would leave it).
    #[doc(hidden)]
    pub fn audit_truncate(&self, seq: u64, checkpoints: bool) -> Result<(), StoreError> {
        self.run(|db| {
            let w = db.begin_write()?;
            w.open_table(AUDIT)?.retain_in(seq + 1.., |_, _| false)?;
            if checkpoints {
                w.open_table(AUDIT_CHECKPOINTS)?
                    .retain_in(seq + 1.., |_, _| false)?;
            }
            w.commit()?;
            Ok(())
        })
    }

    /// Test support: removes the stored checkpoint of `seq` (as an attacker would).
    #[doc(hidden)]
    pub fn audit_checkpoint_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.run(|db| {
            let w = db.begin_write()?;
            w.open_table(AUDIT_CHECKPOINTS)?.remove(seq)?;
            w.commit()?;
            Ok(())
        })
    }

    /// Calls `f` on audit entries after `after`, in order, until it returns false.
    pub fn audit_scan(
        &self,
        after: u64,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(AUDIT)?;
            for item in t.range(after.saturating_add(1)..)? {
                let (k, v) = item?;
                if !f(k.value(), v.value()) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// How many records `table` holds.
    pub fn len(&self, table: TableDefinition<&str, &[u8]>) -> Result<usize, StoreError> {
        use redb::ReadableTableMetadata as _;
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(table)?;
            Ok(t.len()? as usize)
        })
    }

    /// How many keys of `table` start with `prefix`.
    pub fn count_prefix(
        &self,
        table: TableDefinition<&str, &[u8]>,
        prefix: &str,
    ) -> Result<usize, StoreError> {
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(table)?;
            let mut n = 0;
            for item in t.range(prefix..)? {
                let (k, _) = item?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
    }

    /// Removes one record.
    pub fn remove(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<bool, StoreError> {
        self.run(|db| {
            let w = db.begin_write()?;
            let existed = {
                let mut t = w.open_table(table)?;
                let existed = t.remove(key)?.is_some();
                existed
            };
            w.commit()?;
            Ok(existed)
        })
    }

    /// Test support: overwrites one audit entry's bytes (to show tampering is detected).
    #[doc(hidden)]
    pub fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.run(|db| {
            let w = db.begin_write()?;
            {
                let mut t = w.open_table(AUDIT)?;
                t.insert(seq, bytes)?;
            }
            w.commit()?;
            Ok(())
        })
    }

    pub fn get(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(table)?;
            let v = t.get(key)?.map(|v| v.value().to_vec());
            Ok(v)
        })
    }

    /// Writes several records in one durable transaction.
    pub fn put_many(
        &self,
        table: TableDefinition<&str, &[u8]>,
        items: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.run(|db| {
            if items.is_empty() {
                return Ok(());
            }
            let w = db.begin_write()?;
            {
                let mut t = w.open_table(table)?;
                for (k, v) in items {
                    t.insert(k.as_str(), v.as_slice())?;
                }
            }
            w.commit()?;
            Ok(())
        })
    }

    pub fn remove_many(
        &self,
        table: TableDefinition<&str, &[u8]>,
        keys: &[String],
    ) -> Result<(), StoreError> {
        self.run(|db| {
            if keys.is_empty() {
                return Ok(());
            }
            let w = db.begin_write()?;
            {
                let mut t = w.open_table(table)?;
                for k in keys {
                    t.remove(k.as_str())?;
                }
            }
            w.commit()?;
            Ok(())
        })
    }

    pub fn all(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.run(|db| {
            let r = db.begin_read()?;
            let t = r.open_table(table)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }
}
