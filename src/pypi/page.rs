//! Upstream simple pages: PEP 691 JSON and PEP 503 HTML, parsed into one model. Pure and
//! lenient about layout, strict about what a link may point to.

use std::collections::HashMap;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::config::{is_loopback_host, origin_listed, HostPort};
use crate::policy::units::parse_rfc3339;
use crate::policy::Sha256;

/// One file as the upstream lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamFile {
    pub filename: String,
    /// Absolute, checked against the index's `file_hosts`.
    pub url: String,
    /// Lowercase hex, when the upstream declares a sha256.
    pub sha256: Option<String>,
    pub requires_python: Option<String>,
    /// PEP 592: `Some(reason)` when yanked (the reason may be empty).
    pub yanked: Option<String>,
    pub size: Option<u64>,
    /// PEP 700 upload time, Unix seconds.
    pub upload_time: Option<i64>,
    /// PEP 740: where the index says the file's provenance is (PEP 691 `provenance`, HTML
    /// `data-provenance`), resolved; `None`: the Integrity API's URL is asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

/// A project page as last fetched from the upstream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpstreamPage {
    pub fetched_at: i64,
    pub files: Vec<UpstreamFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("malformed upstream page: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct JsonPage {
    meta: JsonMeta,
    #[serde(default)]
    files: Vec<JsonFile>,
}

#[derive(Deserialize)]
struct JsonMeta {
    #[serde(rename = "api-version")]
    api_version: String,
}

#[derive(Deserialize)]
struct JsonFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: HashMap<String, String>,
    #[serde(rename = "requires-python")]
    requires_python: Option<String>,
    #[serde(default)]
    yanked: serde_json::Value,
    size: Option<u64>,
    #[serde(rename = "upload-time")]
    upload_time: Option<String>,
    #[serde(default)]
    provenance: Option<String>,
}

/// A link before its URL has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLink {
    pub filename: String,
    pub href: String,
    pub sha256: Option<String>,
    pub requires_python: Option<String>,
    pub yanked: Option<String>,
    pub size: Option<u64>,
    pub upload_time: Option<i64>,
    pub provenance: Option<String>,
}

fn valid_sha(s: &str) -> Option<String> {
    Sha256::parse(s).ok().map(|h| h.hex())
}

