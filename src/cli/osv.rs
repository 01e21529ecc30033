//! `tollgate osv update FILE_OR_URL`: puts a new OSV database where `[vulnerabilities]
//! database` points, checked whole first. The gate reads it at its next reload (SIGHUP or
//! `POST /admin/v1/reload`), like an allowlist change.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;

/// A download larger than this is not the PyPI export (tens of MiB): refused, not stored.
const MAX_DOWNLOAD: u64 = 4 << 30;

pub fn osv_update(config: &Config, source: &str, allow_shrink: bool) -> i32 {
    match update(config, source, allow_shrink) {
        Ok(msg) => {
            println!("{msg}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn update(config: &Config, source: &str, allow_shrink: bool) -> Result<String, String> {
    let v = config.vulnerabilities.as_ref().ok_or(
        "the config has no [vulnerabilities] database to update (see CONTRACT.md [vulnerabilities])",
    )?;
    let target = &v.database;
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The new database is written beside the old one and checked whole before it replaces
    // it, so a failed download or a bad record leaves the database in force untouched.
    let tmp = dir.join(format!(".osv-update-{}", std::process::id()));
    let cleanup = Cleanup(tmp.clone());
    let from: PathBuf = if source.starts_with("https://") || source.starts_with("http://") {
        download(source, &tmp)?;
        tmp.clone()
    } else {
        PathBuf::from(source)
    };
    let db = crate::vulns::read_database(&from)?;
    // A database that lost most of its advisories is more likely a wrong file (another
    // ecosystem, a sample) than a new export: it would lift refusals, so it needs saying so.
    if !allow_shrink && target.exists() {
        if let Ok(old) = crate::vulns::read_database(target) {
            if db.advisories() < old.advisories() / 2 {
                return Err(format!(
                    "{} holds {} PyPI advisories, fewer than half of the {} in {}: give --allow-shrink if that is meant",
                    if from == tmp { crate::pypi::upstream::safe_str(source) } else { source.to_string() },
                    db.advisories(),
                    old.advisories(),
                    target.display()
                ));
            }
        }
    }
    // The database is a directory when it is one, or when it does not exist yet and is not
    // named *.zip; a zip source is then unpacked into it (its records only).
    let target_is_dir =
        target.is_dir() || (!target.exists() && target.extension().is_none_or(|x| x != "zip"));
    if target_is_dir {
        let staged = dir.join(format!(".osv-staged-{}", std::process::id()));
        let _staged = Cleanup(staged.clone());
        if from.is_dir() {
            copy_records(&from, &staged)?;
        } else {
            unzip_records(&from, &staged)?;
        }
        let old = dir.join(format!(".osv-old-{}", std::process::id()));
        let _old = Cleanup(old.clone());
        if target.exists() {
            std::fs::rename(target, &old).map_err(|e| format!("{}: {e}", target.display()))?;
        }
        std::fs::rename(&staged, target).map_err(|e| format!("{}: {e}", target.display()))?;
    } else if from.is_dir() {
        return Err(format!(
            "{} is a zip: give a zip, or point database at a directory",
            target.display()
        ));
    } else {
        if from != tmp {
            std::fs::copy(&from, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        std::fs::rename(&tmp, target).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    drop(cleanup);
    Ok(format!(
        "{}: {} record(s), {} PyPI advisories, newest modified {}; reload the gate (SIGHUP or POST /admin/v1/reload) to put it in force",
        target.display(),
        db.records,
        db.advisories(),
        db.newest
            .map(crate::policy::units::format_rfc3339)
            .unwrap_or_else(|| "unknown".into())
    ))
}

/// Copies the records of a directory (as the loader reads them: symbolic links to
/// directories not followed) into `to`, flat.
fn copy_records(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for p in crate::vulns::files_below(from, "json", usize::MAX)? {
        let rel = p
            .strip_prefix(from)
            .unwrap_or(&p)
            .to_string_lossy()
            .replace('/', "__");
        let dest = to.join(rel);
        std::fs::copy(&p, &dest).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// Writes the `*.json` entries of a zip (already read whole by the loader) into `to`, each
/// under its own file name: an entry's directories (or a `../`) never choose where it goes.
fn unzip_records(from: &Path, to: &Path) -> Result<(), String> {
    let file = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", from.display()))?;
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| format!("{}: {e}", from.display()))?;
        let name = entry.name().to_string();
        let Some(base) = Path::new(&name)
            .file_name()
            .filter(|_| name.ends_with(".json"))
        else {
            continue;
        };
        let dest = to.join(base);
        let mut out =
            std::fs::File::create(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    Ok(())
}

/// Removes a temporary path on every way out.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Downloads `url` to `to`: https, or http to a loopback host only; no redirects; at most
/// [`MAX_DOWNLOAD`] bytes.
fn download(url: &str, to: &Path) -> Result<(), String> {
    // A signed URL carries its token in the query: errors show the URL without it.
    let shown = crate::pypi::upstream::safe_str(url);
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{shown}: {e}"))?;
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if parsed.scheme() == "http" && !loopback {
        return Err(format!("{shown}: http only for a loopback host; use https"));
    }
    let private_ok = if loopback { vec![host] } else { Vec::new() };
    let client = crate::fetch::http_client("osv", None, Duration::from_secs(300), private_ok)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let mut resp = client
            .get(parsed)
            .send()
            .await
            .map_err(|e| format!("{shown}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{shown}: HTTP {}", resp.status()));
        }
        let mut file = std::fs::File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{shown}: {e}"))? {
            got += chunk.len() as u64;
            if got > MAX_DOWNLOAD {
                return Err(format!("{shown}: larger than {} GiB", MAX_DOWNLOAD >> 30));
            }
            file.write_all(&chunk)
                .map_err(|e| format!("{}: {e}", to.display()))?;
        }
        file.sync_all()
            .map_err(|e| format!("{}: {e}", to.display()))
    })
}
