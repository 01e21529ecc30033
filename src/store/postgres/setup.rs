//! Reaching the server and preparing it: TLS, and the schema's versions.

use std::sync::Arc;

use tokio_postgres::Client;

use super::{pg, MIGRATION_LOCK};
use crate::config::PostgresConfig;
use crate::store::StoreError;

/// The schema, one step per version, applied in order at start by one replica while the others
/// wait on [`MIGRATION_LOCK`]. A step is never edited once released: a change is a new step.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
    CREATE TABLE kv (
        tbl text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (tbl, key)
    );
    CREATE TABLE audit (seq bigint PRIMARY KEY, entry bytea NOT NULL);
    CREATE TABLE audit_checkpoints (seq bigint PRIMARY KEY, checkpoint bytea NOT NULL);
    CREATE TABLE generation (id smallint PRIMARY KEY CHECK (id = 1), value bigint NOT NULL);
    INSERT INTO generation VALUES (1, 0);
    CREATE TABLE auth_failures (
        client text PRIMARY KEY,
        window_start bigint NOT NULL,
        failures integer NOT NULL
    );
    CREATE TABLE replicas (
        id text PRIMARY KEY,
        allowlists text NOT NULL,
        seen_at bigint NOT NULL
    );
    "#,
)];

/// The TLS settings for the server: its certificate checked against `ca_file` when given
/// (a private CA, as Azure Database for PostgreSQL's is not), else the platform's store and the
/// built-in Mozilla roots; the name is always checked.
pub(super) fn tls_config(
    cfg: &PostgresConfig,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(ca) => {
            let bad = |e: String| StoreError::Postgres(format!("ca_file {}: {e}", ca.display()));
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad("no certificate in it".into()));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Postgres(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Brings the schema to [`MIGRATIONS`]' last version, under a session lock: the first replica
/// to start migrates, the others wait for it and then find nothing left to do.
pub(super) async fn migrate(c: &mut Client) -> Result<(), StoreError> {
    // Waiting for another replica's migration is the one wait longer than the session's
    // lock and statement timeouts (the caller bounds it).
    c.batch_execute("SET lock_timeout = 0; SET statement_timeout = 0")
        .await
        .map_err(pg)?;
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    let result = async {
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS tollgate_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(pg)?;
        let have: i32 = c
            .query_one("SELECT coalesce(max(version), 0) FROM tollgate_schema", &[])
            .await
            .map_err(pg)?
            .get(0);
        let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if have > known {
            return Err(StoreError::Postgres(format!(
                "the store's schema is version {have}, newer than this gate knows ({known}): run the newer gate, or restore the database from before its upgrade"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > have) {
            let tx = c.transaction().await.map_err(pg)?;
            tx.batch_execute(sql).await.map_err(pg)?;
            tx.execute(
                "INSERT INTO tollgate_schema (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            tracing::info!(version, "store schema migrated");
        }
        Ok(())
    }
    .await;
    let unlocked = c
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg);
    let reset = c
        .batch_execute("RESET lock_timeout; RESET statement_timeout")
        .await
        .map_err(pg);
    result.and(unlocked.map(|_| ())).and(reset)
}
