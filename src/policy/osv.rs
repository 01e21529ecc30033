//! Which OSV advisories affect a PyPI release, decided offline from the records themselves
//! (the OSV schema, <https://ossf.github.io/osv-schema/>). Pure: records in, answers out.
//!
//! - `affected[].package`: the `PyPI` ecosystem, names compared after PEP 503 normalization.
//! - `ranges` of type `ECOSYSTEM`: events compared with PEP 440 semantics, **after sorting them
//!   by version** (schema: "Evaluation"; a record may list `introduced: 2.0.0, fixed: 2.0.7,
//!   introduced: 0, fixed: 1.26.18`, and read in order that misses 2.0.5); `last_affected` is
//!   inclusive, `limit` caps a range; `introduced: "0"` is the lowest version.
//! - `ranges` of type `SEMVER`: the same walk with SemVer 2.0 precedence, for a release whose
//!   version is also a SemVer version. `GIT` ranges name commits, not releases: ignored.
//! - `versions`: an exact list, compared as PEP 440 versions.
//! - `withdrawn` records are ignored; an advisory's `id` and `aliases` name one vulnerability.
//! - Severity: the highest of the record's (and its `affected` entries') `CVSS_V3`/`CVSS_V4`
//!   vectors, scored by the `cvss` crate (FIRST's base score and its qualitative scale); else
//!   the database's own word (`database_specific.severity`, as GitHub's advisories carry it);
//!   else unknown, which no threshold lets through.

use std::str::FromStr as _;

use pep440_rs::Version;
use serde::Deserialize;

use super::ProjectName;

#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub withdrawn: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub affected: Vec<Affected>,
    #[serde(default)]
    pub severity: Vec<SeverityScore>,
    #[serde(default)]
    pub database_specific: Option<serde_json::Value>,
    /// When the record last changed (RFC 3339): the newest one dates the database.
    #[serde(default)]
    pub modified: Option<String>,
}

/// `severity[]`: a scoring system and its vector.
#[derive(Debug, Clone, Deserialize)]
pub struct SeverityScore {
    #[serde(rename = "type")]
    pub kind: String,
    pub score: String,
}

