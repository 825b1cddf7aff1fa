//! Where the configuration is kept: a file, or an SSM parameter the
//! functions read and `relay config-push` writes (validated first, the tier
//! chosen by its size).

use crate::config::Config;
use crate::sdk::aws_config;

/// Loads the configuration named by `RELAY_CONFIG`: a file path, or
/// `ssm:<parameter name>` for an SSM parameter (String or SecureString)
/// holding the YAML. For the CLI: the functions read theirs through
/// [`Reloading`](crate::reload::Reloading).
pub async fn load_config(location: &str) -> Result<Config, ConfigLoadError> {
    let Some(name) = location.strip_prefix("ssm:") else {
        return Ok(Config::load(location.as_ref())?.logging_warnings());
    };
    let ssm = aws_sdk_ssm::Client::new(&aws_config().await);
    let parameter = config_parameter(&ssm, name, true).await?;
    Ok(Config::parse(parameter.value().unwrap_or_default())?.logging_warnings())
}

/// The SSM parameter `name`, its value decrypted when `decrypt` (a version
/// check needs only the metadata).
pub async fn config_parameter(
    ssm: &aws_sdk_ssm::Client,
    name: &str,
    decrypt: bool,
) -> Result<aws_sdk_ssm::types::Parameter, ConfigLoadError> {
    let out = ssm
        .get_parameter()
        .name(name)
        .with_decryption(decrypt)
        .send()
        .await
        .map_err(|e| ConfigLoadError::ssm(name, false, e))?;
    out.parameter
        .ok_or_else(|| ConfigLoadError::Ssm { name: name.to_owned(), reason: "no parameter in the answer".into() })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigLoadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot read SSM parameter {name}: {reason}")]
    Ssm { name: String, reason: String },
    #[error("cannot write SSM parameter {name}: {reason}")]
    SsmWrite { name: String, reason: String },
}

impl ConfigLoadError {
    /// An SSM call about parameter `name` failed (`write`: a put).
    fn ssm<E: std::error::Error + 'static, R: std::fmt::Debug>(
        name: &str,
        write: bool,
        e: aws_sdk_ssm::error::SdkError<E, R>,
    ) -> ConfigLoadError {
        let (name, reason) = (name.to_owned(), aws_sdk_ssm::error::DisplayErrorContext(&e).to_string());
        match write {
            true => ConfigLoadError::SsmWrite { name, reason },
            false => ConfigLoadError::Ssm { name, reason },
        }
    }
}

/// What [`push_config`] stored.
pub struct PushedConfig {
    pub registries: usize,
    pub rules: usize,
    pub bytes: usize,
    pub tier: &'static str,
    pub version: i64,
}

/// SSM's Standard tier holds at most this many bytes.
pub const SSM_STANDARD_MAX_BYTES: usize = 4096;

/// Validates the configuration at `file` as the functions will, then
/// stores it unchanged in the SSM parameter `name` (SecureString; the
/// Advanced tier when it is too large for Standard). Nothing is written
/// when the file does not validate.
pub async fn push_config(file: &std::path::Path, name: &str) -> Result<PushedConfig, ConfigLoadError> {
    let text = std::fs::read_to_string(file)
        .map_err(|source| crate::config::ConfigError::Read { path: file.display().to_string(), source })?;
    let config = Config::parse(&text)?;
    let tier = if text.len() > SSM_STANDARD_MAX_BYTES {
        aws_sdk_ssm::types::ParameterTier::Advanced
    } else {
        aws_sdk_ssm::types::ParameterTier::Standard
    };
    let out = aws_sdk_ssm::Client::new(&aws_config().await)
        .put_parameter()
        .name(name)
        .value(&text)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .tier(tier.clone())
        .overwrite(true)
        .send()
        .await
        .map_err(|e| ConfigLoadError::ssm(name, true, e))?;
    Ok(PushedConfig {
        registries: config.registries.len(),
        rules: config.rules.len(),
        bytes: text.len(),
        tier: if tier == aws_sdk_ssm::types::ParameterTier::Advanced { "Advanced" } else { "Standard" },
        version: out.version(),
    })
}
