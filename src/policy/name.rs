//! Project names: validated against PEP 508 and normalised per PEP 503.

use std::fmt;

/// Longest project name accepted. PyPI itself has no names near this long; the bound keeps
/// hostile paths from reaching anything that allocates per character.
pub const MAX_NAME_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("project name is empty")]
    Empty,
    #[error("project name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("{0:?} is not a valid project name (PEP 508: letters, digits, '.', '-', '_', starting and ending with a letter or digit)")]
    Invalid(String),
}

/// A PEP 503-normalised project name (`Foo.Bar_baz` → `foo-bar-baz`).
///
/// It can only be built from a string that is a valid PEP 508 name, so every holder of a
/// `ProjectName` may use it in a path or a key without further checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectName(String);

impl ProjectName {
    /// PEP 508 names: `^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$`, case-insensitive.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        if raw.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let bytes = raw.as_bytes();
        let ok_inner = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        let ok_ends =
            bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
        if !ok_inner || !ok_ends {
            return Err(NameError::Invalid(raw.chars().take(80).collect()));
        }
        // PEP 503: lowercase, and every run of `-`, `_`, `.` becomes one `-`.
        let mut out = String::with_capacity(raw.len());
        let mut in_sep = false;
        for b in bytes {
            if matches!(b, b'.' | b'-' | b'_') {
                if !in_sep {
                    out.push('-');
                }
                in_sep = true;
            } else {
                out.push(b.to_ascii_lowercase() as char);
                in_sep = false;
            }
        }
        Ok(ProjectName(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_per_pep503() {
        for (raw, want) in [
            ("numpy", "numpy"),
            ("Django", "django"),
            ("Foo.Bar_baz", "foo-bar-baz"),
            ("a--_.b", "a-b"),
            ("A", "a"),
            ("zope.interface", "zope-interface"),
        ] {
            assert_eq!(ProjectName::parse(raw).unwrap().as_str(), want, "{raw}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for raw in [
            "", "-a", "a-", ".hidden", "..", "../etc", "a/b", "a\0b", "a b", "é", "a%2Fb", "a\\b",
        ] {
            assert!(
                ProjectName::parse(raw).is_err(),
                "{raw:?} should be invalid"
            );
        }
        assert_eq!(
            ProjectName::parse(&"a".repeat(201)),
            Err(NameError::TooLong)
        );
        assert!(ProjectName::parse(&"a".repeat(200)).is_ok());
    }
}
