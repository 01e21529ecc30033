//! Verification of everything an image's signers published, in two pure steps:
//!
//! 1. [`examine`] authenticates each artifact (legacy `.sig` layers, legacy `.att` DSSE layers,
//!    Sigstore bundles) against the trusted keys and the trusted root and says who signed what
//!    (a [`Finding`]). Keyless material must carry a Rekor entry whose SET verifies with a log
//!    key of the trusted root; the certificate must chain to one of its CAs and be valid at the
//!    entry's integrated time; the signature must verify with the certificate's key; and the
//!    entry must record this very signature, certificate and payload. sigstore 0.15 leaves the
//!    last two to its caller (ARCHITECTURE.md), so a real certificate and Rekor entry copied
//!    from another signing never pass here.
//! 2. [`judge_signature`] and [`judge_attestation`] apply a rule: the claim must be about this
//!    digest (and, for a legacy payload, this repository), the signer one the rule trusts, and
//!    the distinct signers at least the threshold. No artifact, no key or no identity never
//!    passes.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde_json::Value;

use super::cosign::{
    Payload, SignatureDeny, SignatureLayer, TrustedKey, BUNDLE_ANNOTATION, CERTIFICATE_ANNOTATION,
    CHAIN_ANNOTATION, DSSE_ENVELOPE, SIGNATURE_ANNOTATION, SIGNATURE_TYPE, SIMPLE_SIGNING,
};
use super::dsse::{statement, Envelope, Statement};
use super::rekor::{check_binding, Entry, Signed};
use super::trust::TrustRoot;
use super::x509::{verify_chain, verify_sct, Cert};
use crate::policy::oci::{
    reference_repository, AttestationRule, Digest, KeylessIdentity, Repository,
};

/// The predicate type of a cosign v3 image signature (a DSSE statement about the digest).
pub const COSIGN_SIGN_V1: &str = "https://sigstore.dev/cosign/sign/v1";
/// Sigstore bundle media types: `application/vnd.dev.sigstore.bundle+json;version=0.x` and
/// `application/vnd.dev.sigstore.bundle.v0.3+json`.
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
}

impl Artifact {
    pub fn size(&self) -> usize {
        match self {
            Artifact::Signature(l) | Artifact::Attestation(l) => {
                l.payload.len() + l.annotations.values().map(String::len).sum::<usize>()
            }
            Artifact::Bundle(b) => b.len(),
        }
    }
}

/// What verification may rely on: the keys the rule names, and the trusted root for keyless
/// material (without one, certificates are not trusted at all).
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
}

