//! The shared store on PostgreSQL (`[store] url`): the same tables as the embedded store, for
//! every replica of the gate at once.
//!
//! The store's callers are synchronous (as with redb), and some run inside the gate's async
//! workers; so the connections live on a runtime of their own, in one thread, and a call waits
//! for its answer on a channel. No call can start a runtime inside a runtime, and a slow
//! server never holds more than the calls waiting on it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::TableHandle as _;
use tokio::sync::OwnedMutexGuard;
use tokio_postgres::Client;

mod setup;

use super::{Change, StoreError, Table, Write, AUDIT_META};
use crate::config::{Password, PostgresConfig};
use setup::{migrate, tls_config};

/// Connections each gate keeps (transactions need one each; plain reads pipeline on any).
const CONNECTIONS: usize = 4;
/// A call without an answer by then fails (the server or the network is down).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a statement waits for a lock, and a session may sit idle inside a transaction.
const LOCK_TIMEOUT_MS: u64 = 5000;
/// Replicas wait this long for another one's migration.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Advisory lock keys (pg_advisory_lock): migrations, and appends to the audit chain.
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7401;
const AUDIT_LOCK: i64 = 0x746f_6c6c_6761_7402;
/// Rows per page when the audit chain is walked.
const SCAN_PAGE: i64 = 2000;

type Slot = Arc<tokio::sync::Mutex<Option<Client>>>;

struct Inner {
    cfg: PostgresConfig,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    conns: Vec<Slot>,
    next: AtomicUsize,
    /// False after a call failed for want of the server, until one succeeds again.
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

pub struct Postgres {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    /// Dropped with the store: the connections' thread ends.
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    // The server's own message when there is one (never the connection string); any other
    // error is the way to the server failing.
    match e.as_db_error() {
        Some(d) => StoreError::Postgres(format!("{}: {}", d.code().code(), d.message())),
        None => {
            // With its causes: "error performing TLS handshake" alone does not say that the
            // server's certificate was not trusted.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            StoreError::Unreachable(text)
        }
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Inner {
    async fn connect(&self) -> Result<Client, StoreError> {
        // Built from the parts the config checked, never parsed again from the URL's text.
        let c = &self.cfg;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&c.host).port(c.port);
        if let Some(u) = &c.user {
            cfg.user(u);
        }
        if let Some(d) = &c.dbname {
            cfg.dbname(d);
        }
        cfg.connect_timeout(c.connect_timeout.unwrap_or(CONNECT_TIMEOUT));
        cfg.application_name(c.application_name.as_deref().unwrap_or("tollgate"));
        // A replica that stops (SIGSTOP, a partition) inside a transaction must not hold the
        // audit lock, and so every other replica's admin changes, for longer than a moment:
        // the server ends such a session after 5 s, and a wait for a lock gives up after 5 s.
        // Dead peers are noticed by keepalives within a minute, not the kernel's two hours.
        cfg.options(format!(
            "-c lock_timeout={LOCK_TIMEOUT_MS} -c idle_in_transaction_session_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={}",
            CALL_TIMEOUT.as_millis()
        ));
        cfg.keepalives_idle(Duration::from_secs(30));
        match &self.cfg.password {
            Some(Password::Env(s)) => {
                cfg.password(s.expose());
            }
            Some(Password::File(p)) => {
                let text = tokio::fs::read_to_string(p).await.map_err(|e| {
                    StoreError::Unreachable(format!("password_file {}: {e}", p.display()))
                })?;
                cfg.password(text.trim_end_matches(['\r', '\n']));
            }
            None => {}
        }
        let client = match &self.tls {
            Some(tls) => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, conn) = cfg.connect(tls.clone()).await.map_err(pg)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %e, "store connection ended");
                    }
                });
                client
            }
            None => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(pg)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %e, "store connection ended");
                    }
                });
                client
            }
        };
        Ok(client)
    }

    /// A connection of the pool: a free one if any, else the next in turn once it is free.
    async fn conn(&self) -> Result<OwnedMutexGuard<Option<Client>>, StoreError> {
        let mut guard = None;
        for slot in &self.conns {
            if let Ok(g) = slot.clone().try_lock_owned() {
                guard = Some(g);
                break;
            }
        }
        let mut g = match guard {
            Some(g) => g,
            None => {
                let n = self.next.fetch_add(1, Relaxed) % self.conns.len();
                self.conns[n].clone().lock_owned().await
            }
        };
        if g.as_ref().is_none_or(|c| c.is_closed()) {
            *g = Some(self.connect().await?);
        }
        Ok(g)
    }
}

fn client(g: &mut OwnedMutexGuard<Option<Client>>) -> Result<&mut Client, StoreError> {
    g.as_mut()
        .ok_or_else(|| StoreError::Postgres("no connection".into()))
}

