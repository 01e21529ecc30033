//! The configuration file as written (TOML, unknown keys refused), before validation.

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) oidc: Option<RawOidc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) jwks: String,
    pub(super) role_claim: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<String>,
    pub(super) data_dir: Option<String>,
    pub(super) allowlist_dir: Option<String>,
    pub(super) public_url: Option<String>,
    pub(super) cache_max_bytes: Option<String>,
    pub(super) cache_scrub_rate: Option<String>,
    pub(super) limits: Option<RawLimits>,
    pub(super) tls: Option<RawTls>,
    pub(super) admission: Option<RawAdmission>,
    pub(super) audit: Option<RawAudit>,
    pub(super) trusted_root: Option<String>,
    pub(super) pypi: Option<RawPypi>,
    pub(super) oci: Option<RawOci>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) store: Option<RawStore>,
    pub(super) cache: Option<RawCache>,
    pub(super) vulnerabilities: Option<super::vulns::RawVulns>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) url: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOci {
    pub(super) trusted_root: Option<String>,
    pub(super) tag_ttl: Option<String>,
    pub(super) default_registry: Option<String>,
    pub(super) require_auth: Option<bool>,
    #[serde(default)]
    pub(super) registry: Vec<RawRegistry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) host: String,
    pub(super) prefix: Option<String>,
    pub(super) url: String,
    pub(super) auth_hosts: Option<Vec<String>>,
    pub(super) redirect_hosts: Option<Vec<String>>,
    pub(super) username: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) client_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) page_bytes: Option<String>,
    pub(super) manifest_bytes: Option<String>,
    pub(super) signatures: Option<u32>,
    pub(super) header_bytes: Option<String>,
    pub(super) admin_body_bytes: Option<String>,
    pub(super) head_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) max_connections: Option<u32>,
    pub(super) per_client_connections: Option<u32>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) min_free_disk: Option<String>,
    pub(super) body_timeout: Option<String>,
}

/// `"key.pub.pem"`, or `{ file = "key.pub.pem", last_seq = 1234 }`: the last checkpoint the
/// retired key signed (from `tollgate audit verify` before the switch).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawPreviousKey {
    File(String),
    Bound { file: String, last_seq: Option<u64> },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) signing_key_env: Option<String>,
    pub(super) signing_key_file: Option<String>,
    #[serde(default)]
    pub(super) previous_public_keys: Vec<RawPreviousKey>,
    pub(super) witness_file: Option<String>,
    pub(super) checkpoint_every: Option<String>,
    pub(super) retention: Option<String>,
    pub(super) max_denials_per_client: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmission {
    pub(super) listen: Option<String>,
    pub(super) client_ca: Option<String>,
    pub(super) token_sha256_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPypi {
    pub(super) wheels_only: Option<bool>,
    pub(super) page_ttl: Option<String>,
    pub(super) upstream_timeout: Option<String>,
    pub(super) max_files_per_page: Option<u32>,
    pub(super) max_pins_per_project: Option<u32>,
    pub(super) prune_pins_after: Option<String>,
    pub(super) max_hash_bytes: Option<String>,
    pub(super) hash_timeout: Option<String>,
    #[serde(default)]
    pub(super) index: Vec<RawIndex>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIndex {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) file_hosts: Option<Vec<String>>,
    pub(super) username: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) upload_time: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) client_id: Option<String>,
}
