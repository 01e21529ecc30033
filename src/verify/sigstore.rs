//! Verification of everything an image's signers published, in two pure steps:
//!
//! 1. [`examine`] authenticates each artifact (legacy `.sig` layers, legacy `.att` DSSE layers,
//!    Sigstore bundles) against the trusted keys and the trusted root and says who signed what
//!    (a [`Finding`]). The Sigstore checks are sigstore-verify's, the Sigstore project's own
//!    verifier: for keyless material the certificate chain to a Fulcio CA of the trusted root,
//!    its SCT, the transparency-log entries (SET, inclusion proof and signed checkpoint, Rekor
//!    v1 and v2), RFC 3161 timestamps, the certificate's validity at every verified time, the
//!    signature under the certificate's key, and the entry's consistency with this signature,
//!    certificate and artifact. Legacy layers are first rewritten as the v0.1 bundles they are
//!    (`legacy.rs`). Keyless verification uses the library's "any identity" policy: the
//!    identity is tollgate's to match, in step 2, and nothing admits without that step.
//! 2. [`judge_signature`] and [`judge_attestation`] apply a rule: the claim must be about this
//!    digest (and, for a legacy payload, this repository), the signer one the rule trusts, and
//!    the distinct signers at least the threshold. No artifact, no key or no identity never
//!    passes.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde_json::Value;
use sigstore_verify::types::{Bundle, SignatureContent};

use super::bundle::{authenticate, cut, is_keyless, Input};
use super::cosign::{
    Payload, SignatureDeny, SignatureLayer, TrustedKey, DSSE_ENVELOPE, SIGNATURE_ANNOTATION,
    SIGNATURE_TYPE, SIMPLE_SIGNING,
};
use super::dsse::{statement, Statement};
use super::keys::Hash;
use super::legacy;
use super::trust::TrustRoot;
use crate::policy::oci::{
    reference_repository, AttestationRule, Digest, KeylessIdentity, Repository,
};

/// The predicate type of a cosign v3 image signature (a DSSE statement about the digest).
pub const COSIGN_SIGN_V1: &str = "https://sigstore.dev/cosign/sign/v1";
/// Sigstore bundle media types: `application/vnd.dev.sigstore.bundle+json;version=0.x` and
/// `application/vnd.dev.sigstore.bundle.v0.3+json` (which versions are known is
/// sigstore-verify's to say).
pub const BUNDLE_MEDIA_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";

/// One artifact found for an image.
#[derive(Debug, Clone)]
pub enum Artifact {
    /// A layer of the `.sig` artifact.
    Signature(SignatureLayer),
    /// A layer of the `.att` artifact: the DSSE envelope's JSON as its payload.
    Attestation(SignatureLayer),
    /// A Sigstore bundle's JSON (a referrer, or listed under the `sha256-<hex>` tag).
    Bundle(Vec<u8>),
    /// An artifact the gate did not read (too large, over the image's budget, past `[limits]
    /// signatures`, not the bytes its digest names): named in a refusal, and never read as
    /// "unsigned" when it may have been a signature.
    Unreadable { signature: bool, why: String },
}

impl Artifact {
    pub fn size(&self) -> usize {
        match self {
            Artifact::Signature(l) | Artifact::Attestation(l) => {
                l.payload.len() + l.annotations.values().map(String::len).sum::<usize>()
            }
            Artifact::Bundle(b) => b.len(),
            Artifact::Unreadable { why, .. } => why.len(),
        }
    }
}

/// What verification may rely on: the keys the rule names, and the trusted root for keyless
/// material and log entries (without one, certificates are not trusted at all).
pub struct Trust<'a> {
    pub keys: &'a [&'a TrustedKey],
    pub root: Option<&'a TrustRoot>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    Key {
        name: String,
        fingerprint: [u8; 32],
    },
    Cert {
        identities: Vec<String>,
        issuer: Option<String>,
    },
}

