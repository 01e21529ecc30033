//! A rule's id, as the admin API names rules: 16 hexadecimal digits. An API rule's id is drawn
//! at random when it is created; a rule from an allowlist file gets a hash of its place (kind,
//! file, line), stable for as long as the rule stays where it is.

use std::fmt;

use super::allowlist::Source;

/// The prefix of a `Source::file` that names an API rule (`api:<id>`) instead of a file.
pub const API_SOURCE: &str = "api:";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a rule id (16 hexadecimal digits)")]
pub struct BadRuleId(pub String);

impl RuleId {
    pub fn parse(s: &str) -> Result<RuleId, BadRuleId> {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(RuleId(s.to_ascii_lowercase()))
        } else {
            Err(BadRuleId(s.chars().take(64).collect()))
        }
    }

    /// The id of the rule written at `source`: the API rule it names, or a hash of its place
    /// for a rule from a file. `kind` is the allowlist table (`package`, `image`).
    pub fn of(kind: &str, source: &Source) -> RuleId {
        if let Some(id) = source.file.strip_prefix(API_SOURCE) {
            if let Ok(id) = RuleId::parse(id) {
                return id;
            }
        }
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(format!("{kind}|{}|{}", source.file, source.line).as_bytes());
        RuleId(hex::encode(&h[..8]))
    }

    /// The `Source::file` an API rule's entries carry.
    pub fn source_file(&self) -> String {
        format!("{API_SOURCE}{}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sixteen_hex_digits_and_files_get_a_stable_hash_of_their_place() {
        assert!(RuleId::parse("0123456789abcdef").is_ok());
        assert_eq!(
            RuleId::parse("0123456789ABCDEF").unwrap().as_str(),
            "0123456789abcdef"
        );
        for bad in [
            "",
            "0123456789abcde",
            "0123456789abcdefa",
            "0123456789abcdeg",
            "../../etc/pass",
        ] {
            assert!(RuleId::parse(bad).is_err(), "{bad}");
        }
        let at = |file: &str, line| Source {
            file: file.into(),
            line,
        };
        let a = RuleId::of("package", &at("allowlists/a.toml", 3));
        assert_eq!(a, RuleId::of("package", &at("allowlists/a.toml", 3)));
        assert_ne!(a, RuleId::of("package", &at("allowlists/a.toml", 4)));
        assert_ne!(a, RuleId::of("image", &at("allowlists/a.toml", 3)));
        assert_eq!(a.as_str().len(), 16);
        let api = RuleId::parse("00000000000000aa").unwrap();
        assert_eq!(RuleId::of("image", &at(&api.source_file(), 1)), api);
    }
}
