#!/usr/bin/env python3
"""A test Sigstore: a Fulcio-like CA, a Rekor-like log key, and cosign's ways of attaching
signatures and attestations to an image in a registry, with real cryptography (python-cryptography).

usage:
  sigstore_sign.py init DIR
      Creates DIR/trusted_root.json (a test Fulcio CA: P-384 root + intermediate; a test Rekor
      key: P-256) with its private keys, and an untrusted CA in DIR/rogue/ for negative tests.
  sigstore_sign.py sign DIR REGISTRY REPO DIGEST KIND [options]
      KIND: legacy-sig (the sha256-<hex>.sig tag), legacy-att (sha256-<hex>.att) or bundle (a
      cosign v3 bundle artifact with `subject`, listed in the referrers tag sha256-<hex>), or
      junk-sig (a .sig of --layers N simple-signing layers that verify with nothing).
      Pushes to REGISTRY (http://127.0.0.1:PORT) with the registry HTTP API.
      --identity I --issuer S   keyless: a fresh key certified by the test CA for I (e-mail or URI)
      --key PATH                key-based (a missing key is created, with PATH.pub)
      --reference R             legacy-sig: the signed docker-reference (default REGISTRY-less REPO)
      --predicate-type T        legacy-att/bundle (bundle default: cosign's sign/v1 = a signature)
      --statement-digest D      the statement's / payload's subject (default DIGEST)
      --rogue                   certify with the untrusted CA
      --cert-window A B         the certificate is valid from now+A to now+B seconds (default -5 600)
      --save NAME / --reuse NAME  keep / reuse the signing key, certificate and log entry in
                                DIR/NAME.json (a real log entry copied onto another signing)
      --rekor-v2                bundle: log to the test Rekor v2 instead (a hashedrekord 0.0.2
                                entry with an inclusion proof and a signed checkpoint, no SET) and
                                date the signature with an RFC 3161 timestamp of the test TSA
                                (made by `openssl ts -reply`)
      --rogue-tsa               with --rekor-v2: the timestamp comes from a TSA outside the root
      --rogue-log               with --rekor-v2: the checkpoint is signed by a log outside the root
Prints the digest of the pushed artifact manifest.
"""
import base64
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

B64 = lambda b: base64.b64encode(b).decode()
SHA = lambda b: hashlib.sha256(b).hexdigest()
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
IN_TOTO = "application/vnd.in-toto+json"
COSIGN_SIGN_V1 = "https://sigstore.dev/cosign/sign/v1"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
LOG_ORIGIN = "tollgate-test-rekor"
LOG_V2_ORIGIN = "rekor-v2.tollgate.test"


def save_key(key, path):
    with open(path, "wb") as f:
        f.write(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def load_key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def ca_cert(subject_key, issuer_key, name, issuer_name, path_len):
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tollgate-test"),
                                  x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(issuer_name)
         .public_key(subject_key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now() - datetime.timedelta(days=1))
         .not_valid_after(now() + datetime.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                      crl_sign=True, encipher_only=False, decipher_only=False), critical=True))
    return b.sign(issuer_key, hashes.SHA384())


def make_ca(d):
    os.makedirs(d, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tollgate-test"),
                           x509.NameAttribute(NameOID.COMMON_NAME, "test-fulcio-root")])
    root = ca_cert(root_key, root_key, "test-fulcio-root", root_name, 1)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = ca_cert(inter_key, root_key, "test-fulcio-intermediate", root.subject, 0)
    save_key(inter_key, os.path.join(d, "inter.key"))
    with open(os.path.join(d, "inter.pem"), "wb") as f:
        f.write(inter.public_bytes(PEM))
    with open(os.path.join(d, "root.pem"), "wb") as f:
        f.write(root.public_bytes(PEM))
    return root, inter


def make_tsa(d):
    """A timestamp authority as Sigstore runs one: a self-signed root and a leaf whose only
    (critical) extended key usage is timeStamping (RFC 3161 §2.3)."""
    os.makedirs(d, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tollgate-test"),
                           x509.NameAttribute(NameOID.COMMON_NAME, "test-tsa-root")])
    root = ca_cert(root_key, root_key, "test-tsa-root", root_name, 0)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tollgate-test"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "test-tsa")]))
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - datetime.timedelta(days=1))
            .not_valid_after(now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
            .sign(root_key, hashes.SHA384()))
    save_key(key, os.path.join(d, "tsa.key"))
    with open(os.path.join(d, "tsa.pem"), "wb") as f:
        f.write(leaf.public_bytes(PEM))
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("01\n")
    return leaf, root


