//! `tollgate audit …`: the audit log verified (store, archive, witness, log-stream copies),
//! exported, its witness initialised and its public key printed, from the command line.

use crate::config::Config;

use super::{open_store, quietly};

/// The keys `audit verify` checks checkpoints with: the configured one (when it can be read)
/// `previous_public_keys`, and every `--public-key` (a rotated key, or an auditor without the
/// private key).
fn audit_keys(
    config: &Config,
    public_keys: &[std::path::PathBuf],
) -> Result<Vec<crate::audit::checkpoint::VerifyKey>, String> {
    use crate::audit::checkpoint::VerifyKey;
    let mut keys = Vec::new();
    for p in public_keys {
        let pem = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        keys.push(VerifyKey::from_pem(&pem).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    match (&config.audit.signing_key, &config.audit.signing_key_error) {
        (Some(k), _) => keys.push(
            VerifyKey::from_pem(k.expose()).map_err(|e| format!("[audit] signing key: {e}"))?,
        ),
        (None, Some(e)) if keys.is_empty() => return Err(format!("{e} (or give --public-key)")),
        _ => {}
    }
    for (path, pem, _) in &config.audit.previous_public_keys {
        keys.push(
            VerifyKey::from_pem(pem)
                .map_err(|e| format!("[audit] previous_public_keys {}: {e}", path.display()))?,
        );
    }
    Ok(keys)
}

/// `tollgate audit verify`: the chain against its signed checkpoints (stored, and copies from
/// the log stream given with `--checkpoint`) and the archive; exit 1 when anything shows it
/// was changed.
pub fn audit_verify(
    config: &Config,
    checkpoint_files: &[std::path::PathBuf],
    public_keys: &[std::path::PathBuf],
    archive: Option<&std::path::Path>,
) -> i32 {
    let keys = match audit_keys(config, public_keys) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut external = Vec::new();
    for f in checkpoint_files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                return 1;
            }
        };
        // A whole log file may be given: its checkpoint lines are taken, the rest skipped.
        let found: Vec<_> = text
            .lines()
            .filter_map(crate::audit::checkpoint::Checkpoint::from_log_line)
            .collect();
        if found.is_empty() {
            eprintln!("error: {}: no audit checkpoint in it", f.display());
            return 1;
        }
        external.extend(found);
    }
    let store = match open_store(config, "ask it instead: GET /admin/v1/audit/verify") {
        Ok(s) => s,
        Err(c) => return c,
    };
    let dir = archive.map_or_else(
        || crate::audit::archive::dir(&config.data_dir),
        std::path::Path::to_path_buf,
    );
    let retired = retired_keys(config);
    let given = crate::audit::verify::Given {
        keys,
        external,
        retired,
        witness: config.audit.witness_file.clone(),
        checkpoint_every: Some(config.audit.checkpoint_every),
    };
    let verified = quietly(|| {
        store.guard(|| {
            crate::audit::verify_all(&store, &given, &dir).map_err(crate::store::StoreError::Audit)
        })
    });
    match verified {
        Ok(report) => {
            for line in report.lines() {
                println!("{line}");
            }
            if report.intact() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `tollgate audit export`: the entries of a time range, from the archive and the store, in
/// the archive's line format with the checkpoints that cover them.
pub fn audit_export(config: &Config, since: Option<&str>, until: Option<&str>) -> i32 {
    let parse = |v: Option<&str>, default: i64| match v {
        None => Ok(default),
        Some(t) => crate::audit::archive::parse_time(t),
    };
    let (since, until) = match (parse(since, 0), parse(until, i64::MAX)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let store = match open_store(config, "ask it instead: GET /admin/v1/audit/export") {
        Ok(s) => s,
        Err(c) => return c,
    };
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let dir = crate::audit::archive::dir(&config.data_dir);
    let r = quietly(|| {
        store.guard(|| {
            crate::audit::archive::export(&store, &dir, since, until, |line| {
                writeln!(out, "{line}").is_ok()
            })
            .map_err(crate::store::StoreError::Audit)
        })
    });
    let _ = out.flush();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `tollgate audit witness-init`: the witness written from the newest stored checkpoint a
/// configured key signed, once the whole log verifies (when `witness_file` is newly
/// configured on a gate whose store already holds checkpoints).
pub fn audit_witness_init(config: &Config) -> i32 {
    let Some(path) = &config.audit.witness_file else {
        eprintln!("error: [audit] witness_file is not configured");
        return 1;
    };
    let keys = match audit_keys(config, &[]) {
        Ok(k) if !k.is_empty() => k,
        Ok(_) => {
            eprintln!("error: no checkpoint key is configured");
            return 1;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let store = match open_store(config, "stop the gate first") {
        Ok(s) => s,
        Err(c) => return c,
    };
    // Checked as verify checks it: retired keys' bounds, and the witness already there (a
    // genuine witness is never replaced by a checkpoint it disagrees with).
    let retired = retired_keys(config);
    let given = crate::audit::verify::Given {
        keys: keys.clone(),
        retired,
        witness: path.exists().then(|| path.clone()),
        checkpoint_every: Some(config.audit.checkpoint_every),
        ..Default::default()
    };
    let dir = crate::audit::archive::dir(&config.data_dir);
    let report = match quietly(|| {
        store.guard(|| {
            crate::audit::verify_all(&store, &given, &dir).map_err(crate::store::StoreError::Audit)
        })
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if !report.intact() {
        for l in report.lines() {
            eprintln!("{l}");
        }
        eprintln!("error: the log does not verify: no witness is written for it");
        return 1;
    }
    let newest = store.audit_checkpoints().ok().and_then(|all| {
        all.into_iter().rev().find_map(|(_, b)| {
            serde_json::from_slice::<crate::audit::checkpoint::Checkpoint>(&b)
                .ok()
                .filter(|cp| keys.iter().any(|k| k.check(cp).is_ok()))
        })
    });
    match newest {
        None => {
            println!("no signed checkpoint yet: the gate writes the witness with its first");
            0
        }
        Some(cp) => match crate::audit::witness::write(path, &cp) {
            Ok(()) => {
                println!(
                    "witness written: checkpoint #{} to {}",
                    cp.seq,
                    path.display()
                );
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
    }
}

/// `tollgate audit public-key`: the checkpoint key's public half, for auditors.
pub fn audit_public_key(config: &Config) -> i32 {
    match audit_keys(config, &[]).map(|k| k.into_iter().next()) {
        Ok(Some(k)) => match k.to_pem() {
            Ok(pem) => {
                print!("{pem}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        Ok(None) => {
            eprintln!("error: no [audit] signing key is configured");
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// The retired keys' ids and their `last_seq` bounds, from the configuration.
fn retired_keys(config: &Config) -> Vec<(String, Option<u64>)> {
    config
        .audit
        .previous_public_keys
        .iter()
        .filter_map(|(_, pem, last)| {
            crate::audit::checkpoint::VerifyKey::from_pem(pem)
                .ok()
                .map(|k| (k.id, *last))
        })
        .collect()
}