impl Signer {
    fn describe(&self) -> String {
        match self {
            Signer::Key { name, .. } => format!("key {name}"),
            Signer::Cert { identities, issuer } => format!(
                "{} from {}",
                identities.join(", "),
                issuer.as_deref().unwrap_or("an unnamed issuer")
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A legacy simple-signing payload.
    Simple { reference: String, digest: String },
    /// An in-toto statement (a v3 signature or an attestation).
    Statement(Statement),
}

/// An authentic claim and who made it.
#[derive(Debug, Clone)]
pub struct Finding {
    pub signer: Signer,
    pub claim: Claim,
    /// A transparency-log entry of this signature verified against the trusted root (always,
    /// for a certificate; for a key, only when one came with it and a root lists its log).
    pub logged: bool,
}

#[derive(Debug, Default)]
pub struct Examined {
    pub findings: Vec<Finding>,
    /// Signature artifacts seen (legacy layers and v3 signature bundles).
    pub signatures: usize,
    /// Signature artifacts no trusted key or certificate verified.
    pub unverified_signatures: usize,
    /// Bundles (and other artifacts) that could not be read at all: each may have been a
    /// signature.
    pub unreadable_bundles: usize,
    /// Statements whose signature nothing trusted verified (for "present, but untrusted").
    pub unverified_statements: Vec<Statement>,
    /// Why material was refused, one line each.
    pub problems: BTreeSet<String>,
}

/// Standard base64, line-wrapped or not (some signers wrap at 76 columns, RFC 2045 §6.8).
fn b64(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Where a signature and its Sigstore material came from.
enum Source<'a> {
    /// A legacy `.sig`/`.att` layer: rewritten as a v0.1 bundle when one is needed.
    Legacy {
        content: legacy::Content<'a>,
        annotations: &'a BTreeMap<String, String>,
    },
    /// A published bundle.
    Bundle(Bundle),
}

/// One signed claim, ready to be checked.
struct Signed<'a> {
    claim: Claim,
    /// The bytes the signature covers (a payload, or a DSSE envelope's PAE) and the signature.
    message: Vec<u8>,
    sig: Vec<u8>,
    /// What sigstore-verify binds the bundle to.
    input: Input<'a>,
    source: Source<'a>,
}

impl Signed<'_> {
    fn has_certificate(&self) -> bool {
        match &self.source {
            Source::Legacy { annotations, .. } => legacy::has_certificate(annotations),
            Source::Bundle(b) => is_keyless(b),
        }
    }

    fn has_log_entry(&self) -> bool {
        match &self.source {
            Source::Legacy { annotations, .. } => legacy::has_log_entry(annotations),
            Source::Bundle(b) => !b.verification_material.tlog_entries.is_empty(),
        }
    }

    /// The keyless bundle: the certificate with the log entries and timestamps.
    fn keyless_bundle(&self) -> Result<std::borrow::Cow<'_, Bundle>, String> {
        match &self.source {
            Source::Legacy {
                content,
                annotations,
            } => legacy::bundle(*content, annotations, legacy::Material::Certificate)
                .map(std::borrow::Cow::Owned)
                .map_err(String::from),
            Source::Bundle(b) => Ok(std::borrow::Cow::Borrowed(b)),
        }
    }

    /// The bundle naming a key (for its log entries to be checked with it): `None` when the
    /// entries record a certificate, which sigstore-verify cannot bind to a key.
    fn key_bundle(&self, hash: Hash) -> Option<Result<std::borrow::Cow<'_, Bundle>, String>> {
        if self.has_certificate() {
            return None;
        }
        Some(match &self.source {
            Source::Legacy {
                content,
                annotations,
            } => legacy::bundle(*content, annotations, legacy::Material::Key(hash))
                .map(std::borrow::Cow::Owned)
                .map_err(String::from),
            Source::Bundle(b) => Ok(std::borrow::Cow::Borrowed(b)),
        })
    }
}

struct Collector<'a> {
    trust: &'a Trust<'a>,
    out: Examined,
}

