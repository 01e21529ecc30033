//! The server against clients that hold it: trickling request heads (slowloris), floods from
//! one peer, oversized heads on the admin listener; and the admission webhooks on a listener of
//! their own, behind the API server's bearer token or client certificate.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A socket that opens a request and sends its head one byte at a time (or not at all).
fn trickle(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut s2 = s.try_clone().unwrap();
    let _ = s2.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-");
    s
}

/// Has the gate closed this socket (EOF or reset)?
fn closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 256];
    let mut r = s;
    match r.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trickling_sockets_cannot_hold_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let cfg = format!(
        "[limits]\nhead_timeout = \"2s\"\nper_client_connections = 16\nmax_connections = 200\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"
    );
    let gate = Gate::start(dir.path(), &cfg, "");
    let port = gate.proc.port;
    // 40 trickling sockets from one peer: 16 are held (until head_timeout), the rest closed.
    let socks: Vec<TcpStream> = (0..40).map(|_| trickle(port)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = socks.iter().filter(|s| closed(s)).count();
    assert!(refused >= 24, "{refused} of 40 closed at once");
    // Another client is served at once, in the middle of it.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let started = Instant::now();
    let r = other.get(gate.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "healthz took {:?}",
        started.elapsed()
    );
    // After head_timeout, the held ones are closed too, trickling or not.
    for s in &socks {
        let mut w = s;
        let _ = w.write_all(b"a");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = socks.iter().filter(|s| !closed(s)).count();
    assert_eq!(
        still, 0,
        "{still} trickling sockets still open after head_timeout"
    );
    assert!(gate.metric("tollgate_connections_refused_total").await >= 24.0);
    // The peer can come back once its sockets are gone.
    drop(socks);
    let r = reqwest::get(gate.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);

    // The admin listener applies the same limits: a head over header_bytes is refused there
    // too, and a trickling head is dropped.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let mut s = TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(big.as_bytes());
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "admin listener answered an oversized head: {text}"
    );
    let t = trickle(admin_port);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(closed(&t), "the admin listener kept a trickling head");
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", show(&out));
}

fn review() -> serde_json::Value {
    serde_json::json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u1", "kind": { "group": "", "version": "v1", "kind": "Pod" },
        "operation": "DELETE", "object": {} } })
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_on_their_own_listener_behind_a_token_or_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA, the gate's certificate, and the API server's client certificate.
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        d,
    );
    // The gate's certificate and the API server's, both issued by the CA.
    let issue = |name: &str, ext: &str| {
        std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, pem, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
            d,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &extf,
                "-out",
                &pem,
            ],
            d,
        );
    };
    issue(
        "server",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    std::fs::copy(d.join("server.pem"), d.join("cert.pem")).unwrap();
    std::fs::copy(d.join("server.key"), d.join("key.pem")).unwrap();
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
        ],
        d,
    );
    std::fs::write(
        d.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "client.ext",
            "-out",
            "client.pem",
        ],
        d,
    );

    // 1. A listener of its own with a bearer token (plain HTTP on loopback).
    let port = free_port();
    let token = "s3cret-api-server-token";
    let sha = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes())
    );
    let gate = Gate::start_env(
        &d.join("g1"),
        &format!("[admission]\nlisten = \"127.0.0.1:{port}\"\ntoken_sha256_env = \"TG_HOOK\"\n"),
        "",
        &[("TG_HOOK", &sha)],
    );
    let c = reqwest::Client::new();
    let main = c
        .post(gate.url("/k8s/admission"))
        .json(&review())
        .send()
        .await
        .unwrap();
    assert_eq!(
        main.status(),
        404,
        "the webhooks are absent from the main listener"
    );
    let url = format!("http://127.0.0.1:{port}/k8s/admission");
    let none = c.post(&url).json(&review()).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = c
        .post(&url)
        .bearer_auth("guess")
        .json(&review())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = c
        .post(&url)
        .bearer_auth(token)
        .json(&review())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let v: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(v["response"]["allowed"], true);

    // 2. mTLS: only a client certificate from client_ca gets a TLS connection at all.
    let port = free_port();
    std::fs::create_dir_all(d.join("g2")).unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::copy(d.join(f), d.join("g2").join(f)).unwrap();
    }
    let _gate2 = Gate::start(
        &d.join("g2"),
        &format!("[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[admission]\nlisten = \"127.0.0.1:{port}\"\nclient_ca = \"ca.pem\"\n"),
        "",
    );
    let server_ca =
        reqwest::Certificate::from_pem(&std::fs::read(d.join("ca.pem")).unwrap()).unwrap();
    let url = format!("https://127.0.0.1:{port}/k8s/admission");
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(server_ca.clone())
        .build()
        .unwrap();
    assert!(
        anonymous.post(&url).json(&review()).send().await.is_err(),
        "a TLS client without a certificate was served"
    );
    let mut pem = std::fs::read(d.join("client.pem")).unwrap();
    pem.extend(std::fs::read(d.join("client.key")).unwrap());
    let apiserver = reqwest::Client::builder()
        .add_root_certificate(server_ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let r = apiserver.post(&url).json(&review()).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // 3. `tollgate check` warns when nothing but the network guards the webhooks.
    let cfgs: [(&str, &str, bool); 2] = [
        ("g3", "", true),
        ("g4", "[admission]\ntoken_sha256_env = \"TG_HOOK\"\n", false),
    ];
    for (name, cfg, warns) in cfgs {
        let gd = d.join(name);
        std::fs::create_dir_all(gd.join("allowlists")).unwrap();
        std::fs::write(gd.join("tollgate.toml"), cfg).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["check", "--config"])
            .arg(gd.join("tollgate.toml"))
            .env("TG_HOOK", &sha)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(
            show(&out).contains("answer any caller"),
            warns,
            "{name}: {}",
            show(&out)
        );
    }
}

