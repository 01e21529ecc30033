//! The metadata store and the content-addressed cache of verified files.
//!
//! Two engines keep the same tables: the embedded one (a redb file in data_dir, one gate
//! process, the default) and PostgreSQL (`[store] url`), shared by every replica of the gate.
//! Callers see one [`Store`] and never the engine.

pub mod cache;
mod embedded;
mod postgres;
pub mod remote;

use std::path::Path;

use redb::TableDefinition;
use serde::{de::DeserializeOwned, Serialize};

pub use cache::Cache;
use embedded::Embedded;
use postgres::Postgres;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(Box<redb::Error>),
    #[error("store is in use by another tollgate process (a running gate holds it): {0}")]
    Locked(String),
    #[error("cache I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("store record could not be decoded: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("store: {0}")]
    Conflict(String),
    #[error("the store {path} is damaged ({detail}). Stop the gate, move the file aside, and restore it from a backup, or start with an empty store (README: \"When the store is damaged\")")]
    Damaged { path: String, detail: String },
    #[error("{0}")]
    Audit(String),
    #[error("the store {0} cannot be used after an I/O error (is the disk full?); the gate reopens it as soon as it can")]
    Unusable(String),
    /// The store's file was removed or replaced while the gate runs.
    #[error("{0}")]
    Lost(String),
    /// PostgreSQL refused a statement.
    #[error("store (PostgreSQL): {0}")]
    Postgres(String),
    /// PostgreSQL could not be reached (or did not answer in time).
    #[error("the store (PostgreSQL) cannot be reached: {0}")]
    Unreachable(String),
    /// Another replica appended to the audit chain first: the writer chains again from the
    /// head the store now has.
    #[error("another replica appended to the audit chain first (at #{0})")]
    AuditMoved(u64),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(Box::new(e.into())) }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Cache index: sha256 → `CacheRecord`.
pub const CACHED: TableDefinition<&str, &[u8]> = TableDefinition::new("cached");

/// Admin API tokens: id → `TokenRecord` (the secret only as its SHA-256).
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

/// The audit log: sequence number → `<sha256 hex of the entry> <entry JSON>`, hash-chained
/// (each entry names the hash of the one before it).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Signed checkpoints of the audit chain: the sequence number they cover → the checkpoint JSON.
pub const AUDIT_CHECKPOINTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("audit_checkpoints");

/// The audit log's own facts: `anchor` → the checkpoint of the last entry pruned by retention
/// (the first retained entry names its hash).
pub const AUDIT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_meta");

/// Rules made through the admin API: id → `ApiRule`.
pub const API_RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("api_rules");
/// Pins revoked through the admin API: sha256 → `ApiRevocation`.
pub const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");

/// A table of string keys and byte values, as the gates declare theirs.
pub type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// The store's own tables; each gate declares its tables and creates them with
/// [`Store::ensure`] (the store names no gate).
const TABLES: [Table; 5] = [AUDIT_META, CACHED, TOKENS, API_RULES, REVOKED];

/// Free bytes (for an unprivileged writer) on the file system holding `path`; `None` when it
/// cannot be asked.
pub fn disk_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path that outlives the call, and `st` points to a
    // writable statvfs the call fills in; it is read only when the call reports success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some): widened, whatever they are.
    #[allow(clippy::unnecessary_cast)]
    let (avail, frsize) = (st.f_bavail as u64, st.f_frsize as u64);
    Some(avail.saturating_mul(frsize))
}

/// One write of an admin change.
#[derive(Clone)]
pub enum Write {
    Put(Table, String, Vec<u8>),
    Remove(Table, String),
}

/// A change of the admin API's state, written in the same transaction as its audit entry: the
/// change happens if and only if its entry is stored.
#[derive(Clone, Default)]
pub struct Change(Vec<Write>);

impl Change {
    /// A change that writes one record.
    pub fn put<T: Serialize>(table: Table, key: &str, value: &T) -> Result<Change, StoreError> {
        Ok(Change(vec![Write::Put(
            table,
            key.to_string(),
            serde_json::to_vec(value)?,
        )]))
    }

