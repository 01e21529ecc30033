//! Hash-pinned requirement sets: pip's requirements file format (`--hash=sha256:` options,
//! `\` continuations, comments, markers, extras) and PEP 751 `pylock.toml`. Pure: text in,
//! entries out, each with the line it came from.

use std::collections::BTreeMap;
use std::str::FromStr;

use pep440_rs::{Operator, Version};
use pep508_rs::{Requirement, VersionOrUrl};
use serde::Deserialize;

use super::hash::Sha256;
use super::name::ProjectName;

/// One pinned requirement: a release and the hashes a client will accept for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub line: usize,
    pub name: ProjectName,
    pub version: Version,
    pub hashes: Vec<Sha256>,
    /// Files named by the lock (pylock.toml), matched to `hashes` by position; empty otherwise.
    pub filenames: Vec<String>,
    pub text: String,
}

/// A line that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub text: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub pinned: Vec<Pinned>,
    pub problems: Vec<Problem>,
    /// Option lines (`--index-url`, `-r`, …) that have no meaning for the gate.
    pub ignored: Vec<(usize, String)>,
}

/// pip's comment rule: `#` at the start or after whitespace starts a comment.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn exact_version(req: &Requirement) -> Result<Version, String> {
    match &req.version_or_url {
        Some(VersionOrUrl::VersionSpecifier(specs)) => {
            let specs: Vec<_> = specs.iter().collect();
            match specs.as_slice() {
                [s] if matches!(s.operator(), Operator::Equal | Operator::ExactEqual) => {
                    Ok(s.version().clone())
                }
                _ => Err("not pinned to one release: write name==version".into()),
            }
        }
        Some(VersionOrUrl::Url(_)) => {
            Err("a direct URL requirement cannot come through the index".into())
        }
        None => Err("not pinned to one release: write name==version".into()),
    }
}

/// Parses a requirements file in pip's format.
/// pep508_rs 0.9 panics on a name or an extra that ends in `.`, `-` or `_` when more text
/// follows it (`z. ==1`, `a[2-]`); PEP 508 §Names forbids both, so they are refused here first.
fn unparseable_name(spec: &str) -> Option<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let bad_end = |n: &str| n.ends_with(['.', '-', '_']) || n.starts_with(['.', '-', '_']);
    let s = spec.trim_start();
    let lead: String = s.chars().take_while(|c| is_name(*c)).collect();
    if bad_end(&lead) {
        return Some(format!(
            "the name {lead:?} must start and end with a letter or digit"
        ));
    }
    let rest = s[lead.len()..].trim_start();
    if let Some(extras) = rest.strip_prefix('[') {
        let extras = extras.split(']').next().unwrap_or_default();
        for e in extras.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let word: String = e.chars().take_while(|c| is_name(*c)).collect();
            if bad_end(&word) {
                return Some(format!(
                    "the extra {e:?} must start and end with a letter or digit"
                ));
            }
        }
    }
    None
}

pub fn parse_requirements(text: &str) -> Parsed {
    let mut out = Parsed::default();
    // Join `\` continuations, remembering the first line of each logical line.
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let (start, mut acc) = current.take().unwrap_or((line_no, String::new()));
        let stripped = strip_comment(raw);
        if let Some(body) = stripped.trim_end().strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            current = Some((start, acc));
        } else {
            acc.push_str(stripped);
            logical.push((start, acc));
        }
    }
    if let Some(c) = current {
        logical.push(c);
    }

    for (line, text) in logical {
        let text = text.trim().to_string();
        if text.is_empty() {
            continue;
        }
        if text.starts_with('-') {
            out.ignored.push((line, text));
            continue;
        }
        // The requirement ends where the first option begins.
        let (spec, opts) = match text.find(" --").or_else(|| text.find("\t--")) {
            Some(i) => (&text[..i], &text[i..]),
            None => (text.as_str(), ""),
        };
        let problem = |message: String| Problem {
            line,
            text: text.clone(),
            message,
        };
        if let Some(m) = unparseable_name(spec) {
            out.problems
                .push(problem(format!("not a PEP 508 requirement: {m}")));
            continue;
        }
        // Whatever else pep508_rs still panics on (the property tests found two) is a problem
        // with this line, not the end of the command.
        let parsed = std::panic::catch_unwind(|| Requirement::from_str(spec.trim()));
        let req = match parsed {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                out.problems
                    .push(problem(format!("not a PEP 508 requirement: {}", e.message)));
                continue;
            }
            Err(_) => {
                out.problems
                    .push(problem("not a PEP 508 requirement".to_string()));
                continue;
            }
        };
        let name = match ProjectName::parse(req.name.as_ref()) {
            Ok(n) => n,
            Err(e) => {
                out.problems.push(problem(e.to_string()));
                continue;
            }
        };
        let version = match exact_version(&req) {
            Ok(v) => v,
            Err(m) => {
                out.problems.push(problem(format!("{name}: {m}")));
                continue;
            }
        };
        let mut hashes = Vec::new();
        let mut bad = None;
        let mut tokens = opts.split_whitespace().peekable();
        while let Some(tok) = tokens.next() {
            let value = if let Some(v) = tok.strip_prefix("--hash=") {
                v.to_string()
            } else if tok == "--hash" {
                tokens.next().unwrap_or_default().to_string()
            } else {
                bad.get_or_insert(format!("unsupported option {tok:?} on a requirement line"));
                continue;
            };
            match value.split_once(':') {
                Some(("sha256", hex)) => match Sha256::parse(hex) {
                    Ok(h) => {
                        if !hashes.contains(&h) {
                            hashes.push(h)
                        }
                    }
                    Err(e) => {
                        bad.get_or_insert(e.to_string());
                    }
                },
                _ => {
                    bad.get_or_insert(format!("{value:?}: only sha256 hashes can be pinned"));
                }
            }
        }
        if let Some(m) = bad {
            out.problems.push(problem(format!("{name}: {m}")));
            continue;
        }
        if hashes.is_empty() {
            out.problems.push(problem(format!("{name}=={version}: no --hash=sha256: given; the gate serves hash-pinned files only")));
            continue;
        }
        out.pinned.push(Pinned {
            line,
            name,
            version,
            hashes,
            filenames: Vec::new(),
            text,
        });
    }
    out
}

