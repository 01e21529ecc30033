//! The pull gate: resolves a request to a repository and a digest, decides with the pure policy,
//! and serves only verified bytes (manifests checked against their digest, blobs hashed while
//! they stream and cached only on a match).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use super::client::{RegistryClient, RegistryError, MANIFEST_TYPES};
use crate::audit::{Audit, AuditEvent};
use crate::config::Config;
use crate::conn::Client;
use crate::error::{ApiError, OciCode, OciError};
use crate::fetch::{Failure, Fetcher, Job};
use crate::loader::LoadedPolicy;
use crate::metrics::Metrics;
use crate::policy::oci::{
    check_tag, decide_image, rule_for, Digest, Evidence, ImageDeny, ImageRule, Repository, Require,
    Tag,
};
use crate::policy::Sha256;
use crate::store::cache::now_secs;
use crate::store::{Store, ARTIFACTS, ARTIFACT_BLOBS, BLOBREFS, CHILDREN, MANIFESTS, TAGS};
use crate::verify::cosign::{
    SignatureDeny, SignatureLayer, TrustedKey, DSSE_ENVELOPE, SIMPLE_SIGNING,
};
use crate::verify::sigstore::{
    examine, judge_attestation, judge_signature, Artifact, Trust, BUNDLE_MEDIA_TYPE_PREFIX,
};

/// Bound on cached signature artifacts and verdicts (each a few KiB at most): past it the
/// caches start over rather than grow with every digest a client names.
const MAX_CACHED_VERDICTS: usize = 10_000;
const MAX_CACHED_SIGNATURE_BYTES: usize = 64 << 20;
/// A signature payload, DSSE envelope or bundle is a few KiB (a bundle with its certificate
/// chain and inclusion proof under 16 KiB); anything far larger is not read.
const MAX_ARTIFACT_BYTES: u64 = 256 * 1024;
/// All the signature artifacts of one image together: a real image's are a few KiB to a few
/// hundred; the rest is not read (and the refusal says so).
const MAX_SIGNATURE_BYTES_PER_IMAGE: u64 = 4 << 20;
/// Images whose signature artifacts are fetched at once: with the per-image budget, what
/// these fetches hold in memory is bounded, however many clients ask.
const MAX_SIGNATURE_FETCHES: usize = 16;
/// An upstream that trickles its signature artifacts is given up on after this long (503).
const SIGNATURE_FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

static DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// What the gate knows of a verified manifest (its bytes are in the cache under its digest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
}

/// A blob referenced by manifests of one repository, with the size each of them declares: a
/// size belongs to a (manifest, blob) pair, so another manifest naming the same blob with
/// another size changes nothing for the first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BlobRef {
    /// The size recorded by versions that kept one per blob (read only for entries without
    /// `sizes`).
    #[serde(default)]
    pub size: u64,
    pub manifests: Vec<String>,
    #[serde(default)]
    pub sizes: std::collections::BTreeMap<String, u64>,
}

impl BlobRef {
    fn size_in(&self, manifest: &Digest) -> u64 {
        self.sizes
            .get(&manifest.to_string())
            .copied()
            .unwrap_or(self.size)
    }
}

/// The largest config blob of a signature artifact the gate reads (cosign writes a few hundred
/// bytes).
const MAX_ARTIFACT_CONFIG_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TagRecord {
    digest: String,
    resolved_at: i64,
}

/// Signature artifacts and when they were fetched (Unix seconds).
type LayersAt = (Arc<Vec<Artifact>>, i64);
/// A verdict and when it was reached.
type VerdictAt = (Verdict, i64);
/// Held while one request fetches an image's signature artifacts.
type Flight = Arc<tokio::sync::Mutex<()>>;

/// What signatures and attestations say about one digest under one rule.
#[derive(Debug, Clone)]
struct Verdict {
    /// `None` when the rule asks for no signature.
    signature: Option<Result<Vec<String>, SignatureDeny>>,
    attestations: Result<(), SignatureDeny>,
}

impl Verdict {
    fn admits(&self) -> bool {
        self.signature.as_ref().is_none_or(|s| s.is_ok()) && self.attestations.is_ok()
    }
}

/// An index listing referrers (the referrers API's answer or the referrers tag's index).
#[derive(Deserialize)]
struct ReferrersDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Vec<ReferrerDescriptor>,
}

#[derive(Deserialize)]
struct ReferrerDescriptor {
    digest: String,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
}

/// A Sigstore bundle artifact manifest (cosign v3): an image manifest whose artifact type (or
/// config media type) is a bundle, whose every layer is a bundle, and whose `subject` names the
/// signed image. Returns the subject and the bundle layer.
fn bundle_artifact(bytes: &[u8]) -> Option<(Digest, Descriptor)> {
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

/// The answer to "may this image run?" (`/api/v1/verify`, admission).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub image: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The digest the decision is about (the tag's resolution, or the one given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub reasons: Vec<String>,
}

/// A page of `tags/list` as the client asked for it.
pub struct TagPage<'a> {
    /// The repository name as the client wrote it (with the registry prefix, if any).
    pub name: &'a str,
    pub ns: Option<&'a str>,
    pub n: Option<u32>,
    pub last: Option<&'a Tag>,
}

/// A reference in a request: a tag or a digest.
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

pub struct Oci {
    registries: Vec<Arc<RegistryClient>>,
    default_registry: String,
    tag_ttl: i64,
    manifest_bytes: u64,
    store: Arc<Store>,
    fetcher: Arc<Fetcher>,
    metrics: Arc<Metrics>,
    audit: Audit,
    manifests: Mutex<HashMap<Digest, ManifestRecord>>,
    /// Serialises the read-modify-write of link records, so two manifests verified at once
    /// cannot drop each other's links to a shared layer or child.
    links_lock: tokio::sync::Mutex<()>,
    max_signatures: usize,
    /// Signature layers found per (repository, image digest), with when they were fetched.
    /// Found layers are kept (a policy change re-decides without the upstream); "none found"
    /// is asked again after `tag_ttl`, so an image signed after a refused pull is admitted soon.
    sig_layers: Mutex<HashMap<(Repository, Digest), LayersAt>>,
    /// Signature verdicts per (repository, digest, policy version); refusals for `tag_ttl` only.
    sig_verdicts: Mutex<HashMap<(Repository, Digest, u64), VerdictAt>>,
    /// One fetch of an image's signature artifacts at a time, per (repository, digest).
    sig_flights: Mutex<HashMap<(Repository, Digest), Flight>>,
    /// Slots for fetching signature artifacts (`MAX_SIGNATURE_FETCHES`).
    sig_fetches: tokio::sync::Semaphore,
}

/// A refusal by the policy, as the pull gate answers it.
fn denied(reason: &ImageDeny) -> OciError {
    OciError::Coded(OciCode::Denied, ApiError::Denied(reason.to_string()))
}

