//! A package rule's Trusted Publisher (`publisher = { github = "owner/repo", workflow =
//! "release.yml" }`), and whether a verified attestation's certificate names it. Pure: the
//! claims come from `verify::pep740`, which checked the certificate and its log entry.
//!
//! The certificate fields are Fulcio's (docs/oid-info.md), `1.3.6.1.4.1.57264.1.N`:
//! 8 issuer, 9 build signer URI, 12 source repository URI, 13 source repository digest,
//! 14 source repository ref, 18 build config URI, 23 deployment environment. The matching is
//! PyPI's for each kind of Trusted Publisher (pypi-attestations' `_impl.py` policies).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

const ISSUER: u32 = 8;
const BUILD_SIGNER_URI: u32 = 9;
const SOURCE_REPOSITORY_URI: u32 = 12;
const SOURCE_REPOSITORY_DIGEST: u32 = 13;
const SOURCE_REPOSITORY_REF: u32 = 14;
const BUILD_CONFIG_URI: u32 = 18;
const DEPLOYMENT_ENVIRONMENT: u32 = 23;

/// What a verified attestation's certificate says (and what it attests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The certificate's one SAN (URI or e-mail).
    pub identity: String,
    pub issuer: Option<String>,
    /// Fulcio extensions by their last arc.
    pub extensions: BTreeMap<u32, String>,
    pub predicate_type: String,
}

/// What the gate found of a file's provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Evidence {
    /// The claims of each attestation that verified (never empty).
    Verified(Vec<Claims>),
    /// None available, or none verified: why.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publisher {
    /// GitHub Actions: `owner/repo`, the workflow file name in `.github/workflows/`.
    GitHub {
        repository: String,
        workflow: String,
        environment: Option<String>,
    },
    /// GitLab CI/CD: `namespace/project`, the CI file's path in the repository.
    GitLab {
        repository: String,
        workflow: String,
        environment: Option<String>,
    },
    /// Google Cloud: the service account's e-mail.
    Google { email: String },
    /// CircleCI: the project and pipeline definition ids.
    CircleCi {
        project_id: String,
        pipeline_definition_id: String,
    },
}

impl fmt::Display for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env = |e: &Option<String>| {
            e.as_ref()
                .map(|e| format!(", environment {e}"))
                .unwrap_or_default()
        };
        match self {
            Publisher::GitHub {
                repository,
                workflow,
                environment,
            } => write!(
                f,
                "GitHub {repository} workflow {workflow}{}",
                env(environment)
            ),
            Publisher::GitLab {
                repository,
                workflow,
                environment,
            } => write!(
                f,
                "GitLab {repository} workflow {workflow}{}",
                env(environment)
            ),
            Publisher::Google { email } => write!(f, "Google service account {email}"),
            Publisher::CircleCi {
                project_id,
                pipeline_definition_id,
            } => write!(
                f,
                "CircleCI project {project_id} pipeline {pipeline_definition_id}"
            ),
        }
    }
}

/// `publisher = { … }` as written in an allowlist file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublisher {
    github: Option<String>,
    gitlab: Option<String>,
    google: Option<String>,
    circleci: Option<String>,
    workflow: Option<String>,
    environment: Option<String>,
    pipeline_definition_id: Option<String>,
}

fn repository(kind: &str, r: &str) -> Result<String, String> {
    let r = r.trim().trim_matches('/');
    let ok = r.split('/').count() >= 2
        && r.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if !ok || (kind == "github" && r.split('/').count() != 2) {
        return Err(format!(
            "publisher: {kind} = {r:?} is not an owner/repository name"
        ));
    }
    Ok(r.to_string())
}

fn plain(what: &str, v: &Option<String>) -> Result<String, String> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('@') => {
            Ok(s.to_string())
        }
        Some(s) => Err(format!("publisher: {what} {s:?} is not valid")),
        None => Err(format!("publisher: {what} is required")),
    }
}

