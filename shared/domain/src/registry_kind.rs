//! What kind of registry a destination is, as the configuration says it
//! (`registries[].kind`), and what that changes: how its credentials are
//! obtained and how a repository is made ready before the first push. The
//! copy engine is the same for every kind; `registry/prepare.rs` acts on
//! these settings. A new kind adds a variant here and its arm there.

use std::path::PathBuf;

use serde::Deserialize;

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
        match self {
            RegistryKind::Registry => "registry",
            RegistryKind::Ecr(_) => "ecr",
            RegistryKind::Harbor(_) => "harbor",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrSettings {
    /// The registry's region (from `<account>.dkr.ecr.<region>.amazonaws.com`,
    /// or the `region` field).
    pub region: String,
    /// The account that owns the registry (from the host, or
    /// `registry_id`); `None`: the caller's own.
    pub registry_id: Option<String>,
    /// A role to assume for a registry in another account.
    pub role_arn: Option<String>,
    /// Settings of the repositories the relay creates.
    pub tag_mutability: TagMutability,
    pub scan_on_push: bool,
    pub encryption: EcrEncryption,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum TagMutability {
    #[default]
    Mutable,
    Immutable,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EcrEncryption {
    #[default]
    Aes256,
    /// A KMS key (ARN or id); `None`: the AWS managed key.
    Kms(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarborSettings {
    /// Create a missing project (private) through Harbor's API before the
    /// first push into it.
    pub create_projects: bool,
    /// Storage quota of created projects, bytes; `None`: Harbor's default.
    pub storage_limit: Option<i64>,
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
        let ecr_fields = [
            ("region", self.region.is_some()),
            ("registry_id", self.registry_id.is_some()),
            ("role_arn", self.role_arn.is_some()),
            ("tag_mutability", self.tag_mutability.is_some()),
            ("scan_on_push", self.scan_on_push.is_some()),
            ("encryption", self.encryption.is_some()),
            ("kms_key", self.kms_key.is_some()),
        ];
        let harbor_fields =
            [("create_projects", self.create_projects.is_some()), ("storage_limit", self.storage_limit.is_some())];
        let foreign = |fields: &[(&str, bool)], of: &str| -> Result<(), KindError> {
            match fields.iter().find(|(_, set)| *set) {
                Some((name, _)) => Err(KindError::invalid(
                    format!("{field}.{name}"),
                    format!("only for kind: {of} (this registry's kind is {})", kind_str(kind)),
                )),
                None => Ok(()),
            }
        };
        match kind {
            KindName::Registry => {
                foreign(&ecr_fields, "ecr")?;
                foreign(&harbor_fields, "harbor")?;
                Ok(RegistryKind::Registry)
            }
            KindName::Harbor => {
                foreign(&ecr_fields, "ecr")?;
                if self.storage_limit.is_some_and(|l| l < -1 || l == 0) {
                    return Err(KindError::invalid(
                        format!("{field}.storage_limit"),
                        "bytes, at least 1 (or -1 for unlimited)",
                    ));
                }
                Ok(RegistryKind::Harbor(HarborSettings {
                    create_projects: self.create_projects.unwrap_or(false),
                    storage_limit: self.storage_limit,
                }))
            }
            KindName::Ecr => {
                foreign(&harbor_fields, "harbor")?;
                if has_credentials {
                    return Err(KindError::invalid(
                        format!("{field}.credentials"),
                        "kind: ecr takes no static credentials: they come from the function's IAM role (role_arn for another account)",
                    ));
                }
                let (host_account, host_region) = ecr_host(host);
                let region = self.region.or(host_region).ok_or_else(|| {
                    KindError::invalid(
                        format!("{field}.region"),
                        "needed when the url is not <account>.dkr.ecr.<region>.amazonaws.com",
                    )
                })?;
                if let Some(arn) = &self.role_arn {
                    if !arn.starts_with("arn:") || !arn.contains(":role/") {
                        return Err(KindError::invalid(format!("{field}.role_arn"), "must be an IAM role ARN"));
                    }
                }
                let encryption = match (self.encryption, self.kms_key) {
                    (None | Some(EncryptionName::Aes256), None) => EcrEncryption::Aes256,
                    (Some(EncryptionName::Kms), key) => EcrEncryption::Kms(key),
                    (_, Some(_)) => {
                        return Err(KindError::invalid(format!("{field}.kms_key"), "only with encryption: KMS"))
                    }
                };
                Ok(RegistryKind::Ecr(EcrSettings {
                    region,
                    registry_id: self.registry_id.or(host_account),
                    role_arn: self.role_arn,
                    tag_mutability: self.tag_mutability.unwrap_or_default(),
                    scan_on_push: self.scan_on_push.unwrap_or(false),
                    encryption,
                }))
            }
        }
    }
}

fn kind_str(k: KindName) -> &'static str {
    match k {
        KindName::Registry => "registry",
        KindName::Ecr => "ecr",
        KindName::Harbor => "harbor",
    }
}

/// Account and region of `<account>.dkr.ecr.<region>.amazonaws.com[.cn]`.
fn ecr_host(host: &str) -> (Option<String>, Option<String>) {
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [account, "dkr", "ecr", region, "amazonaws", "com", ..] if account.chars().all(|c| c.is_ascii_digit()) => {
            (Some((*account).to_owned()), Some((*region).to_owned()))
        }
        _ => (None, None),
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
}
