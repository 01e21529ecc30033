//! The pull gate: resolves a request to a repository and a digest, decides with the pure policy,
//! and serves only verified bytes (manifests checked against their digest, blobs hashed while
//! they stream and cached only on a match).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::client::{RegistryClient, RegistryError};
pub use super::decisions::Verification;
pub use super::endpoints::{Reference, TagPage};
pub use super::links::{BlobRef, ManifestRecord};
use super::signatures::{LayersAt, VerdictAt, MAX_SIGNATURE_FETCHES};
use crate::audit::Audit;
use crate::config::Config;
use crate::error::{ApiError, OciCode, OciError};
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::policy::oci::{Digest, ImageDeny, Repository};
use crate::store::Store;

/// Held while one request fetches an image's signature artifacts.
pub(super) type Flight = Arc<tokio::sync::Mutex<()>>;

pub struct Oci {
    pub(super) registries: Vec<Arc<RegistryClient>>,
    pub(super) default_registry: String,
    pub(super) tag_ttl: i64,
    pub(super) manifest_bytes: u64,
    pub(super) store: Arc<Store>,
    pub(super) fetcher: Arc<Fetcher>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) audit: Audit,
    pub(super) manifests: Mutex<HashMap<Digest, ManifestRecord>>,
    /// Serialises the read-modify-write of link records, so two manifests verified at once
    /// cannot drop each other's links to a shared layer or child.
    pub(super) links_lock: tokio::sync::Mutex<()>,
    pub(super) max_signatures: usize,
    /// Signature layers found per (repository, image digest), with when they were fetched.
    /// Found layers are kept (a policy change re-decides without the upstream); "none found"
    /// is asked again after `tag_ttl`, so an image signed after a refused pull is admitted soon.
    pub(super) sig_layers: Mutex<HashMap<(Repository, Digest), LayersAt>>,
    /// Signature verdicts per (repository, digest, policy version); refusals for `tag_ttl` only.
    pub(super) sig_verdicts: Mutex<HashMap<(Repository, Digest, u64), VerdictAt>>,
    /// One fetch of an image's signature artifacts at a time, per (repository, digest).
    pub(super) sig_flights: Mutex<HashMap<(Repository, Digest), Flight>>,
    /// Slots for fetching signature artifacts (`MAX_SIGNATURE_FETCHES`).
    pub(super) sig_fetches: tokio::sync::Semaphore,
}

/// A refusal by the policy, as the pull gate answers it.
pub(super) fn denied(reason: &ImageDeny) -> OciError {
    OciError::Coded(OciCode::Denied, ApiError::Denied(reason.to_string()))
}

pub(super) fn registry_error(e: RegistryError, what: OciCode) -> OciError {
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
        e @ RegistryError::Tls(..) => {
            OciError::Coded(OciCode::Unavailable, ApiError::BadUpstream(e.to_string()))
        }
        e => OciError::Coded(OciCode::Unavailable, ApiError::Unavailable(e.to_string())),
    }
}

pub(crate) use crate::sync::lock;

pub(super) fn key(repo: &Repository, item: &str) -> String {
    format!("{repo}|{item}")
}

/// Reads an upstream body within `limit`: too large is the upstream's fault (502), a broken
/// transfer is the upstream being unavailable (503).
pub(super) async fn read_upstream(
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

impl Oci {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        fetcher: Arc<Fetcher>,
        metrics: Arc<Metrics>,
        audit: Audit,
    ) -> Result<Oci, String> {
        store.ensure(&super::TABLES).map_err(|e| e.to_string())?;
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
}
