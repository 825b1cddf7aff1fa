//! The configuration file: one YAML document a Harbor user can read at a
//! glance, parsed and validated once per cold start into typed values.
//!
//! Field names follow Harbor's replication-rule vocabulary (see
//! docs/configuration.md). Every error names the field it is about.

use std::path::Path;

use serde::Deserialize;
use url::Url;

use crate::registry_kind::{CaSource, RegistryKind};
use crate::rules::Rule;
use crate::throughput::MinThroughput;

mod raw;

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub webhook: WebhookAuthSource,
    pub registries: Vec<Registry>,
    pub rules: Vec<Rule>,
    pub worker: WorkerSettings,
    pub secrets: SecretSettings,
}

/// How long secrets read from Secrets Manager (or the environment) are
/// trusted; all optional in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretSettings {
    /// Registry and source credentials and the webhook's accepted values are
    /// read again after this many seconds, so a rotation needs no redeploy.
    /// (A registry's credentials are also read again at once when it
    /// answers 401/403.)
    pub ttl_seconds: u64,
    /// When the webhook's values could not be read again for this long,
    /// the old ones are no longer accepted: the webhook answers 503 until a
    /// read succeeds (fail closed: a revoked value must not live on because
    /// Secrets Manager is unreachable).
    pub fail_closed_after_seconds: u64,
}

impl Default for SecretSettings {
    fn default() -> Self {
        SecretSettings { ttl_seconds: 300, fail_closed_after_seconds: 3600 }
    }
}

impl SecretSettings {
    pub fn ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.ttl_seconds)
    }

    pub fn fail_closed_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.fail_closed_after_seconds)
    }
}

/// Whether the source is read through Harbor's REST API
/// (`source.harbor_api`): `true`, `false`, or absent — then the source is
/// asked at start whether it is a Harbor (`GET /api/v2.0/ping` answering
/// `Pong`, which needs no account).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HarborApiUse {
    On,
    Off,
    Detect,
}

impl HarborApiUse {
    /// Rules that need Harbor's API (label and resource filters) are
    /// allowed unless it is switched off; a detected non-Harbor refuses
    /// them at start.
    pub fn may_be_on(self) -> bool {
        self != HarborApiUse::Off
    }
}

/// The Harbor images come from.
#[derive(Debug, Clone)]
pub struct Source {
    pub url: Url,
    /// Where the functions reach the source — its registry API and
    /// Harbor's REST API (`source.api_url`): an internal address of a
    /// private Harbor, when Harbor's events name its external one
    /// (`url`). `url` when not set.
    pub api_url: Url,
    /// `host[:port]` as it appears in Harbor's `resource_url` (no scheme).
    pub host: String,
    pub credentials: Option<CredentialsRef>,
    pub harbor_api: HarborApiUse,
    pub insecure: bool,
    /// Token services trusted besides https ones and the registry's own
    /// origin (`token_realms`): the credentials are sent to a realm.
    pub token_realms: Vec<Url>,
    /// A private CA bundle the certificate is verified against.
    pub ca: Option<CaSource>,
}

/// A destination registry, referred to by `name` from rules and tasks.
#[derive(Debug, Clone)]
pub struct Registry {
    pub name: String,
    pub url: Url,
    pub credentials: Option<CredentialsRef>,
    pub insecure: bool,
    /// As [`Source::token_realms`].
    pub token_realms: Vec<Url>,
    /// As [`Source::ca`].
    pub ca: Option<CaSource>,
    /// What kind of registry it is (how credentials are obtained and a
    /// repository made ready).
    pub kind: RegistryKind,
}

/// Where a secret lives. The value itself is never stored in the config.
/// Read through [`RawCredentials`], not `#[serde(untagged)]`: untagged
/// ignores unknown fields and answers every mistake with "did not match any
/// variant of untagged enum".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCredentials")]
pub enum CredentialsRef {
    /// A user name and the environment variable holding the password.
    Env { username: String, password_env: String },
    /// A Secrets Manager secret whose value is `{"username": …, "password": …}`.
    Secret { secret_id: String },
}