/// The qualitative severity scale (CVSS v3.1 specification, section 5; the same bands in 4.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }

    /// The cvss crate's band of a base score; "none" (0.0) counts as low.
    fn of_cvss(severity: cvss::Severity) -> Level {
        match severity {
            cvss::Severity::Critical => Level::Critical,
            cvss::Severity::High => Level::High,
            cvss::Severity::Medium => Level::Medium,
            _ => Level::Low,
        }
    }

    /// A database's own word (GitHub: LOW, MODERATE, HIGH, CRITICAL).
    fn of_word(word: &str) -> Option<Level> {
        match word.to_ascii_lowercase().as_str() {
            "low" => Some(Level::Low),
            "moderate" | "medium" => Some(Level::Medium),
            "high" => Some(Level::High),
            "critical" => Some(Level::Critical),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Affected {
    #[serde(default)]
    pub package: Option<Package>,
    #[serde(default)]
    pub ranges: Vec<Range>,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub severity: Vec<SeverityScore>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Package {
    pub ecosystem: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Range {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One event of a range: exactly one of its fields is set.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Event {
    pub introduced: Option<String>,
    pub fixed: Option<String>,
    pub last_affected: Option<String>,
    pub limit: Option<String>,
}

/// A version on one of the two scales a range may use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Point {
    Pep440(Version),
    Semver(semver::Version),
}

fn point(kind: &str, s: &str) -> Option<Point> {
    match kind {
        "ECOSYSTEM" => Version::from_str(s).ok().map(Point::Pep440),
        "SEMVER" => semver::Version::parse(s.trim_start_matches('v'))
            .ok()
            .map(Point::Semver),
        _ => None,
    }
}

/// The walk the schema describes, over events sorted by version: whether `v` is inside.
fn in_range(range: &Range, v: &Point) -> bool {
    let kind = range.kind.as_str();
    if !matches!(kind, "ECOSYSTEM" | "SEMVER") {
        return false;
    }
    // (version, event) with "0" (introduced from the beginning) as the lowest.
    let mut events: Vec<(Option<Point>, &Event)> = Vec::new();
    for e in &range.events {
        let raw = e
            .introduced
            .as_deref()
            .or(e.fixed.as_deref())
            .or(e.last_affected.as_deref())
            .or(e.limit.as_deref());
        let Some(raw) = raw else { continue };
        match point(kind, raw) {
            Some(p) if e.introduced.as_deref() != Some("0") => events.push((Some(p), e)),
            // "0", and an `introduced` this scale cannot read, count from the lowest version:
            // an unreadable start must not drop the advisory (fail closed). An unreadable
            // `fixed`, `last_affected` or `limit` is left out, so the range stays open.
            _ if e.introduced.is_some() => events.push((None, e)),
            _ => continue,
        }
    }
    events.sort_by(|a, b| a.0.cmp(&b.0));
    if events
        .iter()
        .any(|(p, e)| e.limit.is_some() && p.as_ref().is_some_and(|l| v >= l))
    {
        return false;
    }
    let mut affected = false;
    for (p, e) in &events {
        let at_or_below = |p: &Option<Point>| p.as_ref().is_none_or(|p| p <= v);
        if e.introduced.is_some() {
            if at_or_below(p) {
                affected = true;
            }
        } else if e.fixed.is_some() {
            if at_or_below(p) {
                affected = false;
            }
        } else if e.last_affected.is_some() && p.as_ref().is_some_and(|p| p < v) {
            affected = false;
        }
    }
    affected
}

impl Record {
    /// Whether this (not withdrawn) record names `project` at `version` as affected.
    pub fn affects(&self, project: &ProjectName, version: &Version) -> bool {
        self.affects_by(project, version, true)
    }

    /// The same, by the `ranges` alone (the `versions` lists left out): a database whose lists
    /// are incomplete, or a local version (`2.30.0+local.1`) no list names, still answers.
    pub fn affects_by_ranges(&self, project: &ProjectName, version: &Version) -> bool {
        self.affects_by(project, version, false)
    }

    /// The record's `affected` entries for `project` on PyPI.
    fn entries<'a>(&'a self, project: &'a ProjectName) -> impl Iterator<Item = &'a Affected> {
        self.affected.iter().filter(move |a| {
            a.package.as_ref().is_some_and(|p| {
                p.ecosystem == "PyPI" && ProjectName::parse(&p.name).ok().as_ref() == Some(project)
            })
        })
    }

    fn affects_by(&self, project: &ProjectName, version: &Version, lists: bool) -> bool {
        if self.withdrawn.is_some() {
            return false;
        }
        let semver = semver::Version::parse(&version.to_string()).ok();
        self.entries(project).any(|a| {
            // A local version (`1.0+ours`) is its public version rebuilt: listed if that is.
            let public = version.clone().without_local();
            let listed = lists
                && a.versions
                    .iter()
                    .any(|s| Version::from_str(s).is_ok_and(|l| l == *version || l == public));
            listed
                || a.ranges.iter().any(|r| match r.kind.as_str() {
                    "ECOSYSTEM" => in_range(r, &Point::Pep440(version.clone())),
                    "SEMVER" => semver
                        .as_ref()
                        .is_some_and(|s| in_range(r, &Point::Semver(s.clone()))),
                    _ => false,
                })
        })
    }

    /// How severe the advisory is, and how that was known; `None`: no usable severity.
    pub fn level(&self) -> Option<(Level, String)> {
        let scored = self
            .severity
            .iter()
            .chain(self.affected.iter().flat_map(|a| a.severity.iter()))
            .filter(|s| matches!(s.kind.as_str(), "CVSS_V3" | "CVSS_V4"))
            .filter_map(|s| {
                let cvss = cvss::Cvss::from_str(&s.score).ok()?;
                Some((
                    Level::of_cvss(cvss.severity()),
                    format!("CVSS {:.1}", cvss.score()),
                ))
            })
            .max_by(|a, b| a.0.cmp(&b.0));
        let word = self
            .database_specific
            .as_ref()
            .and_then(|d| d.get("severity")?.as_str())
            .and_then(|w| Some((Level::of_word(w)?, format!("{w} per the database"))));
        // Where the vectors and the database disagree, the higher one counts (fail closed).
        match (scored, word) {
            (Some(s), Some(w)) if w.0 > s.0 => Some(w),
            (Some(s), _) => Some(s),
            (None, w) => w,
        }
    }

    fn shrink(&mut self) {
        self.aliases.shrink_to_fit();
        self.severity.shrink_to_fit();
        self.affected.shrink_to_fit();
        for a in &mut self.affected {
            a.versions.shrink_to_fit();
            a.ranges.shrink_to_fit();
            for r in &mut a.ranges {
                r.events.shrink_to_fit();
            }
        }
    }

    /// The names this vulnerability goes by: its id and its aliases.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// The advisories among `records` that affect `project` at `version`, one per vulnerability:
/// a record whose id or aliases name one already found is the same vulnerability (the first
/// record found names it). Sorted by id.
pub fn affecting<'a>(
    records: &'a [Record],
    project: &ProjectName,
    version: &Version,
) -> Vec<&'a Record> {
    let mut found: Vec<&Record> = Vec::new();
    for r in records.iter().filter(|r| r.affects(project, version)) {
        let known = found
            .iter()
            .any(|f| f.names().any(|n| r.names().any(|m| m == n)));
        if !known {
            found.push(r);
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// An operator's exception (`[[vulnerability_exception]]`): the advisory it names (by its id or
/// any alias) is let through until `expires` (Unix seconds), for the reason given.
#[derive(Debug, Clone)]
pub struct Exception {
    pub id: String,
    pub reason: String,
    pub expires: i64,
    /// Only this project's releases (`None`: wherever the advisory applies).
    pub package: Option<ProjectName>,
    pub source: super::Source,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawException {
    id: String,
    reason: String,
    expires: RawWhen,
    package: Option<String>,
}

/// `expires = "2027-01-31"` or a TOML date (`expires = 2027-01-31`), or a full RFC 3339 time.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawWhen {
    Text(String),
    Toml(toml::value::Datetime),
}

/// An exception, validated: an id, a reason a reviewer can read, and an expiry. A date
/// expires at its first instant (00:00 UTC): the exception does not outlive the day named.
pub(super) fn exception(raw: &RawException, source: super::Source) -> Result<Exception, String> {
    let id = raw.id.trim();
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(format!(
            "[[vulnerability_exception]] id {:?} is not an advisory id",
            raw.id
        ));
    }
    if raw.reason.trim().is_empty() {
        return Err(format!(
            "[[vulnerability_exception]] {id}: reason is empty; say why the advisory does not apply"
        ));
    }
    let text = match &raw.expires {
        RawWhen::Text(t) => t.trim().to_string(),
        RawWhen::Toml(d) => d.to_string(),
    };
    let expires = if text.len() == 10 {
        super::units::parse_rfc3339(&format!("{text}T00:00:00Z"))
    } else {
        super::units::parse_rfc3339(&text)
    };
    let Some(expires) = expires else {
        return Err(format!(
            "[[vulnerability_exception]] {id}: expires {text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"
        ));
    };
    let package = match &raw.package {
        None => None,
        Some(p) => Some(
            ProjectName::parse(p)
                .map_err(|e| format!("[[vulnerability_exception]] {id}: package: {e}"))?,
        ),
    };
    Ok(Exception {
        id: id.to_string(),
        reason: raw.reason.trim().to_string(),
        expires,
        package,
        source,
    })
}

/// One advisory that refuses a release, with what a person needs to act on it.
#[derive(Debug)]
pub struct Finding<'a> {
    pub record: &'a Record,
    /// `None`: no usable severity (refused whatever the threshold).
    pub level: Option<(Level, String)>,
    /// The lowest releases after this one that a range says are fixed.
    pub fixed_in: Vec<Version>,
}

impl std::fmt::Display for Finding<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = self
            .level
            .as_ref()
            .map_or("severity unknown", |(l, _)| l.as_str());
        write!(f, "{} ({level})", self.record.id)?;
        match self.fixed_in.as_slice() {
            [] => write!(f, ", no fixed release"),
            fixed => {
                let list: Vec<String> = fixed.iter().map(ToString::to_string).collect();
                write!(f, ", fixed in {}", list.join(" or "))
            }
        }
    }
}

/// The releases after `version` that the record's ECOSYSTEM ranges call fixed (the first fix
/// above it in each range), lowest first.
fn fixed_after(record: &Record, project: &ProjectName, version: &Version) -> Vec<Version> {
    let mut out: Vec<Version> = record
        .entries(project)
        .flat_map(|a| a.ranges.iter().filter(|r| r.kind == "ECOSYSTEM"))
        .filter_map(|r| {
            r.events
                .iter()
                .filter_map(|e| e.fixed.as_deref())
                .filter_map(|s| Version::from_str(s).ok())
                .filter(|f| f > version)
                .min()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The advisories that refuse `project` `version`: those affecting it at or above `block`, or
/// of unknown severity, that no unexpired exception names. Empty: the release may be served.
pub fn refusals<'a>(
    records: &'a [Record],
    project: &ProjectName,
    version: &Version,
    block: Level,
    exceptions: &[Exception],
    now: i64,
) -> Vec<Finding<'a>> {
    affecting(records, project, version)
        .into_iter()
        .filter(|r| {
            !exceptions.iter().any(|e| {
                e.expires > now
                    && e.package.as_ref().is_none_or(|p| p == project)
                    && r.names().any(|n| n.eq_ignore_ascii_case(&e.id))
            })
        })
        .filter_map(|r| {
            let level = r.level();
            let refused = level.as_ref().is_none_or(|(l, _)| *l >= block);
            refused.then(|| Finding {
                record: r,
                level,
                fixed_in: fixed_after(r, project, version),
            })
        })
        .collect()
}

/// An OSV database, indexed by the PyPI projects its records name (a record naming several
/// projects is kept under each), so a decision reads only its project's advisories.
#[derive(Debug, Default)]
pub struct Database {
    by_project: std::collections::HashMap<ProjectName, Vec<Record>>,
    /// Records read, other ecosystems' included.
    pub records: usize,
    /// The newest `modified` of any record (Unix seconds): how current the database is.
    pub newest: Option<i64>,
    /// The ids of the PyPI advisories in force (not withdrawn), each once.
    ids: std::collections::HashSet<String>,
}

impl Database {
    /// Indexes one record read at `now`, keeping only what decisions read (its PyPI entries,
    /// severities, the database's severity word): a 100,000-record export stays a few hundred
    /// MiB. Dates from the future are not believed: a record modified "in 2099" does not make
    /// an old database look current, and a withdrawal dated later (or unreadable) has not
    /// happened, so the advisory stands.
    pub fn add(&mut self, mut r: Record, now: i64) {
        self.records += 1;
        let when = r
            .modified
            .as_deref()
            .and_then(super::units::parse_rfc3339)
            .filter(|t| *t <= now + 3600);
        self.newest = self.newest.max(when);
        if r.withdrawn
            .as_deref()
            .and_then(super::units::parse_rfc3339)
            .is_none_or(|t| t > now)
        {
            r.withdrawn = None;
        }
        r.modified = None;
        r.summary = None;
        r.affected
            .retain(|a| a.package.as_ref().is_some_and(|p| p.ecosystem == "PyPI"));
        r.database_specific = r
            .database_specific
            .as_ref()
            .and_then(|d| d.get("severity").cloned())
            .map(|w| serde_json::json!({ "severity": w }));
        r.severity
            .retain(|s| matches!(s.kind.as_str(), "CVSS_V3" | "CVSS_V4"));
        r.shrink();
        let mut names: Vec<ProjectName> = r
            .affected
            .iter()
            .filter_map(|a| a.package.as_ref())
            .filter_map(|p| ProjectName::parse(&p.name).ok())
            .collect();
        names.sort();
        names.dedup();
        if let Some((last, rest)) = names.split_last() {
            if r.withdrawn.is_none() {
                self.ids.insert(r.id.clone());
            }
            for n in rest {
                self.by_project
                    .entry(n.clone())
                    .or_default()
                    .push(r.clone());
            }
            self.by_project.entry(last.clone()).or_default().push(r);
        }
    }

    /// The records that name `project`.
    pub fn of(&self, project: &ProjectName) -> &[Record] {
        self.by_project.get(project).map_or(&[], Vec::as_slice)
    }

    /// Advisories (PyPI records) indexed.
    /// Distinct PyPI advisories in force (withdrawn ones and copies of one id not counted).
    pub fn advisories(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Record {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn dates_from_the_future_are_not_believed() {
        let now = 1_800_000_000;
        let mut db = Database::default();
        let rec = |id: &str, modified: &str, withdrawn: &str| {
            record(&format!(
                r#"{{"id":"{id}","modified":"{modified}",{withdrawn}"affected":[{{"package":{{"ecosystem":"PyPI","name":"demo"}},"versions":["1.0"]}}]}}"#
            ))
        };
        db.add(rec("A", "2020-01-01T00:00:00Z", ""), now);
        db.add(
            rec(
                "B",
                "2099-01-01T00:00:00Z",
                r#""withdrawn":"2099-01-01T00:00:00Z","#,
            ),
            now,
        );
        db.add(
            rec("C", "2020-01-01T00:00:00Z", r#""withdrawn":"soon","#),
            now,
        );
        db.add(
            rec(
                "D",
                "2020-01-01T00:00:00Z",
                r#""withdrawn":"2021-01-01T00:00:00Z","#,
            ),
            now,
        );
        // The future `modified` does not date the database; only a past withdrawal counts.
        assert_eq!(db.newest, Some(1_577_836_800));
        let p = ProjectName::parse("demo").unwrap();
        let ids: Vec<&str> = affecting(db.of(&p), &p, &v("1.0"))
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(ids, ["A", "B", "C"]);
        // D is withdrawn; a copy of A under another file name is the same advisory.
        db.add(rec("A", "2020-01-01T00:00:00Z", ""), now);
        assert_eq!(db.advisories(), 3);
    }

    #[test]
    fn the_higher_of_the_vectors_and_the_database_word_counts() {
        let r = record(
            r#"{"id":"X","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}],"database_specific":{"severity":"CRITICAL"}}"#,
        );
        assert_eq!(r.level().unwrap().0, Level::Critical);
    }

    #[test]
    fn a_local_version_is_listed_when_its_public_version_is() {
        let r = record(
            r#"{"id":"X","affected":[{"package":{"ecosystem":"PyPI","name":"demo"},"versions":["0.0.0"]}]}"#,
        );
        let p = ProjectName::parse("demo").unwrap();
        assert!(r.affects(&p, &v("0.0.0+local")));
        assert!(!r.affects(&p, &v("0.0.0.post0")));
    }

    #[test]
    fn an_exception_may_name_its_package() {
        let r = record(
            r#"{"id":"GHSA-1","aliases":["CVE-1"],"affected":[{"package":{"ecosystem":"PyPI","name":"a"},"versions":["1.0"]},{"package":{"ecosystem":"PyPI","name":"b"},"versions":["1.0"]}]}"#,
        );
        let ex = Exception {
            id: "cve-1".into(),
            reason: "r".into(),
            expires: i64::MAX,
            package: Some(ProjectName::parse("A").unwrap()),
            source: crate::policy::Source {
                file: "a.toml".into(),
                line: 1,
            },
        };
        let records = [r];
        let (a, b) = (
            ProjectName::parse("a").unwrap(),
            ProjectName::parse("b").unwrap(),
        );
        assert!(refusals(
            &records,
            &a,
            &v("1.0"),
            Level::Low,
            std::slice::from_ref(&ex),
            0
        )
        .is_empty());
        assert_eq!(
            refusals(&records, &b, &v("1.0"), Level::Low, &[ex], 0).len(),
            1
        );
    }

    fn v(s: &str) -> Version {
        Version::from_str(s).unwrap()
    }

    fn p(s: &str) -> ProjectName {
        ProjectName::parse(s).unwrap()
    }

    #[test]
    fn events_are_sorted_before_the_walk() {
        let r = record(
            r#"{"id":"X","affected":[{"package":{"ecosystem":"PyPI","name":"urllib3"},
            "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"2.0.0"},{"fixed":"2.0.7"},
            {"introduced":"0"},{"fixed":"1.26.18"}]}]}]}"#,
        );
        for (ver, hit) in [
            ("1.26.17", true),
            ("1.26.18", false),
            ("2.0.5", true),
            ("2.0.7", false),
        ] {
            assert_eq!(r.affects(&p("URLLIB3"), &v(ver)), hit, "{ver}");
        }
    }

    #[test]
    fn last_affected_limit_semver_git_and_withdrawn() {
        let r = record(
            r#"{"id":"Y","affected":[{"package":{"ecosystem":"PyPI","name":"a_b"},
            "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"1.0"},{"last_affected":"1.2"}]},
            {"type":"SEMVER","events":[{"introduced":"3.0.0"},{"limit":"3.5.0"}]},
            {"type":"GIT","events":[{"introduced":"0"}]}]}]}"#,
        );
        let name = p("A.B");
        for (ver, hit) in [
            ("0.9", false),
            ("1.2", true),
            ("1.2.1", false),
            ("3.1.0", true),
            ("3.5.0", false),
        ] {
            assert_eq!(r.affects(&name, &v(ver)), hit, "{ver}");
        }
        // An `introduced` that cannot be read opens the range from the start.
        let odd = record(
            r#"{"id":"O","affected":[{"package":{"ecosystem":"PyPI","name":"a_b"},
            "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"not a version"},{"fixed":"2.0"}]}]}]}"#,
        );
        assert!(odd.affects(&name, &v("0.1")));
        assert!(!odd.affects(&name, &v("2.0")));
        let mut w = r.clone();
        w.withdrawn = Some("2024-01-01T00:00:00Z".into());
        assert!(!w.affects(&name, &v("1.2")));
        // Another ecosystem's package of the same name is not this one.
        let npm = record(
            r#"{"id":"Z","affected":[{"package":{"ecosystem":"npm","name":"a-b"},"versions":["1.2"]}]}"#,
        );
        assert!(!npm.affects(&name, &v("1.2")));
    }

    #[test]
    fn severity_from_cvss_vectors_or_the_database() {
        let with = |sev: &str| record(&format!(r#"{{"id":"S","affected":[],{sev}}}"#));
        // 9.8 (the vector of most remote code execution advisories).
        let r = with(
            r#""severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]"#,
        );
        assert_eq!(r.level().unwrap().0, Level::Critical);
        // The highest of several vectors counts.
        let r = with(
            r#""severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:A/AC:H/PR:H/UI:N/S:U/C:H/I:N/A:N"},{"type":"CVSS_V4","score":"CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"}]"#,
        );
        assert_eq!(r.level().unwrap().0, Level::Critical);
        // urllib3's PYSEC-2023-212 (CVE-2023-45803): NVD scores this vector 4.2, medium.
        let r = with(
            r#""severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:A/AC:H/PR:H/UI:N/S:U/C:H/I:N/A:N"}]"#,
        );
        let (level, how) = r.level().unwrap();
        assert_eq!((level, how.as_str()), (Level::Medium, "CVSS 4.2"));
        // The database's own word when there is no vector; nothing usable is unknown.
        let r = with(r#""database_specific":{"severity":"MODERATE"}"#);
        assert_eq!(r.level().unwrap().0, Level::Medium);
        for sev in [
            r#""severity":[{"type":"CVSS_V3","score":"not a vector"}]"#,
            r#""severity":[{"type":"CVSS_V2","score":"AV:N/AC:L/Au:N/C:P/I:P/A:P"}]"#,
            r#""database_specific":{"severity":"whatever"}"#,
        ] {
            assert!(with(sev).level().is_none(), "{sev}");
        }
    }

    #[test]
    fn refusals_name_the_advisory_its_level_and_the_fix() {
        let r = record(
            r#"{"id":"GHSA-9wx4-h78v-vm56","aliases":["CVE-2024-35195"],
            "database_specific":{"severity":"MODERATE"},
            "affected":[{"package":{"ecosystem":"PyPI","name":"requests"},
            "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"2.32.0"}]}]}]}"#,
        );
        let unknown = record(
            r#"{"id":"PYSEC-X","affected":[{"package":{"ecosystem":"PyPI","name":"requests"},"versions":["2.31.0"]}]}"#,
        );
        let all = [r, unknown];
        let (name, ver) = (p("requests"), v("2.31.0"));
        let found = refusals(&all, &name, &ver, Level::Medium, &[], 0);
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "GHSA-9wx4-h78v-vm56 (medium), fixed in 2.32.0",
                "PYSEC-X (severity unknown), no fixed release"
            ]
        );
        // Above the threshold only; unknown severity at every threshold.
        let found = refusals(&all, &name, &ver, Level::High, &[], 0);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].record.id, "PYSEC-X");
        // An exception names the advisory by any alias, until it expires.
        let ex = |expires| Exception {
            id: "cve-2024-35195".into(),
            reason: "not reachable from our code".into(),
            expires,
            package: None,
            source: crate::policy::Source {
                file: "a.toml".into(),
                line: 1,
            },
        };
        let found = refusals(&all, &name, &ver, Level::Low, &[ex(100)], 50);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].record.id, "PYSEC-X");
        assert_eq!(
            refusals(&all, &name, &ver, Level::Low, &[ex(100)], 100).len(),
            2
        );
        // The fixed release is refused by neither.
        assert!(refusals(&all, &name, &v("2.32.0"), Level::Low, &[], 0).is_empty());
    }

    #[test]
    fn aliases_name_one_vulnerability() {
        let a = record(
            r#"{"id":"PYSEC-1","aliases":["CVE-1"],"affected":[{"package":{"ecosystem":"PyPI","name":"x"},"versions":["1.0"]}]}"#,
        );
        let b = record(
            r#"{"id":"GHSA-1","aliases":["CVE-1","PYSEC-1"],"affected":[{"package":{"ecosystem":"PyPI","name":"x"},"versions":["1.0"]}]}"#,
        );
        let all = [a, b];
        let found = affecting(&all, &p("x"), &v("1.0"));
        assert_eq!(found.len(), 1);
        assert!(affecting(&all, &p("x"), &v("1.1")).is_empty());
    }
}
