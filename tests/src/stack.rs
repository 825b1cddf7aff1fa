//! The local stack's endpoints and secrets, from the environment that
//! `scripts/stack.sh up` writes to `.local/stack/env`. The relay is handed
//! them ([`Stack::environment`], [`Stack::secrets`], [`Stack::aws_config`])
//! rather than finding them in the process's environment.

use std::collections::HashMap;

use anyhow::Context;
use relay::secrets::SecretSource;
use relay::settings::Environment;

#[derive(Debug, Clone)]
pub struct Stack {
    pub source_url: String,
    pub target_url: String,
    pub target_user: String,
    pub target_password: String,
    pub webhook_auth: String,
    /// The process's environment over `.local/stack/env`'s variables.
    pub environment: Environment,
}

impl Stack {
    /// Reads the variables from the process environment, falling back to
    /// `.local/stack/env`.
    pub fn load() -> anyhow::Result<Stack> {
        let environment = environment(&[]);
        let var = |k: &str| {
            environment
                .get(k)
                .map(str::to_owned)
                .with_context(|| format!("{k} not set: start the stack with `scripts/stack.sh up` (make test does)"))
        };
        Ok(Stack {
            source_url: var("RELAY_SOURCE_URL")?,
            target_url: var("RELAY_TARGET_URL")?,
            target_user: var("RELAY_TARGET_USER")?,
            target_password: var("CLUSTER1_PASSWORD")?,
            webhook_auth: var("RELAY_WEBHOOK_AUTH")?,
            environment,
        })
    }

    /// This stack with `vars` added to its environment: a credential only
    /// one test knows, handed to the relay without setting the process's
    /// environment.
    pub fn with_vars(mut self, vars: &[(&str, &str)]) -> Stack {
        let mut all: Vec<(String, String)> =
            self.environment.vars().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        all.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self.environment = Environment::from_vars(all);
        self
    }

    /// The stack's secrets as the relay reads them: credentials named by
    /// variable (`CLUSTER1_PASSWORD`, `RELAY_WEBHOOK_AUTH`) from the stack's
    /// environment, plus Secrets Manager when given.
    pub fn secrets(&self, secrets_manager: Option<aws_sdk_secretsmanager::Client>) -> SecretSource {
        SecretSource::new(secrets_manager, self.environment.lookup())
    }

    /// The SDK configuration for LocalStack: its endpoint, region and
    /// credentials passed to the SDK's builder.
    pub async fn aws_config(&self) -> aws_config::SdkConfig {
        relay::bootstrap::aws_config_of(&self.environment).await
    }

    /// `host:port` of the source, as Harbor writes it in `resource_url`.
    pub fn source_host(&self) -> &str {
        self.source_url.trim_start_matches("http://")
    }

    pub fn target_host(&self) -> &str {
        self.target_url.trim_start_matches("http://")
    }

    pub fn source(&self) -> crate::PlainRegistry {
        crate::PlainRegistry::new(&self.source_url, None)
    }

    pub fn target(&self) -> crate::PlainRegistry {
        crate::PlainRegistry::new(&self.target_url, Some((self.target_user.clone(), self.target_password.clone())))
    }

    /// A configuration for the relay against this stack, with `rules` (YAML
    /// list items, indented by two spaces) appended.
    pub fn config_yaml(&self, rules: &str) -> String {
        format!(
            "source:\n  url: {}\nwebhook:\n  auth_values_env: RELAY_WEBHOOK_AUTH\nregistries:\n  - name: cluster1-registry\n    url: {}\n    credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}\nrules:\n{}",
            self.source_url, self.target_url, self.target_user, rules
        )
    }

    /// An SQS client for LocalStack.
    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.aws_config().await)
    }
}

/// The process environment over `.local/stack/env`'s variables, with
/// `extra` on top: what a test hands the relay for credentials it names by
/// variable (a password only that test knows), instead of setting them in
/// the process.
pub fn environment(extra: &[(&str, &str)]) -> Environment {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../.local/stack/env");
    let mut vars: HashMap<String, String> = std::fs::read_to_string(file)
        .map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
                .collect()
        })
        .unwrap_or_default();
    vars.extend(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))));
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Environment::from_vars(vars)
}

/// A secret source over [`environment`]`(extra)`, without Secrets Manager.
pub fn secrets_with(extra: &[(&str, &str)]) -> SecretSource {
    SecretSource::new(None, environment(extra).lookup())
}

/// Creates a fresh queue (unique name) and returns its URL.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}-{}", uuid_like());
    let out = sqs.create_queue().queue_name(&name).send().await.context("create queue (is LocalStack up?)")?;
    out.queue_url().map(str::to_owned).context("no queue URL")
}

/// Messages on a queue: (visible, in flight, delayed).
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<(u64, u64, u64)> {
    let d = relay::ops::depth(sqs, url).await?;
    Ok((d.visible, d.in_flight, d.delayed))
}

/// A fresh queue whose messages go to a fresh dead-letter queue after
/// `max_receives` deliveries: (queue URL, DLQ URL).
pub async fn create_queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    max_receives: u32,
    visibility_seconds: u32,
) -> anyhow::Result<(String, String)> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let dlq = create_queue(sqs, &format!("{prefix}-dlq")).await?;
    let attrs = sqs.get_queue_attributes().queue_url(&dlq).attribute_names(A::QueueArn).send().await?;
    let arn = attrs.attributes().and_then(|a| a.get(&A::QueueArn)).context("DLQ ARN")?.clone();
    let url = create_queue(sqs, prefix).await?;
    sqs.set_queue_attributes()
        .queue_url(&url)
        .attributes(A::VisibilityTimeout, visibility_seconds.to_string())
        .attributes(
            A::RedrivePolicy,
            format!("{{\"deadLetterTargetArn\":\"{arn}\",\"maxReceiveCount\":\"{max_receives}\"}}"),
        )
        .send()
        .await?;
    Ok((url, dlq))
}

fn uuid_like() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}