/// `credentials:` as written: every field optional, so that a wrong
/// combination is answered with the field to add or drop. `password` is
/// read only to be refused by name: its value is skipped, never kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    username: Option<String>,
    password_env: Option<String>,
    secret_id: Option<String>,
    password: Option<serde::de::IgnoredAny>,
}

/// Why a `credentials:` entry is refused. `field` is the one inside it to
/// fix, empty for the entry as a whole; the text never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if field.is_empty() { String::new() } else { format!("`{field}`: ") })]
pub struct CredentialsError {
    pub field: &'static str,
    pub reason: String,
}

impl TryFrom<RawCredentials> for CredentialsRef {
    type Error = CredentialsError;

    fn try_from(raw: RawCredentials) -> Result<CredentialsRef, CredentialsError> {
        let refuse = |field, reason: &str| Err(CredentialsError { field, reason: reason.to_owned() });
        if raw.password.is_some() {
            return refuse(
                "password",
                "inline passwords are not accepted: put the password in an environment variable named by `password_env` (with `username`), or in Secrets Manager named by `secret_id`",
            );
        }
        match (raw.username, raw.password_env, raw.secret_id) {
            (None, None, Some(secret_id)) if secret_id.is_empty() => refuse("secret_id", "must not be empty"),
            (None, None, Some(secret_id)) => Ok(CredentialsRef::Secret { secret_id }),
            (Some(username), Some(_), None) if username.is_empty() => refuse("username", "must not be empty"),
            (Some(_), Some(password_env), None) if password_env.is_empty() => {
                refuse("password_env", "must not be empty")
            }
            (Some(username), Some(password_env), None) => Ok(CredentialsRef::Env { username, password_env }),
            (username, password_env, Some(_)) => {
                let (field, drop) = match username {
                    Some(_) if password_env.is_some() => ("username", "drop `username` and `password_env`"),
                    Some(_) => ("username", "drop `username`"),
                    None => ("password_env", "drop `password_env`"),
                };
                refuse(field, &format!("`secret_id` names a secret holding both the user name and the password: {drop}, or drop `secret_id` to use `username` with `password_env`"))
            }
            (Some(_), None, None) => refuse(
                "password_env",
                "missing: `username` needs `password_env`, the environment variable holding the password (or use `secret_id` alone)",
            ),
            (None, Some(_), None) => refuse("username", "missing: `password_env` needs `username`"),
            (None, None, None) => refuse(
                "",
                "empty: set `secret_id`, or `username` with `password_env` (leave `credentials` out for anonymous access)",
            ),
        }
    }
}

/// Something the configuration allows but an operator should know of:
/// credentials sent where they can be read on the way. `relay check` prints
/// these, and the functions log them at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration field `{}`: {}", self.field, self.reason)
    }
}

/// Where the accepted webhook `Authorization` values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookAuthSource {
    /// Environment variable with comma-separated accepted values.
    Env(String),
    /// Secrets Manager secret: a plain string of comma-separated values.
    Secret(String),
}

