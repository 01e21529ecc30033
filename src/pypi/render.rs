//! Simple API responses: content negotiation (PEP 691) and rendering of PEP 503 HTML and
//! PEP 691 JSON at api-version 1.3 (PEP 700 upload times and sizes; PEP 740 provenance URLs;
//! PEP 708's optional keys are not emitted). Pure.

use std::fmt::Write;

use serde_json::{json, Map, Value};

use crate::policy::units::format_rfc3339;
use crate::policy::{ProjectName, Sha256};

pub const API_VERSION: &str = "1.3";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    HtmlV1,
    Html,
}

impl Format {
    /// Server preference when a client rates formats equally: JSON first (PEP 691).
    const ALL: [Format; 3] = [Format::Json, Format::HtmlV1, Format::Html];

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/vnd.pypi.simple.v1+json",
            Format::HtmlV1 => "application/vnd.pypi.simple.v1+html",
            Format::Html => "text/html",
        }
    }

    pub fn header_value(self) -> &'static str {
        match self {
            Format::Json => "application/vnd.pypi.simple.v1+json",
            Format::HtmlV1 => "application/vnd.pypi.simple.v1+html; charset=utf-8",
            Format::Html => "text/html; charset=utf-8",
        }
    }

    pub fn is_json(self) -> bool {
        self == Format::Json
    }
}

/// Chooses a format from `?format=` (exact content type) or the `Accept` header with q-values
/// (RFC 9110 §12.5.1). `None` means nothing acceptable: 406. A missing or entirely
/// unparseable Accept gets text/html, as PEP 691 recommends for clients that say nothing.
pub fn negotiate(format_param: Option<&str>, accept: Option<&str>) -> Option<Format> {
    if let Some(f) = format_param {
        // An unencoded `+` in a query string decodes to a space (URL form encoding).
        let f = f.replace(' ', "+");
        return Format::ALL.into_iter().find(|c| c.content_type() == f);
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Format::Html);
    };
    let mut ranges: Vec<(String, String, f32)> = Vec::new();
    for part in accept.split(',').take(64) {
        let mut pieces = part.split(';');
        let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let Some((t, s)) = media.split_once('/') else {
            continue;
        };
        if t.is_empty() || s.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for p in pieces {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                        .unwrap_or(0.0);
                }
            }
        }
        ranges.push((t.trim().to_string(), s.trim().to_string(), q));
    }
    if ranges.is_empty() {
        return Some(Format::Html);
    }
    let mut best: Option<(Format, f32)> = None;
    for cand in Format::ALL {
        let (ct, cs) = cand.content_type().split_once('/').unwrap_or(("", ""));
        // The most specific matching range decides the candidate's quality.
        let mut spec = -1;
        let mut q = 0.0;
        for (t, s, rq) in &ranges {
            let this = if t == ct && s == cs {
                2
            } else if t == ct && s == "*" {
                1
            } else if t == "*" && s == "*" {
                0
            } else {
                continue;
            };
            if this > spec {
                spec = this;
                q = *rq;
            }
        }
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((cand, q));
        }
    }
    best.map(|(f, _)| f)
}

/// HTML-escapes text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A file as the gate lists it.
#[derive(Debug, Clone)]
pub struct ListedFile {
    pub filename: String,
    pub sha256: Sha256,
    pub requires_python: Option<String>,
    pub yanked: Option<String>,
    pub size: Option<u64>,
    pub upload_time: Option<i64>,
    /// For wheels: `Some(None)` = metadata available, hash not yet known; `Some(Some(h))` known.
    pub core_metadata: Option<Option<Sha256>>,
    /// PEP 740: the gate keeps this file's verified provenance (served at `{file}.provenance`).
    pub provenance: bool,
}

pub fn file_url(base: &str, project: &ProjectName, f: &ListedFile) -> String {
    format!("{base}/files/{project}/{}/{}", f.sha256, f.filename)
}

pub fn render_index(format: Format, projects: &[&ProjectName]) -> String {
    if format.is_json() {
        let list: Vec<Value> = projects
            .iter()
            .map(|p| json!({ "name": p.as_str() }))
            .collect();
        return json!({ "meta": { "api-version": API_VERSION }, "projects": list }).to_string();
    }
    let mut o = String::from("<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"1.3\">\n<title>Simple index</title>\n</head>\n<body>\n");
    for p in projects {
        let _ = writeln!(o, "<a href=\"{p}/\">{p}</a><br>");
    }
    o.push_str("</body>\n</html>\n");
    o
}

