//! The configuration as written (`Raw*`, unknown fields refused) and its
//! validation into [`Config`]: every error names its field.

use std::collections::HashSet;

use serde::Deserialize;
use url::Url;

use super::{
    host_port, Config, ConfigError, CredentialsRef, HarborApiUse, RawCredentials, Registry, SecretSettings, Source,
    WebhookAuthSource, WorkerSettings,
};
use crate::registry_kind::{ca_source, RawKindFields};
use crate::rules::{Rule, RuleError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    source: RawSource,
    webhook: Option<RawWebhook>,
    #[serde(default)]
    registries: Vec<RawRegistry>,
    #[serde(default)]
    rules: Vec<crate::rules::RawRule>,
    #[serde(default)]
    worker: WorkerSettings,
    #[serde(default)]
    secrets: SecretSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: String,
    api_url: Option<String>,
    credentials: Option<RawCredentials>,
    #[serde(default)]
    harbor_api: Option<bool>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    token_realms: Vec<String>,
    ca_file: Option<String>,
    ca_secret_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    auth_values_env: Option<String>,
    auth_secret_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    name: String,
    url: String,
    credentials: Option<RawCredentials>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    token_realms: Vec<String>,
    ca_file: Option<String>,
    ca_secret_id: Option<String>,
    kind: Option<crate::registry_kind::KindName>,
    region: Option<String>,
    registry_id: Option<String>,
    role_arn: Option<String>,
    tag_mutability: Option<crate::registry_kind::TagMutability>,
    scan_on_push: Option<bool>,
    encryption: Option<crate::registry_kind::EncryptionName>,
    kms_key: Option<String>,
    create_projects: Option<bool>,
    storage_limit: Option<i64>,
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let source_url = registry_url("source.url", &self.source.url)?;
        let host = host_port(&source_url);
        let api_url = match &self.source.api_url {
            Some(u) => registry_url("source.api_url", u)?,
            None => source_url.clone(),
        };
        let source_credentials = credentials("source.credentials", self.source.credentials)?;

        let webhook = webhook_auth(self.webhook)?;

        let mut names = HashSet::new();
        let registries = self
            .registries
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.validate(&format!("registries[{i}]"), &mut names))
            .collect::<Result<Vec<_>, _>>()?;
        let harbor_api = match self.source.harbor_api {
            Some(true) => HarborApiUse::On,
            Some(false) => HarborApiUse::Off,
            None => HarborApiUse::Detect,
        };
        let rules = rules(self.rules, harbor_api, &names)?;
        settings(&self.worker, &self.secrets)?;

        Ok(Config {
            source: Source {
                url: source_url,
                api_url,
                host,
                credentials: source_credentials,
                harbor_api,
                insecure: self.source.insecure,
                token_realms: token_realms("source.token_realms", &self.source.token_realms)?,
                ca: ca_source("source", self.source.ca_file, self.source.ca_secret_id)?,
            },
            webhook,
            registries,
            rules,
            worker: self.worker,
            secrets: self.secrets,
        })
    }
}

/// Token service URLs (`http(s)://host[:port]/path`); only their origin counts.
fn token_realms(field: &str, values: &[String]) -> Result<Vec<Url>, ConfigError> {
    values.iter().map(|v| http_url(field, v)).collect()
}

/// `http(s)://host[:port]`, without credentials, path or query.
fn registry_url(field: &str, value: &str) -> Result<Url, ConfigError> {
    let url = http_url(field, value)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::invalid(
            field,
            "must be http(s)://host[:port] without credentials (use the credentials field)",
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(ConfigError::invalid(field, format!("`{url}`: must not have a path or query")));
    }
    Ok(url)
}