impl RawPublisher {
    pub fn parse(&self) -> Result<Publisher, String> {
        let kinds = [
            self.github.is_some(),
            self.gitlab.is_some(),
            self.google.is_some(),
            self.circleci.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(
                "publisher names exactly one of github, gitlab, google and circleci".into(),
            );
        }
        let environment = match self.environment.as_deref().map(str::trim) {
            None => None,
            Some(e) if !e.is_empty() => Some(e.to_string()),
            Some(_) => return Err("publisher: environment is empty".into()),
        };
        let unused = |what: &str, set: bool| {
            if set {
                Err(format!(
                    "publisher: {what} does not apply to this publisher"
                ))
            } else {
                Ok(())
            }
        };
        if let Some(r) = &self.github {
            unused(
                "pipeline_definition_id",
                self.pipeline_definition_id.is_some(),
            )?;
            let workflow = plain("workflow", &self.workflow)?;
            if workflow.contains('/') {
                return Err(format!("publisher: workflow {workflow:?} is a file name in .github/workflows/, without a path"));
            }
            return Ok(Publisher::GitHub {
                repository: repository("github", r)?,
                workflow,
                environment,
            });
        }
        if let Some(r) = &self.gitlab {
            unused(
                "pipeline_definition_id",
                self.pipeline_definition_id.is_some(),
            )?;
            return Ok(Publisher::GitLab {
                repository: repository("gitlab", r)?,
                workflow: plain("workflow", &self.workflow)?
                    .trim_start_matches('/')
                    .to_string(),
                environment,
            });
        }
        unused("workflow", self.workflow.is_some())?;
        unused("environment", environment.is_some())?;
        if let Some(email) = &self.google {
            unused(
                "pipeline_definition_id",
                self.pipeline_definition_id.is_some(),
            )?;
            let email = email.trim();
            if !email.contains('@') || email.contains(char::is_whitespace) {
                return Err(format!(
                    "publisher: google = {email:?} is not a service account e-mail"
                ));
            }
            return Ok(Publisher::Google {
                email: email.to_string(),
            });
        }
        Ok(Publisher::CircleCi {
            project_id: plain("circleci (the project id)", &self.circleci)?,
            pipeline_definition_id: plain("pipeline_definition_id", &self.pipeline_definition_id)?,
        })
    }
}

impl Publisher {
    /// `Ok` when the certificate names this publisher; else what it names instead.
    pub fn admits(&self, c: &Claims) -> Result<(), String> {
        let ext = |n: u32| c.extensions.get(&n).map(String::as_str);
        let issuer = ext(ISSUER).or(c.issuer.as_deref()).unwrap_or("");
        let want_issuer = |want: &str| {
            if issuer == want {
                Ok(())
            } else {
                Err(format!("signed through issuer {issuer:?}, not {want}"))
            }
        };
        let environment = |want: &Option<String>| {
            match (want, ext(DEPLOYMENT_ENVIRONMENT)) {
            (None, _) => Ok(()),
            (Some(w), Some(got)) if got == w => Ok(()),
            (Some(w), Some(got)) => Err(format!("signed from environment {got:?}, not {w:?}")),
            // PyPI's own record of the environment is unauthenticated: a certificate that does
            // not carry it cannot prove it.
            (Some(w), None) => Err(format!(
                "the certificate does not carry a deployment environment, so environment {w:?} cannot be checked"
            )),
        }
        };
        match self {
            // GitHub's build config URI is `<repo>/.github/workflows/<file>@<ref or digest>`;
            // GitLab's `<repo>//<path>@<ref or digest>` (both ref and digest required).
            Publisher::GitHub {
                repository,
                workflow,
                environment: env,
            } => {
                forge(
                    &ext,
                    issuer,
                    (
                        "https://token.actions.githubusercontent.com",
                        "https://github.com",
                    ),
                    repository,
                    &format!("/.github/workflows/{workflow}@"),
                    false,
                )?;
                environment(env)
            }
            Publisher::GitLab {
                repository,
                workflow,
                environment: env,
            } => {
                forge(
                    &ext,
                    issuer,
                    ("https://gitlab.com", "https://gitlab.com"),
                    repository,
                    &format!("//{workflow}@"),
                    true,
                )?;
                environment(env)
            }
            Publisher::Google { email } => {
                want_issuer("https://accounts.google.com")?;
                if c.identity.eq_ignore_ascii_case(email) {
                    Ok(())
                } else {
                    Err(format!("signed by {:?}, not {email}", c.identity))
                }
            }
            Publisher::CircleCi {
                project_id,
                pipeline_definition_id,
            } => {
                want_issuer("https://oidc.circleci.com")?;
                let want = format!(
                    "https://circleci.com/api/v2/projects/{project_id}/pipeline-definitions/{pipeline_definition_id}"
                );
                match ext(BUILD_SIGNER_URI) {
                    Some(got) if got == want => Ok(()),
                    got => Err(format!(
                        "signed by pipeline {:?}, not {want}",
                        got.unwrap_or("")
                    )),
                }
            }
        }
    }
}

