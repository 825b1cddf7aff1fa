//! One way to run a function, under Lambda and standalone alike: the
//! environment is read once ([`Settings`]), the AWS SDK configuration built
//! once ([`Aws`]), the configuration read (and, under Lambda, read again
//! when it changes: [`Reloading`]), and what the function builds from it
//! handed to the function's own edge — the Runtime API's events, or its
//! standalone loop. A function is a [`Function`]: its `main` names it and
//! calls [`run`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::bootstrap::{self, Aws};
use crate::config::Config;
use crate::reload::{BuildError, Built, ReloadError, Reloading};
use crate::secrets::SecretSource;
use crate::settings::{Environment, Settings, SettingsError};

pub mod reconcile;
pub mod webhook;
pub mod worker;

/// What a function starts with, built once per process.
pub struct Edges {
    pub settings: Settings,
    pub aws: Aws,
    /// Secrets Manager, and the credentials named by variable in the
    /// environment read at start.
    pub secrets: SecretSource,
}

/// A function served by [`run`].
pub trait Function: Sized + Send + Sync + 'static {
    /// What one configuration builds (the webhook, the worker and its
    /// settler, …): built again when the configuration changes.
    type App: Send + Sync + 'static;

    /// How often, under Lambda, the configuration's version is asked for.
    const CHECK_EVERY: Duration;

    /// The function from its edges (the settings it needs are checked
    /// here, naming the variable).
    fn new(edges: Edges) -> Result<Self, SettingsError>;

    /// Builds the function's app from a configuration.
    fn build(self: &Arc<Self>, config: Arc<Config>) -> Built<Self::App>;

    /// Serves the Runtime API's events until the process ends.
    fn lambda(self: Arc<Self>, apps: Arc<Reloading<Self::App>>) -> impl Future<Output = Result<(), RunError>>;

    /// Runs standalone, on the one configuration read at start.
    fn standalone(self: Arc<Self>, app: Arc<Self::App>) -> impl Future<Output = Result<(), RunError>>;
}

/// Why a function could not start or stopped.
#[derive(thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    #[error("{0}")]
    Build(BuildError),
    #[error("the Lambda runtime stopped: {0}")]
    Lambda(lambda_runtime::Error),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// What a binary prints when `main` returns the error: the reason with its
/// sources, as an operator reads it (not the variants' fields).
impl std::fmt::Debug for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(inner) = source {
            write!(f, "\n\nCaused by: {inner}")?;
            source = inner.source();
        }
        Ok(())
    }
}

/// Serves `F` from the process's environment: under Lambda when
/// `AWS_LAMBDA_RUNTIME_API` is set (a failed start is reported to the
/// Runtime API's `init/error`), standalone otherwise.
pub async fn run<F: Function>() -> Result<(), RunError> {
    let env = Environment::of_process();
    crate::telemetry::init(env.log_filter().as_deref());
    match env.lambda_runtime_api() {
        Some(api) => {
            let (function, apps) = bootstrap::initialised(Some(api), start::<F>(&env, F::CHECK_EVERY)).await?;
            function.lambda(apps).await
        }
        None => {
            // Standalone, the configuration is read once.
            let (function, apps) = start::<F>(&env, Duration::MAX).await?;
            let app = apps.current().await;
            function.standalone(app).await
        }
    }
}

/// The settings, the AWS clients, the function and its first app.
async fn start<F: Function>(env: &Environment, every: Duration) -> Result<(Arc<F>, Arc<Reloading<F::App>>), RunError> {
    let settings = Settings::parse(env)?;
    let aws = Aws::new(bootstrap::aws_config().await, &settings);
    let secrets = SecretSource::new(Some(aws.secrets_manager.clone()), env.lookup());
    let (location, sdk) = (settings.config.clone(), aws.sdk.clone());
    let function = Arc::new(F::new(Edges { settings, aws, secrets })?);
    let builder = function.clone();
    let apps = Reloading::start(&sdk, &location, every, move |config| builder.build(config)).await?;
    Ok((function, Arc::new(apps)))
}
