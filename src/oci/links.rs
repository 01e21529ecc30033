//! What the pull gate remembers of verified manifests: manifest records, the blobs and
//! children they link (a blob is served only through a manifest that names it), signature
//! artifacts and their payloads, and tag resolutions.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::client::{RegistryClient, RegistryError};
use super::documents::{is_index, ManifestDoc};
use super::endpoints::DOCKER_CONTENT_DIGEST;
use super::service::{key, lock, read_upstream, registry_error, Oci};
use super::{ARTIFACTS, ARTIFACT_BLOBS, BLOBREFS, CHILDREN, MANIFESTS, TAGS};
use crate::error::{ApiError, OciCode, OciError};
use crate::policy::oci::{Digest, ImageRule, Repository, Tag};
use crate::policy::Sha256;
use crate::store::cache::now_secs;

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
    pub(super) fn size_in(&self, manifest: &Digest) -> u64 {
        self.sizes
            .get(&manifest.to_string())
            .copied()
            .unwrap_or(self.size)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TagRecord {
    pub(super) digest: Digest,
    pub(super) resolved_at: i64,
}

impl Oci {
    /// A platform manifest can be pulled by digest before its index ever went through this gate
    /// (a fresh data_dir, a node that pins the child). Verifying the rule's pinned manifests
    /// records which children they list. Returns whether anything new was learned.
    pub(super) async fn learn_pinned_indexes(
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
    pub(super) async fn resolve_tag(
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
                return Ok(c.digest);
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
                    | RegistryError::Tls(..)
                    | RegistryError::Identity(..)
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
                    digest: d,
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
            Err(e) => match cached.map(|c| c.digest) {
                Some(d) => {
                    tracing::warn!(%repo, %tag, error = %e, "upstream down; using the last resolution of the tag");
                    Ok(d)
                }
                None => Err(registry_error(e, OciCode::ManifestUnknown)),
            },
        }
    }

    /// Caches an admitted manifest's bytes and its record.
    pub(super) async fn keep_manifest(
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
    pub(super) async fn cache_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<(), OciError> {
        let cached = self
            .fetcher
            .cache
            .commit_bytes(*digest.sha(), bytes)
            .await
            .map_err(ApiError::from)?;
        if !cached {
            return Err(ApiError::Unavailable("the gate's cache could not keep it".into()).into());
        }
        Ok(())
    }

    /// Records blobs as payloads of the artifact manifest `artifact` (with their sizes).
    pub(super) async fn record_artifact_blobs(
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

    /// Remembers that `artifact` is a signature or attestation artifact of `subject`.
    pub(super) async fn record_artifact(
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

    pub(super) fn links_known(&self, repo: &Repository, digest: &Digest) -> Result<bool, OciError> {
        let marker: Option<bool> = self
            .store
            .get(BLOBREFS, &key(repo, &format!("manifest:{digest}")))
            .map_err(ApiError::from)?;
        Ok(marker.unwrap_or(false))
    }

    /// Persists what a verified manifest vouches for in this repository: an index's children,
    /// an image's config and layers (with their sizes, so a blob is never read past them).
    pub(super) async fn record_links(
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
}
