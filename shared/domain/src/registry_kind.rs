//! What kind of registry a destination is, as the configuration says it
//! (`registries[].kind`), and what that changes: how its credentials are
//! obtained, how a repository is made ready before the first push, and
//! what it does not do the standard way ([`Quirks`]). Each kind is a file
//! of its own under `registry_kind/` with its settings, how its fields are
//! read and its quirks; this file holds the enum and one arm per kind. The
//! copy engine is the same for every kind. The recipe for a new kind or a
//! new quirk is in [`crate::host`].

use std::path::PathBuf;

use serde::Deserialize;

use crate::host::Quirks;

mod ecr;
mod harbor;
mod registry;

pub use ecr::{EcrEncryption, EcrSettings, TagMutability};
pub use harbor::HarborSettings;

/// A registry's kind settings that do not hold together: the field and
/// why. The configuration reports it as its own error ([`crate::config`]).
#[derive(Debug, thiserror::Error)]
#[error("configuration field `{field}`: {reason}")]
pub struct KindError {
    pub field: String,
    pub reason: String,
}

impl KindError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        KindError { field: field.into(), reason: reason.into() }
    }
}

/// A registry's kind with its settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RegistryKind {
    /// Any OCI distribution registry: credentials from the configuration,
    /// repositories created by the first push.
    #[default]
    Registry,
    /// Amazon ECR: credentials from the function's IAM role, repositories
    /// created on first push.
    Ecr(EcrSettings),
    /// Another Harbor: projects created on first push when asked to.
    Harbor(HarborSettings),
}

impl RegistryKind {
    pub fn name(&self) -> &'static str {
        self.kind_name().as_str()
    }

    /// What a registry of this kind does not do the standard way.
    pub fn quirks(&self) -> Quirks {
        match self {
            RegistryKind::Registry => registry::QUIRKS,
            RegistryKind::Ecr(_) => ecr::QUIRKS,
            RegistryKind::Harbor(_) => harbor::QUIRKS,
        }
    }

    fn kind_name(&self) -> KindName {
        match self {
            RegistryKind::Registry => KindName::Registry,
            RegistryKind::Ecr(_) => KindName::Ecr,
            RegistryKind::Harbor(_) => KindName::Harbor,
        }
    }
}

/// Where a private CA bundle (PEM) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    File(PathBuf),
    Secret(String),
}

/// The kind-specific fields of `registries[]`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKindFields {
    pub kind: Option<KindName>,
    pub region: Option<String>,
    pub registry_id: Option<String>,
    pub role_arn: Option<String>,
    pub tag_mutability: Option<TagMutability>,
    pub scan_on_push: Option<bool>,
    pub encryption: Option<EncryptionName>,
    pub kms_key: Option<String>,
    pub create_projects: Option<bool>,
    pub storage_limit: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KindName {
    Registry,
    Ecr,
    Harbor,
}

impl KindName {
    fn as_str(self) -> &'static str {
        match self {
            KindName::Registry => "registry",
            KindName::Ecr => "ecr",
            KindName::Harbor => "harbor",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum EncryptionName {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "KMS")]
    Kms,
}

impl RawKindFields {
    /// Validates the fields against the kind: a field of another kind is an
    /// error naming it, so a typo'd kind never silently drops a setting.
    pub(crate) fn resolve(self, field: &str, host: &str, has_credentials: bool) -> Result<RegistryKind, KindError> {
        let kind = self.kind.unwrap_or(KindName::Registry);
        let fields = [
            ("region", KindName::Ecr, self.region.is_some()),
            ("registry_id", KindName::Ecr, self.registry_id.is_some()),
            ("role_arn", KindName::Ecr, self.role_arn.is_some()),
            ("tag_mutability", KindName::Ecr, self.tag_mutability.is_some()),
            ("scan_on_push", KindName::Ecr, self.scan_on_push.is_some()),
            ("encryption", KindName::Ecr, self.encryption.is_some()),
            ("kms_key", KindName::Ecr, self.kms_key.is_some()),
            ("create_projects", KindName::Harbor, self.create_projects.is_some()),
            ("storage_limit", KindName::Harbor, self.storage_limit.is_some()),
        ];
        if let Some((name, of, _)) = fields.iter().find(|(_, of, set)| *set && *of != kind) {
            return Err(KindError::invalid(
                format!("{field}.{name}"),
                format!("only for kind: {} (this registry's kind is {})", of.as_str(), kind.as_str()),
            ));
        }
        Ok(match kind {
            KindName::Registry => registry::resolve(self).map(|()| RegistryKind::Registry)?,
            KindName::Ecr => RegistryKind::Ecr(ecr::resolve(self, field, host, has_credentials)?),
            KindName::Harbor => RegistryKind::Harbor(harbor::resolve(self, field)?),
        })
    }
}