/// An `http(s)://` URL with a host. A value without `://` gets the fix
/// spelt out: the URL parser calls `registry.example.com` "relative URL
/// without a base", and reads `registry:5000` as a URL of scheme `registry`.
/// A value is echoed only from its host on, never a `user:password@`.
fn http_url(field: &str, value: &str) -> Result<Url, ConfigError> {
    let Some((scheme, rest)) = value.split_once("://") else {
        let host = value.rsplit_once('@').map_or(value, |(_, host)| host);
        return Err(ConfigError::invalid(field, format!("`{host}` has no scheme: write https://{host}")));
    };
    let shown = format!("{scheme}://{}", rest.rsplit_once('@').map_or(rest, |(_, host)| host));
    let url = Url::parse(value).map_err(|e| ConfigError::invalid(field, format!("`{shown}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::invalid(field, format!("`{shown}`: must be an http:// or https:// URL with a host")));
    }
    Ok(url)
}

/// `credentials:` at `field`, validated; the error names the field inside
/// it to fix.
fn credentials(field: &str, raw: Option<RawCredentials>) -> Result<Option<CredentialsRef>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    CredentialsRef::try_from(raw).map(Some).map_err(|e| match e.field {
        "" => ConfigError::invalid(field, e.reason),
        inner => ConfigError::invalid(format!("{field}.{inner}"), e.reason),
    })
}

/// Where the webhook's accepted Authorization values come from: exactly one place.
fn webhook_auth(raw: Option<RawWebhook>) -> Result<WebhookAuthSource, ConfigError> {
    match raw {
        None => Err(ConfigError::invalid(
            "webhook",
            "missing: set webhook.auth_values_env or webhook.auth_secret_id (the Authorization values Harbor's webhook policy sends)",
        )),
        Some(RawWebhook { auth_values_env: Some(env), auth_secret_id: None }) if !env.is_empty() => {
            Ok(WebhookAuthSource::Env(env))
        }
        Some(RawWebhook { auth_values_env: None, auth_secret_id: Some(id) }) if !id.is_empty() => {
            Ok(WebhookAuthSource::Secret(id))
        }
        Some(_) => Err(ConfigError::invalid("webhook", "set exactly one of auth_values_env or auth_secret_id")),
    }
}

impl RawRegistry {
    /// One `registries[]` entry (`field`), its name unique among `names`.
    fn validate(self, field: &str, names: &mut HashSet<String>) -> Result<Registry, ConfigError> {
        let r = self;
        if r.name.is_empty() {
            return Err(ConfigError::invalid(format!("{field}.name"), "must not be empty"));
        }
        // Errors, logs and metrics name the source `source`: a
        // destination of that name could not be told apart.
        if r.name == "source" {
            return Err(ConfigError::invalid(format!("{field}.name"), "`source` is the source's name; pick another"));
        }
        // The name is the first path segment of the record's S3 keys
        // (`written`): `.` and `..` would be read as the path's dots.
        if r.name.chars().all(|c| c == '.') {
            return Err(ConfigError::invalid(
                format!("{field}.name"),
                format!(
                    "{:?}: a name of dots only is not accepted (it is a path segment of the record's keys)",
                    r.name
                ),
            ));
        }
        if !names.insert(r.name.clone()) {
            return Err(ConfigError::invalid(format!("{field}.name"), format!("duplicate registry name {:?}", r.name)));
        }
        let url = registry_url(&format!("{field}.url"), &r.url)?;
        let registry_credentials = credentials(&format!("{field}.credentials"), r.credentials)?;
        let token_realms = token_realms(&format!("{field}.token_realms"), &r.token_realms)?;
        let ca = ca_source(field, r.ca_file, r.ca_secret_id)?;
        let kind = RawKindFields {
            kind: r.kind,
            region: r.region,
            registry_id: r.registry_id,
            role_arn: r.role_arn,
            tag_mutability: r.tag_mutability,
            scan_on_push: r.scan_on_push,
            encryption: r.encryption,
            kms_key: r.kms_key,
            create_projects: r.create_projects,
            storage_limit: r.storage_limit,
        }
        .resolve(field, url.host_str().unwrap_or_default(), registry_credentials.is_some())?;
        Ok(Registry {
            name: r.name,
            url,
            credentials: registry_credentials,
            insecure: r.insecure,
            token_realms,
            ca,
            kind,
        })
    }
}

/// The rules, each naming one of the registries' `names`, their names unique.
fn rules(
    raw: Vec<crate::rules::RawRule>,
    harbor_api: HarborApiUse,
    names: &HashSet<String>,
) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(raw.len());
    let mut rule_names = HashSet::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let field = format!("rules[{i}]");
        let rule = Rule::from_raw(raw, harbor_api.may_be_on()).map_err(|e| match e {
            RuleError::Field { field: f, reason } => ConfigError::invalid(format!("{field}.{f}"), reason),
        })?;
        if !rule_names.insert(rule.name.clone()) {
            return Err(ConfigError::invalid(format!("{field}.name"), format!("duplicate rule name {:?}", rule.name)));
        }
        if !names.contains(&rule.destination.registry) {
            return Err(ConfigError::invalid(
                format!("{field}.destination.registry"),
                format!("{:?} is not one of the registries[].name", rule.destination.registry),
            ));
        }
        rules.push(rule);
    }

    Ok(rules)
}

/// The worker's and the secrets' tunables, within what SQS and the
/// functions can do.
fn settings(w: &WorkerSettings, s: &SecretSettings) -> Result<(), ConfigError> {
    if w.blob_concurrency == 0 || w.task_concurrency == 0 || w.stream_concurrency == 0 {
        return Err(ConfigError::invalid("worker", "concurrency must be at least 1"));
    }
    for (field, base, max, limit) in [
        ("worker.retry_max_seconds", w.retry_base_seconds, w.retry_max_seconds, 43_200),
        ("worker.park_max_seconds", w.park_base_seconds, w.park_max_seconds, 900),
    ] {
        if base == 0 || base > max || max > limit {
            return Err(ConfigError::invalid(
                field,
                format!("needs 1 <= base ({base}) <= max ({max}) <= {limit} (SQS's limit)"),
            ));
        }
    }
    if !(1..=900).contains(&w.probe_seconds) {
        return Err(ConfigError::invalid("worker.probe_seconds", "must be 1..=900 (SQS's longest delay)"));
    }
    if !(60..=13 * 86_400).contains(&w.park_limit_seconds) {
        return Err(ConfigError::invalid(
            "worker.park_limit_seconds",
            "must be 60..=1123200 (13 days: the parking queue keeps a message 14 days)",
        ));
    }
    if w.breaker_failures == 0 {
        return Err(ConfigError::invalid("worker.breaker_failures", "must be at least 1"));
    }
    if w.min_throughput_bytes_per_second == 0 || w.throughput_window_seconds == 0 {
        return Err(ConfigError::invalid(
            "worker.min_throughput_bytes_per_second",
            "the minimum throughput and its window must be at least 1",
        ));
    }
    if s.ttl_seconds == 0 {
        return Err(ConfigError::invalid("secrets.ttl_seconds", "must be at least 1"));
    }
    if s.fail_closed_after_seconds < s.ttl_seconds {
        return Err(ConfigError::invalid(
            "secrets.fail_closed_after_seconds",
            format!("must be at least secrets.ttl_seconds ({})", s.ttl_seconds),
        ));
    }

    Ok(())
}
