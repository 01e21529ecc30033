//! Distribution filenames: wheels (PEP 427, the binary distribution format spec) and sdists
//! (PEP 625). The gate only ever lists and serves files whose names parse to the project they
//! are listed under, so a page cannot smuggle another project's file in.

use std::str::FromStr;

use pep440_rs::Version;

use super::name::ProjectName;

/// Longest filename accepted: the usual file-system limit for one path component.
pub const MAX_FILENAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DistKind {
    Wheel,
    Sdist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistFilename {
    pub filename: String,
    pub project: ProjectName,
    pub version: Version,
    pub kind: DistKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilenameError {
    #[error("filename is empty or longer than {MAX_FILENAME_LEN} bytes")]
    Length,
    #[error("filename contains a character that is not allowed in a distribution filename")]
    Characters,
    #[error("{0:?} is not a wheel (.whl) or sdist (.tar.gz, .zip) filename")]
    Unknown(String),
    #[error("{file:?} is a file of project {found:?}, not {expected}")]
    OtherProject {
        file: String,
        found: String,
        expected: ProjectName,
    },
    #[error("{0:?} has no valid PEP 440 version")]
    Version(String),
}

/// Only characters that occur in wheel and sdist names. This excludes `/`, `\`, NUL, `%` and
/// spaces, so a filename can never act as a path.
fn safe_chars(name: &str) -> bool {
    !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+' | b'!'))
}

impl DistFilename {
    /// Parses `filename` as a distribution of `project`.
    pub fn parse(filename: &str, project: &ProjectName) -> Result<Self, FilenameError> {
        if filename.is_empty() || filename.len() > MAX_FILENAME_LEN {
            return Err(FilenameError::Length);
        }
        if !safe_chars(filename) {
            return Err(FilenameError::Characters);
        }
        let unknown = || FilenameError::Unknown(filename.to_string());
        let (name_part, version_part, kind) = if let Some(stem) = filename.strip_suffix(".whl") {
            // {name}-{version}(-{build})?-{python}-{abi}-{platform}.whl; the name has no `-`.
            let parts: Vec<&str> = stem.split('-').collect();
            if parts.len() != 5 && parts.len() != 6 {
                return Err(unknown());
            }
            (parts[0], parts[1], DistKind::Wheel)
        } else {
            let stem = filename
                .strip_suffix(".tar.gz")
                .or_else(|| filename.strip_suffix(".zip"))
                .ok_or_else(unknown)?;
            // Legacy sdists may keep `-` in the name: find the split whose name normalises to
            // the project. PEP 625 names (`{name}-{version}.tar.gz`, name with `_`) match too.
            let mut found = None;
            for (i, _) in stem.match_indices('-') {
                if ProjectName::parse(&stem[..i]).is_ok_and(|n| &n == project) {
                    found = Some((&stem[..i], &stem[i + 1..]));
                    break;
                }
            }
            match found {
                Some((n, v)) => (n, v, DistKind::Sdist),
                None => {
                    let n = stem.split('-').next().unwrap_or(stem);
                    return Err(FilenameError::OtherProject {
                        file: filename.to_string(),
                        found: n.to_string(),
                        expected: project.clone(),
                    });
                }
            }
        };
        let name = ProjectName::parse(name_part).map_err(|_| unknown())?;
        if &name != project {
            return Err(FilenameError::OtherProject {
                file: filename.to_string(),
                found: name_part.to_string(),
                expected: project.clone(),
            });
        }
        let version = Version::from_str(version_part)
            .map_err(|_| FilenameError::Version(filename.to_string()))?;
        Ok(DistFilename {
            filename: filename.to_string(),
            project: name,
            version,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ProjectName {
        ProjectName::parse(s).unwrap()
    }

    #[test]
    fn parses_wheels_and_sdists() {
        let w = DistFilename::parse(
            "numpy-2.4.6-cp311-cp311-manylinux_2_17_x86_64.whl",
            &p("numpy"),
        )
        .unwrap();
        assert_eq!(w.kind, DistKind::Wheel);
        assert_eq!(w.version.to_string(), "2.4.6");
        let w = DistFilename::parse(
            "zope.interface-6.0-1-py3-none-any.whl",
            &p("zope-interface"),
        )
        .unwrap();
        assert_eq!(w.version.to_string(), "6.0");
        let s = DistFilename::parse("zope-interface-5.0.tar.gz", &p("zope.interface")).unwrap();
        assert_eq!(
            (s.kind, s.version.to_string()),
            (DistKind::Sdist, "5.0".to_string())
        );
        let s = DistFilename::parse("my_pkg-1.0.post1.zip", &p("my-pkg")).unwrap();
        assert_eq!(s.version.to_string(), "1.0.post1");
    }

    #[test]
    fn refuses_other_projects_and_tricks() {
        let np = p("numpy");
        for bad in [
            "evil-1.0-py3-none-any.whl",
            "numpy-1.0.exe",
            "numpy-notaversion-py3-none-any.whl",
            "../numpy-1.0.tar.gz",
            "numpy-1.0%2F.tar.gz",
            "numpy-1.0\0.tar.gz",
            "numpy-1.0-py3-none-any.whl/x",
            ".numpy-1.0.tar.gz",
            "numpyx-1.0.tar.gz",
            "",
        ] {
            assert!(DistFilename::parse(bad, &np).is_err(), "{bad:?}");
        }
        let long = format!("numpy-1.0-py3-none-{}.whl", "a".repeat(300));
        assert_eq!(DistFilename::parse(&long, &np), Err(FilenameError::Length));
    }
}
