//! `tollgate allowlist import FILE --publisher-from-provenance`: the exact rules of a pinned
//! requirements file, each with the Trusted Publisher its files' PEP 740 provenance proves.
//! Each pinned file is found on the project's index page (by its sha256), its provenance is
//! fetched (the link's URL, else the Integrity API) and verified under the configured
//! trusted root, and the publisher is read from the verified certificate, never from PyPI's
//! unauthenticated `publisher` object. A release whose files do not all prove one publisher
//! is written without one, with a comment saying why.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::policy::publisher::Publisher;
use crate::policy::requirements::Pinned;
use crate::pypi::upstream::Upstream;
use crate::verify::trust::TrustRoot;

pub fn import_with_publishers(config: &Config, path: &Path) -> i32 {
    let parsed = match super::read_pinned(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    for p in &parsed.problems {
        eprintln!("{}:{}: {}", path.display(), p.line, p.message);
    }
    let root = match &config.trusted_root {
        None => {
            eprintln!("error: --publisher-from-provenance needs trusted_root in the config");
            return 1;
        }
        Some(p) => match std::fs::read(p)
            .map_err(|e| e.to_string())
            .and_then(|b| TrustRoot::from_json(&b).map_err(String::from))
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: trusted_root {}: {e}", p.display());
                return 1;
            }
        },
    };
    let Some(index) = config.pypi.indexes.first() else {
        eprintln!("error: no [[pypi.index]] is configured");
        return 1;
    };
    let upstream = match Upstream::new(
        index.clone(),
        config.limits.page_bytes,
        config.pypi.max_files_per_page,
        config.pypi.upstream_timeout,
        Arc::new(crate::metrics::Metrics::default()),
    ) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut failed = !parsed.problems.is_empty();
    println!(
        "# imported from {} by tollgate allowlist import --publisher-from-provenance",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    for p in &parsed.pinned {
        let found = rt.block_on(publisher_of(&upstream, &root, p));
        let rule = crate::policy::requirements::to_allowlist_toml(std::slice::from_ref(p));
        match found {
            Ok(publisher) => {
                // The publisher goes inside the rule, before its closing blank line.
                print!(
                    "{}publisher = {}\n\n",
                    rule.trim_end_matches('\n').to_string() + "\n",
                    publisher.to_toml()
                );
            }
            Err(why) => {
                failed = true;
                eprintln!(
                    "{}:{}: {}=={}: {why}",
                    path.display(),
                    p.line,
                    p.name,
                    p.version
                );
                print!("# {}=={}: no publisher: {why}\n{rule}", p.name, p.version);
            }
        }
    }
    i32::from(failed)
}

/// The one publisher every pinned file of `p` proves.
async fn publisher_of(
    upstream: &Upstream,
    root: &TrustRoot,
    p: &Pinned,
) -> Result<Publisher, String> {
    let files = upstream
        .fetch_page(&p.name)
        .await
        .map_err(|e| format!("the index page: {e}"))?;
    let mut found: Option<Publisher> = None;
    for h in &p.hashes {
        let f = files
            .iter()
            .find(|f| f.sha256.as_deref() == Some(h.hex().as_str()))
            .ok_or_else(|| format!("no file on the index has sha256 {h}"))?;
        let url = f
            .provenance
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .or_else(|| upstream.integrity_url(&p.name, &p.version.to_string(), &f.filename))
            .ok_or("no provenance URL")?;
        let body = upstream
            .fetch_provenance(&url)
            .await
            .map_err(|e| format!("{}: provenance: {e}", f.filename))?
            .ok_or_else(|| format!("{}: the index has no provenance", f.filename))?;
        let verified = crate::verify::pep740::verify_provenance(
            root,
            &body,
            &p.name,
            &f.filename,
            *h.as_bytes(),
        )
        .map_err(|e| format!("{}: {e}", f.filename))?;
        let publisher = verified
            .attestations
            .iter()
            .find_map(Publisher::from_claims)
            .ok_or_else(|| {
                format!(
                    "{}: signed by {}, not a Trusted Publisher",
                    f.filename, verified.attestations[0].identity
                )
            })?;
        match &found {
            Some(prev) if *prev != publisher => {
                return Err(format!(
                    "its files name two publishers ({prev}; {publisher})"
                ))
            }
            _ => found = Some(publisher),
        }
    }
    found.ok_or_else(|| "no pinned file".into())
}