/// Tunables of the worker; all optional in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Blobs of one image copied at the same time. 3 by default: on the
    /// 1 GiB / 8-layer benchmark it copies as fast as 4 (4.1–4.2 s either
    /// way) with 1.5 MiB less peak memory (14.8 vs 16.3 MiB).
    pub blob_concurrency: usize,
    /// Tasks processed at the same time: those of one batch under Lambda,
    /// those of every batch in hand standalone (it receives while tasks
    /// run). Many small tasks are mostly round trips, so they run side by
    /// side; the bytes are bounded by `stream_concurrency`.
    pub task_concurrency: usize,
    /// Blobs streamed from the source at the same time by the whole
    /// process, whatever the number of tasks: the byte-heavy tasks share
    /// these (and the memory they cost). A read shared by several
    /// destinations counts once.
    pub stream_concurrency: usize,
    /// Under Lambda, no new blob is started when less than this many
    /// seconds remain: the message fails and SQS redelivers it, and the
    /// blobs already copied are skipped next time.
    pub deadline_margin_seconds: u64,
    /// Signatures, SBOMs and attestations follow their artifact (as
    /// Harbor's replication copies accessories). Off: the artifact only.
    pub referrers: bool,
    /// A transient failure makes the message visible again after this
    /// many seconds, doubling with each receive (with jitter, at least the
    /// registry's `Retry-After`) up to `retry_max_seconds` — instead of the
    /// queue's 30-minute visibility timeout.
    pub retry_base_seconds: u64,
    pub retry_max_seconds: u64,
    /// A task for an unavailable destination is parked (re-enqueued, not a
    /// failed attempt) for this many seconds, doubling with each parking up
    /// to `park_max_seconds` (SQS delays at most 900 s). The breaker's open
    /// period between probes follows the same steps.
    pub park_base_seconds: u64,
    pub park_max_seconds: u64,
    /// With a parking queue (`RELAY_PARKING_QUEUE_URL`): an unavailable
    /// registry is asked again every this many seconds, and its parked
    /// tasks are back on the copy queue as soon as it answers.
    pub probe_seconds: u64,
    /// With a parking queue: a task parked longer than this is
    /// dead-lettered with that reason instead of waiting on (a day by
    /// default; at most 13 days, inside the parking queue's 14-day
    /// retention).
    pub park_limit_seconds: u64,
    /// Connection failures or 5xx in a row that mark a destination
    /// unavailable (its breaker opens).
    pub breaker_failures: u32,
    /// Continuations of one task (a copy longer than an invocation) before
    /// it is retried as an ordinary failure.
    pub max_continuations: u32,
    /// A blob that moves fewer bytes than this per second, averaged over
    /// `throughput_window_seconds`, is given up and tried again: a registry
    /// that trickles must not hold a worker until the Lambda timeout. With a
    /// rule's `bandwidth_kbps`, at most half that limit.
    pub min_throughput_bytes_per_second: u64,
    pub throughput_window_seconds: u64,
}

impl WorkerSettings {
    /// The margin kept before `deadline`: `deadline_margin_seconds`, but at
    /// most a quarter of the time left, so a function with a short timeout
    /// (10 s, with the default 15 s margin) still copies.
    pub fn margin_before(&self, deadline: std::time::Instant) -> std::time::Duration {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        std::time::Duration::from_secs(self.deadline_margin_seconds).min(left / 4)
    }

    pub fn min_throughput(&self) -> MinThroughput {
        MinThroughput {
            bytes_per_second: self.min_throughput_bytes_per_second,
            window: std::time::Duration::from_secs(self.throughput_window_seconds),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            blob_concurrency: 3,
            task_concurrency: 10,
            stream_concurrency: 4,
            deadline_margin_seconds: 15,
            referrers: true,
            retry_base_seconds: 10,
            retry_max_seconds: 900,
            park_base_seconds: 30,
            park_max_seconds: 900,
            probe_seconds: 20,
            park_limit_seconds: 86_400,
            breaker_failures: 3,
            max_continuations: 100,
            min_throughput_bytes_per_second: MinThroughput::DEFAULT.bytes_per_second,
            throughput_window_seconds: MinThroughput::DEFAULT.window.as_secs(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("configuration: {0}")]
    Syntax(String),
    #[error("configuration field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

impl From<crate::registry_kind::KindError> for ConfigError {
    fn from(e: crate::registry_kind::KindError) -> Self {
        ConfigError::Invalid { field: e.field, reason: e.reason }
    }
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text)
    }

    /// Parses and validates a YAML document.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        raw.validate()
    }

    pub fn registry(&self, name: &str) -> Option<&Registry> {
        self.registries.iter().find(|r| r.name == name)
    }