/// `ca_file` / `ca_secret_id`: at most one.
pub(crate) fn ca_source(
    field: &str,
    ca_file: Option<String>,
    ca_secret_id: Option<String>,
) -> Result<Option<CaSource>, KindError> {
    match (ca_file, ca_secret_id) {
        (None, None) => Ok(None),
        (Some(f), None) if !f.is_empty() => Ok(Some(CaSource::File(f.into()))),
        (None, Some(s)) if !s.is_empty() => Ok(Some(CaSource::Secret(s))),
        _ => Err(KindError::invalid(format!("{field}.ca_file"), "set one of ca_file or ca_secret_id, not empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawKindFields {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn ecr_settings_come_from_the_host_or_the_fields() {
        let k = raw("{ kind: ecr, tag_mutability: IMMUTABLE, scan_on_push: true, encryption: KMS, kms_key: alias/x }")
            .resolve("registries[0]", "123456789012.dkr.ecr.eu-west-1.amazonaws.com", false)
            .unwrap();
        let RegistryKind::Ecr(e) = k else { panic!("{k:?}") };
        assert_eq!((e.region.as_str(), e.registry_id.as_deref()), ("eu-west-1", Some("123456789012")));
        assert_eq!(e.tag_mutability, TagMutability::Immutable);
        assert_eq!(e.encryption, EcrEncryption::Kms(Some("alias/x".into())));
        assert!(e.scan_on_push);

        let err = raw("{ kind: ecr }").resolve("registries[0]", "127.0.0.1", false).unwrap_err().to_string();
        assert!(err.contains("registries[0].region"), "{err}");
        let err = raw("{ kind: ecr, region: r }").resolve("registries[0]", "h", true).unwrap_err().to_string();
        assert!(err.contains("registries[0].credentials"), "{err}");
    }

    #[test]
    fn a_field_of_another_kind_is_refused_by_name() {
        for (yaml, named) in [
            ("{ create_projects: true }", "registries[1].create_projects"),
            ("{ kind: harbor, role_arn: 'arn:aws:iam::1:role/r' }", "registries[1].role_arn"),
            ("{ kind: ecr, region: r, storage_limit: 5 }", "registries[1].storage_limit"),
            ("{ kind: ecr, region: r, kms_key: k }", "registries[1].kms_key"),
        ] {
            let err = raw(yaml).resolve("registries[1]", "h", false).unwrap_err().to_string();
            assert!(err.contains(named), "{yaml}: {err}");
        }
        let k = raw("{ kind: harbor, create_projects: true, storage_limit: 1073741824 }")
            .resolve("registries[1]", "h", true)
            .unwrap();
        assert_eq!(k, RegistryKind::Harbor(HarborSettings { create_projects: true, storage_limit: Some(1 << 30) }));
        assert_eq!(raw("{}").resolve("r", "h", true).unwrap(), RegistryKind::Registry);
    }

    /// The kinds' quirks as data: ECR takes whole blobs only; the others
    /// follow the spec. Every kind asks for mounts (a refusal is learnt).
    #[test]
    fn each_kind_has_its_quirks() {
        let ecr = raw("{ kind: ecr, region: r }").resolve("r", "h", false).unwrap();
        let harbor = raw("{ kind: harbor }").resolve("r", "h", true).unwrap();
        for (kind, chunked_uploads) in [(RegistryKind::Registry, true), (ecr, false), (harbor, true)] {
            let quirks = kind.quirks();
            assert_eq!(quirks, Quirks { chunked_uploads, cross_repo_mounts: true }, "{}", kind.name());
        }
    }
}