def note_key_id(origin, raw_ed25519):
    """The signed-note key hash (c2sp.org/signed-note): SHA-256(name || 0x0A || 0x01 || key)."""
    return hashlib.sha256(origin.encode() + b"\n\x01" + raw_ed25519).digest()


def make_log_v2(d):
    key = ed25519.Ed25519PrivateKey.generate()
    with open(os.path.join(d, "rekor-v2.key"), "wb") as f:
        f.write(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return key


def init(d):
    root, inter = make_ca(os.path.join(d, "ca"))
    make_ca(os.path.join(d, "rogue"))
    tsa, tsa_root = make_tsa(os.path.join(d, "tsa"))
    make_tsa(os.path.join(d, "rogue-tsa"))
    log_v2 = make_log_v2(d)
    os.makedirs(os.path.join(d, "rogue-log"), exist_ok=True)
    make_log_v2(os.path.join(d, "rogue-log"))
    log_v2_raw = log_v2.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    rekor = ec.generate_private_key(ec.SECP256R1())
    save_key(rekor, os.path.join(d, "rekor.key"))
    rekor_der = rekor.public_key().public_bytes(DER, SPKI)
    ct = ec.generate_private_key(ec.SECP256R1())
    save_key(ct, os.path.join(d, "ct.key"))
    ct_der = ct.public_key().public_bytes(DER, SPKI)
    start = "2020-01-01T00:00:00Z"
    trusted = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [{
            "baseUrl": "https://rekor.test", "hashAlgorithm": "SHA2_256",
            "publicKey": {"rawBytes": B64(rekor_der), "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": {"start": start}},
            "logId": {"keyId": B64(hashlib.sha256(rekor_der).digest())},
        }, {
            # Rekor v2: an Ed25519 log whose id is its signed-note key hash.
            "baseUrl": "https://" + LOG_V2_ORIGIN, "hashAlgorithm": "SHA2_256",
            "publicKey": {"rawBytes": B64(log_v2.public_key().public_bytes(DER, SPKI)), "keyDetails": "PKIX_ED25519",
                          "validFor": {"start": start}},
            "logId": {"keyId": B64(note_key_id(LOG_V2_ORIGIN, log_v2_raw))},
        }],
        "certificateAuthorities": [{
            "subject": {"organization": "tollgate-test", "commonName": "test-fulcio"},
            "uri": "https://fulcio.test",
            "certChain": {"certificates": [{"rawBytes": B64(inter.public_bytes(DER))}, {"rawBytes": B64(root.public_bytes(DER))}]},
            "validFor": {"start": start},
        }],
        "ctlogs": [{
            "baseUrl": "https://ct.test", "hashAlgorithm": "SHA2_256",
            "publicKey": {"rawBytes": B64(ct_der), "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": {"start": start}},
            "logId": {"keyId": B64(hashlib.sha256(ct_der).digest())},
        }],
        "timestampAuthorities": [{
            "subject": {"organization": "tollgate-test", "commonName": "test-tsa"},
            "uri": "https://tsa.test",
            "certChain": {"certificates": [{"rawBytes": B64(tsa.public_bytes(DER))}, {"rawBytes": B64(tsa_root.public_bytes(DER))}]},
            "validFor": {"start": start},
        }],
    }
    with open(os.path.join(d, "trusted_root.json"), "w") as f:
        json.dump(trusted, f, indent=1)