    /// Each place credentials go over plain `http://` (the registry's URL or
    /// a token realm) or to a server whose certificate is not verified
    /// (`insecure: true`). Accepted, since a lab needs them, but never
    /// silently: the field is named so it can be fixed before production.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut warnings = Vec::new();
        if self.source.credentials.is_some() {
            let s = &self.source;
            warnings.extend(credential_warnings("source", "the source", &s.api_url, s.insecure, &s.token_realms));
        }
        for (i, r) in self.registries.iter().enumerate().filter(|(_, r)| r.sends_credentials()) {
            let field = format!("registries[{i}]");
            warnings.extend(credential_warnings(&field, &r.name, &r.url, r.insecure, &r.token_realms));
        }
        warnings
    }

    /// Logs [`Config::warnings`] (start-up) and hands the configuration on.
    pub fn logging_warnings(self) -> Config {
        for w in self.warnings() {
            tracing::warn!(field = %w.field, "{w}");
        }
        self
    }
}

impl Registry {
    /// Whether the relay sends this registry credentials: configured ones,
    /// or ECR's token from the function's role.
    fn sends_credentials(&self) -> bool {
        self.credentials.is_some() || matches!(self.kind, RegistryKind::Ecr(_))
    }
}

/// The warnings of one registry (`field`, called `name`) that is sent
/// credentials: see [`Config::warnings`].
fn credential_warnings(field: &str, name: &str, url: &Url, insecure: bool, realms: &[Url]) -> Vec<ConfigWarning> {
    let mut warnings = Vec::new();
    if url.scheme() == "http" {
        warnings.push(ConfigWarning {
            field: format!("{field}.url"),
            reason: format!(
                "the credentials of {name} go over plain http:// to {}, readable on the way: use https://",
                host_port(url)
            ),
        });
    } else if insecure {
        warnings.push(ConfigWarning {
            field: format!("{field}.insecure"),
            reason: format!(
                "the credentials of {name} go to a server whose TLS certificate is not verified: drop insecure: true, and name a private CA with ca_file or ca_secret_id"
            ),
        });
    }
    for realm in realms.iter().filter(|r| r.scheme() == "http") {
        warnings.push(ConfigWarning {
            field: format!("{field}.token_realms"),
            reason: format!(
                "the credentials of {name} go over plain http:// to the token service {}: use https://",
                host_port(realm)
            ),
        });
    }
    warnings
}