fn registry_error(e: RegistryError, what: OciCode) -> OciError {
    match e {
        RegistryError::NotFound => OciError::Coded(
            what,
            ApiError::NotFound(format!("{} unknown to the upstream registry", what.noun())),
        ),
        // The detail (which host, which endpoint) is logged, not told to the client.
        RegistryError::Refused(registry, detail) => {
            tracing::warn!(%registry, %detail, "registry answer refused");
            OciError::Coded(
                OciCode::Unavailable,
                ApiError::BadUpstream(format!(
                    "the upstream registry {registry} answered in a way the gate does not accept"
                )),
            )
        }
        e => OciError::Coded(OciCode::Unavailable, ApiError::Unavailable(e.to_string())),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(repo: &Repository, item: &str) -> String {
    format!("{repo}|{item}")
}

/// Reads an upstream body within `limit`: too large is the upstream's fault (502), a broken
/// transfer is the upstream being unavailable (503).
async fn read_upstream(
    resp: reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    crate::fetch::read_limited(resp, limit)
        .await
        .map_err(|e| match e {
            crate::fetch::ReadError::TooLarge => OciError::Coded(
                OciCode::ManifestInvalid,
                ApiError::BadUpstream(format!("the upstream {what} is larger than the gate reads")),
            ),
            crate::fetch::ReadError::Broken => OciError::Coded(
                OciCode::Unavailable,
                ApiError::Unavailable(format!("the upstream {what} broke off")),
            ),
        })
}

/// The kinds of artifact tag that name the image they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArtifactTag {
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
fn payload_is(kind: ArtifactTag, body: &[u8]) -> Result<(), String> {
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
fn artifact_config_ok(body: &[u8], payloads: &[String]) -> bool {
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
fn artifact_subject(tag: &Tag) -> Option<(Digest, ArtifactTag)> {
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
fn is_cosign_artifact(media_type: &str, bytes: &[u8], kind: ArtifactTag) -> bool {
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
struct ManifestDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

/// The media type of a manifest the upstream served: its `mediaType` field and `Content-Type`
/// must agree (where the field is absent, as older OCI manifests allow, the header decides), it
/// must be one the gate serves, and Docker schema 1 is refused.
fn manifest_media_type(content_type: &str, bytes: &[u8]) -> Result<String, String> {
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
fn next_page_last(link: &str) -> Option<Tag> {
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

fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

impl Oci {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        fetcher: Arc<Fetcher>,
        metrics: Arc<Metrics>,
        audit: Audit,
    ) -> Result<Oci, String> {
        let registries = config
            .oci
            .registries
            .iter()
            .map(|r| RegistryClient::new(r.clone(), config.pypi.upstream_timeout).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Oci {
            registries,
            default_registry: config.oci.default_registry.clone(),
            tag_ttl: config.oci.tag_ttl.as_secs() as i64,
            manifest_bytes: config.limits.manifest_bytes,
            store,
            fetcher,
            metrics,
            audit,
            manifests: Mutex::default(),
            links_lock: tokio::sync::Mutex::new(()),
            max_signatures: config.limits.signatures,
            sig_layers: Mutex::default(),
            sig_verdicts: Mutex::default(),
            sig_flights: Mutex::default(),
            sig_fetches: tokio::sync::Semaphore::new(MAX_SIGNATURE_FETCHES),
        })
    }

    /// The registry and repository a request names: containerd's `?ns=` wins, then the first
    /// path segment as a configured prefix, then `default_registry` (Docker's registry-mirrors).
    pub fn resolve(
        &self,
        name: &str,
        ns: Option<&str>,
    ) -> Result<(Arc<RegistryClient>, Repository), OciError> {
        let unknown =
            |what: String| OciError::Coded(OciCode::NameUnknown, ApiError::NotFound(what));
        let by_host = |host: &str| -> Result<Arc<RegistryClient>, OciError> {
            let host = crate::policy::oci::normalize_host(host).map_err(|e| {
                OciError::Coded(OciCode::NameInvalid, ApiError::BadRequest(e.to_string()))
            })?;
            self.registries
                .iter()
                .find(|r| r.cfg.host == host)
                .cloned()
                .ok_or_else(|| unknown(format!("registry {host} is not configured on this gate")))
        };
        let (reg, path) = if let Some(ns) = ns {
            (by_host(ns)?, name)
        } else if let Some((first, rest)) = name.split_once('/').and_then(|(f, r)| {
            self.registries
                .iter()
                .find(|x| x.cfg.prefix == f)
                .map(|x| (x.clone(), r))
        }) {
            (first, rest)
        } else {
            (by_host(&self.default_registry)?, name)
        };
        let repo = Repository::new(&reg.cfg.host, path).map_err(|e| {
            OciError::Coded(OciCode::NameInvalid, ApiError::BadRequest(e.to_string()))
        })?;
        Ok((reg, repo))
    }

    async fn audit(
        &self,
        action: &'static str,
        repo: &Repository,
        artifact: Option<String>,
        digest: Option<&Digest>,
        decision: Result<(&'static str, &ImageRule), &ImageDeny>,
        client: &Client,
    ) {
        let ev = AuditEvent::about(
            action,
            repo.to_string(),
            artifact,
            digest.map(|d| d.to_string()),
            &client.0,
        );
        let ev = match decision {
            Ok((kind, rule)) => ev.allow(kind, rule.source.to_string()),
            Err(d) => ev.deny(d.code(), d.to_string()),
        };
        self.audit.record(ev).await;
    }

    async fn deny(
        &self,
        action: &'static str,
        repo: &Repository,
        artifact: Option<String>,
        digest: Option<&Digest>,
        reason: ImageDeny,
        client: &Client,
    ) -> OciError {
        self.audit(action, repo, artifact, digest, Err(&reason), client)
            .await;
        denied(&reason)
    }

    fn rule<'p>(lp: &'p LoadedPolicy, repo: &Repository) -> Result<&'p ImageRule, ImageDeny> {
        rule_for(&lp.policy.images, repo).ok_or_else(|| ImageDeny::NoRule(repo.clone()))
    }

    /// The decision for a manifest digest in this repository now: by its own evidence (pinned,
    /// signed, as the rule's `require` combines them), or through an admitted index that lists
    /// it (the link was recorded when the index was verified). With `per_platform`, a platform
    /// manifest also needs its own signature. `Ok(Err(deny))` is a refusal; `Err` means the
    /// upstream could not be asked (503), never "unsigned".
    async fn decide(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Result<Result<&'static str, ImageDeny>, OciError> {
        self.decide_with(lp, reg, rule, repo, digest, tag, true)
            .await
    }

    /// `artifacts`: whether a recorded `.sig`/`.att` link may admit the digest (the pull path
    /// serves signature artifacts; admission never admits one as a runnable image). A link is
    /// followed one hop only: the subject is decided on its own evidence and index.
    #[allow(clippy::too_many_arguments)]
    async fn decide_with(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
        tag: Option<&Tag>,
        artifacts: bool,
    ) -> Result<Result<&'static str, ImageDeny>, OciError> {
        // The audit's allow reason: what admitted it.
        let kind = |ev: &Evidence| if ev.pinned { "pinned_digest" } else { "signed" };
        let own = self.evidence(lp, reg, rule, repo, digest).await?;
        let first = match decide_image(rule, repo, digest, tag, &own) {
            Ok(()) => return Ok(Ok(kind(&own))),
            Err(d) => d,
        };
        // A signature or attestation artifact of an admitted image is served so downstream
        // verifiers (cosign, Kyverno, Ratify) work through the gate.
        let subject: Option<String> = if artifacts {
            self.store
                .get(ARTIFACTS, &key(repo, &digest.to_string()))
                .map_err(ApiError::from)?
        } else {
            None
        };
        if let Some(subject) = subject.and_then(|s| Digest::parse(&s).ok()) {
            if subject != *digest {
                return Ok(
                    match Box::pin(self.decide_with(lp, reg, rule, repo, &subject, None, false))
                        .await?
                    {
                        Ok(_) => Ok("artifact_of_admitted"),
                        Err(d) => Err(d),
                    },
                );
            }
        }
        // per_platform: a platform manifest needs its own evidence, its signature and every
        // required attestation, even when the index that lists it is admitted.
        let per_platform_ok = match (&rule.signature, &own.signature) {
            (Some(s), Some(sig)) if s.per_platform => sig.is_ok() && own.attestations.is_ok(),
            _ => true,
        };
        for learn in [false, true] {
            if learn && !self.learn_pinned_indexes(reg, rule, repo).await? {
                break;
            }
            let parents: Option<Vec<String>> = self
                .store
                .get(CHILDREN, &key(repo, &digest.to_string()))
                .map_err(ApiError::from)?;
            for p in parents
                .unwrap_or_default()
                .iter()
                .filter_map(|p| Digest::parse(p).ok())
            {
                let ev = self.evidence(lp, reg, rule, repo, &p).await?;
                if decide_image(rule, repo, &p, None, &ev).is_ok() {
                    return Ok(if per_platform_ok {
                        Ok(kind(&ev))
                    } else {
                        Err(first)
                    });
                }
            }
        }
        Ok(Err(first))
    }

    /// Pinned-ness and, when the rule asks for them, the signature and attestation verdicts of
    /// one digest.
    async fn evidence(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Evidence, OciError> {
        let pinned = rule.digests.contains(digest);
        // `require = "any"`: a pinned digest needs no signature, so none is fetched (a flaky
        // referrers API must not take pinned images offline), unless attestations or
        // per-platform signatures are asked for.
        let pinned_is_enough = pinned
            && rule.require == Require::Any
            && rule.attestations.is_empty()
            && !rule.signature.as_ref().is_some_and(|s| s.per_platform);
        if (rule.signature.is_none() && rule.attestations.is_empty()) || pinned_is_enough {
            return Ok(Evidence {
                pinned,
                signature: None,
                attestations: Ok(()),
            });
        }
        let v = self.signature_verdict(lp, reg, rule, repo, digest).await?;
        Ok(Evidence {
            pinned,
            signature: v.signature,
            attestations: v.attestations,
        })
    }

    /// Verifies what the image's signers published (cached per repository and digest) under
    /// the rule in force. A refusal is reached again on fresh artifacts after `tag_ttl`.
    async fn signature_verdict(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Verdict, OciError> {
        let now = now_secs();
        let vkey = (repo.clone(), *digest, lp.version);
        if let Some((v, at)) = lock(&self.sig_verdicts).get(&vkey) {
            if v.admits() || now - at < self.tag_ttl {
                return Ok(v.clone());
            }
        }
        let keys_of = |names: &[String]| -> Vec<&TrustedKey> {
            names
                .iter()
                .filter_map(|k| lp.material.keys.get(k))
                .map(|k| k.as_ref())
                .collect()
        };
        let mut all_names: Vec<String> = rule
            .signature
            .iter()
            .flat_map(|s| s.keys.iter().cloned())
            .chain(
                rule.attestations
                    .iter()
                    .flat_map(|a| a.keys.iter().cloned()),
            )
            .collect();
        all_names.sort();
        all_names.dedup();
        let all_keys: Vec<Arc<TrustedKey>> = all_names
            .iter()
            .filter_map(|k| lp.material.keys.get(k).cloned())
            .collect();
        let root = lp.material.trust_root.clone();
        let wanted = rule.signed_identity.as_ref().unwrap_or(repo);
        // The cryptography runs on a blocking thread: a bundle that is expensive to check
        // must not stall the gate's other requests (health checks, the index) meanwhile.
        let judge = |artifacts: Arc<Vec<Artifact>>| {
            let (all_keys, root) = (all_keys.clone(), root.clone());
            async move {
                let started = std::time::Instant::now();
                let ex = tokio::task::spawn_blocking(move || {
                    let keys: Vec<&TrustedKey> = all_keys.iter().map(|k| k.as_ref()).collect();
                    examine(
                        &artifacts,
                        &Trust {
                            keys: &keys,
                            root: root.as_deref(),
                        },
                    )
                })
                .await
                .map_err(|e| ApiError::Internal(format!("signature verification: {e}")))?;
                let verdict = Verdict {
                    signature: rule.signature.as_ref().map(|s| {
                        judge_signature(
                            &ex,
                            digest,
                            wanted,
                            &keys_of(&s.keys),
                            &s.keyless,
                            s.threshold,
                            s.require_tlog,
                        )
                    }),
                    attestations: rule.attestations.iter().try_for_each(|a| {
                        judge_attestation(&ex, digest, a, &keys_of(&a.keys)).map(drop)
                    }),
                };
                self.metrics.signature_check(started.elapsed());
                Ok::<_, OciError>(verdict)
            }
        };
        // Artifacts already fetched decide without the upstream when they admit (a policy
        // change re-decides on them); a refusal on artifacts older than tag_ttl fetches them
        // again, so a signature added later is seen.
        let cached = lock(&self.sig_layers)
            .get(&(repo.clone(), *digest))
            .cloned();
        let verdict = match cached {
            Some((artifacts, at)) => {
                let v = judge(artifacts).await?;
                if v.admits() || now - at < self.tag_ttl {
                    v
                } else {
                    judge(self.signature_artifacts(reg, repo, digest, at).await?).await?
                }
            }
            None => judge(self.signature_artifacts(reg, repo, digest, 0).await?).await?,
        };
        let mut verdicts = lock(&self.sig_verdicts);
        if verdicts.len() >= MAX_CACHED_VERDICTS {
            // Bounded: entries of older policies go first, then everything.
            verdicts.retain(|(_, _, version), _| *version == lp.version);
            if verdicts.len() >= MAX_CACHED_VERDICTS {
                verdicts.clear();
            }
        }
        verdicts.insert(vkey, (verdict.clone(), now));
        Ok(verdict)
    }

    /// Everything the image's signers published: the cosign `.sig` and `.att` artifacts and the
    /// Sigstore bundles among its referrers, fetched at once, each kind up to `[limits]
    /// signatures` and all of them within one byte budget. Missing ones are simply absent; an
    /// unreachable or too slow registry is an error, never "unsigned". Concurrent requests for
    /// one digest fetch once (the others wait, then find the fetch in the cache), and at most
    /// `MAX_SIGNATURE_FETCHES` images are fetched at a time, so the memory these fetches hold
    /// is bounded whoever asks. `stale`: when the cached artifacts being replaced were fetched.
    async fn signature_artifacts(
        &self,
        reg: &RegistryClient,
        repo: &Repository,
        digest: &Digest,
        stale: i64,
    ) -> Result<Arc<Vec<Artifact>>, OciError> {
        let k = (repo.clone(), *digest);
        let flight = lock(&self.sig_flights)
            .entry(k.clone())
            .or_default()
            .clone();
        let guard = flight.lock().await;
        let result = async {
            // Fetched meanwhile by the request this one waited for.
            if let Some((artifacts, at)) = lock(&self.sig_layers).get(&k).cloned() {
                if at > stale {
                    return Ok(artifacts);
                }
            }
            let _slot = self
                .sig_fetches
                .acquire()
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let budget = std::sync::atomic::AtomicU64::new(MAX_SIGNATURE_BYTES_PER_IMAGE);
            let fetch = async {
                tokio::try_join!(
                    self.cosign_layers(reg, repo, digest, false, &budget),
                    self.cosign_layers(reg, repo, digest, true, &budget),
                    self.bundles(reg, repo, digest, &budget),
                )
            };
            let (mut artifacts, att, bundles) =
                tokio::time::timeout(SIGNATURE_FETCH_DEADLINE, fetch)
                    .await
                    .map_err(|_| {
                        OciError::Coded(
                            OciCode::Unavailable,
                            ApiError::Unavailable(format!(
                                "the registry did not deliver the signature artifacts of {digest} within {} s",
                                SIGNATURE_FETCH_DEADLINE.as_secs()
                            )),
                        )
                    })??;
            artifacts.extend(att);
            artifacts.extend(bundles);
            let artifacts = Arc::new(artifacts);
            let mut cache = lock(&self.sig_layers);
            let bytes = |l: &[Artifact]| l.iter().map(Artifact::size).sum::<usize>();
            let held: usize = cache.values().map(|(l, _)| bytes(l)).sum();
            if cache.len() >= MAX_CACHED_VERDICTS
                || held + bytes(&artifacts) > MAX_CACHED_SIGNATURE_BYTES
            {
                cache.clear();
            }
            cache.insert(k.clone(), (artifacts.clone(), now_secs()));
            Ok(artifacts)
        }
        .await;
        drop(guard);
        let mut flights = lock(&self.sig_flights);
        // The last one out removes the entry (the map holds one reference, `flight` another).
        if Arc::strong_count(&flight) <= 2 {
            flights.remove(&k);
        }
        result
    }

    /// A small upstream blob, checked against its descriptor's digest and size and charged to
    /// the image's byte budget. `Err(why)` inside: absent, larger than `limit`, over the
    /// budget, or not the bytes its digest names (so not read as a signature, and said so); an
    /// unreachable registry or a broken transfer is an error.
    async fn small_blob(
        &self,
        reg: &RegistryClient,
        repo: &Repository,
        digest: &str,
        size: u64,
        budget: &std::sync::atomic::AtomicU64,
    ) -> Result<Result<Vec<u8>, String>, OciError> {
        let Ok(d) = Digest::parse(digest) else {
            return Ok(Err(format!("{digest:?} is not a digest")));
        };
        if size > MAX_ARTIFACT_BYTES {
            return Ok(Err(format!(
                "{size} bytes, more than the {MAX_ARTIFACT_BYTES} the gate reads for one"
            )));
        }
        let charged = budget.fetch_update(Relaxed, Relaxed, |left| left.checked_sub(size));
        if charged.is_err() {
            return Ok(Err(format!(
                "over the {} MiB read for one image's signatures",
                MAX_SIGNATURE_BYTES_PER_IMAGE >> 20
            )));
        }
        let resp = match reg.open_blob(&repo.path, digest).await {
            Ok(r) => r,
            Err(RegistryError::NotFound) => return Ok(Err("absent from the registry".into())),
            Err(e) => return Err(registry_error(e, OciCode::BlobUnknown)),
        };
        let bytes = match crate::fetch::read_limited(resp, size).await {
            Ok(p) => p,
            Err(crate::fetch::ReadError::TooLarge) => {
                return Ok(Err("larger than its descriptor says".into()))
            }
            Err(crate::fetch::ReadError::Broken) => {
                return Err(OciError::Coded(
                    OciCode::Unavailable,
                    ApiError::Unavailable("a signature artifact could not be read".into()),
                ))
            }
        };
        if Sha256::from_bytes(sha2::Sha256::digest(&bytes).into()) != *d.sha() {
            tracing::warn!(%repo, blob = %digest, "signature artifact does not match its digest; ignored");
            return Ok(Err("not the bytes its digest names".into()));
        }
        Ok(Ok(bytes))
    }

    /// A manifest fetched by tag or digest for signature lookup: `None` when absent.
    async fn small_manifest(
        &self,
        reg: &RegistryClient,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<Vec<u8>>, OciError> {
        match reg.manifest(&repo.path, reference, false).await {
            Err(RegistryError::NotFound) => Ok(None),
            Err(e) => Err(registry_error(e, OciCode::ManifestUnknown)),
            Ok(resp) => {
                let bytes = read_upstream(resp, self.manifest_bytes, "signature artifact").await?;
                // Read as cosign (Go) reads it, or refused (see `strict`).
                super::strict::unambiguous(&bytes).map_err(|e| {
                    OciError::from(ApiError::BadUpstream(format!(
                        "signature artifact {reference}: {e}"
                    )))
                })?;
                Ok(Some(bytes))
            }
        }
    }

    /// The layers of cosign's legacy artifact of `digest`: `sha256-<hex>.sig` (simple-signing
    /// payloads) or, with `attestation`, `sha256-<hex>.att` (DSSE envelopes).
    async fn cosign_layers(
        &self,
        reg: &RegistryClient,
        repo: &Repository,
        digest: &Digest,
        attestation: bool,
        budget: &std::sync::atomic::AtomicU64,
    ) -> Result<Vec<Artifact>, OciError> {
        #[derive(Deserialize)]
        struct SigManifest {
            #[serde(default)]
            layers: Vec<SigLayer>,
        }
        #[derive(Deserialize)]
        struct SigLayer {
            #[serde(rename = "mediaType")]
            media_type: String,
            digest: String,
            size: u64,
            #[serde(default)]
            annotations: std::collections::BTreeMap<String, String>,
        }
        let (suffix, media_type) = if attestation {
            ("att", DSSE_ENVELOPE)
        } else {
            ("sig", SIMPLE_SIGNING)
        };
        let tag = format!("sha256-{}.{suffix}", digest.sha());
        let Some(body) = self.small_manifest(reg, repo, &tag).await? else {
            return Ok(Vec::new());
        };
        let m: SigManifest = serde_json::from_slice(&body).map_err(|_| {
            OciError::Coded(
                OciCode::ManifestInvalid,
                ApiError::BadUpstream(format!(
                    "the {suffix} artifact of {digest} is not a manifest"
                )),
            )
        })?;
        let layers: Vec<SigLayer> = m
            .layers
            .into_iter()
            .filter(|l| l.media_type == media_type)
            .collect();
        let mut out = Vec::new();
        if layers.len() > self.max_signatures {
            out.push(Artifact::Unreadable {
                signature: !attestation,
                why: format!(
                    "the .{suffix} artifact has {} layers; the first {} ([limits] signatures) were read",
                    layers.len(),
                    self.max_signatures
                ),
            });
        }
        for l in layers.into_iter().take(self.max_signatures) {
            let payload = match self
                .small_blob(reg, repo, &l.digest, l.size, budget)
                .await?
            {
                Ok(p) => p,
                Err(why) => {
                    out.push(Artifact::Unreadable {
                        signature: !attestation,
                        why: format!("a .{suffix} layer was not read: {why}"),
                    });
                    continue;
                }
            };
            let layer = SignatureLayer {
                media_type: l.media_type,
                payload,
                annotations: l.annotations,
            };
            out.push(if attestation {
                Artifact::Attestation(layer)
            } else {
                Artifact::Signature(layer)
            });
        }
        Ok(out)
    }

    /// The Sigstore bundles that refer to `digest`: listed by the referrers API (OCI
    /// distribution-spec v1.1, "Listing Referrers") or, where the registry has none (404), by
    /// the referrers tag schema's index under the tag `sha256-<hex>`. Each bundle manifest is
    /// remembered as an artifact of `digest`, so downstream verifiers can fetch it through the
    /// gate.
    async fn bundles(
        &self,
        reg: &RegistryClient,
        repo: &Repository,
        digest: &Digest,
        budget: &std::sync::atomic::AtomicU64,
    ) -> Result<Vec<Artifact>, OciError> {
        let index = match reg.referrers(&repo.path, &digest.to_string()).await {
            Ok(resp) => Some(read_upstream(resp, self.manifest_bytes, "referrers index").await?),
            // No referrers API: the spec's answer is 404; some registries say 400 or 405.
            Err(RegistryError::NotFound) | Err(RegistryError::Status(_, 400 | 405)) => None,
            Err(e) => return Err(registry_error(e, OciCode::NameUnknown)),
        };
        let index = match index {
            Some(i) => i,
            None => match self
                .small_manifest(reg, repo, &format!("sha256-{}", digest.sha()))
                .await?
            {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
        };
        // A referrers answer that is not an index is the registry misbehaving (502), not
        // "no signatures".
        let doc = serde_json::from_slice::<ReferrersDoc>(&index)
            .ok()
            .filter(|d| d.schema_version == Some(2))
            .ok_or_else(|| {
                OciError::Coded(
                    OciCode::ManifestInvalid,
                    ApiError::BadUpstream(format!(
                        "the referrers of {digest} are not an image index"
                    )),
                )
            })?;
        let listed: Vec<&ReferrerDescriptor> = doc
            .manifests
            .iter()
            .filter(|d| {
                d.artifact_type
                    .as_deref()
                    .is_some_and(|t| t.starts_with(BUNDLE_MEDIA_TYPE_PREFIX))
            })
            .collect();
        let mut out = Vec::new();
        if listed.len() > self.max_signatures {
            out.push(Artifact::Unreadable {
                signature: true,
                why: format!(
                    "{} bundles are listed; the first {} ([limits] signatures) were read",
                    listed.len(),
                    self.max_signatures
                ),
            });
        }
        for d in listed.into_iter().take(self.max_signatures) {
            let Ok(md) = Digest::parse(&d.digest) else {
                continue;
            };
            let Some(body) = self.small_manifest(reg, repo, &d.digest).await? else {
                continue;
            };
            if Sha256::from_bytes(sha2::Sha256::digest(&body).into()) != *md.sha() {
                tracing::warn!(%repo, manifest = %d.digest, "bundle manifest does not match its digest; ignored");
                continue;
            }
            let Some((subject, layer)) = bundle_artifact(&body) else {
                continue;
            };
            if subject != *digest {
                continue;
            }
            match self
                .small_blob(reg, repo, &layer.digest, layer.size, budget)
                .await?
            {
                // Nothing is recorded while a digest is being decided (a refusal stores
                // nothing): a downstream verifier's request for the bundle manifest admits it
                // then, through its subject (`bundle_of_admitted`).
                Ok(bytes) => out.push(Artifact::Bundle(bytes)),
                Err(why) => out.push(Artifact::Unreadable {
                    signature: true,
                    why: format!("a bundle was not read: {why}"),
                }),
            }
        }
        Ok(out)
    }

    /// The decision for a runnable image: never through a signature-artifact link, and with
    /// `per_platform`, an index only when every platform manifest it lists is admitted too (a
    /// node that pulls past the gate would run one of them).
    async fn decide_runnable(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Result<Result<&'static str, ImageDeny>, OciError> {
        let kind = match self
            .decide_with(lp, reg, rule, repo, digest, tag, false)
            .await?
        {
            Ok(k) => k,
            Err(d) => return Ok(Err(d)),
        };
        if !rule.signature.as_ref().is_some_and(|s| s.per_platform) {
            return Ok(Ok(kind));
        }
        let rec = self.verified_manifest(reg, repo, digest).await?;
        if !is_index(&rec.media_type) {
            return Ok(Ok(kind));
        }
        let (_, bytes) = self.fetch_manifest(reg, repo, digest).await?;
        let doc: ManifestDoc = serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::BadUpstream(format!("manifest {digest} is not JSON")))?;
        for child in doc
            .manifests
            .iter()
            .filter_map(|d| Digest::parse(&d.digest).ok())
        {
            if let Err(d) = self
                .decide_with(lp, reg, rule, repo, &child, None, false)
                .await?
            {
                return Ok(Err(d));
            }
        }
        Ok(Ok(kind))
    }

    /// Decides an image reference as a pull through the gate would: the registry by its host,
    /// the tag resolved upstream (and checked against the rule's tags), the digest decided with
    /// pins and signatures. A refusal is `allowed: false` with its reasons; an upstream that
    /// cannot be reached is an error (503), never an answer.
    pub async fn verify_reference(
        &self,
        lp: &LoadedPolicy,
        image: &str,
        client: &Client,
    ) -> Result<Verification, OciError> {
        let refuse =
            |repository: Option<String>, digest: Option<String>, reason: String| Verification {
                image: image.to_string(),
                allowed: false,
                repository,
                digest,
                reasons: vec![reason],
            };
        let (repo, tag, pinned) = match crate::policy::oci::parse_image_ref(image) {
            Ok(x) => x,
            Err(e) => {
                return Err(OciError::Coded(
                    OciCode::NameInvalid,
                    ApiError::BadRequest(e.to_string()),
                ))
            }
        };
        let Some(reg) = self
            .registries
            .iter()
            .find(|r| r.cfg.host == repo.registry)
            .cloned()
        else {
            return Ok(refuse(
                Some(repo.to_string()),
                None,
                format!("registry {} is not configured on this gate", repo.registry),
            ));
        };
        let rule = match Self::rule(lp, &repo) {
            Ok(r) => r,
            Err(d) => {
                self.audit(
                    "verify",
                    &repo,
                    tag.as_ref().map(|t| t.to_string()),
                    pinned.as_ref(),
                    Err(&d),
                    client,
                )
                .await;
                return Ok(refuse(Some(repo.to_string()), None, d.to_string()));
            }
        };
        let digest = match (pinned, &tag) {
            (Some(d), _) => d,
            (None, Some(t)) => {
                if let Err(d) = check_tag(rule, &repo, t) {
                    self.audit("verify", &repo, Some(t.to_string()), None, Err(&d), client)
                        .await;
                    return Ok(refuse(Some(repo.to_string()), None, d.to_string()));
                }
                self.resolve_tag(&reg, &repo, t).await?
            }
            (None, None) => {
                return Err(OciError::Coded(
                    OciCode::NameInvalid,
                    ApiError::BadRequest("no tag or digest".into()),
                ))
            }
        };
        let artifact = tag.as_ref().map(|t| t.to_string());
        match self
            .decide_runnable(
                lp,
                &reg,
                rule,
                &repo,
                &digest,
                if pinned.is_some() { None } else { tag.as_ref() },
            )
            .await?
        {
            Ok(kind) => {
                self.audit(
                    "verify",
                    &repo,
                    artifact,
                    Some(&digest),
                    Ok((kind, rule)),
                    client,
                )
                .await;
                Ok(Verification {
                    image: image.to_string(),
                    allowed: true,
                    repository: Some(repo.to_string()),
                    digest: Some(digest.to_string()),
                    reasons: vec![format!("admitted by the rule at {} ({kind})", rule.source)],
                })
            }
            Err(d) => {
                self.audit("verify", &repo, artifact, Some(&digest), Err(&d), client)
                    .await;
                Ok(refuse(
                    Some(repo.to_string()),
                    Some(digest.to_string()),
                    d.to_string(),
                ))
            }
        }
    }

    /// A platform manifest can be pulled by digest before its index ever went through this gate
    /// (a fresh data_dir, a node that pins the child). Verifying the rule's pinned manifests
    /// records which children they list. Returns whether anything new was learned.
    async fn learn_pinned_indexes(
        &self,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
    ) -> Result<bool, OciError> {
        let mut learned = false;
        for pinned in &rule.digests {
            if self.links_known(repo, pinned)? {
                continue;
            }
            // A pinned digest the registry cannot give says nothing about this one: the request
            // is then refused (and audited) as not pinned.
            match self.verified_manifest(reg, repo, pinned).await {
                Ok(_) => learned = true,
                Err(e) => {
                    tracing::warn!(%repo, %pinned, error = %e, "could not verify a pinned manifest to learn its children")
                }
            }
        }
        Ok(learned)
    }

    /// Resolves a tag to a digest: trusted for `tag_ttl`, asked with HEAD (rate-limited
    /// registries do not charge it as a pull), and the last answer kept while the upstream is down.
    async fn resolve_tag(
        &self,
        reg: &RegistryClient,
        repo: &Repository,
        tag: &Tag,
    ) -> Result<Digest, OciError> {
        let k = key(repo, tag.as_str());
        let cached: Option<TagRecord> = self.store.get(TAGS, &k).map_err(ApiError::from)?;
        let now = now_secs();
        if let Some(c) = &cached {
            if now - c.resolved_at < self.tag_ttl {
                if let Ok(d) = Digest::parse(&c.digest) {
                    return Ok(d);
                }
            }
        }
        // HEAD first; a registry that answers HEAD without a digest, or refuses HEAD, is asked
        // with GET and the manifest is hashed here.
        let head = reg.manifest(&repo.path, tag.as_str(), true).await;
        let from_head = head.as_ref().ok().and_then(|resp| {
            resp.headers()
                .get(&DOCKER_CONTENT_DIGEST)
                .and_then(|v| v.to_str().ok())
                .and_then(|d| Digest::parse(d).ok())
        });
        let fresh = match (from_head, head) {
            (Some(d), _) => Ok(d),
            (
                None,
                Err(
                    e @ (RegistryError::NotFound
                    | RegistryError::Auth(_)
                    | RegistryError::Unreachable(_)),
                ),
            ) => Err(e),
            (None, _) => match reg.manifest(&repo.path, tag.as_str(), false).await {
                Ok(resp) => {
                    let body = read_upstream(resp, self.manifest_bytes, "manifest").await?;
                    Ok(Digest(Sha256::from_bytes(
                        sha2::Sha256::digest(&body).into(),
                    )))
                }
                Err(e) => Err(e),
            },
        };
        match fresh {
            Ok(d) => {
                let rec = TagRecord {
                    digest: d.to_string(),
                    resolved_at: now,
                };
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || store.put(TAGS, &k, &rec)).await;
                Ok(d)
            }
            Err(RegistryError::NotFound) => Err(OciError::Coded(
                OciCode::ManifestUnknown,
                ApiError::NotFound(format!("{repo}:{tag} is unknown to the upstream registry")),
            )),
            Err(e) => match cached.and_then(|c| Digest::parse(&c.digest).ok()) {
                Some(d) => {
                    tracing::warn!(%repo, %tag, error = %e, "upstream down; using the last resolution of the tag");
                    Ok(d)
                }
                None => Err(registry_error(e, OciCode::ManifestUnknown)),
            },
        }
    }

    /// `GET/HEAD /v2/<name>/manifests/<reference>`.
    pub async fn manifest(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        repo: &Repository,
        reference: Reference,
        head: bool,
        client: &Client,
    ) -> Result<Response, OciError> {
        let action = "oci.manifest";
        let rule = match Self::rule(lp, repo) {
            Ok(r) => r,
            Err(d) => return Err(self.deny(action, repo, None, None, d, client).await),
        };
        let artifact_of = match &reference {
            Reference::Tag(t) => artifact_subject(t),
            Reference::Digest(_) => None,
        };
        let (digest, tag) = match (reference, artifact_of) {
            (Reference::Digest(d), _) => (d, None),
            (Reference::Tag(t), Some((subject, kind))) => {
                if let Err(d) = self.decide(lp, reg, rule, repo, &subject, None).await? {
                    return Err(self
                        .deny(action, repo, Some(t.to_string()), Some(&subject), d, client)
                        .await);
                }
                let artifact = self.resolve_tag(reg, repo, &t).await?;
                // Only a real signature/attestation artifact is linked: a runnable image pushed
                // under a `.sig` tag must not ride on its subject's admission. Its payloads are
                // read and parsed as what the tag promises before anything is stored.
                let (rec, bytes) = self.fetch_manifest(reg, repo, &artifact).await?;
                let checked = if is_cosign_artifact(&rec.media_type, &bytes, kind) {
                    self.admit_artifact(reg, repo, &artifact, &rec, &bytes, kind)
                        .await?
                } else {
                    Err("it is not what its tag promises".to_string())
                };
                if let Err(why) = checked {
                    tracing::warn!(%repo, tag = %t, %artifact, %why, "artifact tag refused");
                    let d = ImageDeny::DigestNotPinned {
                        repo: repo.clone(),
                        digest: artifact,
                        tag: Some(t.clone()),
                    };
                    return Err(self
                        .deny(
                            action,
                            repo,
                            Some(t.to_string()),
                            Some(&artifact),
                            d,
                            client,
                        )
                        .await);
                }
                self.record_artifact(repo, &artifact, &subject).await?;
                (artifact, Some(t))
            }
            (Reference::Tag(t), None) => {
                if let Err(d) = check_tag(rule, repo, &t) {
                    return Err(self
                        .deny(action, repo, Some(t.to_string()), None, d, client)
                        .await);
                }
                (self.resolve_tag(reg, repo, &t).await?, Some(t))
            }
        };
        let artifact = tag.as_ref().map(|t| t.to_string());
        let admitted_as = match self
            .decide(lp, reg, rule, repo, &digest, tag.as_ref())
            .await?
        {
            Ok(kind) => kind,
            Err(d) => match self
                .bundle_of_admitted(lp, reg, rule, repo, &digest, tag.is_none())
                .await?
            {
                Some(kind) => kind,
                None => {
                    return Err(self
                        .deny(action, repo, artifact, Some(&digest), d, client)
                        .await)
                }
            },
        };
        // An image's manifest vouches for its blobs; an artifact's was admitted with its
        // payloads and vouches for nothing else.
        let rec = if admitted_as == "artifact_of_admitted" {
            self.fetch_manifest(reg, repo, &digest).await?.0
        } else {
            self.verified_manifest(reg, repo, &digest).await?
        };
        self.audit(
            action,
            repo,
            artifact,
            Some(&digest),
            Ok((admitted_as, rule)),
            client,
        )
        .await;
        let b = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, rec.media_type.as_str())
            .header(header::CONTENT_LENGTH, rec.size)
            .header(&DOCKER_CONTENT_DIGEST, digest.to_string())
            .header(header::ETAG, format!("\"{digest}\""))
            // A tag can move and every pull is re-decided: only a by-digest answer may be kept.
            .header(
                header::CACHE_CONTROL,
                if tag.is_some() {
                    "no-cache"
                } else {
                    "private, max-age=31536000, immutable"
                },
            );
        if head {
            return b
                .body(Body::empty())
                .map_err(|e| ApiError::Internal(e.to_string()).into());
        }
        // The bytes are checked against the digest as they are read back.
        let (_, bytes) = self.fetch_manifest(reg, repo, &digest).await?;
        b.body(Body::from(bytes))
            .map_err(|e| ApiError::Internal(e.to_string()).into())
    }

    /// An admitted image manifest's record: fetched and checked (`fetch_manifest`), cached, and
    /// what it vouches for in this repository (children or blobs, with their sizes) recorded.
    /// Only ever called once the manifest is admitted: a refusal stores nothing.
    async fn verified_manifest(
        &self,
        reg: &RegistryClient,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<ManifestRecord, OciError> {
        if let Some(rec) = lock(&self.manifests).get(digest).cloned() {
            if self.fetcher.cache.lookup(digest.sha()).is_some()
                && self.links_known(repo, digest)?
            {
                return Ok(rec);
            }
        }
        let (rec, bytes) = self.fetch_manifest(reg, repo, digest).await?;
        self.record_links(repo, digest, &rec.media_type, &bytes)
            .await?;
        self.keep_manifest(digest, &rec, &bytes).await?;
        Ok(rec)
    }

    /// A manifest checked against its digest, with its media type (and schema): from the cache
    /// when an admitted one is there, otherwise from the upstream. Stores nothing.
    async fn fetch_manifest(
        &self,
        reg: &RegistryClient,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<(ManifestRecord, Vec<u8>), OciError> {
        let known = lock(&self.manifests).get(digest).cloned();
        let known = match known {
            Some(r) => Some(r),
            None => self
                .store
                .get::<ManifestRecord>(MANIFESTS, &digest.to_string())
                .map_err(ApiError::from)?,
        };
        if let Some(rec) = known {
            if self.fetcher.cache.lookup(digest.sha()).is_some() {
                let bytes = self
                    .fetcher
                    .cache
                    .read_small(digest.sha())
                    .await
                    .unwrap_or_default();
                // A manifest is checked against its digest whenever it is read back (it is
                // small): bytes edited on disk are evicted and fetched again.
                if Sha256::from_bytes(sha2::Sha256::digest(&bytes).into()) == *digest.sha() {
                    return Ok((rec, bytes));
                }
                self.fetcher.check_cached(digest.sha()).await;
                lock(&self.manifests).remove(digest);
            }
        }
        let resp = reg
            .manifest(&repo.path, &digest.to_string(), false)
            .await
            .map_err(|e| registry_error(e, OciCode::ManifestUnknown))?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let bad = |m: String| OciError::Coded(OciCode::ManifestInvalid, ApiError::BadUpstream(m));
        let bytes = read_upstream(resp, self.manifest_bytes, &format!("manifest {digest}")).await?;
        let actual = Digest(Sha256::from_bytes(sha2::Sha256::digest(&bytes).into()));
        if actual != *digest {
            tracing::error!(%repo, expected = %digest, %actual, "upstream manifest does not match its digest");
            let detail = format!("the upstream sent a manifest with digest {actual} for {digest}");
            let ev = AuditEvent::about(
                "oci.manifest",
                repo.to_string(),
                None,
                Some(digest.to_string()),
                "gate",
            );
            self.audit
                .record(AuditEvent {
                    actual_sha256: Some(actual.to_string()),
                    ..ev.deny("hash_mismatch", detail.clone())
                })
                .await;
            return Err(bad(detail));
        }
        let media_type = manifest_media_type(&content_type, &bytes)
            .map_err(|m| bad(format!("manifest {digest}: {m}")))?;
        let rec = ManifestRecord {
            media_type,
            size: bytes.len() as u64,
        };
        Ok((rec, bytes))
    }

    /// Caches an admitted manifest's bytes and its record.
    async fn keep_manifest(
        &self,
        digest: &Digest,
        rec: &ManifestRecord,
        bytes: &[u8],
    ) -> Result<(), OciError> {
        if self.fetcher.cache.lookup(digest.sha()).is_none() {
            self.cache_bytes(digest, bytes).await?;
        }
        let store = self.store.clone();
        let (k, r2) = (digest.to_string(), rec.clone());
        tokio::task::spawn_blocking(move || store.put(MANIFESTS, &k, &r2))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::from)?;
        lock(&self.manifests).insert(*digest, rec.clone());
        Ok(())
    }

    /// Bytes already checked against `digest`, into the content cache.
    async fn cache_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<(), OciError> {
        let mut temp = self
            .fetcher
            .cache
            .temp_file()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        temp.file
            .write_all(bytes)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let cached = self
            .fetcher
            .cache
            .commit(temp, *digest.sha(), bytes.len() as u64, None)
            .await
            .map_err(ApiError::from)?;
        if !cached {
            return Err(ApiError::Unavailable("the gate's cache could not keep it".into()).into());
        }
        Ok(())
    }

    /// Admits a signature-artifact manifest of an admitted subject: every payload it names is
    /// read (size-bounded), checked against its digest and parsed as what `kind` promises (a
    /// simple-signing payload, a DSSE envelope, a Sigstore bundle; a config that is empty or
    /// describes exactly those payloads), then cached and recorded as that artifact's payload.
    /// A blob of an image can therefore never be served as a signature. `Ok(Err(why))`: it is
    /// not such an artifact, and nothing was stored.
    async fn admit_artifact(
        &self,
        reg: &RegistryClient,
        repo: &Repository,
        digest: &Digest,
        rec: &ManifestRecord,
        bytes: &[u8],
        kind: ArtifactTag,
    ) -> Result<Result<(), String>, OciError> {
        let mut payloads: Vec<(Digest, Vec<u8>)> = Vec::new();
        if kind != ArtifactTag::Referrers {
            let Ok(doc) = serde_json::from_slice::<ManifestDoc>(bytes) else {
                return Ok(Err("not a manifest".into()));
            };
            let budget = std::sync::atomic::AtomicU64::new(MAX_SIGNATURE_BYTES_PER_IMAGE);
            let layer_digests: Vec<String> = doc.layers.iter().map(|l| l.digest.clone()).collect();
            for l in doc.layers.iter().take(self.max_signatures) {
                let Ok(ld) = Digest::parse(&l.digest) else {
                    return Ok(Err(format!("{:?} is not a digest", l.digest)));
                };
                let body = match self
                    .small_blob(reg, repo, &l.digest, l.size, &budget)
                    .await?
                {
                    Ok(b) => b,
                    Err(why) => return Ok(Err(format!("layer {ld}: {why}"))),
                };
                if let Err(why) = payload_is(kind, &body) {
                    return Ok(Err(format!("layer {ld}: {why}")));
                }
                payloads.push((ld, body));
            }
            if doc.layers.len() > self.max_signatures {
                return Ok(Err(format!(
                    "{} layers, more than [limits] signatures",
                    doc.layers.len()
                )));
            }
            if let Some(c) = &doc.config {
                let Ok(cd) = Digest::parse(&c.digest) else {
                    return Ok(Err(format!("{:?} is not a digest", c.digest)));
                };
                if c.size > MAX_ARTIFACT_CONFIG_BYTES {
                    return Ok(Err(format!("its config is {} bytes", c.size)));
                }
                let body = match self
                    .small_blob(reg, repo, &c.digest, c.size, &budget)
                    .await?
                {
                    Ok(b) => b,
                    Err(why) => return Ok(Err(format!("config {cd}: {why}"))),
                };
                if !artifact_config_ok(&body, &layer_digests) {
                    return Ok(Err(format!(
                        "config {cd} describes something other than its signature payloads"
                    )));
                }
                payloads.push((cd, body));
            }
        }
        for (d, body) in &payloads {
            if self.fetcher.cache.lookup(d.sha()).is_none() {
                self.cache_bytes(d, body).await?;
            }
        }
        self.record_artifact_blobs(
            repo,
            digest,
            payloads.iter().map(|(d, b)| (*d, b.len() as u64)).collect(),
        )
        .await?;
        self.keep_manifest(digest, rec, bytes).await?;
        Ok(Ok(()))
    }

    /// Records blobs as payloads of the artifact manifest `artifact` (with their sizes).
    async fn record_artifact_blobs(
        &self,
        repo: &Repository,
        artifact: &Digest,
        blobs: Vec<(Digest, u64)>,
    ) -> Result<(), OciError> {
        let _links = self.links_lock.lock().await;
        let store = self.store.clone();
        let repo = repo.clone();
        let artifact = artifact.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), crate::store::StoreError> {
            let mut items = Vec::new();
            for (b, size) in blobs {
                let k = key(&repo, &b.to_string());
                let mut r: BlobRef = store.get(ARTIFACT_BLOBS, &k)?.unwrap_or_default();
                if !r.manifests.contains(&artifact) {
                    r.manifests.push(artifact.clone());
                }
                r.sizes.insert(artifact.clone(), size);
                items.push((k, r));
            }
            store.put_many(ARTIFACT_BLOBS, &items)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)?;
        Ok(())
    }

    /// A manifest asked for by digest that no rule admits may still be a Sigstore bundle
    /// artifact (cosign v3) of an admitted image: downstream verifiers fetch it by the digest
    /// the referrers list gives. It is fetched (the repository has a rule), and admitted only
    /// if it is exactly a bundle artifact whose `subject` is admitted in this repository.
    async fn bundle_of_admitted(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
        by_digest: bool,
    ) -> Result<Option<&'static str>, OciError> {
        if !by_digest {
            return Ok(None);
        }
        let (rec, bytes) = match self.fetch_manifest(reg, repo, digest).await {
            Ok(r) => r,
            // Absent or not a manifest the gate accepts: the refusal stands. Only an
            // unreachable registry is an error.
            Err(OciError::Coded(code, _)) if code != OciCode::Unavailable => return Ok(None),
            Err(e) => return Err(e),
        };
        if is_index(&rec.media_type) {
            return Ok(None);
        }
        let Some((subject, _)) = bundle_artifact(&bytes) else {
            return Ok(None);
        };
        if subject == *digest {
            return Ok(None);
        }
        match self
            .decide_with(lp, reg, rule, repo, &subject, None, false)
            .await?
        {
            Ok(_) => {
                if self
                    .admit_artifact(reg, repo, digest, &rec, &bytes, ArtifactTag::Bundle)
                    .await?
                    .is_err()
                {
                    return Ok(None);
                }
                self.record_artifact(repo, digest, &subject).await?;
                Ok(Some("artifact_of_admitted"))
            }
            Err(_) => Ok(None),
        }
    }

    /// Remembers that `artifact` is a signature or attestation artifact of `subject`.
    async fn record_artifact(
        &self,
        repo: &Repository,
        artifact: &Digest,
        subject: &Digest,
    ) -> Result<(), OciError> {
        let store = self.store.clone();
        let (k, v) = (key(repo, &artifact.to_string()), subject.to_string());
        tokio::task::spawn_blocking(move || store.put(ARTIFACTS, &k, &v))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::from)?;
        Ok(())
    }

    fn links_known(&self, repo: &Repository, digest: &Digest) -> Result<bool, OciError> {
        let marker: Option<bool> = self
            .store
            .get(BLOBREFS, &key(repo, &format!("manifest:{digest}")))
            .map_err(ApiError::from)?;
        Ok(marker.unwrap_or(false))
    }

    /// Persists what a verified manifest vouches for in this repository: an index's children,
    /// an image's config and layers (with their sizes, so a blob is never read past them).
    async fn record_links(
        &self,
        repo: &Repository,
        digest: &Digest,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), OciError> {
        let _links = self.links_lock.lock().await;
        if self.links_known(repo, digest)? {
            return Ok(());
        }
        let doc: ManifestDoc = serde_json::from_slice(bytes)
            .map_err(|_| ApiError::BadUpstream(format!("manifest {digest} is not JSON")))?;
        let store = self.store.clone();
        let repo = repo.clone();
        let digest = digest.to_string();
        let index = is_index(media_type);
        let children: Vec<String> = doc.manifests.iter().map(|d| d.digest.clone()).collect();
        let blobs: Vec<(String, u64)> = doc
            .config
            .iter()
            .chain(doc.layers.iter())
            .map(|d| (d.digest.clone(), d.size))
            .collect();
        tokio::task::spawn_blocking(move || -> Result<(), crate::store::StoreError> {
            if index {
                let mut items = Vec::new();
                for c in children {
                    let k = key(&repo, &c);
                    let mut parents: Vec<String> = store.get(CHILDREN, &k)?.unwrap_or_default();
                    if !parents.contains(&digest) {
                        parents.push(digest.clone());
                    }
                    items.push((k, parents));
                }
                store.put_many(CHILDREN, &items)?;
            } else {
                let mut items = Vec::new();
                for (b, size) in blobs {
                    let k = key(&repo, &b);
                    let mut r: BlobRef = store.get(BLOBREFS, &k)?.unwrap_or_default();
                    if !r.manifests.contains(&digest) {
                        r.manifests.push(digest.clone());
                    }
                    r.sizes.insert(digest.clone(), size);
                    items.push((k, r));
                }
                store.put_many(BLOBREFS, &items)?;
            }
            store.put(BLOBREFS, &key(&repo, &format!("manifest:{digest}")), &true)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)?;
        Ok(())
    }

    /// `GET/HEAD /v2/<name>/blobs/<digest>`: only a blob that an admitted manifest of this
    /// repository references, re-decided through that manifest on every request.
    #[allow(clippy::too_many_arguments)]
    pub async fn blob(
        &self,
        lp: &LoadedPolicy,
        reg: &Arc<RegistryClient>,
        repo: &Repository,
        digest: Digest,
        head: bool,
        headers: &HeaderMap,
        client: &Client,
    ) -> Result<Response, OciError> {
        let action = "oci.blob";
        let rule = match Self::rule(lp, repo) {
            Ok(r) => r,
            Err(d) => {
                return Err(self
                    .deny(action, repo, None, Some(&digest), d, client)
                    .await)
            }
        };
        // A blob is served only through a manifest admitted now: an image manifest that lists
        // it, or a signature artifact whose payload it was read and parsed as.
        let mut allowed = None;
        for (table, as_artifact) in [(BLOBREFS, false), (ARTIFACT_BLOBS, true)] {
            let refs: Option<BlobRef> = self
                .store
                .get(table, &key(repo, &digest.to_string()))
                .map_err(ApiError::from)?;
            let Some(r) = refs else { continue };
            for m in r.manifests.iter().filter_map(|m| Digest::parse(m).ok()) {
                let admitted = if as_artifact {
                    // Only through the artifact's link to its subject, never as an image.
                    self.decide(lp, reg, rule, repo, &m, None)
                        .await?
                        .ok()
                        .filter(|k| *k == "artifact_of_admitted")
                } else {
                    // An image manifest, decided as one (a signature-artifact link never
                    // admits the blobs it lists, whatever an older version recorded).
                    self.decide_with(lp, reg, rule, repo, &m, None, false)
                        .await?
                        .ok()
                };
                if let Some(kind) = admitted {
                    allowed = Some((kind, r.size_in(&m)));
                    break;
                }
            }
            if allowed.is_some() {
                break;
            }
        }
        let Some((admitted_as, size)) = allowed else {
            let d = ImageDeny::NotReferenced {
                repo: repo.clone(),
                digest,
            };
            return Err(self
                .deny(action, repo, None, Some(&digest), d, client)
                .await);
        };
        let size = Some(size);
        self.audit(
            action,
            repo,
            None,
            Some(&digest),
            Ok((admitted_as, rule)),
            client,
        )
        .await;
        let extra = [(DOCKER_CONTENT_DIGEST.clone(), digest.to_string())];
        if let Some(sz) = self.fetcher.cached(digest.sha()).await {
            self.metrics.cache_hits.fetch_add(1, Relaxed);
            return Ok(self
                .fetcher
                .serve_cached(
                    digest.sha(),
                    sz,
                    head,
                    headers,
                    "application/octet-stream",
                    &extra,
                )
                .await?);
        }
        self.metrics.cache_misses.fetch_add(1, Relaxed);
        if head {
            let mut b = crate::fetch::file_headers(
                Response::builder().status(StatusCode::OK),
                digest.sha(),
                "application/octet-stream",
            )
            .header(&DOCKER_CONTENT_DIGEST, digest.to_string());
            if let Some(s) = size {
                b = b.header(header::CONTENT_LENGTH, s);
            }
            return b
                .body(Body::empty())
                .map_err(|e| ApiError::Internal(e.to_string()).into());
        }
        let reg = reg.clone();
        let path = repo.path.clone();
        let subject = repo.to_string();
        let who = client.0.clone();
        let job = move || {
            let reg = reg.clone();
            let path = path.clone();
            Job {
                sha: *digest.sha(),
                name: digest.to_string(),
                size,
                open: Box::pin(async move {
                    reg.open_blob(&path, &digest.to_string())
                        .await
                        .map_err(|e| match e {
                            RegistryError::NotFound => Failure::BadUpstream(format!(
                                "the upstream registry does not have {digest}"
                            )),
                            // Where a redirect tried to go is logged, not told to the client.
                            RegistryError::Refused(registry, detail) => {
                                tracing::warn!(%registry, %detail, "blob fetch refused");
                                Failure::BadUpstream(format!("the upstream registry {registry} redirected {digest} where the gate does not follow"))
                            }
                            e => Failure::Unavailable(e.to_string()),
                        })
                }),
                mismatch: AuditEvent::about(
                    "oci.blob",
                    subject.clone(),
                    None,
                    Some(digest.to_string()),
                    &who,
                ),
            }
        };
        Ok(self
            .fetcher
            .fetch_and_serve(*digest.sha(), job, "application/octet-stream", &extra)
            .await?)
    }

    /// `GET /v2/<name>/referrers/<digest>`: answered only for an admitted subject, with the
    /// upstream's index (404 where the registry has no referrers API).
    pub async fn referrers(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        repo: &Repository,
        subject: Digest,
        client: &Client,
    ) -> Result<Response, OciError> {
        let rule = match Self::rule(lp, repo) {
            Ok(r) => r,
            Err(d) => {
                return Err(self
                    .deny("oci.referrers", repo, None, Some(&subject), d, client)
                    .await)
            }
        };
        if let Err(d) = self.decide(lp, reg, rule, repo, &subject, None).await? {
            return Err(self
                .deny("oci.referrers", repo, None, Some(&subject), d, client)
                .await);
        }
        self.audit(
            "oci.referrers",
            repo,
            None,
            Some(&subject),
            Ok(("repository_rule", rule)),
            client,
        )
        .await;
        let body = match reg.referrers(&repo.path, &subject.to_string()).await {
            Ok(resp) => {
                let bytes = read_upstream(resp, self.manifest_bytes, "referrers index").await?;
                // Only an image index passes as one (as on the verification path): whatever
                // else the upstream says is its fault (502), not a list to hand on.
                let index = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .filter(|_| super::strict::unambiguous(&bytes).is_ok())
                    .filter(|v| v["schemaVersion"] == 2 && v["manifests"].is_array());
                match index {
                    Some(v) => v.to_string(),
                    None => {
                        return Err(OciError::Coded(
                            OciCode::ManifestInvalid,
                            ApiError::BadUpstream(format!(
                                "the upstream's referrers of {subject} are not an image index"
                            )),
                        ))
                    }
                }
            }
            // The upstream has no referrers API: say so the way the distribution spec tells
            // clients to fall back ("Listing Referrers": a registry without the API answers
            // 404), so cosign, notation or Ratify then read the `sha256-<hex>` referrers tag
            // through the gate. An empty 200 would tell them there are no signatures at all.
            Err(RegistryError::NotFound) | Err(RegistryError::Status(_, 400 | 405)) => {
                return Err(OciError::Coded(
                    OciCode::NameUnknown,
                    ApiError::NotFound(format!(
                        "the upstream registry has no referrers API; the referrers of {subject} are listed under the tag sha256-{}",
                        subject.sha()
                    )),
                ));
            }
            Err(e) => return Err(registry_error(e, OciCode::NameUnknown)),
        };
        Response::builder()
            .status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.index.v1+json",
            )
            .body(Body::from(body))
            .map_err(|e| ApiError::Internal(e.to_string()).into())
    }

    /// `GET /v2/<name>/tags/list`: the upstream's tags, limited to the rule's allowed tags.
    pub async fn tags(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        repo: &Repository,
        page: &TagPage<'_>,
        client: &Client,
    ) -> Result<Response, OciError> {
        let rule = match Self::rule(lp, repo) {
            Ok(r) => r,
            Err(d) => return Err(self.deny("oci.tags", repo, None, None, d, client).await),
        };
        #[derive(Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        self.audit(
            "oci.tags",
            repo,
            None,
            None,
            Ok(("repository_rule", rule)),
            client,
        )
        .await;
        let resp = reg
            .tags(&repo.path, page.n, page.last.map(Tag::as_str))
            .await
            .map_err(|e| registry_error(e, OciCode::NameUnknown))?;
        // The upstream's next page, re-addressed to this gate (its Link names the upstream path).
        let next_last = resp
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_page_last);
        let body = read_upstream(resp, self.manifest_bytes, "tag list").await?;
        let list: TagList = serde_json::from_slice(&body).map_err(|_| {
            OciError::Coded(
                OciCode::Unavailable,
                ApiError::BadUpstream("tag list is not JSON".into()),
            )
        })?;
        let tags: Vec<String> = list
            .tags
            .unwrap_or_default()
            .into_iter()
            .filter(|t| {
                Tag::parse(t).is_ok_and(|t| {
                    rule.tags
                        .as_ref()
                        .is_none_or(|allowed| allowed.contains(&t))
                })
            })
            .collect();
        let json = serde_json::json!({ "name": format!("{}", repo.path), "tags": tags });
        let mut b = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(last) = next_last {
            let n = page.n.map(|n| format!("n={n}&")).unwrap_or_default();
            let ns = page.ns.map(|ns| format!("&ns={ns}")).unwrap_or_default();
            b = b.header(
                header::LINK,
                format!(
                    "</v2/{}/tags/list?{n}last={last}{ns}>; rel=\"next\"",
                    page.name
                ),
            );
        }
        b.body(Body::from(json.to_string()))
            .map_err(|e| ApiError::Internal(e.to_string()).into())
    }
}

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
