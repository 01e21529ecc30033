//! Pure policy: names, hashes, the allowlist model and decisions. No I/O lives here (no axum,
//! reqwest, tokio or file system), so every deny path is a table test.

/// Serde for a validated type: written as its display spelling, read back through its parser,
/// so a stored record holding one has the bytes a `String` would, and a bad stored value is an
/// error rather than a value silently dropped.
macro_rules! serde_via_parse {
    ($t:ty, $parse:path) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod allowlist;
pub mod decide;
pub mod filename;
pub mod hash;
pub mod name;
pub mod oci;
pub mod osv;
pub mod publisher;
pub mod requirements;
pub mod rule_id;
pub mod units;

pub use allowlist::{Policy, ProjectRules, Source};
pub use decide::{Decision, DenyReason};
pub use filename::DistFilename;
pub use hash::Sha256;
pub use name::ProjectName;
pub use rule_id::RuleId;

serde_via_parse!(ProjectName, ProjectName::parse);
serde_via_parse!(oci::Digest, oci::Digest::parse);
serde_via_parse!(oci::Tag, oci::Tag::parse);
serde_via_parse!(oci::Repository, oci::Repository::parse);
serde_via_parse!(RuleId, RuleId::parse);

#[cfg(test)]
mod serde_tests {
    use super::*;

    #[test]
    fn validated_types_round_trip_as_their_strings_and_refuse_bad_values() {
        let sha = Sha256::of(b"x");
        let json = serde_json::to_string(&sha).unwrap();
        assert_eq!(json, format!("\"{}\"", sha.hex()));
        assert_eq!(serde_json::from_str::<Sha256>(&json).unwrap(), sha);
        assert!(serde_json::from_str::<Sha256>("\"abc\"").is_err());
        let name: ProjectName = serde_json::from_str("\"Demo_A\"").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"demo-a\"");
        let d = oci::Digest(sha);
        let back: oci::Digest = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let r: oci::Repository = serde_json::from_str("\"docker.io/busybox\"").unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            "\"docker.io/library/busybox\""
        );
        assert!(serde_json::from_str::<oci::Tag>("\"bad tag\"").is_err());
    }
}
