//! Rules and revocations made through the admin API, kept in the embedded store. A rule is kept
//! as the allowlist TOML it stands for, so it is validated by exactly the code that validates
//! the files and exports as the text one would commit to git.

use serde_json::Value;

pub use crate::loader::{
    api_revocations as revocations, api_rules as rules, ApiRevocation, ApiRule, Kind,
};

/// The JSON body of a rule as allowlist TOML: `{"name": …}` → `[[package]]\nname = …`. JSON
/// `null` has no TOML form: leave the field out instead.
pub fn to_toml(kind: Kind, body: &Value) -> Result<String, String> {
    let Value::Object(map) = body else {
        return Err("the rule must be a JSON object".into());
    };
    fn nulls(v: &Value, path: &str) -> Result<(), String> {
        match v {
            Value::Null => Err(format!("{path}: null is not a value; leave the field out")),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, x)| nulls(x, &format!("{path}[{i}]"))),
            Value::Object(o) => o
                .iter()
                .try_for_each(|(k, x)| nulls(x, &format!("{path}.{k}"))),
            _ => Ok(()),
        }
    }
    for (k, v) in map {
        nulls(v, k)?;
    }
    let doc = serde_json::json!({ kind.table(): [body] });
    toml::to_string(&doc).map_err(|e| format!("the rule cannot be written as TOML: {e}"))
}

/// The rule body back from its TOML (what the API shows and accepts).
pub fn to_json(rule: &ApiRule) -> Value {
    let parsed: Result<toml::Value, _> = toml::from_str(&rule.toml);
    let body = parsed
        .ok()
        .and_then(|v| v.get(rule.kind.table()).cloned())
        .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Value::Null);
    body
}

/// The field path at a line of a rule's TOML (where the loader found an error): the key on
/// that line, under the table it is in (`signature.keyless`, `attestation[].keys`).
pub fn field_at(toml: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = toml.lines().collect();
    let at = lines.get(line.checked_sub(1)?)?;
    let (key, _) = at.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let table = lines[..line - 1]
        .iter()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map(|l| {
            let inner = l.trim().trim_start_matches('[').trim_end_matches(']');
            let array = l.trim().starts_with("[[");
            // The rule's own table is the top level; a sub-table names its path.
            match inner.split_once('.') {
                Some((_, rest)) => format!("{rest}{}.", if array { "[]" } else { "" }),
                None => String::new(),
            }
        })
        .unwrap_or_default();
    Some(format!("{table}{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_rules_become_allowlist_tables() {
        let t = to_toml(
            Kind::Package,
            &json!({ "name": "numpy", "version": "2.4.6", "sha256": ["ab"] }),
        )
        .unwrap();
        assert!(t.contains("[[package]]"), "{t}");
        let rule = ApiRule {
            id: crate::policy::RuleId::parse("0123456789abcdef").unwrap(),
            kind: Kind::Package,
            toml: t,
            revision: 1,
            created: 0,
            created_by: "x".into(),
            updated: 0,
            updated_by: "x".into(),
            approval: None,
        };
        assert_eq!(
            to_json(&rule),
            json!({ "name": "numpy", "version": "2.4.6", "sha256": ["ab"] })
        );
        let nested = to_toml(
            Kind::Image,
            &json!({ "repository": "r", "signature": { "keyless": [{ "issuer": "i", "subject": null }] } }),
        );
        assert!(nested.unwrap_err().contains("signature.keyless[0].subject"));
        assert!(to_toml(Kind::Image, &json!([1])).is_err());
    }

    #[test]
    fn errors_name_their_field() {
        let t = "[[image]]\nrepository = \"r\"\n\n[image.signature]\nthreshold = \"x\"\n\n[[image.attestation]]\nkeys = 1\n";
        assert_eq!(field_at(t, 2).as_deref(), Some("repository"));
        assert_eq!(field_at(t, 5).as_deref(), Some("signature.threshold"));
        assert_eq!(field_at(t, 8).as_deref(), Some("attestation[].keys"));
        assert_eq!(field_at(t, 1), None);
        assert_eq!(field_at(t, 99), None);
        assert_eq!(field_at(t, 0), None);
    }
}
