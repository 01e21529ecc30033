//! Unambiguous JSON: the gate reads manifests, configs and artifact payloads the way the
//! clients behind it will, or refuses them.
//!
//! Go's `encoding/json` (containerd, docker, podman, skopeo, cosign) matches an object's keys
//! to struct fields ignoring case, with Unicode simple folding (so `Layers` and `layerſ` both
//! fill `layers`), and the last of several matches wins; serde matches exactly. A manifest with
//! `"layers": [payload]` and `"Layers": [image layers]` would be a signature to the gate and an
//! image to the client. So every object the gate reads must have no two keys that fold alike,
//! and no key that folds to a field name the gate reads without being spelled exactly as it.
//! Objects that Go reads as maps (annotations, labels, exposed ports, volumes) keep their keys
//! as written, and only exact duplicates are refused there.

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Field names of the OCI image and distribution specs, Docker's image config and cosign's
/// payloads that some reader (the gate or a client) takes from a struct.
const FIELDS: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
    "digest",
    "size",
    "urls",
    "data",
    "platform",
    "architecture",
    "os",
    "os.version",
    "os.features",
    "variant",
    "features",
    "rootfs",
    "diff_ids",
    "type",
    "history",
    "created",
    "created_by",
    "empty_layer",
    "author",
    "comment",
    "container",
    "container_config",
    "docker_version",
    "Entrypoint",
    "Cmd",
    "Env",
    "User",
    "WorkingDir",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Shell",
    "Healthcheck",
    "OnBuild",
    "ArgsEscaped",
    "payload",
    "payloadType",
    "signatures",
    "sig",
    "keyid",
    "critical",
    "identity",
    "docker-reference",
    "image",
    "docker-manifest-digest",
    "optional",
];

/// Fields whose value Go reads as a map: their keys are data, not field names.
const MAP_FIELDS: &[&str] = &["annotations", "Labels", "ExposedPorts", "Volumes"];

/// Go's fold of a key (`encoding/json`'s `foldName`): case-insensitive, with `ſ` as `s` and the
/// Kelvin sign as `k`.
fn fold(key: &str) -> String {
    key.chars()
        .map(|c| {
            let mut low = c.to_lowercase();
            match (low.next(), low.next()) {
                (Some(l), None) => {
                    let mut up = l.to_uppercase();
                    match (up.next(), up.next()) {
                        (Some(u), None) => u,
                        _ => c,
                    }
                }
                _ => c,
            }
        })
        .collect()
}

fn folded_fields() -> &'static HashMap<String, &'static str> {
    static F: std::sync::OnceLock<HashMap<String, &'static str>> = std::sync::OnceLock::new();
    F.get_or_init(|| FIELDS.iter().map(|f| (fold(f), *f)).collect())
}

/// Walks a JSON value, refusing ambiguous objects; `map_keys`: this object is a Go map (or the
/// document is read by protojson, which matches names exactly).
struct Check {
    map_keys: bool,
    exact: bool,
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Check {
                map_keys: self.exact,
                exact: self.exact,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        let mut seen: HashMap<String, String> = HashMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let folded = if self.map_keys {
                key.clone()
            } else {
                fold(&key)
            };
            if let Some(first) = seen.get(&folded) {
                return Err(A::Error::custom(if *first == key {
                    format!("the key {key:?} appears twice in one object")
                } else {
                    format!("the keys {first:?} and {key:?} differ only by case, and Go clients read either as the same field")
                }));
            }
            if !self.map_keys {
                if let Some(field) = folded_fields().get(&folded) {
                    if *field != key {
                        return Err(A::Error::custom(format!(
                            "the key {key:?} is read by Go clients as {field:?} and by nothing else"
                        )));
                    }
                }
            }
            // Under a Go map, the values are structs again; an exact (protojson) document stays
            // exact throughout.
            let map_keys = self.exact || MAP_FIELDS.contains(&key.as_str()) && !self.map_keys;
            seen.insert(folded, key);
            map.next_value_seed(Check {
                map_keys,
                exact: self.exact,
            })?;
        }
        Ok(())
    }
}

/// `Ok` when every reader parses `bytes` alike; else why not (for the refusal).
pub fn unambiguous(bytes: &[u8]) -> Result<(), String> {
    check(bytes, false)
}

/// For documents Go reads with protojson (Sigstore bundles), which matches field names
/// exactly: only duplicate keys are ambiguous there (`keyId` and `keyid` are different fields).
pub fn no_duplicate_keys(bytes: &[u8]) -> Result<(), String> {
    check(bytes, true)
}

fn check(bytes: &[u8], exact: bool) -> Result<(), String> {
    let mut d = serde_json::Deserializer::from_slice(bytes);
    Check {
        map_keys: exact,
        exact,
    }
    .deserialize(&mut d)
    .and_then(|()| d.end())
    .map_err(|e| format!("ambiguous JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_would_read_as_another_field_are_refused() {
        assert!(unambiguous(br#"{"schemaVersion":2,"layers":[{"digest":"d","size":1}]}"#).is_ok());
        for bad in [
            r#"{"layers":[],"Layers":[{"digest":"d"}]}"#,
            r#"{"Layers":[{"digest":"d"}]}"#,
            "{\"layer\u{17f}\":[]}",
            r#"{"rootfs":{"diff_ids":[],"DIFF_IDS":["x"]}}"#,
            r#"{"config":{"Entrypoint":["a"],"entrypoint":["b"]}}"#,
            r#"{"layers":[],"layers":[1]}"#,
            r#"{"manifests":[{"Digest":"sha256:x"}]}"#,
        ] {
            assert!(unambiguous(bad.as_bytes()).is_err(), "{bad}");
        }
        // \u{212a} is the Kelvin sign, folded to k by Go.
        assert_eq!(fold("\u{212a}ey"), fold("KEY"));
    }

    #[test]
    fn map_fields_keep_their_keys_as_written() {
        let ok = br#"{"annotations":{"Org.A":"1","org.a":"2","Layers":"x"},"config":{"Labels":{"V":"1","v":"2"}}}"#;
        assert!(unambiguous(ok).is_ok());
        assert!(unambiguous(br#"{"annotations":{"a":"1","a":"2"}}"#).is_err());
        assert!(unambiguous(b"{} trailing").is_err());
        // A Sigstore bundle (protojson) has keyId beside DSSE's keyid: different fields there.
        let bundle = br#"{"tlogEntries":[{"logId":{"keyId":"a"}}],"dsseEnvelope":{"signatures":[{"keyid":"","sig":"x"}]}}"#;
        assert!(no_duplicate_keys(bundle).is_ok());
        assert!(no_duplicate_keys(br#"{"a":{"b":1,"b":2}}"#).is_err());
    }
}