def leaf_cert(d, key, identity, issuer, rogue, window):
    ca = os.path.join(d, "rogue" if rogue else "ca")
    inter_key = load_key(os.path.join(ca, "inter.key"))
    with open(os.path.join(ca, "inter.pem"), "rb") as f:
        inter = x509.load_pem_x509_certificate(f.read())
    san = x509.RFC822Name(identity) if "@" in identity and "://" not in identity else x509.UniformResourceIdentifier(identity)
    utf8 = issuer.encode()
    # Fulcio's issuer extensions: v1 (1.1) raw bytes, v2 (1.8) a DER UTF8String.
    v2 = bytes([0x0c, len(utf8)]) + utf8
    t = now()
    serial = x509.random_serial_number()
    base = (x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(inter.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(t + datetime.timedelta(seconds=window[0]))
            .not_valid_after(t + datetime.timedelta(seconds=window[1]))
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1"), utf8), critical=False)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8"), v2), critical=False))
    if "--no-sct" in sys.argv:
        return base.sign(inter_key, hashes.SHA384()), inter
    # RFC 6962 §3.2: the test CT log signs the precertificate (the TBS without the SCT list)
    # with the issuer's key hash; the SCT is then embedded as the last extension.
    pre = base.sign(inter_key, hashes.SHA384())
    ct = load_key(os.path.join(d, "ct.key"))
    log_id = hashlib.sha256(ct.public_key().public_bytes(DER, SPKI)).digest()
    issuer_key_hash = hashlib.sha256(inter.public_key().public_bytes(DER, SPKI)).digest()
    ts = int(time.time() * 1000)
    tbs = pre.tbs_certificate_bytes
    signed = (b"\x00\x00" + ts.to_bytes(8, "big") + b"\x00\x01" + issuer_key_hash
              + len(tbs).to_bytes(3, "big") + tbs + b"\x00\x00")
    sig = ct.sign(signed, ec.ECDSA(hashes.SHA256()))
    sct = b"\x00" + log_id + ts.to_bytes(8, "big") + b"\x00\x00" + b"\x04\x03" + len(sig).to_bytes(2, "big") + sig
    tls = len(sct).to_bytes(2, "big") + sct
    tls = len(tls).to_bytes(2, "big") + tls
    der = b"\x04" + (bytes([len(tls)]) if len(tls) < 128 else b"\x81" + bytes([len(tls)])) + tls
    cert = base.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2"), der),
                              critical=False).sign(inter_key, hashes.SHA384())
    assert cert.tbs_precertificate_bytes == tbs, "the precertificate changed under the SCT"
    return cert, inter


def log_entry(d, body):
    """A log entry as Rekor would return it: SET over the canonical payload, and a one-leaf
    inclusion proof with a signed checkpoint."""
    rekor = load_key(os.path.join(d, "rekor.key"))
    log_id = hashlib.sha256(rekor.public_key().public_bytes(DER, SPKI)).digest()
    t = int(time.time())
    index = int.from_bytes(os.urandom(3), "big")
    body_b64 = B64(body)
    canonical = json.dumps({"body": body_b64, "integratedTime": t, "logID": log_id.hex(), "logIndex": index},
                           sort_keys=True, separators=(",", ":")).encode()
    set_ = rekor.sign(canonical, ec.ECDSA(hashes.SHA256()))
    root = hashlib.sha256(b"\x00" + body).digest()
    note = "%s - 1\n1\n%s\n" % (LOG_ORIGIN, B64(root))
    note_sig = rekor.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
    checkpoint = note + "\n\u2014 %s %s\n" % (LOG_ORIGIN, B64(log_id[:4] + note_sig))
    return {"body": body_b64, "integratedTime": t, "logIndex": index, "logID": log_id.hex(),
            "SET": B64(set_), "rootHash": B64(root), "checkpoint": checkpoint}


def merkle_root(leaves):
    """RFC 6962 §2.1 Merkle tree hash of leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:])).digest()


def merkle_path(m, leaves):
    """RFC 6962 §2.1.1 audit path of leaf m."""
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return merkle_path(m, leaves[:k]) + [merkle_root(leaves[k:])]
    return merkle_path(m - k, leaves[k:]) + [merkle_root(leaves[:k])]


def log_entry_v2(d, body, rogue):
    """A Rekor v2 entry: no integrated time and no SET; an inclusion proof in a five-leaf tree
    and a checkpoint signed (Ed25519, signed-note format) by the log. The entry is the log's
    first, so its index is 0, which protobuf JSON omits (as sigstore-js writes it)."""
    key = load_key(os.path.join(d, "rogue-log" if rogue else "", "rekor-v2.key"))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = note_key_id(LOG_V2_ORIGIN, raw)
    leaves = [hashlib.sha256(b"\x00" + body).digest()] + [hashlib.sha256(b"\x00" + os.urandom(32)).digest() for _ in range(4)]
    root = merkle_root(leaves)
    note = "%s\n%d\n%s\n" % (LOG_V2_ORIGIN, len(leaves), B64(root))
    checkpoint = note + "\n\u2014 %s %s\n" % (LOG_V2_ORIGIN, B64(key_id[:4] + key.sign(note.encode())))
    return {"logId": {"keyId": B64(key_id)}, "kindVersion": {"kind": "hashedrekord", "version": "0.0.2"},
            "inclusionProof": {"rootHash": B64(root), "treeSize": str(len(leaves)),
                               "hashes": [B64(h) for h in merkle_path(0, leaves)],
                               "checkpoint": {"envelope": checkpoint}},
            "canonicalizedBody": B64(body)}


def timestamp(d, signature, rogue):
    """An RFC 3161 TimeStampResp over SHA-256(signature), made by `openssl ts -reply` with the
    test TSA's key."""
    tsa = os.path.join(d, "rogue-tsa" if rogue else "tsa")
    with tempfile.TemporaryDirectory() as t:
        cfg = os.path.join(t, "tsa.cnf")
        with open(cfg, "w") as f:
            f.write("[ tsa ]\ndefault_tsa = tsa1\n[ tsa1 ]\nserial = %s/serial\nsigner_cert = %s/tsa.pem\n"
                    "signer_key = %s/tsa.key\nsigner_digest = sha256\ndefault_policy = 1.3.6.1.4.1.57264.2\n"
                    "digests = sha256, sha384, sha512\naccuracy = secs:1\ness_cert_id_alg = sha256\n" % (tsa, tsa, tsa))
        req, resp = os.path.join(t, "req.tsq"), os.path.join(t, "resp.tsr")
        subprocess.run(["openssl", "ts", "-query", "-digest", SHA(signature), "-sha256", "-cert", "-out", req],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "ts", "-reply", "-config", cfg, "-queryfile", req, "-out", resp],
                       check=True, capture_output=True)
        with open(resp, "rb") as f:
            return f.read()


