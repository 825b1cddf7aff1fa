//! The configuration as the Lambda functions hold it: read again when its
//! SSM parameter (or file) changes, so a new registry or rule needs no
//! redeploy. The change is noticed by its version (SSM's parameter version,
//! a file's modification time), asked at most every [`CHECK_EVERY`]; what
//! is built from the configuration (the worker, the webhook) is then built
//! again. A configuration that no longer validates is logged and the one in
//! use kept.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::bootstrap::{self, ConfigLoadError};
use crate::config::Config;

/// How often the parameter's version is asked for.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Why building from a configuration failed (the builder's own error).
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// What builds the value from a configuration.
pub type Built<T> = Pin<Box<dyn Future<Output = Result<T, BuildError>> + Send>>;

type Build<T> = dyn Fn(Arc<Config>) -> Built<T> + Send + Sync;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] ConfigLoadError),
    #[error("{0}")]
    Build(BuildError),
}

pub struct Reloading<T> {
    source: Source,
    every: Duration,
    build: Box<Build<T>>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: Arc<T>,
    version: Option<String>,
    checked: Instant,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Reads the configuration at `location` (a path or `ssm:<name>`, read
    /// with a client of `sdk`) and builds from it; start-up fails if either
    /// fails.
    pub async fn start(
        sdk: &aws_config::SdkConfig,
        location: &str,
        every: Duration,
        build: impl Fn(Arc<Config>) -> Built<T> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, ReloadError> {
        let source = Source::new(sdk, location);
        let (config, version) = source.read().await?;
        let current = Arc::new(build(Arc::new(config)).await.map_err(ReloadError::Build)?);
        let state = State { current, version, checked: Instant::now() };
        Ok(Reloading { source, every, build: Box::new(build), state: Mutex::new(state) })
    }

    /// What is built from the current configuration, read again first when
    /// the check is due and the version changed.
    pub async fn current(&self) -> Arc<T> {
        self.get(false).await
    }

    /// As [`Reloading::current`], but when `stale` says the current value
    /// cannot serve (a worker given a task for a registry it does not
    /// know), the version is asked for at once instead of at the next check.
    pub async fn current_unless(&self, stale: impl Fn(&T) -> bool) -> Arc<T> {
        let current = self.get(false).await;
        if stale(&current) {
            return self.get(true).await;
        }
        current
    }

    async fn get(&self, now: bool) -> Arc<T> {
        let mut state = self.state.lock().await;
        if !now && state.checked.elapsed() < self.every {
            return state.current.clone();
        }
        state.checked = Instant::now();
        match self.source.version().await {
            Ok(v) if v == state.version => {}
            Ok(_) => match self.source.read().await {
                Ok((config, version)) => match (self.build)(Arc::new(config)).await {
                    Ok(built) => {
                        tracing::info!(location = %self.source.location, version = ?version, "configuration changed: read again");
                        state.current = Arc::new(built);
                        state.version = version;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the changed configuration cannot be used; keeping the current one")
                    }
                },
                Err(e) => tracing::error!(error = %e, "the changed configuration is invalid; keeping the current one"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot check the configuration's version; keeping the current one"),
        }
        state.current.clone()
    }
}

/// Where the configuration is read from, with the one SSM client a
/// function keeps for it.
struct Source {
    location: String,
    ssm: Option<aws_sdk_ssm::Client>,
}

impl Source {
    fn new(sdk: &aws_config::SdkConfig, location: &str) -> Source {
        let ssm = match location.starts_with("ssm:") {
            true => Some(aws_sdk_ssm::Client::new(sdk)),
            false => None,
        };
        Source { location: location.to_owned(), ssm }
    }

    /// The configuration and its version, from one read.
    async fn read(&self) -> Result<(Config, Option<String>), ConfigLoadError> {
        match (&self.ssm, self.location.strip_prefix("ssm:")) {
            (Some(ssm), Some(name)) => {
                let p = bootstrap::config_parameter(ssm, name, true).await?;
                Ok((Config::parse(p.value().unwrap_or_default())?.logging_warnings(), Some(p.version().to_string())))
            }
            _ => {
                let version = self.version().await?;
                Ok((Config::load(self.location.as_ref())?.logging_warnings(), version))
            }
        }
    }

    /// SSM's parameter version, or a file's modification time.
    async fn version(&self) -> Result<Option<String>, ConfigLoadError> {
        match (&self.ssm, self.location.strip_prefix("ssm:")) {
            (Some(ssm), Some(name)) => {
                Ok(Some(bootstrap::config_parameter(ssm, name, false).await?.version().to_string()))
            }
            _ => Ok(std::fs::metadata(&self.location).and_then(|m| m.modified()).ok().map(|t| format!("{t:?}"))),
        }
    }
}
