//! The functions' environment, read once at start into one typed value:
//! every `RELAY_*` setting a function takes (the template's `Environment`
//! sections), parsed at the edge so the library below never reads the
//! process environment. The variables named in the configuration file
//! (`password_env`, `auth_values_env`) are looked up in the same snapshot
//! ([`Environment::lookup`]), passed to the secret source.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::webhook::{OptionError, WebhookOptions};

/// A snapshot of the process environment (or of a test's own variables):
/// what [`Settings`] is parsed from, and where credentials named by
/// variable are found.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: Arc<HashMap<String, String>>,
}

impl Environment {
    /// The process environment as it is now (variables that are not UTF-8
    /// are left out: none of ours is).
    pub fn of_process() -> Environment {
        Environment::from_vars(
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    pub fn from_vars<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Environment {
        Environment { vars: Arc::new(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect()) }
    }

    /// Every variable, in no order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// `name`'s value, unless unset or empty.
    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// A lookup over this snapshot, for the secret source's `*_env`
    /// credentials.
    pub fn lookup(&self) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
        let vars = self.vars.clone();
        move |name| vars.get(name).cloned()
    }

    /// The Lambda Runtime API's address (`AWS_LAMBDA_RUNTIME_API`): set
    /// under Lambda (AWS, or a local emulator), absent standalone.
    pub fn lambda_runtime_api(&self) -> Option<&str> {
        self.get("AWS_LAMBDA_RUNTIME_API")
    }

    /// The log filter: `RUST_LOG` when set, else Lambda's
    /// `AWS_LAMBDA_LOG_LEVEL` (the function's log-level setting).
    pub fn log_filter(&self) -> Option<String> {
        crate::telemetry::filter(self.non_empty("RUST_LOG"), self.get("AWS_LAMBDA_LOG_LEVEL"))
    }
}

/// Every setting a function reads from its environment. Which ones a
/// function needs differs (the webhook has no dead-letter queue); the
/// required ones are asked for by accessors that name the variable.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `RELAY_CONFIG`: a file path, or `ssm:<parameter>`.
    pub config: String,
    /// `RELAY_QUEUE_URL`: the copy queue (the webhook and reconcile send to
    /// it, the worker settles on it and polls it standalone).
    pub queue_url: Option<String>,
    /// `RELAY_DLQ_URL`: the dead-letter queue, sparing a look-up of the
    /// copy queue's redrive policy.
    pub dlq_url: Option<String>,
    /// `RELAY_PARKING_QUEUE_URL`: where tasks of an unavailable registry
    /// wait for it to answer again.
    pub parking_queue_url: Option<String>,
    /// `RELAY_RECORD_BUCKET`: the bucket of the record of written tags.
    pub record_bucket: Option<String>,
    /// `RELAY_FUNCTION_TIMEOUT_SECONDS` (1–900): the function's configured
    /// timeout, set by the template; absent or out of range: the default.
    pub function_timeout: Option<Duration>,
    /// `RELAY_WORKER_RUN_SECONDS` (1–86400): the standalone worker's
    /// deadline per batch, as a Lambda invocation has its timeout. A bad
    /// value fails only the standalone worker, the one reader
    /// ([`Settings::worker_run_for`]).
    worker_run_for: Result<Option<Duration>, SettingsError>,
    /// `RELAY_LISTEN`: the standalone webhook's address.
    pub listen: String,
    /// `RELAY_RECONCILE_CURSOR_PARAMETER`: the SSM parameter keeping an
    /// unfinished reconcile pass's cursor.
    pub reconcile_cursor_parameter: Option<String>,
    /// `RELAY_HARBOR_WEBHOOKS_ENDPOINT`: the webhook's URL that reconcile
    /// keeps Harbor's webhook policies pointed at (opt-in;
    /// [`Settings::harbor_webhooks_endpoint`]).
    harbor_webhooks_endpoint: Result<Option<url::Url>, SettingsError>,
    /// `RELAY_UNTAGGED_DELAY_SECONDS`, `RELAY_ENQUEUE_TIMEOUT_MS`
    /// ([`Settings::webhook`]).
    webhook: Result<WebhookOptions, SettingsError>,
}

/// The standalone webhook listens here when `RELAY_LISTEN` is unset.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{name} must be set: {why}")]
    Missing { name: &'static str, why: &'static str },
    #[error("{name} must be {expected}, not {value:?}")]
    Invalid { name: &'static str, expected: &'static str, value: String },
}

impl From<OptionError> for SettingsError {
    fn from(e: OptionError) -> Self {
        SettingsError::Invalid { name: e.name, expected: e.expected, value: e.value }
    }
}