/// `host[:port]` of a URL, the way Harbor writes it in `resource_url`.
pub fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = include_str!("../../../examples/config.yaml");

    #[test]
    fn example_config_is_valid() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.source.host, "127.0.0.1:5001");
        assert_eq!(c.registries[0].name, "cluster1-registry");
        assert_eq!(c.rules[0].destination.registry, "cluster1-registry");
        assert_eq!(c.webhook, WebhookAuthSource::Env("RELAY_WEBHOOK_AUTH".into()));
        assert_eq!(c.secrets, SecretSettings { ttl_seconds: 300, fail_closed_after_seconds: 3600 });
        assert_eq!(c.registries[0].kind, RegistryKind::Registry);
    }

    /// The Lambda example validates, and names every secret by `secret_id`:
    /// the template has no way to set the environment variables the other
    /// forms read.
    #[test]
    fn the_lambda_example_is_valid_and_uses_secrets_manager_only() {
        let text = include_str!("../../../examples/config.lambda.yaml");
        let c = Config::parse(text).unwrap();
        assert!(matches!(c.webhook, WebhookAuthSource::Secret(_)));
        let refs = c.registries.iter().filter_map(|r| r.credentials.as_ref()).chain(c.source.credentials.as_ref());
        for r in refs {
            assert!(matches!(r, CredentialsRef::Secret { .. }), "{r:?}");
        }
        assert!(!text.contains("password_env") && !text.contains("auth_values_env"));
        assert!(c.registries.iter().any(|r| matches!(r.kind, RegistryKind::Ecr(_))));
    }

    #[test]
    fn concurrency_settings_are_at_least_one() {
        let c = Config::parse(BASE).unwrap();
        assert_eq!((c.worker.task_concurrency, c.worker.stream_concurrency, c.worker.blob_concurrency), (10, 4, 3));
        for field in ["blob_concurrency", "task_concurrency", "stream_concurrency"] {
            let yaml = format!("{BASE}worker: {{ {field}: 0 }}\n");
            let e = Config::parse(&yaml).unwrap_err().to_string();
            assert!(e.contains("concurrency must be at least 1"), "{field}: {e}");
        }
    }

    #[test]
    fn kinds_and_private_cas_parse() {
        let yaml = BASE.replace(
            "registries: [{ name: r, url: 'https://t' }]",
            "registries: [{ name: r, url: 'https://123456789012.dkr.ecr.us-west-2.amazonaws.com', kind: ecr, ca_secret_id: ca }]",
        );
        let c = Config::parse(&yaml).unwrap();
        let RegistryKind::Ecr(e) = &c.registries[0].kind else { panic!("{:?}", c.registries[0].kind) };
        assert_eq!((e.region.as_str(), e.registry_id.as_deref()), ("us-west-2", Some("123456789012")));
        assert_eq!(c.registries[0].ca, Some(CaSource::Secret("ca".into())));
    }

    fn error_of(yaml: &str) -> String {
        Config::parse(yaml).unwrap_err().to_string()
    }

    const BASE: &str =
        "source: { url: 'http://h:1' }\nwebhook: { auth_values_env: A }\nregistries: [{ name: r, url: 'https://t' }]\n";

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (BASE.replace("http://h:1", "ftp://h"), "source.url"),
            (BASE.replace("https://t", "https://u:p@t"), "registries[0].url"),
            (BASE.replace("webhook: { auth_values_env: A }\n", ""), "webhook"),
            (format!("{BASE}rules: [{{ name: x, destination: {{ registry: nope }} }}]"), "rules[0].destination.registry"),
            (format!("{BASE}rules: [{{ name: x, destination: {{ registry: r, namespace: ns, flatten: 4 }} }}]"), "rules[0].destination.flatten"),
            (format!("{BASE}rules: [{{ name: x, filters: {{ name: 'a/[' }}, destination: {{ registry: r }} }}]"), "rules[0].filters.name"),
            (format!("{BASE}rules: [{{ name: x, destination: {{ registry: r }}, bandwidth_kbps: 0 }}]"), "rules[0].bandwidth_kbps"),
            (format!("{BASE}rules: [{{ name: x, destination: {{ registry: r }} }}, {{ name: x, destination: {{ registry: r }} }}]"), "rules[1].name"),
            (BASE.replace("name: r,", "name: r, colour: red,"), "colour"),
            (format!("{BASE}secrets: {{ ttl_seconds: 0 }}"), "secrets.ttl_seconds"),
            (BASE.replace("name: r,", "name: r, create_projects: true,"), "registries[0].create_projects"),
            (BASE.replace("name: r,", "name: r, kind: ecr,"), "registries[0].region"),
            (BASE.replace("name: r,", "name: r, ca_file: '', ca_secret_id: x,"), "registries[0].ca_file"),
            (BASE.replace("name: r,", "name: r, kind: quay,"), "kind"),
            (format!("{BASE}secrets: {{ ttl_seconds: 600, fail_closed_after_seconds: 300 }}"), "secrets.fail_closed_after_seconds"),
        ];
        for (yaml, field) in cases {
            let err = error_of(&yaml);
            assert!(err.contains(field), "{err:?} should name {field:?}");
        }
    }

    /// A private Harbor: events name its external address (`url`, whose
    /// host they must carry), the functions reach it at `api_url`.
    #[test]
    fn the_source_is_reached_at_api_url_and_named_by_url() {
        let c = Config::parse(&BASE.replace(
            "url: 'http://h:1'",
            "url: 'https://harbor.example.com', api_url: 'https://harbor.internal:8443'",
        ))
        .unwrap();
        assert_eq!(c.source.host, "harbor.example.com");
        assert_eq!(c.source.api_url.as_str(), "https://harbor.internal:8443/");
        let plain = Config::parse(BASE).unwrap();
        assert_eq!(plain.source.api_url, plain.source.url, "url when not set");
        let err = error_of(&BASE.replace("url: 'http://h:1'", "url: 'http://h:1', api_url: 'harbor.internal'"));
        assert!(err.contains("source.api_url"), "{err}");
    }

    #[test]
    fn credentials_forms() {
        let env: CredentialsRef = serde_yaml_ng::from_str("{ username: 'robot$relay', password_env: P }").unwrap();
        assert!(matches!(env, CredentialsRef::Env { .. }));
        let secret: CredentialsRef = serde_yaml_ng::from_str("{ secret_id: s }").unwrap();
        assert_eq!(secret, CredentialsRef::Secret { secret_id: "s".into() });
        let err = serde_yaml_ng::from_str::<CredentialsRef>("{ username: u, password: hunter2 }").unwrap_err();
        let err = err.to_string();
        assert!(err.contains("`password`: inline passwords are not accepted") && !err.contains("hunter2"), "{err}");
    }

    /// The reference's promise (docs/configuration.md): a typo never changes what a rule does. Every
    /// configuration type is fed a misspelt field; the error must name it.
    #[test]
    fn every_configuration_type_refuses_a_misspelt_field() {
        let rule = |fields: &str| format!("{BASE}rules: [{{ name: x, destination: {{ registry: r }}{fields} }}]");
        let cases = [
            ("top level", format!("{BASE}rulez: []"), "rulez"),
            ("source", BASE.replace("url: 'http://h:1'", "url: 'http://h:1', insecur: true"), "insecur"),
            ("webhook", BASE.replace("auth_values_env: A", "auth_values_env: A, auth_secret: s"), "auth_secret"),
            ("registries[]", BASE.replace("name: r,", "name: r, insecur: true,"), "insecur"),
            ("rules[]", rule(", deleton: true"), "deleton"),
            ("filters", rule(", filters: { nane: 'a/**' }"), "nane"),
            ("tag filter", rule(", filters: { tag: { pattern: 'v*', decoraton: excludes } }"), "decoraton"),
            ("label filter", rule(", filters: { label: { values: [x], decoraton: excludes } }"), "decoraton"),
            ("destination", rule("").replace("registry: r }", "registry: r, flaten: 2 }"), "flaten"),
            ("worker", format!("{BASE}worker: {{ blob_concurency: 2 }}"), "blob_concurency"),
            ("secrets", format!("{BASE}secrets: {{ ttl_second: 60 }}"), "ttl_second"),
            (
                "source credentials",
                BASE.replace("url: 'http://h:1'", "url: 'http://h:1', credentials: { secret_id: s, secretid: t }"),
                "secretid",
            ),
            (
                "registry credentials",
                BASE.replace("name: r,", "name: r, credentials: { username: u, password_env: P, pasword_env: Q },"),
                "pasword_env",
            ),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(what, yaml, typo)| match Config::parse(yaml) {
                Err(e) if e.to_string().contains(&format!("unknown field `{typo}`")) => None,
                Err(e) => Some(format!("{what}: {e}")),
                Ok(_) => Some(format!("{what}: `{typo}` accepted")),
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn credentials_errors_name_the_field_and_the_fix() {
        let with =
            |credentials: &str| error_of(&BASE.replace("name: r,", &format!("name: r, credentials: {credentials},")));
        let cases = [
            (
                "{ username: u, password: hunter2 }",
                "registries[0].credentials.password`: inline passwords are not accepted: put the password in an environment variable named by `password_env`",
            ),
            ("{ secret_id: s, username: u }", "registries[0].credentials.username`: `secret_id` names a secret holding both the user name and the password: drop `username`"),
            ("{ secret_id: s, password_env: P }", "registries[0].credentials.password_env`: `secret_id` names"),
            ("{ secret_id: s, username: u, password_env: P }", "drop `username` and `password_env`"),
            ("{ username: u }", "registries[0].credentials.password_env`: missing: `username` needs `password_env`"),
            ("{ password_env: P }", "registries[0].credentials.username`: missing"),
            ("{}", "registries[0].credentials`: empty: set `secret_id`, or `username` with `password_env`"),
            ("{ secret_id: '' }", "registries[0].credentials.secret_id`: must not be empty"),
            ("{ username: '', password_env: P }", "registries[0].credentials.username`: must not be empty"),
        ];
        for (credentials, expected) in cases {
            let err = with(credentials);
            assert!(err.contains(expected), "{credentials}: {err}");
            assert!(!err.contains("hunter2") && !err.contains("untagged"), "{credentials}: {err}");
        }
        let source = BASE.replace("url: 'http://h:1'", "url: 'http://h:1', credentials: { password: hunter2 }");
        assert!(error_of(&source).contains("source.credentials.password`: inline passwords"));
    }

    /// The record of written tags keys each tag under its registry's name:
    /// a name of dots only would be a `.` or `..` path segment, which URLs
    /// fold away before S3 sees them.
    #[test]
    fn a_registry_name_of_dots_only_is_refused() {
        for name in ["'.'", "'..'", "'...'"] {
            let err = error_of(&BASE.replace("name: r,", &format!("name: {name},")));
            assert!(err.contains("registries[0].name`") && err.contains("dots only"), "{name}: {err}");
        }
        assert!(Config::parse(&BASE.replace("name: r,", "name: 'r.1',")).is_ok());
    }

    #[test]
    fn a_url_without_a_scheme_says_what_to_write() {
        let source = |url: &str| error_of(&BASE.replace("'http://h:1'", &format!("'{url}'")));
        let cases = [
            (
                "registry.example.com",
                "`source.url`: `registry.example.com` has no scheme: write https://registry.example.com",
            ),
            ("registry:5000", "`registry:5000` has no scheme: write https://registry:5000"),
            ("u:secret@registry:5000", "`registry:5000` has no scheme"),
            ("ftp://h", "`source.url`: `ftp://h`: must be an http:// or https:// URL"),
            ("http://h:99999", "`source.url`: `http://h:99999`: invalid port number"),
            ("https://u:secret@h:99999", "`https://h:99999`: invalid port"),
            ("https://h/v2", "`source.url`: `https://h/v2`: must not have a path"),
        ];
        for (url, expected) in cases {
            let err = source(url);
            assert!(err.contains(expected) && !err.contains("secret"), "{url}: {err}");
        }
        let realm = BASE.replace("url: 'http://h:1'", "url: 'http://h:1', token_realms: ['auth.example.com/token']");
        let err = error_of(&realm);
        assert!(err.contains("`source.token_realms`: `auth.example.com/token` has no scheme: write https://"), "{err}");
    }

    #[test]
    fn credentials_in_the_clear_are_accepted_with_a_warning_naming_the_field() {
        let yaml = "source: { url: 'http://h:1', credentials: { secret_id: s } }\n\
                    webhook: { auth_values_env: A }\n\
                    registries:\n\
                    - { name: tls, url: 'https://a', credentials: { secret_id: s } }\n\
                    - { name: unverified, url: 'https://b', insecure: true, credentials: { secret_id: s } }\n\
                    - { name: anonymous, url: 'http://c', insecure: true }\n\
                    - { name: realm, url: 'https://d', token_realms: ['http://auth:8080/t', 'https://e/t'], credentials: { secret_id: s } }\n\
                    - { name: ecr, url: 'http://123456789012.dkr.ecr.us-west-2.amazonaws.com', kind: ecr }\n";
        let warnings = Config::parse(yaml).unwrap().warnings();
        let fields: Vec<&str> = warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            ["source.url", "registries[1].insecure", "registries[3].token_realms", "registries[4].url"],
            "{warnings:#?}"
        );
        assert_eq!(
            warnings[0].to_string(),
            "configuration field `source.url`: the credentials of the source go over plain http:// to h:1, readable on the way: use https://"
        );
        assert!(warnings[1].reason.contains("unverified") && warnings[1].reason.contains("ca_file"), "{warnings:#?}");
        assert!(warnings[2].reason.contains("auth:8080"), "{warnings:#?}");
        assert!(Config::parse(BASE).unwrap().warnings().is_empty(), "no credentials, nothing to warn of");
    }
}