impl Collector<'_> {
    /// Checks one signature with every trusted key and, when it carries a certificate, as
    /// keyless material; records findings and returns whether anything trusted verified it.
    fn verify_one(&mut self, s: &Signed<'_>) -> bool {
        let mut any = false;
        // Any signature may be a key's, certificate-bearing ones included (a KMS or private-PKI
        // key with its certificate attached): the keys are tried on all of them.
        for k in self.trust.keys {
            let Some(hash) = k.key.verifying_hash(&s.message, &s.sig) else {
                continue;
            };
            // A log entry that came with a key signature is verified too, when the trusted
            // root lists a log to check it against; `logged` says it was.
            let mut logged = false;
            if let (true, Some(root)) = (s.has_log_entry(), self.trust.root) {
                if root.has_logs() {
                    if let Some(b) = s.key_bundle(hash) {
                        match b.and_then(|b| authenticate(root, &b, s.input, Some(&k.key))) {
                            Ok(_) => logged = true,
                            Err(e) => {
                                self.out.problems.insert(format!(
                                    "signed by key {}, but its transparency-log entry does not verify: {e}",
                                    k.name
                                ));
                                continue;
                            }
                        }
                    }
                }
            }
            any = true;
            self.out.findings.push(Finding {
                signer: Signer::Key {
                    name: k.name.clone(),
                    fingerprint: k.fingerprint,
                },
                claim: s.claim.clone(),
                logged,
            });
        }
        if !s.has_certificate() {
            return any;
        }
        let checked = match self.trust.root {
            None => {
                Err("certificate-signed, but no trusted root is configured (trusted_root)".into())
            }
            Some(root) => s
                .keyless_bundle()
                .and_then(|b| authenticate(root, &b, s.input, None)),
        };
        match checked {
            Ok(Some((identity, issuer))) => {
                self.out.findings.push(Finding {
                    signer: Signer::Cert {
                        identities: vec![identity],
                        issuer,
                    },
                    claim: s.claim.clone(),
                    logged: true,
                });
                true
            }
            Ok(None) => any,
            // A key already vouched for it: the certificate's failure is not the story.
            Err(_) if any => true,
            Err(e) => {
                self.out.problems.insert(e);
                false
            }
        }
    }

    fn legacy_signature(&mut self, layer: &SignatureLayer) {
        // Another media type is another attachment, not a signature.
        if layer.media_type != SIMPLE_SIGNING {
            return;
        }
        // A simple-signing layer is a signature, even a broken one: never "unsigned".
        self.out.signatures += 1;
        let Some(sig) = layer
            .annotations
            .get(SIGNATURE_ANNOTATION)
            .and_then(|s| b64(s))
        else {
            self.out.unverified_signatures += 1;
            self.out.problems.insert(
                "a signature layer carries no base64 signature (dev.cosignproject.cosign/signature)"
                    .into(),
            );
            return;
        };
        let claim = match serde_json::from_slice::<Payload>(&layer.payload) {
            Ok(p) if p.critical.kind == SIGNATURE_TYPE => Claim::Simple {
                reference: p.critical.identity.docker_reference,
                digest: p.critical.image.docker_manifest_digest,
            },
            _ => {
                self.out.unverified_signatures += 1;
                self.out
                    .problems
                    .insert("a signature payload is not a cosign simple-signing payload".into());
                return;
            }
        };
        let signed = Signed {
            claim,
            message: layer.payload.clone(),
            input: Input::Bytes(&layer.payload),
            source: Source::Legacy {
                content: legacy::Content::Message {
                    payload: &layer.payload,
                    sig: &sig,
                },
                annotations: &layer.annotations,
            },
            sig: sig.clone(),
        };
        if !self.verify_one(&signed) {
            self.out.unverified_signatures += 1;
        }
    }

    /// A DSSE envelope's statement with its signature; counted as a v3 signature when its
    /// predicate is cosign's.
    fn statement(
        &mut self,
        st: Statement,
        payload_type: &str,
        payload: &[u8],
        sig: Vec<u8>,
        source: Source<'_>,
    ) {
        let is_signature = st.predicate_type == COSIGN_SIGN_V1;
        if is_signature {
            self.out.signatures += 1;
        }
        // The library binds the envelope to one of its statement's own subjects; whether that
        // subject is this image is the rule's question (judge_*), so a statement about another
        // image is reported as such rather than as a broken signature.
        let subject = st
            .subjects
            .first()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok());
        let Some(subject) = subject else {
            self.out
                .problems
                .insert("an in-toto statement names no sha256 subject".into());
            if is_signature {
                self.out.unverified_signatures += 1;
            }
            return;
        };
        let signed = Signed {
            claim: Claim::Statement(st.clone()),
            message: sigstore_verify::types::dsse::pae(payload_type, payload),
            sig,
            input: Input::Sha256(subject),
            source,
        };
        if !self.verify_one(&signed) {
            if is_signature {
                self.out.unverified_signatures += 1;
            }
            self.out.unverified_statements.push(st);
        }
    }

    fn legacy_attestation(&mut self, layer: &SignatureLayer) {
        if layer.media_type != DSSE_ENVELOPE {
            return;
        }
        let parsed = serde_json::from_slice::<Value>(&layer.payload)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                serde_json::from_value::<sigstore_verify::types::DsseEnvelope>(v.clone())
                    .map(|env| (v, env))
                    .map_err(|e| e.to_string())
            })
            .and_then(|(v, env)| {
                statement(&env.payload_type, env.payload.as_bytes())
                    .map(|st| (v, env, st))
                    .map_err(String::from)
            });
        let (json, env, st) = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.out.problems.insert(format!(
                    "an attestation layer is not a DSSE in-toto envelope: {}",
                    cut(&e)
                ));
                return;
            }
        };
        self.statement(
            st,
            &env.payload_type,
            env.payload.as_bytes(),
            env.signature.sig.as_bytes().to_vec(),
            Source::Legacy {
                content: legacy::Content::Dsse(&json),
                annotations: &layer.annotations,
            },
        );
    }

    fn bundle(&mut self, bytes: &[u8]) {
        let parsed = std::str::from_utf8(bytes)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(|t| Bundle::from_json(t).map_err(|e| e.to_string()));
        let bundle = match parsed {
            Ok(b) => b,
            Err(e) => {
                // Unread, it may have been the signature: named, never "unsigned".
                self.out.unreadable_bundles += 1;
                self.out
                    .problems
                    .insert(format!("a bundle cannot be read: {}", cut(&e)));
                return;
            }
        };
        // A message signature signs a blob (an SBOM, a file), never an image: not counted.
        let SignatureContent::DsseEnvelope(env) = &bundle.content else {
            self.out.problems.insert(
                "a bundle signs no in-toto statement (a message signature binds no image)".into(),
            );
            return;
        };
        let (payload_type, payload, sig) = (
            env.payload_type.clone(),
            env.payload.as_bytes().to_vec(),
            env.signature.sig.as_bytes().to_vec(),
        );
        let st = match statement(&payload_type, &payload) {
            Ok(st) => st,
            Err(e) => {
                self.out.unreadable_bundles += 1;
                self.out
                    .problems
                    .insert(format!("a bundle's envelope: {}", cut(&e.to_string())));
                return;
            }
        };
        self.statement(st, &payload_type, &payload, sig, Source::Bundle(bundle));
    }
}

