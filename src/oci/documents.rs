//! The pull gate's documents, pure: manifests and indexes as the distribution spec and Go
//! clients read them, referrers indexes, and what makes a manifest a cosign signature,
//! attestation or Sigstore bundle artifact.

use serde::Deserialize;

use super::client::MANIFEST_TYPES;
use crate::policy::oci::{Digest, Tag};
use crate::verify::cosign::{DSSE_ENVELOPE, SIMPLE_SIGNING};
use crate::verify::sigstore::BUNDLE_MEDIA_TYPE_PREFIX;

/// An index listing referrers (the referrers API's answer or the referrers tag's index).
#[derive(Deserialize)]
pub(super) struct ReferrersDoc {
    #[serde(rename = "schemaVersion")]
    pub(super) schema_version: Option<u32>,
    #[serde(default)]
    pub(super) manifests: Vec<ReferrerDescriptor>,
}

#[derive(Deserialize)]
pub(super) struct ReferrerDescriptor {
    pub(super) digest: String,
    #[serde(rename = "artifactType")]
    pub(super) artifact_type: Option<String>,
}

/// A Sigstore bundle artifact manifest (cosign v3): an image manifest whose artifact type (or
/// config media type) is a bundle, whose every layer is a bundle, and whose `subject` names the
/// signed image. Returns the subject and the bundle layer.
pub(super) fn bundle_artifact(bytes: &[u8]) -> Option<(Digest, Descriptor)> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(rename = "artifactType")]
        artifact_type: Option<String>,
        config: Option<Typed>,
        #[serde(default)]
        layers: Vec<TypedDescriptor>,
        subject: Option<Descriptor>,
        #[serde(default)]
        manifests: Vec<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: String,
    }
    #[derive(Deserialize)]
    struct TypedDescriptor {
        #[serde(rename = "mediaType")]
        media_type: String,
        digest: String,
        size: u64,
    }
    let doc: Doc = serde_json::from_slice(bytes).ok()?;
    let bundle = |t: &str| t.starts_with(BUNDLE_MEDIA_TYPE_PREFIX);
    // cosign writes an empty config (OCI image-spec "Guidelines for Artifact Usage"); an
    // image config would make this a runnable image in disguise.
    let config_ok = doc.config.as_ref().is_some_and(|c| {
        c.media_type == "application/vnd.oci.empty.v1+json" || bundle(&c.media_type)
    });
    let typed = config_ok
        && (doc.artifact_type.as_deref().is_some_and(bundle)
            || doc.config.as_ref().is_some_and(|c| bundle(&c.media_type)));
    if !typed
        || !doc.manifests.is_empty()
        || doc.layers.len() != 1
        || !bundle(&doc.layers[0].media_type)
    {
        return None;
    }
    let subject = Digest::parse(&doc.subject?.digest).ok()?;
    let l = doc.layers.into_iter().next()?;
    Some((
        subject,
        Descriptor {
            digest: l.digest,
            size: l.size,
        },
    ))
}

/// The kinds of artifact tag that name the image they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ArtifactTag {
    /// cosign's legacy `sha256-<hex>.sig`.
    Signature,
    /// cosign's legacy `sha256-<hex>.att`.
    Attestation,
    /// The referrers tag schema's `sha256-<hex>` index (OCI distribution-spec v1.1), where
    /// registries without the referrers API keep the list of an image's referrers.
    Referrers,
    /// A Sigstore bundle artifact (cosign v3), fetched by the digest a referrers list gives.
    Bundle,
}

/// Is `body` a payload of the kind the artifact promises, read as such: a cosign
/// simple-signing payload, a DSSE envelope, or a Sigstore bundle?
pub(super) fn payload_is(kind: ArtifactTag, body: &[u8]) -> Result<(), String> {
    // cosign reads payloads and envelopes with encoding/json, bundles with protojson.
    match kind {
        ArtifactTag::Bundle => super::strict::no_duplicate_keys(body)?,
        _ => super::strict::unambiguous(body)?,
    }
    match kind {
        ArtifactTag::Signature => {
            match serde_json::from_slice::<crate::verify::cosign::Payload>(body) {
                Ok(p) if p.critical.kind == crate::verify::cosign::SIGNATURE_TYPE => Ok(()),
                _ => Err("not a cosign simple-signing payload".into()),
            }
        }
        ArtifactTag::Attestation => {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            #[allow(dead_code)]
            struct Envelope {
                payload_type: String,
                payload: String,
                signatures: Vec<serde_json::Value>,
            }
            serde_json::from_slice::<Envelope>(body)
                .map(drop)
                .map_err(|_| "not a DSSE envelope".into())
        }
        ArtifactTag::Bundle => std::str::from_utf8(body)
            .ok()
            .and_then(|t| sigstore_verify::types::Bundle::from_json(t).ok())
            .map(drop)
            .ok_or_else(|| "not a Sigstore bundle".into()),
        ArtifactTag::Referrers => Err("an index has no payloads".into()),
    }
}