#[derive(Deserialize)]
struct Lock {
    #[serde(rename = "lock-version")]
    lock_version: Option<String>,
    #[serde(default)]
    packages: Vec<toml::Spanned<LockPackage>>,
}

#[derive(Deserialize)]
struct LockPackage {
    name: String,
    version: Option<String>,
    sdist: Option<LockFile>,
    #[serde(default)]
    wheels: Vec<LockFile>,
}

#[derive(Deserialize)]
struct LockFile {
    name: Option<String>,
    url: Option<String>,
    path: Option<String>,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

/// Parses a PEP 751 lock file (`pylock.toml`).
pub fn parse_pylock(text: &str) -> Result<Parsed, Problem> {
    let lock: Lock = toml::from_str(text).map_err(|e| Problem {
        line: e
            .span()
            .map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            })
            .unwrap_or(1),
        text: String::new(),
        message: format!("not a pylock.toml: {}", e.message().replace('\n', " ")),
    })?;
    if lock.lock_version.is_none() {
        return Err(Problem {
            line: 1,
            text: String::new(),
            message: "not a pylock.toml: no lock-version".into(),
        });
    }
    let mut out = Parsed::default();
    for pkg in &lock.packages {
        let line = text.as_bytes()[..pkg.span().start.min(text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        let pkg = pkg.get_ref();
        let problem = |message: String| Problem {
            line,
            text: pkg.name.clone(),
            message,
        };
        let name = match ProjectName::parse(&pkg.name) {
            Ok(n) => n,
            Err(e) => {
                out.problems.push(problem(e.to_string()));
                continue;
            }
        };
        let Some(version) = pkg
            .version
            .as_deref()
            .and_then(|v| Version::from_str(v).ok())
        else {
            out.problems.push(problem(format!("{name}: no PEP 440 version (VCS, directory and archive entries cannot come through the index)")));
            continue;
        };
        let mut hashes = Vec::new();
        let mut filenames = Vec::new();
        let mut bad = None;
        for f in pkg.sdist.iter().chain(pkg.wheels.iter()) {
            match f.hashes.get("sha256").map(|h| Sha256::parse(h)) {
                Some(Ok(h)) => {
                    hashes.push(h);
                    let fname = f
                        .name
                        .clone()
                        .or_else(|| {
                            f.url
                                .as_deref()
                                .or(f.path.as_deref())
                                .and_then(|u| u.rsplit('/').next().map(str::to_string))
                        })
                        .unwrap_or_default();
                    filenames.push(fname);
                }
                Some(Err(e)) => {
                    bad.get_or_insert(e.to_string());
                }
                None => {
                    bad.get_or_insert("a file without a sha256 hash".to_string());
                }
            }
        }
        if let Some(m) = bad {
            out.problems.push(problem(format!("{name}: {m}")));
            continue;
        }
        if hashes.is_empty() {
            out.problems
                .push(problem(format!("{name}=={version}: no files with hashes")));
            continue;
        }
        out.pinned.push(Pinned {
            line,
            text: format!("{}=={}", pkg.name, version),
            name,
            version,
            hashes,
            filenames,
        });
    }
    Ok(out)
}

/// Renders pinned requirements as `[[package]]` allowlist TOML, one rule per release with every
/// hash that any line gave for it.
pub fn to_allowlist_toml(pinned: &[Pinned]) -> String {
    let mut merged: BTreeMap<(ProjectName, String), (Version, Vec<Sha256>)> = BTreeMap::new();
    for p in pinned {
        let e = merged
            .entry((p.name.clone(), p.version.to_string()))
            .or_insert_with(|| (p.version.clone(), Vec::new()));
        for h in &p.hashes {
            if !e.1.contains(h) {
                e.1.push(*h);
            }
        }
    }
    let mut out = String::new();
    for ((name, _), (version, hashes)) in merged {
        out.push_str("[[package]]\n");
        out.push_str(&format!(
            "name = \"{name}\"\nversion = \"{version}\"\nsha256 = [\n"
        ));
        for h in hashes {
            out.push_str(&format!("    \"{h}\",\n"));
        }
        out.push_str("]\n\n");
    }
    out
}

#[cfg(test)]
mod tests {
    /// Found by the property tests (tests/properties.rs): pep508_rs panicked on these.
    #[test]
    fn names_ending_in_punctuation_are_problems_not_panics() {
        for text in [
            "z. ==1",
            "z.;python_version>'3'",
            "a_ [x]",
            "b- @ https://x",
        ] {
            let p = super::parse_requirements(text);
            assert_eq!(p.problems.len(), 1, "{text}");
        }
    }

    use super::*;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn requirements_with_continuations_markers_extras() {
        let text = format!(
            "# a comment\n--index-url https://example.invalid/simple\n\
             Requests[socks]==2.32.3 ; python_version >= \"3.8\" \\\n    --hash=sha256:{H1} \\\n    --hash=sha256:{H2}  # trailing\n\
             numpy==2.4.6 --hash sha256:{}\n\
             flask>=3 --hash=sha256:{H1}\n\
             six==1.16.0\n\
             bad name==1\n\
             idna==3.7 --hash=md5:abc\n",
            H1.to_uppercase()
        );
        let p = parse_requirements(&text);
        assert_eq!(p.ignored.len(), 1);
        assert_eq!(p.pinned.len(), 2, "{:?}", p.problems);
        assert_eq!(p.pinned[0].line, 3);
        assert_eq!(p.pinned[0].name.as_str(), "requests");
        assert_eq!(p.pinned[0].hashes.len(), 2);
        assert_eq!(p.pinned[1].line, 6);
        assert_eq!(p.pinned[1].hashes[0].hex(), H1);
        let lines: Vec<usize> = p.problems.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![7, 8, 9, 10]);
        assert!(p.problems[0].message.contains("not pinned to one release"));
        assert!(p.problems[1].message.contains("no --hash"));
        assert!(p.problems[3].message.contains("only sha256"));
    }

    #[test]
    fn pylock() {
        let text = format!(
            "lock-version = \"1.0\"\ncreated-by = \"test\"\n\n[[packages]]\nname = \"numpy\"\nversion = \"2.4.6\"\n\
             wheels = [{{ name = \"numpy-2.4.6-cp311-cp311-linux_x86_64.whl\", url = \"https://x/numpy.whl\", hashes = {{ sha256 = \"{H1}\" }} }}]\n\
             [packages.sdist]\nurl = \"https://x/numpy-2.4.6.tar.gz\"\nhashes = {{ sha256 = \"{H2}\" }}\n\n\
             [[packages]]\nname = \"local\"\n"
        );
        let p = parse_pylock(&text).unwrap();
        assert_eq!(p.pinned.len(), 1);
        assert_eq!(p.pinned[0].hashes.len(), 2);
        assert_eq!(p.pinned[0].filenames[0], "numpy-2.4.6.tar.gz");
        assert_eq!(p.problems.len(), 1);
        assert!(parse_pylock("packages = 3").is_err());
    }

    #[test]
    fn toml_output_round_trips_through_the_loader() {
        let p = parse_requirements(&format!(
            "a==1.0 --hash=sha256:{H1}\na==1.0 ; sys_platform == 'win32' --hash=sha256:{H2}\n"
        ));
        let toml = to_allowlist_toml(&p.pinned);
        let policy =
            crate::policy::allowlist::load(&[("x.toml".into(), toml)], &["pypi".into()]).unwrap();
        assert_eq!(policy.exact_count(), 1);
        assert_eq!(
            policy.projects.values().next().unwrap().exact[0]
                .sha256
                .len(),
            2
        );
    }
}