/// Authenticates every artifact. Never fails: what cannot be verified is counted and described.
pub fn examine(artifacts: &[Artifact], trust: &Trust) -> Examined {
    let mut c = Collector {
        trust,
        out: Examined::default(),
    };
    for a in artifacts {
        match a {
            Artifact::Signature(l) => c.legacy_signature(l),
            Artifact::Attestation(l) => c.legacy_attestation(l),
            Artifact::Bundle(b) => c.bundle(b),
            Artifact::Unreadable { signature, why } => {
                if *signature {
                    c.out.unreadable_bundles += 1;
                }
                c.out.problems.insert(why.clone());
            }
        }
    }
    c.out
}

/// Kuhn's augmenting paths: the most keyless entries that distinct certificate identities can
/// each satisfy (one signer never counts for two entries, and two entries never for one signer).
fn keyless_matching(
    entries: &[KeylessIdentity],
    ids: &[(Vec<String>, Option<String>)],
) -> Vec<usize> {
    fn assign(
        id: usize,
        entries: &[KeylessIdentity],
        ids: &[(Vec<String>, Option<String>)],
        seen: &mut [bool],
        owner: &mut [Option<usize>],
    ) -> bool {
        for e in 0..entries.len() {
            if seen[e] || !entries[e].matches(&ids[id].0, ids[id].1.as_deref()) {
                continue;
            }
            seen[e] = true;
            if owner[e].is_none_or(|other| assign(other, entries, ids, seen, owner)) {
                owner[e] = Some(id);
                return true;
            }
        }
        false
    }
    let mut owner = vec![None; entries.len()];
    for id in 0..ids.len() {
        let mut seen = vec![false; entries.len()];
        assign(id, entries, ids, &mut seen, &mut owner);
    }
    owner.into_iter().flatten().collect()
}

fn unverified_note(count: usize) -> Option<String> {
    (count > 0)
        .then(|| format!("{count} signature(s) by an unknown key or an untrusted certificate"))
}