impl Postgres {
    /// Connects, and brings the schema to this version (one replica migrates, the others wait).
    pub fn open(cfg: &PostgresConfig) -> Result<Postgres, StoreError> {
        let tls = if cfg.tls {
            Some(tls_config(cfg)?)
        } else {
            None
        };
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("tollgate-store".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = htx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = htx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(StoreError::Io)?;
        let handle = hrx
            .recv()
            .map_err(|e| StoreError::Postgres(e.to_string()))?
            .map_err(StoreError::Postgres)?;
        let pg = Postgres {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                tls,
                conns: (0..CONNECTIONS).map(|_| Slot::default()).collect(),
                next: AtomicUsize::new(0),
                healthy: AtomicBool::new(true),
                last_error: Mutex::new(None),
            }),
            handle,
            _stop: stop,
        };
        pg.call_within(MIGRATE_TIMEOUT, |inner| async move {
            let mut g = inner.conn().await?;
            migrate(client(&mut g)?).await
        })
        .map_err(|e| match e {
            StoreError::Unreachable(why) => {
                StoreError::Unreachable(format!("{}: {why}", cfg.shown))
            }
            StoreError::Postgres(why) => StoreError::Postgres(format!("{}: {why}", cfg.shown)),
            other => other,
        })?;
        Ok(pg)
    }

    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.call_within(CALL_TIMEOUT, f)
    }

    fn call_within<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let inner = self.inner.clone();
        self.handle.spawn(async move {
            let out = match tokio::time::timeout(limit, f(inner.clone())).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unreachable(format!(
                    "no answer from the server within {} s",
                    limit.as_secs()
                ))),
            };
            // A refusal by the server (a constraint, a conflict) says it is there; a failure
            // to reach it marks the store unreachable until a call gets through.
            match &out {
                Err(StoreError::Unreachable(why)) => {
                    inner.healthy.store(false, Relaxed);
                    *inner.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                }
                _ => inner.healthy.store(true, Relaxed),
            }
            let _ = tx.send(out);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Postgres("the store's task ended".into())))
    }

    /// Whether the server answers now (a round trip).
    pub fn ping(&self) -> Result<(), String> {
        let r = self.call_within(Duration::from_secs(3), |inner| async move {
            let mut g = inner.conn().await?;
            client(&mut g)?.simple_query("SELECT 1").await.map_err(pg)?;
            Ok(())
        });
        r.map_err(|e| format!("the store {} cannot be reached: {e}", self.inner.cfg.shown))
    }

    pub fn usable(&self) -> bool {
        self.inner.healthy.load(Relaxed)
    }

    pub fn size_bytes(&self) -> u64 {
        self.call(|inner| async move {
            let mut g = inner.conn().await?;
            let row = client(&mut g)?
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await
                .map_err(pg)?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
        .unwrap_or(0)
    }

    pub fn audit_commit(
        &self,
        entries: &[(u64, Vec<u8>)],
        change: Option<&Change>,
    ) -> Result<(), StoreError> {
        if entries.is_empty() && change.is_none() {
            return Ok(());
        }
        let seqs: Vec<i64> = entries.iter().map(|(s, _)| i(*s)).collect();
        let rows: Vec<Vec<u8>> = entries.iter().map(|(_, b)| b.clone()).collect();
        let writes = change.map(|c| c.writes().to_vec());
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let tx = client(&mut g)?.transaction().await.map_err(pg)?;
            if let Some(&first) = seqs.first() {
                // Appends from every replica take turns; each checks that it extends the
                // chain's head, so the chain never forks and never skips a number.
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                    .await
                    .map_err(pg)?;
                let last: Option<i64> = tx
                    .query_one("SELECT max(seq) FROM audit", &[])
                    .await
                    .map_err(pg)?
                    .get(0);
                if let Some(last) = last {
                    if last != first - 1 {
                        return Err(StoreError::AuditMoved(last.max(0) as u64));
                    }
                }
                tx.execute(
                    "INSERT INTO audit (seq, entry) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                    &[&seqs, &rows],
                )
                .await
                .map_err(|e| match e.code() {
                    Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
                        StoreError::Conflict("audit entry exists already".into())
                    }
                    _ => pg(e),
                })?;
            }
            if let Some(writes) = writes {
                for w in &writes {
                    apply(&tx, w).await?;
                }
                // The other replicas see a new generation and read the rules again.
                tx.execute("UPDATE generation SET value = value + 1 WHERE id = 1", &[])
                    .await
                    .map_err(pg)?;
            }
            tx.commit().await.map_err(pg)?;
            Ok(())
        })
    }

    /// The generation of the admin state (rules, revocations, tokens): bumped by every change.
    pub fn generation(&self) -> Result<u64, StoreError> {
        self.call(|inner| async move {
            let mut g = inner.conn().await?;
            let row = client(&mut g)?
                .query_one("SELECT value FROM generation WHERE id = 1", &[])
                .await
                .map_err(pg)?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
    }

    fn one_seq_bytes(&self, sql: &'static str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let row = client(&mut g)?.query_opt(sql, &[]).await.map_err(pg)?;
            Ok(row.map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get::<_, Vec<u8>>(1))))
        })
    }

    pub fn audit_last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.one_seq_bytes("SELECT seq, entry FROM audit ORDER BY seq DESC LIMIT 1")
    }

    pub fn audit_first(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.one_seq_bytes("SELECT seq, entry FROM audit ORDER BY seq ASC LIMIT 1")
    }

    fn exec(&self, sql: &'static str, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), StoreError> {
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let c = client(&mut g)?;
            match bytes {
                Some(b) => c.execute(sql, &[&i(seq), &b]).await,
                None => c.execute(sql, &[&i(seq)]).await,
            }
            .map_err(pg)?;
            Ok(())
        })
    }

    pub fn audit_checkpoint_put(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO audit_checkpoints (seq, checkpoint) VALUES ($1, $2) ON CONFLICT (seq) DO UPDATE SET checkpoint = EXCLUDED.checkpoint",
            seq,
            Some(bytes.to_vec()),
        )
    }

    pub fn audit_checkpoint_last(&self) -> Result<Option<u64>, StoreError> {
        self.call(|inner| async move {
            let mut g = inner.conn().await?;
            let row = client(&mut g)?
                .query_one("SELECT max(seq) FROM audit_checkpoints", &[])
                .await
                .map_err(pg)?;
            Ok(row.get::<_, Option<i64>>(0).map(|s| s.max(0) as u64))
        })
    }

    pub fn audit_checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.call(|inner| async move {
            let mut g = inner.conn().await?;
            let rows = client(&mut g)?
                .query(
                    "SELECT seq, checkpoint FROM audit_checkpoints ORDER BY seq",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }

    pub fn audit_anchor(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(AUDIT_META, "anchor")
    }

    pub fn audit_prune(&self, upto: u64, anchor: &[u8]) -> Result<(), StoreError> {
        let anchor = anchor.to_vec();
        let meta = AUDIT_META.name().to_string();
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let tx = client(&mut g)?.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                .await
                .map_err(pg)?;
            tx.execute("DELETE FROM audit WHERE seq <= $1", &[&i(upto)])
                .await
                .map_err(pg)?;
            tx.execute("DELETE FROM audit_checkpoints WHERE seq < $1", &[&i(upto)])
                .await
                .map_err(pg)?;
            tx.execute(
                "INSERT INTO kv (tbl, key, value) VALUES ($1, 'anchor', $2) ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                &[&meta, &anchor],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(())
        })
    }

    pub fn audit_truncate(&self, seq: u64, checkpoints: bool) -> Result<(), StoreError> {
        self.exec("DELETE FROM audit WHERE seq > $1", seq, None)?;
        if checkpoints {
            self.exec("DELETE FROM audit_checkpoints WHERE seq > $1", seq, None)?;
        }
        Ok(())
    }

    pub fn audit_checkpoint_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.exec("DELETE FROM audit_checkpoints WHERE seq = $1", seq, None)
    }

    pub fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO audit (seq, entry) VALUES ($1, $2) ON CONFLICT (seq) DO UPDATE SET entry = EXCLUDED.entry",
            seq,
            Some(bytes.to_vec()),
        )
    }

    pub fn audit_scan(
        &self,
        after: u64,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut from = after;
        loop {
            let page = self.call(move |inner| async move {
                let mut g = inner.conn().await?;
                let rows = client(&mut g)?
                    .query(
                        "SELECT seq, entry FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&i(from), &SCAN_PAGE],
                    )
                    .await
                    .map_err(pg)?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get::<_, Vec<u8>>(1)))
                    .collect::<Vec<_>>())
            })?;
            let Some(last) = page.last().map(|(s, _)| *s) else {
                return Ok(());
            };
            for (seq, bytes) in &page {
                if !f(*seq, bytes) {
                    return Ok(());
                }
            }
            from = last;
        }
    }

    pub fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (t, k) = (table.name().to_string(), key.to_string());
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let row = client(&mut g)?
                .query_opt(
                    "SELECT value FROM kv WHERE tbl = $1 AND key = $2",
                    &[&t, &k],
                )
                .await
                .map_err(pg)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    pub fn put_many(&self, table: Table, items: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let t = table.name().to_string();
        let keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
        let values: Vec<Vec<u8>> = items.iter().map(|(_, v)| v.clone()).collect();
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            client(&mut g)?
                .execute(
                    "INSERT INTO kv (tbl, key, value) SELECT $1, k, v FROM unnest($2::text[], $3::bytea[]) AS u(k, v) ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                    &[&t, &keys, &values],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    pub fn remove_many(&self, table: Table, keys: &[String]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let t = table.name().to_string();
        let keys = keys.to_vec();
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            client(&mut g)?
                .execute(
                    "DELETE FROM kv WHERE tbl = $1 AND key = ANY($2)",
                    &[&t, &keys],
                )
                .await
                .map_err(pg)
        })
    }

    pub fn all(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = table.name().to_string();
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let rows = client(&mut g)?
                .query(
                    "SELECT key, value FROM kv WHERE tbl = $1 ORDER BY key",
                    &[&t],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    pub fn count_prefix(&self, table: Table, prefix: &str) -> Result<usize, StoreError> {
        let t = table.name().to_string();
        // A LIKE prefix with its own wildcards escaped: with the C collation it is a range
        // scan of the primary key.
        let mut pattern = String::with_capacity(prefix.len() + 1);
        for ch in prefix.chars() {
            if matches!(ch, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(ch);
        }
        pattern.push('%');
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let row = client(&mut g)?
                .query_one(
                    "SELECT count(*) FROM kv WHERE tbl = $1 AND key LIKE $2",
                    &[&t, &pattern],
                )
                .await
                .map_err(pg)?;
            Ok(row.get::<_, i64>(0).max(0) as usize)
        })
    }

    pub fn len(&self, table: Table) -> Result<usize, StoreError> {
        self.count_prefix(table, "")
    }

    /// One more failed authentication of `client` (windows of `window` seconds): the
    /// client's failures in its window, counted across every replica.
    pub fn auth_failed(&self, who: &str, now: i64, window: i64) -> Result<u32, StoreError> {
        let who = who.to_string();
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let row = client(&mut g)?
                .query_one(
                    "INSERT INTO auth_failures AS a (client, window_start, failures) VALUES ($1, $2, 1)
                     ON CONFLICT (client) DO UPDATE SET
                       window_start = CASE WHEN $2 - a.window_start >= $3 THEN $2 ELSE a.window_start END,
                       failures = CASE WHEN $2 - a.window_start >= $3 THEN 1 ELSE a.failures + 1 END
                     RETURNING failures",
                    &[&who, &now, &window],
                )
                .await
                .map_err(pg)?;
            Ok(row.get::<_, i32>(0).max(0) as u32)
        })
    }

    /// Clients with at least `max` failures in a window still open, with the window's start.
    pub fn auth_locked(
        &self,
        now: i64,
        window: i64,
        max: u32,
    ) -> Result<Vec<(String, i64, u32)>, StoreError> {
        let max = i32::try_from(max).unwrap_or(i32::MAX);
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let c = client(&mut g)?;
            // Old windows go, so the table stays the size of the current attacks.
            c.execute(
                "DELETE FROM auth_failures WHERE window_start < $1",
                &[&(now - window)],
            )
            .await
            .map_err(pg)?;
            let rows = c
                .query(
                    "SELECT client, window_start, failures FROM auth_failures WHERE failures >= $1",
                    &[&max],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get::<_, i32>(2).max(0) as u32))
                .collect())
        })
    }

    /// Records this replica's allowlist files (a digest) and returns every replica seen since
    /// `since`, with its digest.
    pub fn replica_seen(
        &self,
        id: &str,
        allowlists: &str,
        now: i64,
        since: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let (id, allowlists) = (id.to_string(), allowlists.to_string());
        self.call(move |inner| async move {
            let mut g = inner.conn().await?;
            let c = client(&mut g)?;
            c.execute(
                "INSERT INTO replicas (id, allowlists, seen_at) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET allowlists = EXCLUDED.allowlists, seen_at = EXCLUDED.seen_at",
                &[&id, &allowlists, &now],
            )
            .await
            .map_err(pg)?;
            c.execute("DELETE FROM replicas WHERE seen_at < $1", &[&(since - 86_400)])
                .await
                .map_err(pg)?;
            let rows = c
                .query(
                    "SELECT id, allowlists FROM replicas WHERE seen_at >= $1 ORDER BY id",
                    &[&since],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }
}

async fn apply(tx: &tokio_postgres::Transaction<'_>, w: &Write) -> Result<(), StoreError> {
    match w {
        Write::Put(table, key, value) => tx
            .execute(
                "INSERT INTO kv (tbl, key, value) VALUES ($1, $2, $3) ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                &[&table.name(), key, value],
            )
            .await
            .map_err(pg)?,
        Write::Remove(table, key) => tx
            .execute(
                "DELETE FROM kv WHERE tbl = $1 AND key = $2",
                &[&table.name(), key],
            )
            .await
            .map_err(pg)?,
    };
    Ok(())
}