#[derive(Debug, Default)]
pub struct Examined {
    pub findings: Vec<Finding>,
    /// Signature artifacts seen (legacy layers and v3 signature bundles).
    pub signatures: usize,
    /// Signature artifacts no trusted key or certificate verified.
    pub unverified_signatures: usize,
    /// Statements whose signature nothing trusted verified (for "present, but untrusted").
    pub unverified_statements: Vec<Statement>,
    /// Why keyless material was refused, one line each.
    pub problems: BTreeSet<String>,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// The keyless checks for one signature: returns the certificate's identities and issuer.
fn keyless(
    root: Option<&TrustRoot>,
    cert: &Cert,
    chain: &[Cert],
    entries: &[Entry],
    signed: Signed,
    sig: &[u8],
    message: &[u8],
) -> Result<Signer, String> {
    let root =
        root.ok_or("certificate-signed, but no trusted root is configured ([oci] trusted_root)")?;
    if !cert.key.verifies(message, sig) {
        return Err("the signature does not verify with its certificate's key".into());
    }
    if entries.is_empty() {
        return Err("certificate-signed, but without a transparency-log entry".into());
    }
    let mut last = String::new();
    for e in entries {
        let checked = e
            .verify(root)
            .and_then(|()| check_binding(&e.body, signed, sig, &cert.der))
            .and_then(|()| verify_chain(cert, chain, &root.authorities, e.integrated_time))
            .and_then(|issuer_key| {
                // A trusted root that names CT logs asks for the certificate to be logged.
                if root.ct_logs.is_empty() {
                    Ok(())
                } else {
                    verify_sct(cert, &issuer_key, &root.ct_logs)
                }
            });
        match checked {
            Ok(()) => {
                // Fulcio certifies exactly one subject; a certificate naming several could fill
                // several keyless entries of a threshold on its own.
                let identities = cert.identities();
                if identities.len() != 1 {
                    return Err(format!(
                        "the certificate names {} e-mail/URI identities, not one",
                        identities.len()
                    ));
                }
                return Ok(Signer::Cert {
                    identities,
                    issuer: cert.oidc_issuer(),
                });
            }
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// Keyless material of one signature: the certificate, the chain that came with it and the
/// log entries. `None`: the signature carries no certificate.
type Material = Option<Result<(Cert, Vec<Cert>, Vec<Entry>), String>>;

/// A parsed bundle: its envelope, its certificate (with any chain) and log entries.
type BundleParts = (Envelope, Option<(Cert, Vec<Cert>)>, Vec<Entry>);

/// The certificate, chain and Rekor entry cosign attaches to a legacy layer.
fn legacy_material(layer: &SignatureLayer) -> Material {
    let pem = layer.annotations.get(CERTIFICATE_ANNOTATION)?;
    Some((|| {
        let cert = Cert::from_pem(pem)?;
        let chain = match layer.annotations.get(CHAIN_ANNOTATION) {
            Some(c) if !c.trim().is_empty() => Cert::from_pem_chain(c)?,
            _ => Vec::new(),
        };
        let entries = match layer.annotations.get(BUNDLE_ANNOTATION) {
            Some(b) => vec![Entry::from_cosign_bundle(b)?],
            None => Vec::new(),
        };
        Ok((cert, chain, entries))
    })())
}

struct Collector<'a> {
    trust: &'a Trust<'a>,
    out: Examined,
}

impl Collector<'_> {
    /// Tries every trusted key and the keyless material on one signature; records findings.
    /// Returns whether anything trusted verified it.
    fn verify_one(
        &mut self,
        message: &[u8],
        sig: &[u8],
        claim: &Claim,
        material: Material,
        signed: Signed,
    ) -> bool {
        let mut any = false;
        for k in self.trust.keys {
            if k.key.verifies(message, sig) {
                any = true;
                self.out.findings.push(Finding {
                    signer: Signer::Key {
                        name: k.name.clone(),
                        fingerprint: k.fingerprint,
                    },
                    claim: claim.clone(),
                });
            }
        }
        match material {
            None => {}
            Some(Err(e)) => {
                self.out.problems.insert(e);
            }
            Some(Ok((cert, chain, entries))) => {
                match keyless(
                    self.trust.root,
                    &cert,
                    &chain,
                    &entries,
                    signed,
                    sig,
                    message,
                ) {
                    Ok(signer) => {
                        any = true;
                        self.out.findings.push(Finding {
                            signer,
                            claim: claim.clone(),
                        });
                    }
                    Err(e) => {
                        self.out.problems.insert(e);
                    }
                }
            }
        }
        any
    }

    fn legacy_signature(&mut self, layer: &SignatureLayer) {
        // Another media type is another attachment, not a signature.
        if layer.media_type != SIMPLE_SIGNING {
            return;
        }
        let Some(sig) = layer
            .annotations
            .get(SIGNATURE_ANNOTATION)
            .and_then(|s| b64(s))
        else {
            return;
        };
        self.out.signatures += 1;
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
        let material = legacy_material(layer);
        let signed = Signed::Message {
            payload: &layer.payload,
        };
        if !self.verify_one(&layer.payload, &sig, &claim, material, signed) {
            self.out.unverified_signatures += 1;
        }
    }

    /// A DSSE envelope with its material; `signature`: counted as a v3 signature.
    fn envelope(&mut self, env: &Envelope, material: impl Fn() -> Material) {
        let st = match statement(env) {
            Ok(st) => st,
            Err(e) => {
                self.out.problems.insert(e);
                return;
            }
        };
        let is_signature = st.predicate_type == COSIGN_SIGN_V1;
        if is_signature {
            self.out.signatures += 1;
        }
        let pae = env.pae();
        let claim = Claim::Statement(st.clone());
        let mut any = false;
        for sig in &env.signatures {
            let signed = Signed::Dsse {
                payload: &env.payload,
            };
            any |= self.verify_one(&pae, sig, &claim, material(), signed);
        }
        if !any {
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
        let env = match serde_json::from_slice::<Value>(&layer.payload)
            .map_err(|e| e.to_string())
            .and_then(|v| Envelope::from_json(&v))
        {
            Ok(e) => e,
            Err(e) => {
                self.out
                    .problems
                    .insert(format!("an attestation layer: {e}"));
                return;
            }
        };
        self.envelope(&env, || legacy_material(layer));
    }

    fn bundle(&mut self, bytes: &[u8]) {
        let parsed = (|| -> Result<BundleParts, String> {
            let v: Value = serde_json::from_slice(bytes).map_err(|_| "a bundle is not JSON")?;
            let mt = v
                .get("mediaType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !mt.starts_with(BUNDLE_MEDIA_TYPE_PREFIX) {
                return Err(format!("{mt:?} is not a Sigstore bundle"));
            }
            let Some(env) = v.get("dsseEnvelope") else {
                return Err(
                    "a bundle signs no in-toto statement (a message signature binds no image)"
                        .into(),
                );
            };
            let env = Envelope::from_json(env)?;
            let vm = v
                .get("verificationMaterial")
                .ok_or("a bundle without verificationMaterial")?;
            let der = |c: &Value| {
                c.get("rawBytes")
                    .and_then(Value::as_str)
                    .and_then(b64)
                    .ok_or_else(|| "a bundle certificate is not base64".to_string())
                    .and_then(|d| Cert::from_der(&d))
            };
            let certs = if let Some(c) = vm.get("certificate") {
                Some((der(c)?, Vec::new()))
            } else if let Some(list) = vm
                .pointer("/x509CertificateChain/certificates")
                .and_then(Value::as_array)
            {
                let mut all = list.iter().map(der).collect::<Result<Vec<_>, _>>()?;
                if all.is_empty() {
                    return Err("a bundle with an empty certificate chain".into());
                }
                let leaf = all.remove(0);
                Some((leaf, all))
            } else {
                None
            };
            let entries = vm
                .get("tlogEntries")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(Entry::from_bundle_entry)
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap_or(Ok(Vec::new()))?;
            Ok((env, certs, entries))
        })();
        match parsed {
            Err(e) => {
                self.out.problems.insert(e);
            }
            Ok((env, certs, entries)) => {
                // Certificates are parsed once; the closure hands copies of the parsed DER.
                let material = || {
                    certs.as_ref().map(|(leaf, chain)| {
                        let again = |c: &Cert| Cert::from_der(&c.der);
                        Ok((
                            again(leaf)?,
                            chain.iter().map(again).collect::<Result<Vec<_>, _>>()?,
                            entries.clone(),
                        ))
                    })
                };
                self.envelope(&env, material);
            }
        }
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
) -> Result<Vec<String>, SignatureDeny> {
    let hex = digest.sha().to_string();
    let mut by_key: BTreeMap<[u8; 32], String> = BTreeMap::new();
    let mut certs: Vec<(Vec<String>, Option<String>)> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    let mut specific: Option<SignatureDeny> = None;
    for f in &ex.findings {
        match &f.claim {
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
            Claim::Statement(st) if st.predicate_type == COSIGN_SIGN_V1 => {
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
            // An attestation is not a signature of the image.
            Claim::Statement(_) => continue,
        }
        match &f.signer {
            Signer::Key { fingerprint, .. } => {
                match keys.iter().find(|k| k.fingerprint == *fingerprint) {
                    Some(k) => {
                        by_key.insert(*fingerprint, k.name.clone());
                    }
                    None => found.push(f.signer.describe()),
                }
            }
            Signer::Cert { identities, issuer } => {
                if keyless
                    .iter()
                    .any(|k| k.matches(identities, issuer.as_deref()))
                {
                    let id = (identities.clone(), issuer.clone());
                    if !certs.contains(&id) {
                        certs.push(id);
                    }
                } else {
                    found.push(f.signer.describe());
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
    if ex.signatures == 0 {
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
    fn nothing_found_is_unsigned_and_junk_is_not_a_signature() {
        let repo = Repository::parse("registry.example/a").unwrap();
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let ex = examine(
            &[Artifact::Bundle(b"{}".to_vec())],
            &Trust {
                keys: &[],
                root: None,
            },
        );
        assert_eq!(ex.signatures, 0);
        assert_eq!(
            judge_signature(&ex, &d, &repo, &[], &[id("a")], 1),
            Err(SignatureDeny::Unsigned)
        );
        let rule = AttestationRule {
            predicate_type: "https://slsa.dev/provenance/v1".into(),
            keys: vec![],
            keyless: vec![id("a")],
        };
        assert_eq!(
            judge_attestation(&ex, &d, &rule, &[]).map_err(|e| e.code()),
            Err("attestation_missing")
        );
    }
}