/// Applies `[image.signature]`: returns the distinct trusted signers of `digest`, when at least
/// `threshold` (never less than one) signed a claim about it (and, for legacy payloads, about
/// the repository `wanted`).
pub fn judge_signature(
    ex: &Examined,
    digest: &Digest,
    wanted: &Repository,
    keys: &[&TrustedKey],
    keyless: &[KeylessIdentity],
    threshold: usize,
    require_tlog: bool,
) -> Result<Vec<String>, SignatureDeny> {
    let hex = digest.sha().to_string();
    let mut by_key: BTreeMap<[u8; 32], String> = BTreeMap::new();
    let mut certs: Vec<(Vec<String>, Option<String>)> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    let mut specific: Option<SignatureDeny> = None;
    for f in &ex.findings {
        // Only a signer the rule trusts gets to say what its signature is about: an
        // untrusted signature naming another repository or image is "no trusted signer",
        // never a reason of the attacker's choosing.
        let trusted_key = match &f.signer {
            Signer::Key { fingerprint, .. } => keys.iter().find(|k| k.fingerprint == *fingerprint),
            Signer::Cert { .. } => None,
        };
        let trusted = match &f.signer {
            Signer::Key { .. } => trusted_key.is_some(),
            Signer::Cert { identities, issuer } => keyless
                .iter()
                .any(|k| k.matches(identities, issuer.as_deref())),
        };
        match &f.claim {
            // An attestation is not a signature of the image.
            Claim::Statement(st) if st.predicate_type != COSIGN_SIGN_V1 => continue,
            _ if !trusted => {
                found.push(f.signer.describe());
                continue;
            }
            Claim::Simple {
                reference,
                digest: d,
            } => {
                if Digest::parse(d).ok().as_ref() != Some(digest) {
                    specific.get_or_insert(SignatureDeny::OtherDigest { signed: d.clone() });
                    continue;
                }
                match reference_repository(reference) {
                    Ok(r) if &r == wanted => {}
                    _ => {
                        specific.get_or_insert(SignatureDeny::OtherRepository {
                            signed: reference.clone(),
                            wanted: wanted.to_string(),
                        });
                        continue;
                    }
                }
            }
            Claim::Statement(st) => {
                if !st.subjects.contains(&hex) {
                    specific.get_or_insert(SignatureDeny::OtherDigest {
                        signed: st
                            .subjects
                            .iter()
                            .map(|s| format!("sha256:{s}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                    continue;
                }
            }
        }
        match (&f.signer, trusted_key) {
            (Signer::Key { .. }, Some(k)) if require_tlog && !f.logged => found.push(format!(
                "key {} without a verified transparency-log entry (the rule requires one)",
                k.name
            )),
            (Signer::Key { fingerprint, .. }, Some(k)) => {
                by_key.insert(*fingerprint, k.name.clone());
            }
            (Signer::Key { .. }, None) => found.push(f.signer.describe()),
            (Signer::Cert { identities, issuer }, _) => {
                let id = (identities.clone(), issuer.clone());
                if !certs.contains(&id) {
                    certs.push(id);
                }
            }
        }
    }
    let matched = keyless_matching(keyless, &certs);
    let mut signers: Vec<String> = by_key.into_values().collect();
    signers.extend(matched.iter().map(|&i| {
        Signer::Cert {
            identities: certs[i].0.clone(),
            issuer: certs[i].1.clone(),
        }
        .describe()
    }));
    let need = threshold.max(1);
    if !signers.is_empty() && signers.len() >= need {
        return Ok(signers);
    }
    if !signers.is_empty() {
        return Err(SignatureDeny::Threshold { signers, need });
    }
    // "unsigned" only when nothing could have been a signature: a bundle that failed to
    // read is named in the refusal instead.
    if ex.signatures == 0 && ex.unreadable_bundles == 0 {
        return Err(SignatureDeny::Unsigned);
    }
    if let Some(s) = specific {
        return Err(s);
    }
    found.sort();
    found.dedup();
    found.extend(unverified_note(ex.unverified_signatures));
    found.extend(ex.problems.iter().cloned());
    Err(SignatureDeny::Untrusted { found })
}

/// Applies one `[[image.attestation]]`: a statement of its predicate type about `digest`,
/// signed by one of its signers. Returns that signer.
pub fn judge_attestation(
    ex: &Examined,
    digest: &Digest,
    rule: &AttestationRule,
    keys: &[&TrustedKey],
) -> Result<String, SignatureDeny> {
    let hex = digest.sha().to_string();
    let about =
        |st: &Statement| st.predicate_type == rule.predicate_type && st.subjects.contains(&hex);
    let mut found = Vec::new();
    for f in &ex.findings {
        let Claim::Statement(st) = &f.claim else {
            continue;
        };
        if !about(st) {
            continue;
        }
        let trusted = match &f.signer {
            Signer::Key { fingerprint, .. } => keys.iter().any(|k| k.fingerprint == *fingerprint),
            Signer::Cert { identities, issuer } => rule
                .keyless
                .iter()
                .any(|k| k.matches(identities, issuer.as_deref())),
        };
        if trusted && rule.require_tlog && !f.logged {
            found.push(format!(
                "{} without a verified transparency-log entry (the rule requires one)",
                f.signer.describe()
            ));
            continue;
        }
        if trusted {
            return Ok(f.signer.describe());
        }
        found.push(f.signer.describe());
    }
    let unverified = ex
        .unverified_statements
        .iter()
        .filter(|st| about(st))
        .count();
    if found.is_empty() && unverified == 0 {
        return Err(SignatureDeny::AttestationMissing {
            predicate_type: rule.predicate_type.clone(),
        });
    }
    found.sort();
    found.dedup();
    found.extend(
        (unverified > 0)
            .then(|| format!("{unverified} by an unknown key or an untrusted certificate")),
    );
    found.extend(ex.problems.iter().cloned());
    Err(SignatureDeny::AttestationUntrusted {
        predicate_type: rule.predicate_type.clone(),
        found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::oci::SubjectMatch;

    fn id(subject: &str) -> KeylessIdentity {
        KeylessIdentity {
            issuer: "https://issuer".into(),
            subject: SubjectMatch::Exact(subject.into()),
        }
    }

    #[test]
    fn one_certificate_never_counts_for_two_entries() {
        let issuer = Some("https://issuer".to_string());
        let a = (vec!["a".to_string()], issuer.clone());
        let b = (vec!["b".to_string()], issuer.clone());
        let any = KeylessIdentity::new_regex("https://issuer", "a|b").unwrap();
        // Two entries both satisfied by a only: one signer.
        assert_eq!(
            keyless_matching(&[id("a"), any.clone()], std::slice::from_ref(&a)).len(),
            1
        );
        // a and b, entries [a|b, a]: a→"a", b→"a|b" — two signers (needs an augmenting path).
        assert_eq!(
            keyless_matching(&[any.clone(), id("a")], &[a.clone(), b.clone()]).len(),
            2
        );
        // Wrong issuer: nothing.
        let other = (vec!["a".to_string()], Some("https://other".to_string()));
        assert!(keyless_matching(&[id("a")], &[other]).is_empty());
        assert!(keyless_matching(&[], &[a]).is_empty());
    }

    #[test]
    fn nothing_found_is_unsigned_and_junk_is_named() {
        let repo = Repository::parse("registry.example/a").unwrap();
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let none = Trust {
            keys: &[],
            root: None,
        };
        let ex = examine(&[], &none);
        assert_eq!(
            judge_signature(&ex, &d, &repo, &[], &[id("a")], 1, false),
            Err(SignatureDeny::Unsigned)
        );
        // A bundle that cannot be read may have been the signature: its reason is given, not
        // "unsigned".
        let ex = examine(&[Artifact::Bundle(b"{}".to_vec())], &none);
        assert_eq!(ex.signatures, 0);
        let refused = judge_signature(&ex, &d, &repo, &[], &[id("a")], 1, false).unwrap_err();
        assert_eq!(refused.code(), "untrusted_signer");
        assert!(
            refused.to_string().contains("a bundle cannot be read"),
            "{refused}"
        );
        let rule = AttestationRule {
            predicate_type: "https://slsa.dev/provenance/v1".into(),
            keys: vec![],
            keyless: vec![id("a")],
            require_tlog: false,
        };
        assert_eq!(
            judge_attestation(&ex, &d, &rule, &[]).map_err(|e| e.code()),
            Err("attestation_missing")
        );
    }
}
