//! What kind of registry a destination is, as the configuration says it
//! (`registries[].kind`), and what that changes: how its credentials are
//! obtained, how a repository is made ready before the first push, and
//! what it does not do the standard way ([`Quirks`]). Each kind is a file
//! of its own under `registry_kind/` with its settings, how its fields are
//! read and its quirks (its `KindSpec`); this file holds the `kinds!` list
//! the enum and the lookups are made from. The copy engine is the same for
//! every kind. The recipe for a new kind or a new quirk is in
//! [`crate::host`].

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

/// The kinds, one line each: the variant (with its settings type, if it
/// has settings) and the file under `registry_kind/` that describes it
/// (its [`KindSpec`] as `SPEC`). From this list come [`RegistryKind`], the
/// names `kind:` accepts (the variant's name in lower case) and where each
/// kind's name, fields, quirks and validation are found: a new kind is its
/// file and one line here.
macro_rules! kinds {
    ($( $(#[$doc:meta])* $variant:ident $( ($settings:ty) )? => $module:ident, )*) => {
        /// A registry's kind with its settings, validated.
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub enum RegistryKind {
            $( $(#[$doc])* $variant $( ($settings) )?, )*
        }

        /// `kind:` as written.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub(crate) enum KindName {
            $( $variant, )*
        }

        impl KindName {
            /// Every kind, in the order of the list.
            const ALL: &'static [KindName] = &[$( KindName::$variant, )*];

            fn spec(self) -> &'static KindSpec {
                match self {
                    $( KindName::$variant => &$module::SPEC, )*
                }
            }
        }

        impl RegistryKind {
            fn kind_name(&self) -> KindName {
                match self {
                    $( kinds!(@pattern $variant $( $settings )?) => KindName::$variant, )*
                }
            }
        }
    };
    (@pattern $variant:ident) => { RegistryKind::$variant };
    (@pattern $variant:ident $settings:ty) => { RegistryKind::$variant(_) };
}

kinds! {
    /// Any OCI distribution registry: credentials from the configuration,
    /// repositories created by the first push.
    #[default]
    Registry => registry,
    /// Amazon ECR: credentials from the function's IAM role, repositories
    /// created on first push.
    Ecr(EcrSettings) => ecr,
    /// Another Harbor: projects created on first push when asked to.
    Harbor(HarborSettings) => harbor,
}

/// What describes one kind: each file under `registry_kind/` has one, as
/// `SPEC`.
pub(crate) struct KindSpec {
    /// As `kind:` spells it.
    pub name: &'static str,
    /// What a registry of this kind does not do the standard way.
    pub quirks: Quirks,
    /// The fields of `registries[]` that only this kind takes: any other
    /// kind refuses them by name.
    pub fields: &'static [&'static str],
    /// Validates this kind's fields into its settings.
    pub resolve: fn(RawKindFields, &KindField) -> Result<RegistryKind, KindError>,
}

/// Where a kind's fields are validated: the registry's field path (for
/// errors), its URL's host and whether it names static credentials.
pub(crate) struct KindField<'a> {
    pub field: &'a str,
    pub host: &'a str,
    pub has_credentials: bool,
}

impl RegistryKind {
    pub fn name(&self) -> &'static str {
        self.kind_name().spec().name
    }

    /// What a registry of this kind does not do the standard way.
    pub fn quirks(&self) -> Quirks {
        self.kind_name().spec().quirks
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
pub(crate) enum EncryptionName {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "KMS")]
    Kms,
}

impl RawKindFields {
    /// The kind-specific fields that are set, by name.
    fn set(&self) -> Vec<&'static str> {
        let fields = [
            ("region", self.region.is_some()),
            ("registry_id", self.registry_id.is_some()),
            ("role_arn", self.role_arn.is_some()),
            ("tag_mutability", self.tag_mutability.is_some()),
            ("scan_on_push", self.scan_on_push.is_some()),
            ("encryption", self.encryption.is_some()),
            ("kms_key", self.kms_key.is_some()),
            ("create_projects", self.create_projects.is_some()),
            ("storage_limit", self.storage_limit.is_some()),
        ];
        fields.into_iter().filter(|(_, set)| *set).map(|(name, _)| name).collect()
    }

    /// Validates the fields against the kind: a field of another kind is an
    /// error naming it, so a typo'd kind never silently drops a setting.
    pub(crate) fn resolve(self, field: &str, host: &str, has_credentials: bool) -> Result<RegistryKind, KindError> {
        let spec = self.kind.unwrap_or(KindName::Registry).spec();
        for name in self.set() {
            if spec.fields.contains(&name) {
                continue;
            }
            let of = KindName::ALL.iter().map(|k| k.spec()).find(|k| k.fields.contains(&name));
            return Err(KindError::invalid(
                format!("{field}.{name}"),
                format!("only for kind: {} (this registry's kind is {})", of.map_or("?", |k| k.name), spec.name),
            ));
        }
        (spec.resolve)(self, &KindField { field, host, has_credentials })
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

    /// The list of kinds holds together: `kind:` reads each kind's name
    /// back to it, and every kind-specific field belongs to exactly one
    /// kind (else a field could be refused as "only for kind: ?").
    #[test]
    fn each_kind_is_named_and_owns_its_fields() {
        for &kind in KindName::ALL {
            let read: KindName = serde_yaml_ng::from_str(kind.spec().name).unwrap();
            assert_eq!(read, kind);
        }
        let all = raw("{ region: r, registry_id: '1', role_arn: a, tag_mutability: MUTABLE, scan_on_push: true, \
             encryption: KMS, kms_key: k, create_projects: true, storage_limit: 1 }");
        let set = all.set();
        assert_eq!(set.len(), 9, "{set:?}");
        for name in set {
            let owners = KindName::ALL.iter().filter(|k| k.spec().fields.contains(&name)).count();
            assert_eq!(owners, 1, "{name}");
        }
    }

    /// The kinds' quirks as data: ECR takes whole blobs only and its
    /// mounts say nothing of presence; the others follow the spec. Every kind asks for mounts (a refusal is learnt).
    #[test]
    fn each_kind_has_its_quirks() {
        let ecr = raw("{ kind: ecr, region: r }").resolve("r", "h", false).unwrap();
        let harbor = raw("{ kind: harbor }").resolve("r", "h", true).unwrap();
        for (kind, standard) in [(RegistryKind::Registry, true), (ecr, false), (harbor, true)] {
            let quirks = kind.quirks();
            let expected = Quirks { chunked_uploads: standard, mount_answers_presence: standard, ..Quirks::STANDARD };
            assert_eq!(quirks, expected, "{}", kind.name());
        }
    }
}