/// A signature artifact's config: empty (`{}`, the OCI empty descriptor), or an image config
/// whose layers are exactly the artifact's payloads (what cosign writes). A runnable image's
/// config, whose layers are tarballs, is not one.
pub(super) fn artifact_config_ok(body: &[u8], payloads: &[String]) -> bool {
    // Read as a Go client reads it, or not at all (see `strict`).
    if super::strict::unambiguous(body).is_err() {
        return false;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let Some(obj) = v.as_object() else {
        return false;
    };
    if obj.is_empty() {
        return true;
    }
    // Nothing to run: cosign writes `"config": {}`; an entrypoint, command, environment or
    // user would make the artifact an image with the attacker's start-up.
    let runtime_empty = match obj.get("config") {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Object(c)) => c.is_empty(),
        Some(_) => false,
    };
    match v.pointer("/rootfs/diff_ids").and_then(|d| d.as_array()) {
        Some(ids) => {
            runtime_empty
                && !ids.is_empty()
                && ids.iter().all(|id| {
                    id.as_str()
                        .is_some_and(|id| payloads.iter().any(|p| p == id))
                })
        }
        None => false,
    }
}

/// The image an artifact tag belongs to, and the kind of tag.
pub(super) fn artifact_subject(tag: &Tag) -> Option<(Digest, ArtifactTag)> {
    let t = tag.as_str();
    let rest = t.strip_prefix("sha256-")?;
    let (hex, kind) = if let Some(h) = rest.strip_suffix(".sig") {
        (h, ArtifactTag::Signature)
    } else if let Some(h) = rest.strip_suffix(".att") {
        (h, ArtifactTag::Attestation)
    } else {
        (rest, ArtifactTag::Referrers)
    };
    Some((Digest::parse(&format!("sha256:{hex}")).ok()?, kind))
}

/// Is this manifest what its artifact tag promises: a cosign signature (every layer
/// simple-signing) or attestation (every layer a DSSE envelope) image manifest, or a referrers
/// index whose every entry is an artifact (has an `artifactType`), never a runnable image?
pub(super) fn is_cosign_artifact(media_type: &str, bytes: &[u8], kind: ArtifactTag) -> bool {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        layers: Vec<Layer>,
        #[serde(default)]
        manifests: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Layer {
        #[serde(rename = "mediaType")]
        media_type: String,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(rename = "artifactType")]
        artifact_type: Option<String>,
    }
    let Ok(doc) = serde_json::from_slice::<Doc>(bytes) else {
        return false;
    };
    let want = match kind {
        ArtifactTag::Referrers => {
            return is_index(media_type)
                && doc
                    .manifests
                    .iter()
                    .all(|m| m.artifact_type.as_deref().is_some_and(|t| !t.is_empty()));
        }
        ArtifactTag::Attestation => DSSE_ENVELOPE,
        ArtifactTag::Signature => SIMPLE_SIGNING,
        ArtifactTag::Bundle => return bundle_artifact(bytes).is_some(),
    };
    !is_index(media_type)
        && !doc.layers.is_empty()
        && doc.layers.iter().all(|l| l.media_type == want)
}

/// The manifest fields the gate reads: enough to check the media type and to learn which
/// children (index) or blobs (image) an admitted manifest vouches for.
#[derive(Deserialize)]
pub(super) struct ManifestDoc {
    #[serde(rename = "schemaVersion")]
    pub(super) schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    pub(super) media_type: Option<String>,
    pub(super) config: Option<Descriptor>,
    #[serde(default)]
    pub(super) layers: Vec<Descriptor>,
    #[serde(default)]
    pub(super) manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
pub(super) struct Descriptor {
    pub(super) digest: String,
    pub(super) size: u64,
}

/// The media type of a manifest the upstream served: its `mediaType` field and `Content-Type`
/// must agree (where the field is absent, as older OCI manifests allow, the header decides), it
/// must be one the gate serves, and Docker schema 1 is refused.
pub(super) fn manifest_media_type(content_type: &str, bytes: &[u8]) -> Result<String, String> {
    // Every manifest is read as the clients behind the gate read it (see `strict`).
    super::strict::unambiguous(bytes)?;
    let doc: ManifestDoc =
        serde_json::from_slice(bytes).map_err(|_| "not a JSON manifest".to_string())?;
    if doc.schema_version == Some(1)
        || content_type.contains("prettyjws")
        || content_type == "application/vnd.docker.distribution.manifest.v1+json"
    {
        return Err("a Docker schema 1 manifest, which the gate does not serve".into());
    }
    let media_type = match &doc.media_type {
        Some(m) if m == content_type => m.clone(),
        Some(m) => {
            return Err(format!(
                "says mediaType {m} but was served as {content_type:?}"
            ))
        }
        None => content_type.to_string(),
    };
    if !MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(format!("unsupported media type {media_type:?}"));
    }
    Ok(media_type)
}