/// A request body that stops arriving ends the request after idle_timeout, with an answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::start(dir.path(), "[limits]\nidle_timeout = \"1s\"\n", "");
    let mut s = TcpStream::connect(("127.0.0.1", gate.proc.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /api/v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"image\":",
    )
    .unwrap();
    let started = Instant::now();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A body that keeps arriving, a byte at a time just inside idle_timeout, still ends at
/// body_timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_request_body_ends_at_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::start(
        dir.path(),
        "[limits]\nidle_timeout = \"3s\"\nbody_timeout = \"2s\"\n",
        "",
    );
    let s = TcpStream::connect(("127.0.0.1", gate.proc.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(
        b"POST /api/v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
    )
    .unwrap();
    let started = Instant::now();
    let mut resp = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let _ = w.write_all(b" ");
        let mut b = [0u8; 512];
        let mut r = &s;
        match r.read(&mut b) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&b[..n]),
            Err(_) => {}
        }
        if !resp.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "after {:?}: {text}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

/// HTTP/2 is not spoken: a client opening with the HTTP/2 preface (prior knowledge, as h2c
/// does) gets no HTTP/2 server, and TLS offers only http/1.1.
#[tokio::test(flavor = "multi_thread")]
async fn http2_is_not_offered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ],
        d,
    );
    let plain = Gate::start(&d.join("plain"), "[limits]\nhead_timeout = \"2s\"\n", "");
    let mut s = TcpStream::connect(("127.0.0.1", plain.proc.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The connection preface and an empty SETTINGS frame (RFC 9113 §3.4).
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    // An HTTP/2 server answers with its own SETTINGS frame (type 4 in the fourth byte).
    assert!(
        resp.is_empty() || resp.starts_with(b"HTTP/1.1 4"),
        "answered the HTTP/2 preface: {:?}",
        &resp[..resp.len().min(16)]
    );
    let tls_cfg = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        d.join("cert.pem").display(),
        d.join("key.pem").display()
    );
    let tls = Gate::start(&d.join("tls"), &tls_cfg, "");
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", tls.proc.port),
            "-alpn",
            "h2,http/1.1",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ALPN protocol: http/1.1"), "{text}");
}