def pae(payload_type, payload):
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)


class Registry:
    def __init__(self, base, repo):
        self.base, self.repo = base.rstrip("/"), repo

    def req(self, method, path, data=None, headers=None):
        r = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        return urllib.request.urlopen(r)

    def blob(self, data):
        digest = "sha256:" + SHA(data)
        loc = self.req("POST", "/v2/%s/blobs/uploads/" % self.repo).headers["Location"]
        if loc.startswith("/"):
            loc = self.base + loc
        sep = "&" if "?" in loc else "?"
        urllib.request.urlopen(urllib.request.Request(loc + sep + "digest=" + digest, data=data, method="PUT",
                                                      headers={"Content-Type": "application/octet-stream"}))
        return {"digest": digest, "size": len(data)}

    def manifest(self, ref, data, media_type):
        self.req("PUT", "/v2/%s/manifests/%s" % (self.repo, ref), data, {"Content-Type": media_type})
        return "sha256:" + SHA(data)

    def get_manifest(self, ref, accept):
        try:
            return self.req("GET", "/v2/%s/manifests/%s" % (self.repo, ref), headers={"Accept": accept}).read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise


def opt(args, name, n=1, default=None):
    if name not in args:
        return default
    i = args.index(name)
    return args[i + 1] if n == 1 else args[i + 1:i + 1 + n]


def junk_sig(registry, repo, digest, layers):
    """A `.sig` artifact of `layers` simple-signing layers whose signatures verify with nothing
    (what anyone with push rights can add to crowd out real signatures)."""
    reg = Registry(registry, repo)
    empty = reg.blob(b"{}")
    out = []
    for i in range(layers):
        payload = json.dumps({"critical": {"identity": {"docker-reference": repo},
                                           "image": {"docker-manifest-digest": digest},
                                           "type": "cosign container image signature"},
                              "optional": {"junk": i}}).encode()
        out.append(dict(reg.blob(payload), mediaType="application/vnd.dev.cosign.simplesigning.v1+json",
                        annotations={"dev.cosignproject.cosign/signature": B64(os.urandom(70))}))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": dict(empty, mediaType="application/vnd.oci.image.config.v1+json"),
                           "layers": out}).encode()
    print(reg.manifest("sha256-%s.sig" % digest.split(":", 1)[1], manifest, "application/vnd.oci.image.manifest.v1+json"))