/// PEP 691 JSON. Only major version 1 is understood (the PEP says to refuse other majors).
pub fn parse_json(body: &[u8]) -> Result<(Vec<RawLink>, Option<Url>), PageError> {
    let page: JsonPage =
        serde_json::from_slice(body).map_err(|e| PageError::Malformed(format!("JSON: {e}")))?;
    if !page.meta.api_version.starts_with("1.") && page.meta.api_version != "1" {
        return Err(PageError::Malformed(format!(
            "unsupported api-version {:?}",
            page.meta.api_version
        )));
    }
    let links = page
        .files
        .into_iter()
        .map(|f| RawLink {
            sha256: f.hashes.get("sha256").and_then(|h| valid_sha(h)),
            yanked: match f.yanked {
                serde_json::Value::Bool(true) => Some(String::new()),
                serde_json::Value::String(s) => Some(s),
                _ => None,
            },
            upload_time: f.upload_time.as_deref().and_then(parse_rfc3339),
            filename: f.filename,
            href: f.url,
            requires_python: f.requires_python,
            size: f.size,
            provenance: f.provenance,
        })
        .collect();
    Ok((links, None))
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let ent = &rest[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ if ent.starts_with("#x") || ent.starts_with("#X") => {
                    u32::from_str_radix(&ent[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if ent.starts_with('#') => ent[1..].parse::<u32>().ok().and_then(char::from_u32),
                _ => None,
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Finds `needle` (lowercase ASCII) in `hay` ignoring ASCII case.
fn find_ci(hay: &str, from: usize, needle: &str) -> Option<usize> {
    let h = hay.as_bytes();
    let n = needle.as_bytes();
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (from..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Parses the attributes of a tag starting just after its name; returns them and the index
/// after the closing `>`.
fn parse_attrs(html: &str, mut i: usize) -> (HashMap<String, String>, usize) {
    let b = html.as_bytes();
    let mut attrs = HashMap::new();
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            return (attrs, i);
        }
        if b[i] == b'>' {
            return (attrs, i + 1);
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let name = html[start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vs = i + 1;
                let ve = html[vs..]
                    .bytes()
                    .position(|c| c == q)
                    .map(|p| vs + p)
                    .unwrap_or(b.len());
                value = decode_entities(&html[vs..ve]);
                i = (ve + 1).min(b.len());
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                    i += 1;
                }
                value = decode_entities(&html[vs..i]);
            }
        }
        if !name.is_empty() {
            attrs.entry(name).or_insert(value);
        }
    }
}

/// PEP 503 HTML: every `<a>` is a file; the text is its filename, `#sha256=` its hash,
/// `data-requires-python` and `data-yanked` (PEP 592) pass through. A `<base href>` is honoured.
pub fn parse_html(html: &str) -> (Vec<RawLink>, Option<String>) {
    let mut links = Vec::new();
    let mut base = None;
    if let Some(bpos) = find_ci(html, 0, "<base") {
        let (attrs, _) = parse_attrs(html, bpos + 5);
        base = attrs.get("href").cloned();
    }
    let mut pos = 0;
    while let Some(start) = find_ci(html, pos, "<a") {
        let after = start + 2;
        let next = html.as_bytes().get(after).copied();
        if !matches!(next, Some(c) if c.is_ascii_whitespace() || c == b'>') {
            pos = after;
            continue;
        }
        let (attrs, body_start) = parse_attrs(html, after);
        let body_end = find_ci(html, body_start, "</a").unwrap_or(html.len());
        pos = body_end.max(body_start);
        let Some(href) = attrs.get("href").filter(|h| !h.is_empty()) else {
            continue;
        };
        let text = decode_entities(html[body_start..body_end].trim());
        let filename = if text.is_empty() {
            href.split(['#', '?'])
                .next()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string()
        } else {
            text
        };
        let sha256 = href
            .split_once('#')
            .and_then(|(_, frag)| frag.strip_prefix("sha256="))
            .and_then(valid_sha);
        links.push(RawLink {
            filename,
            href: href.clone(),
            sha256,
            requires_python: attrs.get("data-requires-python").cloned(),
            yanked: attrs.get("data-yanked").cloned(),
            size: None,
            upload_time: None,
            provenance: attrs.get("data-provenance").cloned(),
        });
    }
    (links, base)
}

/// May a file link point here? Only http(s) to a configured file host; plain http only when
/// the host is loopback (a local upstream), never to a public host.
pub fn check_file_url(url: &Url, file_hosts: &[HostPort]) -> Result<(), String> {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    // By origin, not by host: another port of a file host is another service.
    let host_ok = origin_listed(file_hosts, url);
    match url.scheme() {
        "https" if host_ok => {}
        "http" if host_ok && is_loopback_host(&host) => {}
        _ => {
            return Err(format!(
                "file link to {}://{host}{} is not on a configured file host",
                url.scheme(),
                url.port().map(|p| format!(":{p}")).unwrap_or_default()
            ))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("file link carries credentials".into());
    }
    Ok(())
}

/// Resolves and checks every link; links that point elsewhere are dropped (and named in the
/// returned list of problems, for the log).
pub fn resolve_links(
    links: Vec<RawLink>,
    page_url: &Url,
    base: Option<&str>,
    file_hosts: &[HostPort],
) -> (Vec<UpstreamFile>, Vec<String>) {
    let base_url = base
        .and_then(|b| page_url.join(b).ok())
        .unwrap_or_else(|| page_url.clone());
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for l in links {
        let Ok(mut url) = base_url.join(&l.href) else {
            problems.push(format!("{}: unparseable link", l.filename));
            continue;
        };
        url.set_fragment(None);
        if let Err(e) = check_file_url(&url, file_hosts) {
            problems.push(format!("{}: {e}", l.filename));
            continue;
        }
        // A provenance URL elsewhere than the file hosts is not followed (the Integrity API's
        // URL on the index is asked instead).
        let provenance = l
            .provenance
            .as_deref()
            .and_then(|p| base_url.join(p).ok())
            .filter(|p| check_file_url(p, file_hosts).is_ok() || p.origin() == page_url.origin())
            .map(|p| p.to_string());
        files.push(UpstreamFile {
            provenance,
            filename: l.filename,
            url: url.to_string(),
            sha256: l.sha256,
            requires_python: l.requires_python,
            yanked: l.yanked,
            size: l.size,
            upload_time: l.upload_time,
        });
    }
    (files, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn html_links_with_hashes_and_attributes() {
        let html = format!(
            "<!DOCTYPE html><html><body>\n<A HREF=\"../../packages/demo-1.0-py3-none-any.whl#sha256={H}\" data-requires-python=\"&gt;=3.8\" data-yanked=\"bad &amp; broken\">demo-1.0-py3-none-any.whl</A><br/>\n\
             <a href='https://files.example/demo-1.1.tar.gz#md5=abc'>demo-1.1.tar.gz</a>\n<abbr>x</abbr><a>no href</a>\n<a href=/x/demo-0.9.zip></a></body></html>"
        );
        let (links, base) = parse_html(&html);
        assert_eq!(base, None);
        assert_eq!(links.len(), 3);
        assert_eq!(links[0].sha256.as_deref(), Some(H));
        assert_eq!(links[0].requires_python.as_deref(), Some(">=3.8"));
        assert_eq!(links[0].yanked.as_deref(), Some("bad & broken"));
        assert_eq!(links[1].sha256, None);
        assert_eq!(links[2].filename, "demo-0.9.zip");
    }

    #[test]
    fn malformed_html_does_not_panic() {
        for html in [
            "<a",
            "<a href=\"x",
            "<a href=x>y",
            "<a href=\"&#xZZ;&#99999999;\">&</a>",
            "\u{0}<a \u{feff}>",
        ] {
            let _ = parse_html(html);
        }
    }

    #[test]
    fn json_pages() {
        let body = format!(
            r#"{{"meta":{{"api-version":"1.1"}},"name":"demo","files":[
              {{"filename":"demo-1.0.tar.gz","url":"https://f.example/demo-1.0.tar.gz","hashes":{{"sha256":"{H}"}},"yanked":"oops","size":10,"upload-time":"2024-01-02T03:04:05.123Z"}},
              {{"filename":"demo-1.1.tar.gz","url":"x","hashes":{{"sha256":"nothex"}},"yanked":false}}]}}"#
        );
        let (links, _) = parse_json(body.as_bytes()).unwrap();
        assert_eq!(links[0].yanked.as_deref(), Some("oops"));
        assert_eq!(links[0].upload_time, Some(1_704_164_645));
        assert_eq!(links[0].size, Some(10));
        assert_eq!(links[1].sha256, None);
        assert_eq!(links[1].yanked, None);
        assert!(parse_json(b"{\"meta\":{\"api-version\":\"2.0\"},\"files\":[]}").is_err());
        assert!(parse_json(b"<html>").is_err());
        assert!(parse_json(b"{\"files\": 3}").is_err());
    }

    #[test]
    fn provenance_urls_stay_on_the_index_or_its_file_hosts() {
        let page = Url::parse("https://pypi.example/simple/demo/").unwrap();
        let hosts = vec![HostPort::parse("files.example").unwrap()];
        let mk = |prov: &str| RawLink {
            filename: "demo-1.0.tar.gz".into(),
            href: "https://files.example/demo-1.0.tar.gz".into(),
            sha256: None,
            requires_python: None,
            yanked: None,
            size: None,
            upload_time: None,
            provenance: Some(prov.into()),
        };
        let (files, _) = resolve_links(
            vec![
                mk("/integrity/demo/1.0/demo-1.0.tar.gz/provenance"),
                mk("https://files.example/p"),
                mk("https://evil.example/p"),
                mk("http://pypi.example/p"),
            ],
            &page,
            None,
            &hosts,
        );
        let got: Vec<Option<&str>> = files.iter().map(|f| f.provenance.as_deref()).collect();
        assert_eq!(
            got,
            [
                Some("https://pypi.example/integrity/demo/1.0/demo-1.0.tar.gz/provenance"),
                Some("https://files.example/p"),
                None,
                None
            ]
        );
    }

    #[test]
    fn links_only_to_file_hosts() {
        let page = Url::parse("http://127.0.0.1:9000/simple/demo/").unwrap();
        let hosts = vec![
            HostPort::parse("127.0.0.1:9000").unwrap(),
            HostPort::parse("files.example").unwrap(),
        ];
        let mk = |href: &str| RawLink {
            filename: "f".into(),
            href: href.into(),
            sha256: None,
            requires_python: None,
            yanked: None,
            size: None,
            upload_time: None,
            provenance: None,
        };
        let (files, problems) = resolve_links(
            vec![
                mk("../../packages/a.whl#sha256=x"),
                mk("https://files.example/b.whl"),
                mk("http://files.example/c.whl"),
                mk("https://evil.example/d.whl"),
                mk("file:///etc/passwd"),
                mk("https://user:pw@files.example/e.whl"),
                // Another port of a listed host is another service.
                mk("http://127.0.0.1:9001/packages/f.whl"),
                mk("https://files.example:8443/g.whl"),
            ],
            &page,
            None,
            &hosts,
        );
        let urls: Vec<&str> = files.iter().map(|f| f.url.as_str()).collect();
        assert_eq!(
            urls,
            vec![
                "http://127.0.0.1:9000/packages/a.whl",
                "https://files.example/b.whl"
            ]
        );
        assert_eq!(problems.len(), 6);
    }
}
