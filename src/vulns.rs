//! Reading the offline OSV database (`[vulnerabilities] database`): a directory of OSV JSON
//! records, or a zip of them as the OSV project exports each ecosystem
//! (`<ecosystem>/all.zip`). All or nothing: a record that does not parse fails the load,
//! naming the file, and the database in force stays (a reload never half-applies).

use std::io::Read;
use std::path::Path;

use crate::policy::osv::{Database, Record};
use std::sync::{Arc, Mutex};

/// A record larger than this is not an advisory (the largest PyPI records are tens of KiB):
/// refused rather than read into memory, so a crafted zip cannot inflate without bound.
const MAX_RECORD_BYTES: u64 = 8 << 20;
/// Records in one database, at most (the whole OSV export of every ecosystem is under 1M).
const MAX_RECORDS: usize = 4_000_000;

fn record(name: &str, bytes: &[u8]) -> Result<Record, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{name}: not an OSV record: {e}"))
}

/// Reads every `*.json` record of a directory (recursively) or a zip.
pub fn read_database(path: &Path) -> Result<Database, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    let mut db = Database::default();
    if meta.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files).map_err(|e| format!("{shown}: {e}"))?;
        files.sort();
        for f in files {
            let bytes =
                read_capped(std::fs::File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?)
                    .map_err(|e| format!("{}: {e}", f.display()))?;
            db.add(record(&f.display().to_string(), &bytes)?);
            if db.records > MAX_RECORDS {
                return Err(format!("{shown}: more than {MAX_RECORDS} records"));
            }
        }
    } else {
        let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| format!("{shown}: neither a directory nor a zip of OSV records: {e}"))?;
        if zip.len() > MAX_RECORDS {
            return Err(format!("{shown}: more than {MAX_RECORDS} entries"));
        }
        for i in 0..zip.len() {
            let entry = zip
                .by_index(i)
                .map_err(|e| format!("{shown}: entry {i}: {e}"))?;
            let name = entry.name().to_string();
            if entry.is_dir() || !name.ends_with(".json") {
                continue;
            }
            let bytes = read_capped(entry).map_err(|e| format!("{shown}: {name}: {e}"))?;
            db.add(record(&format!("{shown}: {name}"), &bytes)?);
        }
    }
    Ok(db)
}

fn read_capped(r: impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!("larger than {} MiB", MAX_RECORD_BYTES >> 20));
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    Ok(())
}

/// What the database on disk is, cheaply: every file's path, length and modification time.
/// The same fingerprint means the same records.
fn fingerprint(path: &Path) -> Result<String, String> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut one = |p: &Path| -> Result<(), String> {
        let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let when = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        for part in [
            p.display().to_string().into_bytes(),
            m.len().to_be_bytes().to_vec(),
            when.to_be_bytes().to_vec(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Ok(())
    };
    if path.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files).map_err(|e| format!("{}: {e}", path.display()))?;
        files.sort();
        for f in files {
            one(&f)?;
        }
    } else {
        one(path)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The database last read from `path`, reused while its files are unchanged: a reload for an
/// allowlist edit does not read (and briefly hold twice) a database that did not change.
static LAST: Mutex<Option<(std::path::PathBuf, String, Arc<Database>)>> = Mutex::new(None);

pub fn read_database_cached(path: &Path) -> Result<Arc<Database>, String> {
    let print = fingerprint(path)?;
    if let Some((p, f, db)) = crate::sync::lock(&LAST).as_ref() {
        if p == path && *f == print {
            return Ok(db.clone());
        }
    }
    let started = std::time::Instant::now();
    let db = Arc::new(read_database(path)?);
    tracing::info!(database = %path.display(), records = db.records, advisories = db.advisories(), ms = started.elapsed().as_millis() as u64, "vulnerability database loaded");
    *crate::sync::lock(&LAST) = Some((path.to_path_buf(), print, db.clone()));
    Ok(db)
}