    /// A change that removes one record.
    pub fn remove(table: Table, key: &str) -> Change {
        Change(vec![Write::Remove(table, key.to_string())])
    }

    pub fn writes(&self) -> &[Write] {
        &self.0
    }
}

enum Engine {
    Embedded(Embedded),
    Postgres(Postgres),
}

/// The metadata store, on whichever engine the configuration names.
pub struct Store {
    engine: Engine,
}

/// The same call on either engine.
macro_rules! each {
    ($self:ident, $e:ident => $body:expr) => {
        match &$self.engine {
            Engine::Embedded($e) => $body,
            Engine::Postgres($e) => $body,
        }
    };
}

impl Store {
    /// The embedded store: one redb file, held by one gate process.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            engine: Engine::Embedded(Embedded::open(path)?),
        })
    }

    /// The shared store on PostgreSQL, its schema brought to this version.
    pub fn open_postgres(cfg: &crate::config::PostgresConfig) -> Result<Store, StoreError> {
        Ok(Store {
            engine: Engine::Postgres(Postgres::open(cfg)?),
        })
    }

    /// Whether other gate processes share this store (PostgreSQL).
    pub fn shared(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }

    /// Appends audit entries in one durable transaction (the audit writer's group commit).
    pub fn audit_append(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        self.audit_commit(entries, None)
    }

    /// Appends audit entries, and applies `change` in the same durable transaction. An entry
    /// never replaces an existing one; on a shared store, entries that do not follow the head
    /// (another replica appended first) are refused with [`StoreError::AuditMoved`].
    pub fn audit_commit(
        &self,
        entries: &[(u64, Vec<u8>)],
        change: Option<&Change>,
    ) -> Result<(), StoreError> {
        each!(self, e => e.audit_commit(entries, change))
    }

    /// The generation of the admin state on a shared store (bumped by every admin change);
    /// `None` on the embedded store, where this process makes every change itself.
    pub fn generation(&self) -> Result<Option<u64>, StoreError> {
        match &self.engine {
            Engine::Embedded(_) => Ok(None),
            Engine::Postgres(p) => p.generation().map(Some),
        }
    }

    pub fn audit_last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        each!(self, e => e.audit_last())
    }

    pub fn audit_first(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        each!(self, e => e.audit_first())
    }

    pub fn audit_checkpoint_put(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        each!(self, e => e.audit_checkpoint_put(seq, bytes))
    }

    pub fn audit_checkpoint_last(&self) -> Result<Option<u64>, StoreError> {
        each!(self, e => e.audit_checkpoint_last())
    }

    pub fn audit_checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        each!(self, e => e.audit_checkpoints())
    }

    pub fn audit_anchor(&self) -> Result<Option<Vec<u8>>, StoreError> {
        each!(self, e => e.audit_anchor())
    }

    /// Retention: removes the entries up to and including `upto` and the checkpoints before it,
    /// and records `anchor` (the checkpoint of entry `upto`), in one transaction.
    pub fn audit_prune(&self, upto: u64, anchor: &[u8]) -> Result<(), StoreError> {
        each!(self, e => e.audit_prune(upto, anchor))
    }

    /// Test support: removes audit entries after `seq` (and their checkpoints).
    #[doc(hidden)]
    pub fn audit_truncate(&self, seq: u64, checkpoints: bool) -> Result<(), StoreError> {
        each!(self, e => e.audit_truncate(seq, checkpoints))
    }

    /// Test support: removes the stored checkpoint of `seq` (as an attacker would).
    #[doc(hidden)]
    pub fn audit_checkpoint_remove(&self, seq: u64) -> Result<(), StoreError> {
        each!(self, e => e.audit_checkpoint_remove(seq))
    }

    /// Test support: overwrites one audit entry's bytes (to show tampering is detected).
    #[doc(hidden)]
    pub fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        each!(self, e => e.audit_overwrite(seq, bytes))
    }

    /// Calls `f` on audit entries after `after`, in order, until it returns false.
    pub fn audit_scan(
        &self,
        after: u64,
        f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        each!(self, e => e.audit_scan(after, f))
    }

    /// Creates `tables` if they are not there yet (a gate's tables, at its construction).
    pub fn ensure(&self, tables: &[Table]) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Embedded(e) => e.ensure(tables),
            // One table holds every table's records.
            Engine::Postgres(_) => Ok(()),
        }
    }

    /// Whether the store can be used now (the embedded file open; the server answering).
    pub fn usable(&self) -> bool {
        each!(self, e => e.usable())
    }

    /// The embedded store: that its path still names the file the gate opened. PostgreSQL:
    /// that the server answers.
    pub fn check_file(&self) -> Result<(), String> {
        match &self.engine {
            Engine::Embedded(e) => e.check_file(),
            Engine::Postgres(p) => p.ping(),
        }
    }

    /// Runs `f` over the store, turning a panic inside redb (it asserts on some damaged pages)
    /// into a damaged-store error naming the file.
    pub fn guard<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        match &self.engine {
            Engine::Embedded(e) => e.guard(f),
            Engine::Postgres(_) => f(),
        }
    }

    /// The store's size in bytes (the file, or the database).
    pub fn size_bytes(&self) -> u64 {
        each!(self, e => e.size_bytes())
    }

    /// How many records `table` holds.
    pub fn len(&self, table: Table) -> Result<usize, StoreError> {
        each!(self, e => e.len(table))
    }

    /// How many keys of `table` start with `prefix`.
    pub fn count_prefix(&self, table: Table, prefix: &str) -> Result<usize, StoreError> {
        each!(self, e => e.count_prefix(table, prefix))
    }

    /// Removes one record; whether it was there.
    pub fn remove(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        match &self.engine {
            Engine::Embedded(e) => e.remove(table, key),
            Engine::Postgres(p) => Ok(p.remove_many(table, &[key.to_string()])? > 0),
        }
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match each!(self, e => e.get(table, key))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Writes several records in one durable transaction.
    pub fn put_many<T: Serialize>(
        &self,
        table: Table,
        items: &[(String, T)],
    ) -> Result<(), StoreError> {
        let raw = items
            .iter()
            .map(|(k, v)| Ok((k.clone(), serde_json::to_vec(v)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        each!(self, e => e.put_many(table, &raw))
    }

    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        let raw = [(key.to_string(), serde_json::to_vec(value)?)];
        each!(self, e => e.put_many(table, &raw))
    }

    pub fn remove_many(&self, table: Table, keys: &[String]) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Embedded(e) => e.remove_many(table, keys),
            Engine::Postgres(p) => p.remove_many(table, keys).map(|_| ()),
        }
    }

    pub fn all<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        each!(self, e => e.all(table))?
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_slice(&v)?)))
            .collect()
    }

    /// A shared store: one more failed authentication of `client`, counted across replicas
    /// (its failures in the current window); `None` on the embedded store.
    pub fn auth_failed(&self, client: &str, now: i64, window: i64) -> Option<u32> {
        match &self.engine {
            Engine::Embedded(_) => None,
            Engine::Postgres(p) => match p.auth_failed(client, now, window) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "could not count a failed authentication in the shared store");
                    None
                }
            },
        }
    }

    /// A shared store: the clients locked out by failures on any replica (client, window
    /// start, failures).
    pub fn auth_locked(
        &self,
        now: i64,
        window: i64,
        max: u32,
    ) -> Result<Vec<(String, i64, u32)>, StoreError> {
        match &self.engine {
            Engine::Embedded(_) => Ok(Vec::new()),
            Engine::Postgres(p) => p.auth_locked(now, window, max),
        }
    }

    /// A shared store: records this replica's allowlist digest and returns the replicas seen
    /// since `since` with theirs.
    pub fn replica_seen(
        &self,
        id: &str,
        allowlists: &str,
        now: i64,
        since: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        match &self.engine {
            Engine::Embedded(_) => Ok(Vec::new()),
            Engine::Postgres(p) => p.replica_seen(id, allowlists, now, since),
        }
    }
}
