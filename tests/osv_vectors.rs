//! Every query of the OSV vectors (tests/fixtures/osv/queries.tsv) gives expected.json's
//! answer through the gate's matcher (`policy::osv`): the records as the OSV project exports
//! them (JSON) and as the PyPA advisory database keeps them (YAML, read here with PyYAML into
//! the same JSON records).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr as _;

use tollgate::policy::osv::{affecting, Record};
use tollgate::policy::ProjectName;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.to_string_lossy().ends_with(ext) {
            out.push(p);
        }
    }
}

fn records() -> Vec<Record> {
    let mut json = Vec::new();
    files(&fixtures(), ".json", &mut json);
    json.retain(|p| !p.ends_with("expected.json"));
    let mut out: Vec<Record> = json
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    let mut yaml = Vec::new();
    files(
        &fixtures().join("pypa-advisory-database"),
        ".yaml",
        &mut yaml,
    );
    let converted = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps([yaml.safe_load(open(f)) for f in sys.argv[1:]], default=str))",
        ])
        .args(&yaml)
        .output()
        .unwrap();
    assert!(
        converted.status.success(),
        "{}",
        String::from_utf8_lossy(&converted.stderr)
    );
    let from_yaml: Vec<Record> = serde_json::from_slice(&converted.stdout).unwrap();
    assert_eq!(from_yaml.len(), yaml.len());
    out.extend(from_yaml);
    assert!(out.len() >= 8, "{} records", out.len());
    out
}

#[test]
fn every_query_gives_its_expected_advisories() {
    let db = records();
    let expected: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap();
    let queries: Vec<(String, String)> = std::fs::read_to_string(fixtures().join("queries.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (p, v) = l.split_once('\t').unwrap();
            (p.trim().to_string(), v.trim().to_string())
        })
        .collect();
    assert_eq!(queries.len(), expected.len());
    for ((project, version), want) in queries.iter().zip(&expected) {
        assert_eq!(want["package"], project.as_str());
        assert_eq!(want["version"], version.as_str());
        let name = ProjectName::parse(project).unwrap();
        let ver = pep440_rs::Version::from_str(version).unwrap();
        let got: Vec<&str> = affecting(&db, &name, &ver)
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        let mut want_ids: Vec<&str> = want["affected_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        want_ids.sort();
        assert_eq!(got, want_ids, "{project} {version}");
        // The ranges alone give the same answer (events sorted before they are walked).
        let mut by_ranges: Vec<&str> = db
            .iter()
            .filter(|r| r.affects_by_ranges(&name, &ver))
            .map(|r| r.id.as_str())
            .collect();
        // The same record may be in both databases.
        by_ranges.sort();
        by_ranges.dedup();
        let mut want_ranges: Vec<&str> = want["ranges_only"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        want_ranges.sort();
        assert_eq!(by_ranges, want_ranges, "ranges only: {project} {version}");
        assert_eq!(
            !got.is_empty(),
            want["block"].as_bool().unwrap(),
            "{project} {version}"
        );
    }
}

#[test]
fn severities_of_the_real_records() {
    let db = records();
    let level = |id: &str| {
        db.iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("{id} not in the vectors"))
            .level()
            .map(|(l, how)| (l.as_str(), how))
    };
    // urllib3's advisory carries a CVSS 3.1 vector (NVD: 4.2, medium).
    assert_eq!(level("PYSEC-2023-212"), Some(("medium", "CVSS 4.2".into())));
    // PyPA records without a vector or a database severity: unknown, which no threshold
    // lets through.
    assert_eq!(level("PYSEC-2022-42969"), None);
}
