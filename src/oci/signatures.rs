//! Signature artifacts and their caches: cosign `.sig`/`.att` tags, OCI 1.1 referrers and
//! Sigstore bundles fetched (bounded in bytes, count and time), read as what they claim to
//! be, and judged by `verify` against the rule's signers.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::Deserialize;

use super::client::{RegistryClient, RegistryError};
use super::documents::{
    artifact_config_ok, bundle_artifact, is_index, payload_is, ArtifactTag, ManifestDoc,
    ReferrerDescriptor, ReferrersDoc, MAX_ARTIFACT_CONFIG_BYTES,
};
use super::links::ManifestRecord;
use super::service::{lock, read_upstream, registry_error, Oci};
use crate::error::{ApiError, OciCode, OciError};
use crate::loader::LoadedPolicy;
use crate::policy::oci::ImageAllowed;
use crate::policy::oci::{Digest, Evidence, ImageRule, Repository, Require};
use crate::policy::Sha256;
use crate::store::cache::now_secs;
use crate::verify::cosign::{
    SignatureDeny, SignatureLayer, TrustedKey, DSSE_ENVELOPE, SIMPLE_SIGNING,
};
use crate::verify::sigstore::{
    examine, judge_attestation, judge_signature, Artifact, Trust, BUNDLE_MEDIA_TYPE_PREFIX,
};

/// Bound on cached signature artifacts and verdicts (each a few KiB at most): past it the
/// caches start over rather than grow with every digest a client names.
pub(super) const MAX_CACHED_VERDICTS: usize = 10_000;

pub(super) const MAX_CACHED_SIGNATURE_BYTES: usize = 64 << 20;

/// A signature payload, DSSE envelope or bundle is a few KiB (a bundle with its certificate
/// chain and inclusion proof under 16 KiB); anything far larger is not read.
pub(super) const MAX_ARTIFACT_BYTES: u64 = 256 * 1024;

/// All the signature artifacts of one image together: a real image's are a few KiB to a few
/// hundred; the rest is not read (and the refusal says so).
pub(super) const MAX_SIGNATURE_BYTES_PER_IMAGE: u64 = 4 << 20;

/// Images whose signature artifacts are fetched at once: with the per-image budget, what
/// these fetches hold in memory is bounded, however many clients ask.
pub(super) const MAX_SIGNATURE_FETCHES: usize = 16;

/// An upstream that trickles its signature artifacts is given up on after this long (503).
pub(super) const SIGNATURE_FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Signature artifacts and when they were fetched (Unix seconds).
pub(super) type LayersAt = (Arc<Vec<Artifact>>, i64);

/// A verdict and when it was reached.
pub(super) type VerdictAt = (Verdict, i64);

/// What signatures and attestations say about one digest under one rule.
#[derive(Debug, Clone)]
pub(super) struct Verdict {
    /// `None` when the rule asks for no signature.
    pub(super) signature: Option<Result<Vec<String>, SignatureDeny>>,
    pub(super) attestations: Result<(), SignatureDeny>,
}

impl Verdict {
    fn admits(&self) -> bool {
        self.signature.as_ref().is_none_or(|s| s.is_ok()) && self.attestations.is_ok()
    }
}

impl Oci {
    /// Pinned-ness and, when the rule asks for them, the signature and attestation verdicts of
    /// one digest.
    pub(super) async fn evidence(
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
    pub(super) async fn signature_verdict(
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
    pub(super) async fn signature_artifacts(
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
    pub(super) async fn small_blob(
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
        if Sha256::of(&bytes) != *d.sha() {
            tracing::warn!(%repo, blob = %digest, "signature artifact does not match its digest; ignored");
            return Ok(Err("not the bytes its digest names".into()));
        }
        Ok(Ok(bytes))
    }

    /// A manifest fetched by tag or digest for signature lookup: `None` when absent.
    pub(super) async fn small_manifest(
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
    pub(super) async fn cosign_layers(
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
    pub(super) async fn bundles(
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
            if Sha256::of(&body) != *md.sha() {
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

    /// Admits a signature-artifact manifest of an admitted subject: every payload it names is
    /// read (size-bounded), checked against its digest and parsed as what `kind` promises (a
    /// simple-signing payload, a DSSE envelope, a Sigstore bundle; a config that is empty or
    /// describes exactly those payloads), then cached and recorded as that artifact's payload.
    /// A blob of an image can therefore never be served as a signature. `Ok(Err(why))`: it is
    /// not such an artifact, and nothing was stored.
    pub(super) async fn admit_artifact(
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

    /// A manifest asked for by digest that no rule admits may still be a Sigstore bundle
    /// artifact (cosign v3) of an admitted image: downstream verifiers fetch it by the digest
    /// the referrers list gives. It is fetched (the repository has a rule), and admitted only
    /// if it is exactly a bundle artifact whose `subject` is admitted in this repository.
    pub(super) async fn bundle_of_admitted(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
        by_digest: bool,
    ) -> Result<Option<ImageAllowed>, OciError> {
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
                Ok(Some(ImageAllowed::ArtifactOfAdmitted))
            }
            Err(_) => Ok(None),
        }
    }
}
