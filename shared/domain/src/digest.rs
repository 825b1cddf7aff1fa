//! Content digests (`sha256:<hex>`), parsed once at the edge so the rest of
//! the code never handles an unchecked digest string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha512};

/// A content-addressable digest as the OCI distribution spec defines it.
///
/// Only the registered algorithms are accepted: a digest we cannot verify is
/// a digest we must not trust, so `md5:` or a short hex is a parse error.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {value:?}: {reason}")]
pub struct DigestError {
    value: String,
    reason: &'static str,
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Digest { algorithm: Algorithm::Sha256, hex: hex::encode(Sha256::digest(bytes)) }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// True when `bytes` hash to this digest (same algorithm).
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        let actual = match self.algorithm {
            Algorithm::Sha256 => hex::encode(Sha256::digest(bytes)),
            Algorithm::Sha512 => hex::encode(Sha512::digest(bytes)),
        };
        actual == self.hex
    }

    /// The tag under which the cosign-style tag schema stores accessories of
    /// this digest (`sha256-<hex>`), without the `.sig`/`.att`/`.sbom` suffix.
    pub fn tag_prefix(&self) -> String {
        format!("{}-{}", self.algorithm.name(), self.hex)
    }
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |reason| DigestError { value: value.chars().take(140).collect(), reason };
        let (algo, hex) = value.split_once(':').ok_or_else(|| err("missing ':'"))?;
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(err("unsupported algorithm (sha256 or sha512)")),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(err("wrong length for its algorithm"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err("not lowercase hex"));
        }
        Ok(Digest { algorithm, hex: hex.to_owned() })
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";

    #[test]
    fn parses_and_displays_round_trip() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(d.tag_prefix(), format!("sha256-{HEX}"));
    }

    #[test]
    fn rejects_malformed_digests() {
        for bad in [
            "",
            "sha256",
            "md5:abc",
            "sha256:abc",
            &format!("sha256:{}", HEX.to_uppercase()),
            &format!("sha256:{HEX}0"),
            &format!("sha256:../{}", &HEX[3..]),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn verifies_content() {
        let d = Digest::sha256_of(b"hello");
        assert!(d.verifies(b"hello"));
        assert!(!d.verifies(b"hello!"));
    }
}
