//! SHA-256 digests as they appear in pins, links and cache keys.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sha256 digest (64 hexadecimal characters)")]
pub struct HashError(pub String);

/// Exactly 64 lowercase hex characters. The only way to name a cached file, so a cache path
/// built from it cannot escape the cache folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// Accepts either case (pip and requirement files write both) and stores the bytes.
    pub fn parse(raw: &str) -> Result<Self, HashError> {
        let err = || HashError(raw.chars().take(80).collect());
        if raw.len() != 64 {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(raw, &mut out).map_err(|_| err())?;
        Ok(Sha256(out))
    }

    /// Strict form used for URL path segments: only the canonical lowercase spelling, so one
    /// file has exactly one URL.
    pub fn parse_canonical(raw: &str) -> Result<Self, HashError> {
        if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(HashError(raw.chars().take(80).collect()));
        }
        Self::parse(raw)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256(bytes)
    }

    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Stored and sent as its hex spelling, read back through [`Sha256::parse`]: a record holding
/// one is the same bytes as one holding the string, and a bad value is an error, not dropped.
impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Sha256::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let h = "89cd4683".repeat(8);
        assert_eq!(Sha256::parse(&h).unwrap().hex(), h);
        assert_eq!(Sha256::parse(&h.to_uppercase()).unwrap().hex(), h);
        assert!(Sha256::parse_canonical(&h.to_uppercase()).is_err());
    }

    #[test]
    fn rejects_bad_hashes() {
        for raw in [
            "",
            "abc",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            "../../etc/passwd",
        ] {
            assert!(Sha256::parse(raw).is_err(), "{raw}");
        }
    }
}