pub fn render_project(
    format: Format,
    base: &str,
    project: &ProjectName,
    files: &[ListedFile],
    versions: &[String],
) -> String {
    if format.is_json() {
        let list: Vec<Value> = files
            .iter()
            .map(|f| {
                let mut m = Map::new();
                m.insert("filename".into(), f.filename.clone().into());
                m.insert("url".into(), file_url(base, project, f).into());
                m.insert("hashes".into(), json!({ "sha256": f.sha256.hex() }));
                if let Some(rp) = &f.requires_python {
                    m.insert("requires-python".into(), rp.clone().into());
                }
                m.insert(
                    "yanked".into(),
                    match &f.yanked {
                        None => false.into(),
                        Some(r) if r.is_empty() => true.into(),
                        Some(r) => r.clone().into(),
                    },
                );
                if let Some(s) = f.size {
                    m.insert("size".into(), s.into());
                }
                if let Some(t) = f.upload_time {
                    m.insert("upload-time".into(), format_rfc3339(t).into());
                }
                if let Some(md) = &f.core_metadata {
                    let v = match md {
                        Some(h) => json!({ "sha256": h.hex() }),
                        None => true.into(),
                    };
                    // PEP 714 renamed the key; the old one stays for older clients.
                    m.insert("core-metadata".into(), v.clone());
                    m.insert("dist-info-metadata".into(), v);
                }
                // PEP 740 (simple API 1.3): a URL, the gate's own copy of what it verified.
                if f.provenance {
                    m.insert(
                        "provenance".into(),
                        format!("{}.provenance", file_url(base, project, f)).into(),
                    );
                }
                Value::Object(m)
            })
            .collect();
        return json!({
            "meta": { "api-version": API_VERSION },
            "name": project.as_str(),
            "files": list,
            "versions": versions,
        })
        .to_string();
    }
    let mut o = format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"1.3\">\n<title>Links for {project}</title>\n</head>\n<body>\n<h1>Links for {project}</h1>\n"
    );
    for f in files {
        let _ = write!(
            o,
            "<a href=\"{}#sha256={}\"",
            escape(&file_url(base, project, f)),
            f.sha256
        );
        if let Some(rp) = &f.requires_python {
            let _ = write!(o, " data-requires-python=\"{}\"", escape(rp));
        }
        if let Some(y) = &f.yanked {
            let _ = write!(o, " data-yanked=\"{}\"", escape(y));
        }
        if let Some(md) = &f.core_metadata {
            let v = match md {
                Some(h) => format!("sha256={h}"),
                None => "true".into(),
            };
            let _ = write!(
                o,
                " data-core-metadata=\"{v}\" data-dist-info-metadata=\"{v}\""
            );
        }
        if f.provenance {
            let _ = write!(
                o,
                " data-provenance=\"{}.provenance\"",
                escape(&file_url(base, project, f))
            );
        }
        let _ = writeln!(o, ">{}</a><br>", escape(&f.filename));
    }
    o.push_str("</body>\n</html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_q_values() {
        let pip = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
        let uv = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";
        assert_eq!(negotiate(None, Some(pip)), Some(Format::Json));
        assert_eq!(negotiate(None, Some(uv)), Some(Format::Json));
        assert_eq!(negotiate(None, Some("text/html")), Some(Format::Html));
        assert_eq!(
            negotiate(None, Some("application/vnd.pypi.simple.v1+html")),
            Some(Format::HtmlV1)
        );
        assert_eq!(
            negotiate(
                None,
                Some("application/vnd.pypi.simple.v1+json;q=0.5, text/html")
            ),
            Some(Format::Html)
        );
        assert_eq!(negotiate(None, Some("*/*")), Some(Format::Json));
        assert_eq!(
            negotiate(None, Some("text/*;q=0.3, */*;q=0")),
            Some(Format::Html)
        );
        assert_eq!(negotiate(None, Some("application/json")), None);
        assert_eq!(negotiate(None, Some("*/*;q=0")), None);
        assert_eq!(negotiate(None, None), Some(Format::Html));
        // garbage is ignored rather than trusted
        assert_eq!(negotiate(None, Some(";;;,,,  /")), Some(Format::Html));
        assert_eq!(negotiate(None, Some("text/html;q=abc")), None);
        assert_eq!(
            negotiate(
                Some("application/vnd.pypi.simple.v1+json"),
                Some("text/html")
            ),
            Some(Format::Json)
        );
        assert_eq!(negotiate(Some("application/xml"), None), None);
    }

    #[test]
    fn html_escapes_untrusted_values() {
        let p = ProjectName::parse("demo").unwrap();
        let f = ListedFile {
            filename: "demo-1.0.tar.gz".into(),
            sha256: Sha256::parse(&"a".repeat(64)).unwrap(),
            requires_python: Some("\"><script>x</script>".into()),
            yanked: Some("<b>".into()),
            size: Some(3),
            upload_time: Some(0),
            core_metadata: None,
            provenance: false,
        };
        let html = render_project(
            Format::Html,
            "",
            &p,
            std::slice::from_ref(&f),
            &["1.0".into()],
        );
        assert!(html.contains("data-requires-python=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""));
        assert!(html.contains("data-yanked=\"&lt;b&gt;\""));
        assert!(!html.contains("<script>"));
        let json: Value = serde_json::from_str(&render_project(
            Format::Json,
            "https://g",
            &p,
            &[f],
            &["1.0".into()],
        ))
        .unwrap();
        assert_eq!(
            json["files"][0]["url"],
            format!("https://g/files/demo/{}/demo-1.0.tar.gz", "a".repeat(64))
        );
        assert_eq!(json["files"][0]["upload-time"], "1970-01-01T00:00:00Z");
        assert_eq!(json["meta"]["api-version"], "1.3");
        assert_eq!(json["versions"][0], "1.0");
    }
}
