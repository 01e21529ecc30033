//! Where the config comes from: `--config`, `TOLLGATE_CONFIG`, `./tollgate.toml`, or the
//! built-in defaults.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

impl Config {
    /// Finds the config as CONTRACT.md says: `--config`, else `TOLLGATE_CONFIG`, else
    /// `tollgate.toml` in the working directory, else built-in defaults.
    pub fn locate(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(p) = explicit {
            return Self::load_file(p);
        }
        if let Some(p) = std::env::var_os("TOLLGATE_CONFIG") {
            return Self::load_file(Path::new(&p));
        }
        let local = Path::new("tollgate.toml");
        if local.exists() {
            return Self::load_file(local);
        }
        Self::from_text("", None, Path::new("."))
    }

    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Self::from_text(&text, Some(path), &base)
    }
}
