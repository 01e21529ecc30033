//! `tollgate allowlist check FILE --gate URL`: asks a running gate, per requirement, whether
//! that release would install and why not (`GET /api/v1/packages/{name}/{version}?sha256=…`),
//! so a user whose `pip install` failed learns the reason without an admin, a config file or
//! the store.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{read_pinned, report};
use crate::policy::requirements::Pinned;

#[derive(Deserialize)]
struct ReleaseCheck {
    installable: bool,
    explanation: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Text from the gate with control characters, and the invisible format characters that
/// reorder or split what a terminal shows (bidirectional overrides, zero-width characters,
/// line and paragraph separators), shown as `?`; cut at 2000 characters.
fn printable(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c,
                '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}'
                | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}')
    };
    text.chars()
        .take(2000)
        .map(|c| if hidden(c) { '?' } else { c })
        .collect()
}

/// One requirement's verdict from the gate; a gate that cannot be asked is an error of the
/// command (exit 2), not a verdict.
async fn ask(
    client: &reqwest::Client,
    base: &reqwest::Url,
    p: &Pinned,
) -> Result<Result<String, String>, String> {
    let mut url = base
        .join(&format!("api/v1/packages/{}/{}", p.name, p.version))
        .map_err(|e| format!("--gate: {e}"))?;
    if !p.hashes.is_empty() {
        let hashes: Vec<String> = p.hashes.iter().map(|h| h.to_string()).collect();
        url.set_query(Some(&format!("sha256={}", hashes.join(","))));
    }
    let resp =
        client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| match crate::fetch::tls_cause(&e) {
                Some(cause) => format!("cannot ask the gate at {base}: {cause}"),
                None => format!("cannot ask the gate at {base}: {e}"),
            })?;
    let status = resp.status();
    let body = crate::fetch::read_limited(resp, 1 << 20)
        .await
        .map_err(|_| format!("the gate at {base} sent an unreadable answer"))?;
    if status.is_success() {
        let c: ReleaseCheck = serde_json::from_slice(&body).map_err(|e| {
            format!("the gate at {base} does not answer /api/v1/packages (is it tollgate?): {e}")
        })?;
        // The gate's sentences reach a terminal: no control characters (escape sequences)
        // from a gate that is not what it claims to be.
        let said = printable(&c.explanation);
        return Ok(if c.installable { Ok(said) } else { Err(said) });
    }
    match serde_json::from_slice::<ErrorBody>(&body) {
        // The gate's own refusal of this line (a bad name or version): a verdict.
        Ok(e) if status.is_client_error() => Ok(Err(format!(
            "{}=={}: {}",
            p.name,
            p.version,
            printable(&e.error)
        ))),
        Ok(e) => Err(format!(
            "the gate at {base} answered {status}: {}",
            printable(&e.error)
        )),
        Err(_) => Err(format!("the gate at {base} answered {status}")),
    }
}

/// Exit 0 when every requirement installs, 1 when any would not, 2 when the gate could not be
/// asked.
pub fn allowlist_check_gate(gate: &str, path: &Path) -> i32 {
    let parsed = match read_pinned(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    // The base URL ends in '/', so `api/v1/…` joins under any path prefix the gate is served at.
    let base = match reqwest::Url::parse(&format!("{}/", gate.trim_end_matches('/'))) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        _ => {
            eprintln!("error: --gate {gate:?} is not an http(s) URL");
            return 2;
        }
    };
    // The gate is the user's own, usually on a private address: it is the one host this
    // client may reach, whatever it resolves to.
    let host = base.host_str().unwrap_or_default().to_ascii_lowercase();
    let client = match crate::fetch::http_client("gate", None, Duration::from_secs(120), vec![host])
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    // The whole run is bounded too: a gate that answers each line slowly cannot hold the
    // command for ever.
    let verdicts = rt.block_on(async {
        let all = async {
            let mut out = Vec::new();
            for p in &parsed.pinned {
                out.push(ask(&client, &base, p).await?);
            }
            Ok::<_, String>(out)
        };
        tokio::time::timeout(Duration::from_secs(300), all)
            .await
            .unwrap_or_else(|_| Err(format!("the gate at {base} did not answer within 300 s")))
    });
    match verdicts {
        Ok(v) => report(path, &parsed, &v),
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// `tollgate health [--url URL]`: 0 when `URL/healthz` answers 200 within 5 s, else 1.
pub fn health(url: &str) -> i32 {
    let Ok(target) = reqwest::Url::parse(&format!("{}/healthz", url.trim_end_matches('/'))) else {
        eprintln!("error: --url {url:?} is not a URL");
        return 1;
    };
    let host = target.host_str().unwrap_or_default().to_ascii_lowercase();
    let Ok(rt) = super::runtime() else {
        return 1;
    };
    let answer = rt.block_on(async {
        let client = crate::fetch::http_client("gate", None, Duration::from_secs(5), vec![host])
            .map_err(|e| e.to_string())?;
        client.get(target).send().await.map_err(|e| e.to_string())
    });
    match answer {
        Ok(r) if r.status().is_success() => 0,
        Ok(r) => {
            eprintln!("unhealthy: /healthz answered {}", r.status());
            1
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            1
        }
    }
}