impl Publisher {
    /// The Trusted Publisher a verified certificate names, read back from its claims (for
    /// `allowlist import --publisher-from-provenance`); `None` for an identity that is not a
    /// Trusted Publisher (a person, another CI). Whatever it returns admits these claims.
    pub fn from_claims(c: &Claims) -> Option<Publisher> {
        let ext = |n: u32| c.extensions.get(&n).map(String::as_str);
        let issuer = ext(ISSUER).or(c.issuer.as_deref())?;
        let publisher = match issuer {
            "https://token.actions.githubusercontent.com" => {
                let repo = ext(SOURCE_REPOSITORY_URI)?.strip_prefix("https://github.com/")?;
                let rest = ext(BUILD_CONFIG_URI)?
                    .strip_prefix(&format!("https://github.com/{repo}/.github/workflows/"))?;
                Publisher::GitHub {
                    repository: repo.to_string(),
                    workflow: rest.split_once('@')?.0.to_string(),
                    environment: ext(DEPLOYMENT_ENVIRONMENT).map(str::to_string),
                }
            }
            "https://gitlab.com" => {
                let repo = ext(SOURCE_REPOSITORY_URI)?.strip_prefix("https://gitlab.com/")?;
                let rest =
                    ext(BUILD_CONFIG_URI)?.strip_prefix(&format!("https://gitlab.com/{repo}//"))?;
                Publisher::GitLab {
                    repository: repo.to_string(),
                    workflow: rest.rsplit_once('@')?.0.to_string(),
                    environment: ext(DEPLOYMENT_ENVIRONMENT).map(str::to_string),
                }
            }
            "https://accounts.google.com" => Publisher::Google {
                email: c.identity.clone(),
            },
            "https://oidc.circleci.com" => {
                let rest =
                    ext(BUILD_SIGNER_URI)?.strip_prefix("https://circleci.com/api/v2/projects/")?;
                let (project, pipeline) = rest.split_once("/pipeline-definitions/")?;
                Publisher::CircleCi {
                    project_id: project.to_string(),
                    pipeline_definition_id: pipeline.to_string(),
                }
            }
            _ => return None,
        };
        publisher.admits(c).is_ok().then_some(publisher)
    }

    /// The rule's `publisher = { … }`, as an allowlist file writes it.
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let env = |e: &Option<String>| {
            e.as_ref()
                .map(|e| format!(", environment = {}", q(e)))
                .unwrap_or_default()
        };
        match self {
            Publisher::GitHub {
                repository,
                workflow,
                environment,
            } => format!(
                "{{ github = {}, workflow = {}{} }}",
                q(repository),
                q(workflow),
                env(environment)
            ),
            Publisher::GitLab {
                repository,
                workflow,
                environment,
            } => format!(
                "{{ gitlab = {}, workflow = {}{} }}",
                q(repository),
                q(workflow),
                env(environment)
            ),
            Publisher::Google { email } => format!("{{ google = {} }}", q(email)),
            Publisher::CircleCi {
                project_id,
                pipeline_definition_id,
            } => format!(
                "{{ circleci = {}, pipeline_definition_id = {} }}",
                q(project_id),
                q(pipeline_definition_id)
            ),
        }
    }
}

/// A forge's Trusted Publisher: its issuer, the source repository (`<site>/<repository>`, as
/// the forge spells it, case aside), and the build config URI: the repository as the
/// certificate spells it, then `workflow_part`, then the source ref or digest.
fn forge<'a>(
    ext: &dyn Fn(u32) -> Option<&'a str>,
    issuer: &str,
    (want_issuer, site): (&str, &str),
    repository: &str,
    workflow_part: &str,
    both: bool,
) -> Result<(), String> {
    if issuer != want_issuer {
        return Err(format!(
            "signed through issuer {issuer:?}, not {want_issuer}"
        ));
    }
    let repo_uri = format!("{site}/{repository}");
    let got = ext(SOURCE_REPOSITORY_URI).unwrap_or("");
    if !got.eq_ignore_ascii_case(&repo_uri) {
        return Err(format!("signed by repository {got:?}, not {repo_uri}"));
    }
    build_config(
        ext(BUILD_CONFIG_URI),
        &format!("{got}{workflow_part}"),
        ext,
        both,
    )
}

/// The build config URI must be `prefix` followed by the source ref or digest the certificate
/// carries (GitLab: both must be present).
fn build_config<'a>(
    got: Option<&str>,
    prefix: &str,
    ext: &dyn Fn(u32) -> Option<&'a str>,
    both: bool,
) -> Result<(), String> {
    let got = got.unwrap_or("");
    let (r, d) = (ext(SOURCE_REPOSITORY_REF), ext(SOURCE_REPOSITORY_DIGEST));
    if both && (r.is_none() || d.is_none()) {
        return Err("the certificate lacks the source ref or digest".into());
    }
    let ok = [r, d]
        .into_iter()
        .flatten()
        .any(|s| got == format!("{prefix}{s}"));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "built by {got:?}, not {prefix}<the certificate's ref or digest>"
        ))
    }
}
