//! `[vulnerabilities]`: the offline OSV database the index refuses affected releases from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::policy::osv::Level;
use crate::policy::units::parse_duration;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVulns {
    database: Option<String>,
    block: Option<String>,
    max_age: Option<String>,
}

/// The OSV database (a directory of OSV JSON records, or a zip of them as the OSV project
/// exports per ecosystem), read with the allowlists: at start, on SIGHUP and on reload.
#[derive(Debug, Clone)]
pub struct VulnConfig {
    pub database: PathBuf,
    /// Releases affected by an advisory at or above this level are refused; an advisory with
    /// no usable severity is refused at every level.
    pub block: Level,
    /// A database whose newest record is older than this is named in `/readyz` and a metric.
    pub max_age: Duration,
}

pub(super) fn section(
    raw: Option<RawVulns>,
    invalid: &dyn Fn(String) -> ConfigError,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<VulnConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    // A [vulnerabilities] table without a database would refuse nothing while looking like
    // protection: refused, like every section that is not enforced.
    let database = match raw.database.as_deref().map(str::trim) {
        Some(d) if !d.is_empty() => resolve(d),
        _ => {
            return Err(invalid(
                "[vulnerabilities] database is required: a directory or zip of OSV records".into(),
            ))
        }
    };
    let block = match raw.block.as_deref().unwrap_or("high") {
        "low" => Level::Low,
        "medium" => Level::Medium,
        "high" => Level::High,
        "critical" => Level::Critical,
        other => {
            return Err(invalid(format!(
                "[vulnerabilities] block must be low, medium, high or critical, not {other:?}"
            )))
        }
    };
    let max_age = match raw.max_age.as_deref() {
        None => Duration::from_secs(3 * 86_400),
        Some(s) => match parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                return Err(invalid(
                    "[vulnerabilities] max_age must be more than 0s".into(),
                ))
            }
            Err(e) => return Err(invalid(format!("[vulnerabilities] max_age: {e}"))),
        },
    };
    Ok(Some(VulnConfig {
        database: Path::new(&database).to_path_buf(),
        block,
        max_age,
    }))
}
