//! The official sigstore-conformance `bundle-verify` cases (tests/fixtures/sigstore-conformance,
//! see its ORIGIN.md), every one of them, driven through `tollgate sigstore verify-bundle` the
//! way the conformance suite drives any Sigstore client: a case whose name ends in `_fail` must
//! exit non-zero, every other case must exit 0.

use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const DEFAULT_ISSUER: &str = "https://token.actions.githubusercontent.com";

fn cases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sigstore-conformance")
}

/// The command the suite would run for one case.
fn command(case: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["sigstore", "verify-bundle", "--bundle"])
        .arg(case.join("bundle.sigstore.json"));
    let read = |name: &str| {
        std::fs::read_to_string(case.join(name))
            .ok()
            .map(|s| s.trim().to_string())
    };
    if case.join("key.pub").exists() {
        cmd.arg("--key").arg(case.join("key.pub"));
    } else {
        cmd.arg("--certificate-identity")
            .arg(read("identity").unwrap_or_else(|| DEFAULT_IDENTITY.into()))
            .arg("--certificate-oidc-issuer")
            .arg(read("issuer").unwrap_or_else(|| DEFAULT_ISSUER.into()));
    }
    if case.join("trusted_root.json").exists() {
        cmd.arg("--trusted-root")
            .arg(case.join("trusted_root.json"));
    }
    let artifact = if case.join("artifact").exists() {
        case.join("artifact")
    } else {
        cases().join("a.txt")
    };
    cmd.arg(artifact);
    cmd
}

#[test]
fn every_bundle_verify_case_gives_its_expected_outcome() {
    let mut names: Vec<String> = std::fs::read_dir(cases())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("bundle.sigstore.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The snapshot holds 70 cases, 49 of which must fail: a lost fixture must not pass quietly.
    assert_eq!(names.len(), 70, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with("_fail")).count(), 49);
    let mut wrong = Vec::new();
    for name in &names {
        let out = command(&cases().join(name)).output().unwrap();
        let must_fail = name.ends_with("_fail");
        if out.status.success() == must_fail {
            wrong.push(format!(
                "{name}: expected {}, got exit {:?}: {}{}",
                if must_fail { "failure" } else { "success" },
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        names.len(),
        wrong.join("\n")
    );
}

#[test]
fn a_valid_bundle_for_another_identity_issuer_key_or_artifact_is_refused() {
    let case = cases().join("happy-path-v0.3");
    let run = |edit: &dyn Fn(&mut Vec<String>)| {
        let mut args: Vec<String> = vec![
            "sigstore".into(),
            "verify-bundle".into(),
            "--bundle".into(),
            case.join("bundle.sigstore.json").display().to_string(),
            "--certificate-identity".into(),
            DEFAULT_IDENTITY.into(),
            "--certificate-oidc-issuer".into(),
            DEFAULT_ISSUER.into(),
            cases().join("a.txt").display().to_string(),
        ];
        edit(&mut args);
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(&args)
            .output()
            .unwrap()
    };
    let ok = run(&|_| {});
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The library verified it under "any identity"; tollgate's own match must then refuse
    // another subject (even a prefix of the real one) or another issuer, and say who signed.
    let prefix = run(&|a| a[5] = DEFAULT_IDENTITY[..40].to_string());
    assert!(!prefix.status.success());
    let err = String::from_utf8_lossy(&prefix.stderr);
    assert!(
        err.contains(&format!("signed by {DEFAULT_IDENTITY}")),
        "{err}"
    );
    assert!(!run(&|a| a[7] = "https://accounts.google.com".into())
        .status
        .success());
    // Another artifact (this README instead of a.txt), given as a file or as its digest.
    assert!(!run(&|a| a[8] = case.join("README").display().to_string())
        .status
        .success());
    assert!(!run(&|a| a[8] = format!("sha256:{}", "0".repeat(64)))
        .status
        .success());
    // The same artifact by digest verifies.
    let a_txt = std::fs::read(cases().join("a.txt")).unwrap();
    let hex = hex_sha256(&a_txt);
    let by_digest = run(&|a| a[8] = format!("sha256:{hex}"));
    assert!(
        by_digest.status.success(),
        "{}",
        String::from_utf8_lossy(&by_digest.stderr)
    );
    // A keyless bundle checked with a key is refused.
    let key = cases().join("managed-key-happy-path/key.pub");
    let keyed = run(&|a| {
        a.splice(4..8, ["--key".to_string(), key.display().to_string()]);
    });
    assert!(!keyed.status.success());
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