impl Settings {
    /// Parses the settings; a missing `RELAY_CONFIG` is an error naming
    /// it, and so is a value that does not parse — at once for the
    /// settings every function reads, when asked for (at the start of the
    /// function that reads it) for the others, so a function never fails
    /// on a variable it does not use.
    pub fn parse(env: &Environment) -> Result<Settings, SettingsError> {
        let config = env.get("RELAY_CONFIG").ok_or(SettingsError::Missing {
            name: "RELAY_CONFIG",
            why: "it names the configuration (a path, or ssm:<parameter>)",
        })?;
        let worker_run_for = env
            .get("RELAY_WORKER_RUN_SECONDS")
            .map(|v| {
                let seconds = v.parse().ok().filter(|s| (1..=86_400).contains(s));
                seconds.map(Duration::from_secs).ok_or_else(|| SettingsError::Invalid {
                    name: "RELAY_WORKER_RUN_SECONDS",
                    expected: "whole seconds from 1 to 86400",
                    value: v.to_owned(),
                })
            })
            .transpose();
        let harbor_webhooks_endpoint = env
            .non_empty("RELAY_HARBOR_WEBHOOKS_ENDPOINT")
            .map(|v| {
                v.parse::<url::Url>().map_err(|_| SettingsError::Invalid {
                    name: "RELAY_HARBOR_WEBHOOKS_ENDPOINT",
                    expected: "the webhook's URL",
                    value: v.to_owned(),
                })
            })
            .transpose();
        Ok(Settings {
            config: config.to_owned(),
            queue_url: env.get("RELAY_QUEUE_URL").map(str::to_owned),
            dlq_url: env.get("RELAY_DLQ_URL").map(str::to_owned),
            parking_queue_url: env.non_empty("RELAY_PARKING_QUEUE_URL").map(str::to_owned),
            record_bucket: env.non_empty(crate::written::BUCKET_ENV).map(str::to_owned),
            function_timeout: env
                .get("RELAY_FUNCTION_TIMEOUT_SECONDS")
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|s| (1..=900).contains(s))
                .map(Duration::from_secs),
            worker_run_for,
            listen: env.get("RELAY_LISTEN").unwrap_or(DEFAULT_LISTEN).to_owned(),
            reconcile_cursor_parameter: env.non_empty("RELAY_RECONCILE_CURSOR_PARAMETER").map(str::to_owned),
            harbor_webhooks_endpoint,
            webhook: WebhookOptions::from_lookup(|name| env.get(name).map(str::to_owned)).map_err(SettingsError::from),
        })
    }

    /// The copy queue's URL, for the functions that cannot do without it.
    pub fn queue_url(&self) -> Result<&str, SettingsError> {
        self.queue_url
            .as_deref()
            .ok_or(SettingsError::Missing { name: "RELAY_QUEUE_URL", why: "it is the copy queue's URL" })
    }

    /// The standalone worker's deadline per batch (`RELAY_WORKER_RUN_SECONDS`).
    pub fn worker_run_for(&self) -> Result<Option<Duration>, SettingsError> {
        self.worker_run_for.clone()
    }

    /// Where reconcile keeps Harbor's webhook policies pointed
    /// (`RELAY_HARBOR_WEBHOOKS_ENDPOINT`).
    pub fn harbor_webhooks_endpoint(&self) -> Result<Option<&url::Url>, SettingsError> {
        self.harbor_webhooks_endpoint.as_ref().map(Option::as_ref).map_err(Clone::clone)
    }

    /// The webhook's timings.
    pub fn webhook(&self) -> Result<WebhookOptions, SettingsError> {
        self.webhook.clone()
    }

    /// The function's timeout, or `default` when the template gave none.
    pub fn function_timeout_or(&self, default: Duration) -> Duration {
        self.function_timeout.unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::parse(&Environment::from_vars(vars.iter().copied()))
    }

    #[test]
    fn a_missing_configuration_is_named() {
        let err = parse(&[("RELAY_QUEUE_URL", "q")]).unwrap_err();
        assert_eq!(
            err,
            SettingsError::Missing {
                name: "RELAY_CONFIG",
                why: "it names the configuration (a path, or ssm:<parameter>)"
            }
        );
        assert!(err.to_string().starts_with("RELAY_CONFIG must be set"), "{err}");
    }

    #[test]
    fn a_missing_queue_is_named_by_the_functions_that_need_it() {
        let settings = parse(&[("RELAY_CONFIG", "relay.yaml")]).unwrap();
        assert!(settings.queue_url().unwrap_err().to_string().starts_with("RELAY_QUEUE_URL must be set"));
        let settings = parse(&[("RELAY_CONFIG", "relay.yaml"), ("RELAY_QUEUE_URL", "http://q")]).unwrap();
        assert_eq!(settings.queue_url(), Ok("http://q"));
    }

    #[test]
    fn unset_settings_take_their_defaults() {
        let s = parse(&[("RELAY_CONFIG", "ssm:/relay/config")]).unwrap();
        assert_eq!(s.config, "ssm:/relay/config");
        assert_eq!(s.listen, DEFAULT_LISTEN);
        assert_eq!(s.webhook(), Ok(WebhookOptions::default()));
        assert_eq!(s.function_timeout_or(Duration::from_secs(300)), Duration::from_secs(300));
        assert_eq!((s.worker_run_for(), s.harbor_webhooks_endpoint()), (Ok(None), Ok(None)));
        assert_eq!((s.queue_url, s.dlq_url, s.parking_queue_url, s.record_bucket), (None, None, None, None));
        assert_eq!(s.reconcile_cursor_parameter, None);
    }

    #[test]
    fn set_settings_are_parsed() {
        let s = parse(&[
            ("RELAY_CONFIG", "relay.yaml"),
            ("RELAY_QUEUE_URL", "http://q"),
            ("RELAY_DLQ_URL", "http://dlq"),
            ("RELAY_PARKING_QUEUE_URL", "http://parking"),
            ("RELAY_RECORD_BUCKET", "written"),
            ("RELAY_FUNCTION_TIMEOUT_SECONDS", "60"),
            ("RELAY_WORKER_RUN_SECONDS", "120"),
            ("RELAY_LISTEN", "0.0.0.0:9000"),
            ("RELAY_RECONCILE_CURSOR_PARAMETER", "/relay/cursor"),
            ("RELAY_HARBOR_WEBHOOKS_ENDPOINT", "https://relay.example/"),
            ("RELAY_UNTAGGED_DELAY_SECONDS", "0"),
        ])
        .unwrap();
        assert_eq!(s.dlq_url.as_deref(), Some("http://dlq"));
        assert_eq!(s.parking_queue_url.as_deref(), Some("http://parking"));
        assert_eq!(s.record_bucket.as_deref(), Some("written"));
        assert_eq!(s.function_timeout, Some(Duration::from_secs(60)));
        assert_eq!(s.worker_run_for(), Ok(Some(Duration::from_secs(120))));
        assert_eq!(s.listen, "0.0.0.0:9000");
        assert_eq!(s.reconcile_cursor_parameter.as_deref(), Some("/relay/cursor"));
        assert_eq!(s.harbor_webhooks_endpoint().unwrap().map(|u| u.as_str()), Some("https://relay.example/"));
        assert_eq!(s.webhook().unwrap().untagged_delay, Duration::ZERO);
    }

    #[test]
    fn empty_optional_settings_count_as_unset() {
        let s = parse(&[
            ("RELAY_CONFIG", "relay.yaml"),
            ("RELAY_PARKING_QUEUE_URL", ""),
            ("RELAY_RECORD_BUCKET", ""),
            ("RELAY_RECONCILE_CURSOR_PARAMETER", ""),
            ("RELAY_HARBOR_WEBHOOKS_ENDPOINT", ""),
        ])
        .unwrap();
        assert_eq!(s.harbor_webhooks_endpoint(), Ok(None));
        assert_eq!((s.parking_queue_url, s.record_bucket, s.reconcile_cursor_parameter), (None, None, None));
    }

    #[test]
    fn a_bad_value_is_named_by_the_function_that_reads_it() {
        type Read = fn(&Settings) -> Result<(), SettingsError>;
        let run_for: Read = |s| s.worker_run_for().map(drop);
        let endpoint: Read = |s| s.harbor_webhooks_endpoint().map(drop);
        let webhook: Read = |s| s.webhook().map(drop);
        for (name, bad, read) in [
            ("RELAY_WORKER_RUN_SECONDS", "0", run_for),
            ("RELAY_WORKER_RUN_SECONDS", "an hour", run_for),
            ("RELAY_HARBOR_WEBHOOKS_ENDPOINT", "not a url", endpoint),
            ("RELAY_UNTAGGED_DELAY_SECONDS", "901", webhook),
            ("RELAY_ENQUEUE_TIMEOUT_MS", "-1", webhook),
        ] {
            // The other functions start: the variable is not theirs.
            let settings = parse(&[("RELAY_CONFIG", "relay.yaml"), (name, bad)]).unwrap();
            let err = read(&settings).unwrap_err();
            assert!(
                matches!(&err, SettingsError::Invalid { name: n, value, .. } if *n == name && value == bad),
                "{err:?}"
            );
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }

    #[test]
    fn a_function_timeout_out_of_range_is_the_default_as_before() {
        for bad in ["0", "901", "five"] {
            let s = parse(&[("RELAY_CONFIG", "relay.yaml"), ("RELAY_FUNCTION_TIMEOUT_SECONDS", bad)]).unwrap();
            assert_eq!(s.function_timeout, None, "{bad}");
        }
    }

    #[test]
    fn credentials_named_by_variable_are_looked_up_in_the_snapshot() {
        let env = Environment::from_vars([("CLUSTER1_PASSWORD", "secret")]);
        let lookup = env.lookup();
        assert_eq!(lookup("CLUSTER1_PASSWORD").as_deref(), Some("secret"));
        assert_eq!(lookup("OTHER"), None);
    }

    #[test]
    fn the_log_filter_prefers_rust_log_then_lambdas_level() {
        let env = Environment::from_vars([("RUST_LOG", "debug"), ("AWS_LAMBDA_LOG_LEVEL", "ERROR")]);
        assert_eq!(env.log_filter().as_deref(), Some("debug"));
        let env = Environment::from_vars([("RUST_LOG", ""), ("AWS_LAMBDA_LOG_LEVEL", "WARN")]);
        assert_eq!(env.log_filter().as_deref(), Some("warn"));
        assert_eq!(Environment::default().log_filter(), None);
    }
}
