//! Reading the offline OSV database (`[vulnerabilities] database`): a directory of OSV JSON
//! records, or a zip of them as the OSV project exports each ecosystem
//! (`<ecosystem>/all.zip`). All or nothing: a record that does not parse fails the load,
//! naming the file, and the database in force stays (a reload never half-applies).

use std::io::Read;
use std::path::{Path, PathBuf};

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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if meta.is_dir() {
        let files = files_below(path, "json", MAX_RECORDS).map_err(|e| format!("{shown}: {e}"))?;
        for f in files {
            let bytes =
                read_capped(std::fs::File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?)
                    .map_err(|e| format!("{}: {e}", f.display()))?;
            db.add(record(&f.display().to_string(), &bytes)?, now);
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
            db.add(record(&format!("{shown}: {name}"), &bytes)?, now);
        }
    }
    // An emptied directory, or another ecosystem's export, would lift every refusal at the
    // next reload: refused like a broken file, so the database in force stays.
    if db.advisories() == 0 {
        return Err(format!(
            "{shown}: {} record(s), none about a PyPI project: is this the PyPI export?",
            db.records
        ));
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

/// Every file named `*.<ext>` below `dir`, sorted, at most `max` of them. Symbolic links to
/// directories are not followed (a link back up would walk for ever); links to files are
/// read like files.
pub fn files_below(dir: &Path, ext: &str, max: usize) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, ext: &str, max: usize, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in rd {
            let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
            let p = e.path();
            let kind = e.file_type().map_err(|e| format!("{}: {e}", p.display()))?;
            if kind.is_dir() {
                walk(&p, ext, max, out)?;
            } else if p.extension().is_some_and(|x| x == ext) && (kind.is_file() || p.is_file()) {
                if out.len() >= max {
                    return Err(format!("more than {max} *.{ext} files below it"));
                }
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, ext, max, &mut out)?;
    out.sort();
    Ok(out)
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
        for f in files_below(path, "json", MAX_RECORDS)
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            one(&f)?;
        }
    } else {
        one(path)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The database last read from `path`, reused while its files are unchanged: a reload for an
/// allowlist edit does not read (and briefly hold twice) a database that did not change.
static LAST: Mutex<Option<(PathBuf, String, Arc<Database>)>> = Mutex::new(None);

pub fn read_database_cached(path: &Path) -> Result<Arc<Database>, String> {
    let print = fingerprint(path)?;
    let previous = match crate::sync::lock(&LAST).as_ref() {
        Some((p, f, db)) if p == path && *f == print => return Ok(db.clone()),
        Some((p, _, db)) if p == path => Some(db.advisories()),
        _ => None,
    };
    let started = std::time::Instant::now();
    let db = Arc::new(read_database(path)?);
    // A database that lost most of its advisories while the gate ran is more likely a sync
    // cut short or a zip half unpacked into the live directory than a new export: it would
    // lift refusals, so the one in force stays. A deliberate shrink takes a restart.
    if let Some(before) = previous {
        if db.advisories() < before / 2 {
            return Err(format!(
                "{}: {} PyPI advisories, fewer than half of the {before} in force: refused (restart the gate if the smaller database is meant)",
                path.display(),
                db.advisories()
            ));
        }
    }
    tracing::info!(database = %path.display(), records = db.records, advisories = db.advisories(), ms = started.elapsed().as_millis() as u64, "vulnerability database loaded");
    *crate::sync::lock(&LAST) = Some((path.to_path_buf(), print, db.clone()));
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REC: &str = r#"{"id":"X","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"PyPI","name":"demo"},"versions":["1.0"]}]}"#;

    #[test]
    fn a_directory_link_back_up_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/x.json"), REC).unwrap();
        std::os::unix::fs::symlink("..", d.path().join("sub/loop")).unwrap();
        std::os::unix::fs::symlink("../sub", d.path().join("sub/loop2")).unwrap();
        let db = read_database(d.path()).unwrap();
        assert_eq!(db.records, 1);
    }

    #[test]
    fn a_reload_that_loses_most_advisories_keeps_the_database_in_force() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..4 {
            std::fs::write(
                d.path().join(format!("{i}.json")),
                REC.replace("\"X\"", &format!("\"X{i}\"")),
            )
            .unwrap();
        }
        assert_eq!(read_database_cached(d.path()).unwrap().advisories(), 4);
        for i in 1..4 {
            std::fs::remove_file(d.path().join(format!("{i}.json"))).unwrap();
        }
        let e = read_database_cached(d.path()).unwrap_err();
        assert!(e.contains("fewer than half of the 4 in force"), "{e}");
        // Three of four is not a shrink past half.
        for i in 1..3 {
            std::fs::write(
                d.path().join(format!("{i}.json")),
                REC.replace("\"X\"", &format!("\"X{i}\"")),
            )
            .unwrap();
        }
        assert_eq!(read_database_cached(d.path()).unwrap().advisories(), 3);
    }

    #[test]
    fn a_database_with_no_pypi_advisory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = read_database(d.path()).unwrap_err();
        assert!(e.contains("none about a PyPI project"), "{e}");
        std::fs::write(
            d.path().join("npm.json"),
            REC.replace("\"PyPI\"", "\"npm\""),
        )
        .unwrap();
        assert!(read_database(d.path()).is_err());
    }
}
