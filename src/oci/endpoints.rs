//! The distribution API's pull endpoints: manifests, blobs, referrers and tag lists, each
//! decided before anything is fetched and served only as verified bytes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::client::{RegistryClient, RegistryError};
use super::documents::{artifact_subject, is_cosign_artifact, manifest_media_type, next_page_last};
use super::links::{BlobRef, ManifestRecord};
use super::service::{key, lock, read_upstream, registry_error, Oci};
use super::{ARTIFACT_BLOBS, BLOBREFS, MANIFESTS};
use crate::audit::AuditEvent;
use crate::error::{ApiError, OciCode, OciError};
use crate::fetch::{Failure, Job};
use crate::policy::oci::ImageAllowed;
use crate::policy::oci::{check_tag, Digest, ImageDeny, Repository, Tag};
use crate::policy::Sha256;

pub(super) static DOCKER_CONTENT_DIGEST: HeaderName =
    HeaderName::from_static("docker-content-digest");

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

impl Oci {
    /// `GET/HEAD /v2/<name>/manifests/<reference>`.
    pub async fn manifest(
        &self,
        ask: &crate::Ask<'_>,
        reg: &RegistryClient,
        repo: &Repository,
        reference: Reference,
    ) -> Result<Response, OciError> {
        let (lp, head, client) = (ask.policy, ask.head, ask.client);
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
        let rec = if admitted_as == ImageAllowed::ArtifactOfAdmitted {
            self.fetch_manifest(reg, repo, &digest).await?.0
        } else {
            self.verified_manifest(reg, repo, &digest).await?
        };
        self.audit(
            action,
            repo,
            artifact,
            Some(&digest),
            Ok((admitted_as.reason(), rule)),
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
    pub(super) async fn verified_manifest(
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
    pub(super) async fn fetch_manifest(
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
                if Sha256::of(&bytes) == *digest.sha() {
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
        let actual = Digest(Sha256::of(&bytes));
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

    /// `GET/HEAD /v2/<name>/blobs/<digest>`: only a blob that an admitted manifest of this
    /// repository references, re-decided through that manifest on every request.
    #[allow(clippy::too_many_arguments)]
    pub async fn blob(
        &self,
        ask: &crate::Ask<'_>,
        reg: &Arc<RegistryClient>,
        repo: &Repository,
        digest: Digest,
    ) -> Result<Response, OciError> {
        let (lp, head, headers, client) = (ask.policy, ask.head, ask.headers, ask.client);
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
                        .filter(|k| *k == ImageAllowed::ArtifactOfAdmitted)
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
            Ok((admitted_as.reason(), rule)),
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
            .serve_missing(
                *digest.sha(),
                job,
                headers,
                "application/octet-stream",
                &extra,
            )
            .await?)
    }

    /// `GET /v2/<name>/referrers/<digest>`: answered only for an admitted subject, with the
    /// upstream's index (404 where the registry has no referrers API).
    pub async fn referrers(
        &self,
        ask: &crate::Ask<'_>,
        reg: &RegistryClient,
        repo: &Repository,
        subject: Digest,
    ) -> Result<Response, OciError> {
        let (lp, client) = (ask.policy, ask.client);
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
        ask: &crate::Ask<'_>,
        reg: &RegistryClient,
        repo: &Repository,
        page: &TagPage<'_>,
    ) -> Result<Response, OciError> {
        let (lp, client) = (ask.policy, ask.client);
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
