//! The `WWW-Authenticate` challenge of a registry's 401.

use std::collections::HashMap;

/// What the registry asked for on its last 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value (RFC 7235 auth-params; quoted
    /// strings may contain commas and escaped quotes).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(rest);
        let realm = params.get("realm")?.clone();
        Some(Challenge::Bearer { realm, service: params.get("service").cloned() })
    }
}

fn auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | ',')) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|&c| c != ',').collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(Challenge::parse("Basic realm=\"Registry Realm\""), Some(Challenge::Basic));
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer service="s", realm="http://127.0.0.1:9/t?x=\"y\"""#),
            Some(Challenge::Bearer { realm: "http://127.0.0.1:9/t?x=\"y\"".into(), service: Some("s".into()) })
        );
        assert_eq!(Challenge::parse("Bearer service=\"s\""), None);
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }
}
