//! Building the long-lived parts from the configuration, once per cold
//! start: registry clients with resolved credentials, the webhook, the
//! worker. Both binaries call these so Lambda and standalone modes match.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::queue::TaskQueue;
use crate::registry::retry::RetryPolicy;
use crate::registry::{ClientOptions, RegistryClient, Role};
use crate::secrets::{SecretError, SecretSource};
use crate::webhook::Webhook;
use crate::worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("credentials of {registry}: {source}")]
    Credentials {
        registry: String,
        source: SecretError,
    },
    #[error("webhook auth values: {0}")]
    WebhookAuth(SecretError),
    #[error("HTTP client for {registry}: {reason}")]
    Client { registry: String, reason: String },
}

/// Builds the worker: one client for the source and one per destination.
pub async fn worker(
    config: &Config,
    secrets: &SecretSource,
    retry: RetryPolicy,
) -> Result<Worker, StartupError> {
    let source = Arc::new(source_client(config, secrets, retry).await?);
    let mut destinations = HashMap::new();
    for r in &config.registries {
        let credentials =
            match &r.credentials {
                Some(c) => Some(secrets.credentials(c).await.map_err(|source| {
                    StartupError::Credentials {
                        registry: r.name.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        let client = RegistryClient::new(
            &r.name,
            r.url.clone(),
            Role::Destination,
            credentials,
            ClientOptions {
                insecure: r.insecure,
                retry,
            },
        )
        .map_err(|e| StartupError::Client {
            registry: r.name.clone(),
            reason: e.to_string(),
        })?;
        destinations.insert(r.name.clone(), Arc::new(client));
    }
    Ok(Worker {
        source,
        destinations,
        settings: config.worker.clone(),
        retry,
    })
}

/// The client for the source Harbor (read-only scopes).
pub async fn source_client(
    config: &Config,
    secrets: &SecretSource,
    retry: RetryPolicy,
) -> Result<RegistryClient, StartupError> {
    let credentials = match &config.source.credentials {
        Some(c) => {
            Some(
                secrets
                    .credentials(c)
                    .await
                    .map_err(|source| StartupError::Credentials {
                        registry: "source".into(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    RegistryClient::new(
        "source",
        config.source.url.clone(),
        Role::Source,
        credentials,
        ClientOptions {
            insecure: config.source.insecure,
            retry,
        },
    )
    .map_err(|e| StartupError::Client {
        registry: "source".into(),
        reason: e.to_string(),
    })
}

/// Builds the webhook with its accepted auth values.
pub async fn webhook(
    config: Arc<Config>,
    secrets: &SecretSource,
    queue: TaskQueue,
    untagged_delay: Duration,
) -> Result<Webhook, StartupError> {
    let auth = secrets
        .webhook_auth(&config.webhook)
        .await
        .map_err(StartupError::WebhookAuth)?;
    Ok(Webhook::new(config, auth, queue, untagged_delay))
}

/// AWS clients from the standard environment (`AWS_REGION`,
/// `AWS_ENDPOINT_URL`, credentials chain); LocalStack needs no special case.
pub async fn aws_clients() -> (aws_sdk_sqs::Client, aws_sdk_secretsmanager::Client) {
    let shared = aws_config::load_from_env().await;
    (
        aws_sdk_sqs::Client::new(&shared),
        aws_sdk_secretsmanager::Client::new(&shared),
    )
}