/// The `last` of an upstream `Link: <…?n=…&last=…>; rel="next"` header (distribution spec,
/// "Listing Tags"), as a validated tag.
pub(super) fn next_page_last(link: &str) -> Option<Tag> {
    if !link.contains("rel=\"next\"") {
        return None;
    }
    let target = link.split('>').next()?;
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|p| p.strip_prefix("last="))
        .and_then(|l| Tag::parse(l).ok())
}

pub(super) fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// The largest config blob of a signature artifact the gate reads (cosign writes a few hundred
/// bytes).
pub(super) const MAX_ARTIFACT_CONFIG_BYTES: u64 = 64 * 1024;

#[cfg(test)]
mod properties {
    //! The manifest and artifact readers on hostile bytes (see tests/properties.rs for the
    //! suite's other parsers): they answer, never panic.
    use super::*;
    use proptest::prelude::*;

    fn json_noise() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            "[{}\\[\\]\":,0-9a-z ]{0,400}".prop_map(String::into_bytes),
            // Shaped like a manifest, with hostile values.
            ("[a-z./+-]{0,40}", "[a-z0-9:]{0,80}", 0u64..u64::MAX).prop_map(|(t, d, n)| {
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{t}","config":{{"mediaType":"{t}","digest":"{d}","size":{n}}},"layers":[{{"mediaType":"{t}","digest":"{d}","size":{n}}}],"subject":{{"digest":"{d}","size":1}},"manifests":[{{"digest":"{d}","size":{n},"artifactType":"{t}"}}]}}"#
                )
                .into_bytes()
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn manifest_readers(bytes in json_noise(), ct in "[a-z./+;= -]{0,60}") {
            let _ = manifest_media_type(&ct, &bytes);
            for kind in [ArtifactTag::Signature, ArtifactTag::Attestation, ArtifactTag::Referrers, ArtifactTag::Bundle] {
                let _ = is_cosign_artifact(&ct, &bytes, kind);
                let _ = payload_is(kind, &bytes);
            }
            let _ = bundle_artifact(&bytes);
            let _ = artifact_config_ok(&bytes, &["sha256:00".to_string()]);
            let _ = serde_json::from_slice::<ReferrersDoc>(&bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{manifest_media_type, next_page_last};

    #[test]
    fn next_page_links() {
        let t = |l: &str| next_page_last(l).map(|t| t.to_string());
        assert_eq!(
            t("</v2/library/ubuntu/tags/list?n=100&last=22.04>; rel=\"next\""),
            Some("22.04".into())
        );
        assert_eq!(
            t("</v2/x/tags/list?last=v1&n=2>; rel=\"next\""),
            Some("v1".into())
        );
        assert_eq!(t("</v2/x/tags/list?n=2&last=v1>; rel=\"prev\""), None);
        assert_eq!(t("</v2/x/tags/list?n=2&last=../x>; rel=\"next\""), None);
        assert_eq!(t("garbage"), None);
    }

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

    #[test]
    fn media_types_must_agree() {
        let with = |mt: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{"digest":"sha256:x","size":1}},"layers":[]}}"#
            )
        };
        assert_eq!(manifest_media_type(OCI, with(OCI).as_bytes()).unwrap(), OCI);
        assert_eq!(
            manifest_media_type(DOCKER, with(DOCKER).as_bytes()).unwrap(),
            DOCKER
        );
        assert_eq!(
            manifest_media_type(OCI, br#"{"schemaVersion":2,"layers":[]}"#).unwrap(),
            OCI,
            "no mediaType field: the header decides"
        );
        for (ct, body) in [
            (DOCKER, with(OCI)),
            ("application/json", with(OCI)),
            ("", with(OCI)),
            ("application/json", r#"{"schemaVersion":2}"#.to_string()),
            (
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                r#"{"schemaVersion":1}"#.to_string(),
            ),
            (
                OCI,
                r#"{"schemaVersion":1,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
                    .to_string(),
            ),
            (
                "application/vnd.oci.image.config.v1+json",
                with("application/vnd.oci.image.config.v1+json"),
            ),
            (OCI, "not json".to_string()),
        ] {
            assert!(
                manifest_media_type(ct, body.as_bytes()).is_err(),
                "{ct} {body}"
            );
        }
    }
}