def sign(d, registry, repo, digest, kind, args):
    if kind == "junk-sig":
        return junk_sig(registry, repo, digest, int(opt(args, "--layers", default="64")))
    identity, issuer, keypath = opt(args, "--identity"), opt(args, "--issuer"), opt(args, "--key")
    statement_digest = opt(args, "--statement-digest", default=digest)
    window = [int(x) for x in opt(args, "--cert-window", 2, ["-5", "600"])]
    reg = Registry(registry, repo)
    hexd = digest.split(":", 1)[1]

    # What is signed: a simple-signing payload (legacy .sig) or an in-toto statement (DSSE).
    if kind == "legacy-sig":
        reference = opt(args, "--reference", default=repo)
        payload = json.dumps({"critical": {"identity": {"docker-reference": reference},
                                           "image": {"docker-manifest-digest": statement_digest},
                                           "type": "cosign container image signature"},
                              "optional": None}, separators=(",", ":")).encode()
        message = payload
    else:
        predicate_type = opt(args, "--predicate-type", default=COSIGN_SIGN_V1)
        payload = json.dumps({"_type": "https://in-toto.io/Statement/v1",
                              "subject": [{"name": repo, "digest": {"sha256": statement_digest.split(":", 1)[1]}}],
                              "predicateType": predicate_type,
                              "predicate": {"builder": {"id": "https://ci.test/builder"}}}, separators=(",", ":")).encode()
        message = pae(IN_TOTO, payload)

    reuse = opt(args, "--reuse")
    cert = chain = entry = None
    if reuse:
        with open(os.path.join(d, reuse + ".json")) as f:
            saved = json.load(f)
        key = serialization.load_pem_private_key(saved["key"].encode(), password=None)
        cert_pem, chain_pem, entry = saved["cert"], saved["chain"], saved["entry"]
    elif identity:
        key = ec.generate_private_key(ec.SECP256R1())
        cert, inter = leaf_cert(d, key, identity, issuer, "--rogue" in args, window)
        cert_pem, chain_pem = cert.public_bytes(PEM).decode(), inter.public_bytes(PEM).decode()
    else:
        if not os.path.exists(keypath):
            k = ec.generate_private_key(ec.SECP256R1())
            save_key(k, keypath)
            with open(keypath + ".pub", "wb") as f:
                f.write(k.public_key().public_bytes(PEM, SPKI))
        key = load_key(keypath)
        cert_pem = None
    sig = key.sign(message, ec.ECDSA(hashes.SHA256()))

    rekor_v2 = "--rekor-v2" in args
    if rekor_v2 and kind != "bundle":
        sys.exit("--rekor-v2 is for bundles: legacy annotations carry Rekor v1 entries only")
    if cert_pem and entry is None and rekor_v2:
        # Rekor v2 logs a DSSE envelope as hashedrekord 0.0.2 over its PAE (rekor-v2 spec
        # §6.1.4), with the certificate as the verifier.
        cert_der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(DER)
        body = {"apiVersion": "0.0.2", "kind": "hashedrekord",
                "spec": {"hashedRekordV002": {
                    "data": {"algorithm": "SHA2_256", "digest": B64(hashlib.sha256(message).digest())},
                    "signature": {"content": B64(sig), "verifier": {"keyDetails": "PKIX_ECDSA_P256_SHA_256",
                                                                     "x509Certificate": {"rawBytes": B64(cert_der)}}}}}}
        entry = log_entry_v2(d, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), "--rogue-log" in args)
    elif cert_pem and entry is None:
        # The log entry records this signature by this certificate over this payload.
        if kind == "legacy-sig":
            body = {"apiVersion": "0.0.1", "kind": "hashedrekord",
                    "spec": {"data": {"hash": {"algorithm": "sha256", "value": SHA(payload)}},
                             "signature": {"content": B64(sig), "publicKey": {"content": B64(cert_pem.encode())}}}}
        elif kind == "legacy-att":
            # cosign's legacy attestations are logged as intoto 0.0.2 (signature base64 twice).
            body = {"apiVersion": "0.0.2", "kind": "intoto",
                    "spec": {"content": {"envelope": {"payloadType": IN_TOTO,
                                                      "signatures": [{"sig": B64(B64(sig).encode()), "publicKey": B64(cert_pem.encode())}]},
                                         "hash": {"algorithm": "sha256", "value": SHA(payload)},
                                         "payloadHash": {"algorithm": "sha256", "value": SHA(payload)}}}}
        else:
            body = {"apiVersion": "0.0.1", "kind": "dsse",
                    "spec": {"envelopeHash": {"algorithm": "sha256", "value": SHA(payload)},
                             "payloadHash": {"algorithm": "sha256", "value": SHA(payload)},
                             "signatures": [{"signature": B64(sig), "verifier": B64(cert_pem.encode())}]}}
        entry = log_entry(d, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    save = opt(args, "--save")
    if save:
        with open(os.path.join(d, save + ".json"), "w") as f:
            json.dump({"key": key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
                       "cert": cert_pem, "chain": chain_pem, "entry": entry}, f)

    empty = reg.blob(b"{}")
    head = reg.req("HEAD", "/v2/%s/manifests/%s" % (repo, digest), headers={"Accept": ",".join([
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json"])})
    subject = {"mediaType": head.headers["Content-Type"], "digest": digest, "size": int(head.headers["Content-Length"])}
    if kind in ("legacy-sig", "legacy-att"):
        annotations = {"dev.cosignproject.cosign/signature": B64(sig) if kind == "legacy-sig" else ""}
        if kind == "legacy-att":
            layer_bytes = json.dumps({"payloadType": IN_TOTO, "payload": B64(payload),
                                      "signatures": [{"keyid": "", "sig": B64(sig)}]}).encode()
            layer_type = "application/vnd.dsse.envelope.v1+json"
            annotations["predicateType"] = opt(args, "--predicate-type", default="")
        else:
            layer_bytes, layer_type = payload, "application/vnd.dev.cosign.simplesigning.v1+json"
        if cert_pem:
            annotations["dev.sigstore.cosign/certificate"] = cert_pem
            annotations["dev.sigstore.cosign/chain"] = chain_pem
            annotations["dev.sigstore.cosign/bundle"] = json.dumps({
                "SignedEntryTimestamp": entry["SET"],
                "Payload": {"body": entry["body"], "integratedTime": entry["integratedTime"],
                            "logIndex": entry["logIndex"], "logID": entry["logID"]}})
        layer = dict(reg.blob(layer_bytes), mediaType=layer_type, annotations=annotations)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": dict(empty, mediaType="application/vnd.oci.image.config.v1+json"),
                               "layers": [layer]}).encode()
        suffix = "sig" if kind == "legacy-sig" else "att"
        print(reg.manifest("sha256-%s.%s" % (hexd, suffix), manifest, "application/vnd.oci.image.manifest.v1+json"))
        return

    # A cosign v3 bundle: an artifact manifest whose subject is the image, listed in the
    # referrers tag schema's index (OCI distribution-spec v1.1) for registries without the API.
    if cert_pem and rekor_v2:
        material = {"certificate": {"rawBytes": B64(x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(DER))},
                    "tlogEntries": [entry],
                    "timestampVerificationData": {"rfc3161Timestamps": [
                        {"signedTimestamp": B64(timestamp(d, sig, "--rogue-tsa" in args))}]}}
    elif cert_pem:
        material = {"certificate": {"rawBytes": B64(x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(DER))}}
        # A one-leaf tree: the proof's index is 0, omitted as protobuf JSON omits zero values.
        material["tlogEntries"] = [{
            "logIndex": str(entry["logIndex"]), "logId": {"keyId": B64(bytes.fromhex(entry["logID"]))},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"}, "integratedTime": str(entry["integratedTime"]),
            "inclusionPromise": {"signedEntryTimestamp": entry["SET"]},
            "inclusionProof": {"rootHash": entry["rootHash"], "treeSize": "1", "hashes": [],
                               "checkpoint": {"envelope": entry["checkpoint"]}},
            "canonicalizedBody": entry["body"]}]
    else:
        material = {"publicKey": {"hint": ""}, "tlogEntries": []}
    bundle = json.dumps({"mediaType": BUNDLE_V03, "verificationMaterial": material,
                         "dsseEnvelope": {"payload": B64(payload), "payloadType": IN_TOTO,
                                          "signatures": [{"sig": B64(sig), "keyid": ""}]}}).encode()
    layer = dict(reg.blob(bundle), mediaType=BUNDLE_V03)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "artifactType": BUNDLE_V03,
                           "config": dict(empty, mediaType="application/vnd.oci.empty.v1+json"),
                           "layers": [layer], "subject": subject}).encode()
    mdigest = reg.manifest("sha256:" + SHA(manifest), manifest, "application/vnd.oci.image.manifest.v1+json")
    index_type = "application/vnd.oci.image.index.v1+json"
    old = reg.get_manifest("sha256-" + hexd, index_type)
    index = json.loads(old) if old else {"schemaVersion": 2, "mediaType": index_type, "manifests": []}
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest,
                               "size": len(manifest), "artifactType": BUNDLE_V03})
    reg.manifest("sha256-" + hexd, json.dumps(index).encode(), index_type)
    print(mdigest)


if __name__ == "__main__":
    if sys.argv[1] == "init":
        init(sys.argv[2])
    elif sys.argv[1] == "sign":
        sign(*sys.argv[2:7], sys.argv[7:])
    else:
        sys.exit(__doc__)
