//! Admission decisions: an image reference decided against the policy in force with its
//! evidence (pin, signatures, attestations), audited, and answered as a typed verification
//! for the verify API, the webhooks and `tollgate image verify`.

use super::client::RegistryClient;
use super::documents::{is_index, ManifestDoc};
use super::service::{denied, key, Oci};
use super::{ARTIFACTS, CHILDREN};
use crate::audit::AuditEvent;
use crate::conn::Client;
use crate::error::{ApiError, OciCode, OciError};
use crate::loader::LoadedPolicy;
use crate::policy::oci::ImageAllowed;
use crate::policy::oci::{
    check_tag, decide_image, rule_for, Digest, Evidence, ImageDeny, ImageRule, Repository, Tag,
};

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

impl Oci {
    pub(super) async fn audit(
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

    pub(super) async fn deny(
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

    pub(super) fn rule<'p>(
        lp: &'p LoadedPolicy,
        repo: &Repository,
    ) -> Result<&'p ImageRule, ImageDeny> {
        rule_for(&lp.policy.images, repo).ok_or_else(|| ImageDeny::NoRule(repo.clone()))
    }

    /// The decision for a manifest digest in this repository now: by its own evidence (pinned,
    /// signed, as the rule's `require` combines them), or through an admitted index that lists
    /// it (the link was recorded when the index was verified). With `per_platform`, a platform
    /// manifest also needs its own signature. `Ok(Err(deny))` is a refusal; `Err` means the
    /// upstream could not be asked (503), never "unsigned".
    pub(super) async fn decide(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Result<Result<ImageAllowed, ImageDeny>, OciError> {
        self.decide_with(lp, reg, rule, repo, digest, tag, true)
            .await
    }

    /// `artifacts`: whether a recorded `.sig`/`.att` link may admit the digest (the pull path
    /// serves signature artifacts; admission never admits one as a runnable image). A link is
    /// followed one hop only: the subject is decided on its own evidence and index.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn decide_with(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
        tag: Option<&Tag>,
        artifacts: bool,
    ) -> Result<Result<ImageAllowed, ImageDeny>, OciError> {
        // The audit's allow reason: what admitted it.
        let kind = |ev: &Evidence| {
            if ev.pinned {
                ImageAllowed::PinnedDigest
            } else {
                ImageAllowed::Signed
            }
        };
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
                        Ok(_) => Ok(ImageAllowed::ArtifactOfAdmitted),
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

    /// The decision for a runnable image: never through a signature-artifact link, and with
    /// `per_platform`, an index only when every platform manifest it lists is admitted too (a
    /// node that pulls past the gate would run one of them).
    pub(super) async fn decide_runnable(
        &self,
        lp: &LoadedPolicy,
        reg: &RegistryClient,
        rule: &ImageRule,
        repo: &Repository,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Result<Result<ImageAllowed, ImageDeny>, OciError> {
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
                    Ok((kind.reason(), rule)),
                    client,
                )
                .await;
                Ok(Verification {
                    image: image.to_string(),
                    allowed: true,
                    repository: Some(repo.to_string()),
                    digest: Some(digest.to_string()),
                    reasons: vec![format!(
                        "admitted by the rule at {} ({})",
                        rule.source,
                        kind.reason()
                    )],
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
}
