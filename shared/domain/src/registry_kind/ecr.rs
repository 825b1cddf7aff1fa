//! `kind: ecr`: Amazon ECR. Credentials come from the function's IAM role
//! (a role to assume for another account), repositories are created
//! through ECR's API before the first push, and blobs go whole.

use serde::Deserialize;

use super::{EncryptionName, KindError, KindField, KindSpec, RawKindFields, RegistryKind};
use crate::host::Quirks;

pub(super) const SPEC: KindSpec = KindSpec {
    name: "ecr",
    // ECR mishandles chunked uploads through the distribution API (its
    // documentation says so): whole blobs only, whatever it answers. Its
    // 202 to a mount says nothing of what the repository holds (it
    // declines blobs no manifest refers to, and mounts only when the
    // account enables it).
    quirks: Quirks { chunked_uploads: false, mount_answers_presence: false, ..Quirks::STANDARD },
    fields: &["region", "registry_id", "role_arn", "tag_mutability", "scan_on_push", "encryption", "kms_key"],
    resolve: |raw, at| resolve(raw, at).map(RegistryKind::Ecr),
};

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

fn resolve(raw: RawKindFields, at: &KindField) -> Result<EcrSettings, KindError> {
    let field = at.field;
    if at.has_credentials {
        return Err(KindError::invalid(
            format!("{field}.credentials"),
            "kind: ecr takes no static credentials: they come from the function's IAM role (role_arn for another account)",
        ));
    }
    let (host_account, host_region) = ecr_host(at.host);
    let region = raw.region.or(host_region).ok_or_else(|| {
        KindError::invalid(
            format!("{field}.region"),
            "needed when the url is not <account>.dkr.ecr.<region>.amazonaws.com",
        )
    })?;
    if let Some(arn) = &raw.role_arn {
        if !arn.starts_with("arn:") || !arn.contains(":role/") {
            return Err(KindError::invalid(format!("{field}.role_arn"), "must be an IAM role ARN"));
        }
    }
    let encryption = match (raw.encryption, raw.kms_key) {
        (None | Some(EncryptionName::Aes256), None) => EcrEncryption::Aes256,
        (Some(EncryptionName::Kms), key) => EcrEncryption::Kms(key),
        (_, Some(_)) => return Err(KindError::invalid(format!("{field}.kms_key"), "only with encryption: KMS")),
    };
    Ok(EcrSettings {
        region,
        registry_id: raw.registry_id.or(host_account),
        role_arn: raw.role_arn,
        tag_mutability: raw.tag_mutability.unwrap_or_default(),
        scan_on_push: raw.scan_on_push.unwrap_or(false),
        encryption,
    })
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
