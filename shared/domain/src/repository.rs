//! Repository paths and tags, validated with the OCI distribution grammar so
//! that nothing from a webhook can smuggle `..`, `?` or a host into a URL.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A repository path such as `library/alpine` or `proj/team/app`
/// (distribution spec: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/…)*`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepositoryPath(String);

/// A tag (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid repository path {0:?}: lowercase letters, digits and separators (. _ __ -) between '/'-separated components, at most 255 characters")]
    Repository(String),
    #[error("invalid tag {0:?}: at most 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag(String),
}

const MAX_REPOSITORY_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

impl RepositoryPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components (`proj`, `team`, `app`).
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator {
        self.0.split('/').collect::<Vec<_>>().into_iter()
    }

    /// Harbor's project: the first component.
    pub fn project(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }

    /// Joins a namespace and a rest (both already valid) into a path.
    pub fn join(namespace: &str, rest: &str) -> Result<Self, NameError> {
        format!("{namespace}/{rest}").parse()
    }
}

fn valid_component(c: &str) -> bool {
    // alnum runs separated by exactly one '.', one '_', '__', or any number of '-'.
    let bytes = c.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl FromStr for RepositoryPath {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_REPOSITORY_LEN || !s.split('/').all(valid_component) {
            return Err(NameError::Repository(s.chars().take(300).collect()));
        }
        Ok(RepositoryPath(s.to_owned()))
    }
}

impl FromStr for Tag {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !ok {
            return Err(NameError::Tag(s.chars().take(200).collect()));
        }
        Ok(Tag(s.to_owned()))
    }
}

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                value.parse()
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}
string_newtype!(RepositoryPath);
string_newtype!(Tag);

impl AsRef<str> for RepositoryPath {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths() {
        for ok in ["alpine", "library/alpine", "proj/team/app", "a.b_c__d---e/x-y", "0/1"] {
            assert!(ok.parse::<RepositoryPath>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "A/b",
            "a/../b",
            "..",
            "a/.b",
            "a_",
            "a___b",
            "a/b?x",
            "host:5000/a",
            "a b",
            &"a".repeat(256),
        ] {
            assert!(bad.parse::<RepositoryPath>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repository_helpers() {
        let r: RepositoryPath = "proj/team/app".parse().unwrap();
        assert_eq!(r.project(), "proj");
        assert_eq!(r.components().collect::<Vec<_>>(), ["proj", "team", "app"]);
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2.3", "_x", "1.0-rc_1", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "sha256:abc", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
    }
}
