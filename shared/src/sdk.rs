//! The AWS SDK's configuration: built once per process from the standard
//! environment, every call bounded in time.

use std::time::Duration;

use crate::settings::Environment;

/// The AWS configuration from the standard environment (`AWS_REGION`,
/// `AWS_ENDPOINT_URL`, credentials chain); LocalStack needs no special case.
/// The SDK sets no read timeout of its own: an endpoint that accepts the
/// connection and then stays silent would hold a call (and the message or
/// delivery behind it) forever, so every attempt is bounded here.
///
/// Built once per process and handed out (a clone shares the credentials
/// cache): the functions, every CLI command and the record of written tags
/// use the same one, so the environment and the credentials chain are read
/// once.
pub async fn aws_config() -> aws_config::SdkConfig {
    static SDK: tokio::sync::OnceCell<aws_config::SdkConfig> = tokio::sync::OnceCell::const_new();
    SDK.get_or_init(|| loader().load()).await.clone()
}

/// The SDK's loader with the relay's HTTP client and timeouts.
fn loader() -> aws_config::ConfigLoader {
    aws_config::from_env().http_client(relay_aws::sdk_http::http_client()).timeout_config(aws_timeouts())
}

/// Every AWS call's bounds ([`AWS_CONNECT_TIMEOUT`], [`AWS_ATTEMPT_TIMEOUT`]).
fn aws_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(AWS_CONNECT_TIMEOUT)
        .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT)
        .build()
}

/// [`aws_config`] with the region, endpoint and static credentials that
/// `env` names (`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID` with
/// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`) given to the SDK's
/// builder: a harness points the relay at a local stand-in without setting
/// the process's environment.
pub async fn aws_config_of(env: &Environment) -> aws_config::SdkConfig {
    let mut loader = loader();
    if let Some(region) = env.get("AWS_REGION") {
        loader = loader.region(aws_sdk_sqs::config::Region::new(region.to_owned()));
    }
    if let Some(endpoint) = env.get("AWS_ENDPOINT_URL") {
        loader = loader.endpoint_url(endpoint);
    }
    if let (Some(key), Some(secret)) = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")) {
        let token = env.get("AWS_SESSION_TOKEN").map(str::to_owned);
        let credentials = aws_sdk_sqs::config::Credentials::new(key, secret, token, None, "relay-settings");
        loader = loader.credentials_provider(credentials);
    }
    loader.load().await
}

/// Connecting to an AWS endpoint takes milliseconds when it is reachable.
pub const AWS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest SQS/SSM/Secrets Manager call we make: the poller's 5 s long poll
/// plus ample time for the answer.
pub const AWS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// The SQS and Secrets Manager clients of [`aws_config`].
pub async fn aws_clients() -> (aws_sdk_sqs::Client, aws_sdk_secretsmanager::Client) {
    let shared = aws_config().await;
    (aws_sdk_sqs::Client::new(&shared), aws_sdk_secretsmanager::Client::new(&shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A harness's endpoint, region and credentials reach the SDK through
    /// its builder, not the process's environment.
    #[tokio::test]
    async fn the_sdk_configuration_takes_what_the_environment_snapshot_names() {
        let env = Environment::from_vars([
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
            ("AWS_ACCESS_KEY_ID", "snapshot-key"),
            ("AWS_SECRET_ACCESS_KEY", "snapshot-secret"),
        ]);
        let sdk = aws_config_of(&env).await;
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-west-3"));
        assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:4566"));
        use aws_sdk_sqs::config::ProvideCredentials;
        let credentials = sdk.credentials_provider().unwrap().provide_credentials().await.unwrap();
        assert_eq!(credentials.access_key_id(), "snapshot-key");
    }
}
