//! Amazon ECR's control plane, for an `ecr`-kind destination: credentials
//! from the function's IAM role (`GetAuthorizationToken`; a role in another
//! account through STS `AssumeRole`), cached until shortly before they
//! expire, and repositories created on the first push into them with the
//! configured settings. The data plane is the ordinary registry client.

use std::time::{Duration, SystemTime};

use aws_sdk_ecr::error::ProvideErrorMetadata as _;
use aws_sdk_ecr::types::{EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability};
use base64::Engine as _;
use tokio::sync::Mutex;

use crate::registry::Credentials;
use crate::registry_kind::{EcrEncryption, EcrSettings, TagMutability};
use crate::repository::RepositoryPath;

/// A token is fetched again this long before it expires (they last 12 h).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    #[error("ECR {operation}: {reason}")]
    Api {
        operation: &'static str,
        reason: String,
        /// ECR's error code when ECR answered (`AccessDeniedException`,
        /// …); `None` when the call did not reach it (its credentials could
        /// not be had, the connection failed).
        code: Option<String>,
    },
    #[error("ECR GetAuthorizationToken: {0}")]
    Token(String),
}

impl EcrError {
    /// Denied by IAM (the role lacks the action): no retry helps. Told by
    /// ECR's error code; a call that did not reach ECR has none, and its
    /// text says whether STS refused the role to assume (`AccessDenied`).
    pub fn is_denied(&self) -> bool {
        match self {
            EcrError::Api { code: Some(code), .. } => DENIED_CODES.contains(&code.as_str()),
            EcrError::Api { code: None, reason, .. } => reason.contains("AccessDenied"),
            EcrError::Token(_) => false,
        }
    }
}

/// The error codes of an IAM refusal (ECR's own, and STS's).
const DENIED_CODES: [&str; 2] = ["AccessDeniedException", "AccessDenied"];

pub struct EcrControl {
    client: aws_sdk_ecr::Client,
    settings: EcrSettings,
    cached: Mutex<Option<(Credentials, SystemTime)>>,
}

impl EcrControl {
    /// The ECR client for `settings.region`, as the function's role or as
    /// `settings.role_arn`.
    pub async fn new(sdk: &aws_config::SdkConfig, settings: EcrSettings) -> EcrControl {
        let region = aws_config::Region::new(settings.region.clone());
        let mut conf = aws_sdk_ecr::config::Builder::from(sdk).region(region.clone());
        if let Some(arn) = &settings.role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(arn)
                .session_name("harbor-relay")
                .region(region)
                .configure(sdk)
                .build()
                .await;
            conf = conf.credentials_provider(provider);
        }
        EcrControl { client: aws_sdk_ecr::Client::from_conf(conf.build()), settings, cached: Mutex::new(None) }
    }

    /// The registry's credentials (`AWS` and a token): the cached ones
    /// unless they expire within [`RENEW_BEFORE`], or `renew` asks for new
    /// ones (the registry denied them).
    pub async fn credentials(&self, renew: bool) -> Result<Credentials, EcrError> {
        let mut cached = self.cached.lock().await;
        if let Some((c, expires)) = cached.as_ref() {
            let fresh = expires.duration_since(SystemTime::now()).is_ok_and(|left| left > RENEW_BEFORE);
            if fresh && !renew {
                return Ok(c.clone());
            }
        }
        let mut req = self.client.get_authorization_token();
        if let Some(id) = &self.settings.registry_id {
            #[allow(deprecated)] // still honoured, and the only way to name another account's registry
            {
                req = req.registry_ids(id);
            }
        }
        let out =
            req.send().await.map_err(|e| EcrError::Token(aws_sdk_ecr::error::DisplayErrorContext(&e).to_string()))?;
        let data = out.authorization_data().first().ok_or_else(|| EcrError::Token("no authorization data".into()))?;
        let token = data.authorization_token().ok_or_else(|| EcrError::Token("no token".into()))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| EcrError::Token("token is not base64 user:password".into()))?;
        let (username, password) =
            decoded.split_once(':').ok_or_else(|| EcrError::Token("token is not user:password".into()))?;
        let expires = data
            .expires_at()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
        let credentials = Credentials { username: username.to_owned(), password: password.to_owned() };
        *cached = Some((credentials.clone(), expires));
        tracing::info!(region = %self.settings.region, "ECR authorization token fetched");
        Ok(credentials)
    }

    /// Creates `repo` with the configured settings; one that exists is fine.
    pub async fn ensure_repository(&self, repo: &RepositoryPath) -> Result<(), EcrError> {
        let s = &self.settings;
        let mutability = match s.tag_mutability {
            TagMutability::Mutable => ImageTagMutability::Mutable,
            TagMutability::Immutable => ImageTagMutability::Immutable,
        };
        let encryption = match &s.encryption {
            EcrEncryption::Aes256 => EncryptionConfiguration::builder().encryption_type(EncryptionType::Aes256),
            EcrEncryption::Kms(key) => {
                EncryptionConfiguration::builder().encryption_type(EncryptionType::Kms).set_kms_key(key.clone())
            }
        }
        .build()
        .map_err(|e| EcrError::Api { operation: "CreateRepository", reason: e.to_string(), code: None })?;
        let result = self
            .client
            .create_repository()
            .set_registry_id(s.registry_id.clone())
            .repository_name(repo.as_str())
            .image_tag_mutability(mutability)
            .image_scanning_configuration(ImageScanningConfiguration::builder().scan_on_push(s.scan_on_push).build())
            .encryption_configuration(encryption)
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(repository = %repo, "ECR repository created");
                Ok(())
            }
            Err(e) if e.as_service_error().is_some_and(|e| e.is_repository_already_exists_exception()) => Ok(()),
            Err(e) => Err(EcrError::Api {
                operation: "CreateRepository",
                code: e.code().map(str::to_owned),
                reason: aws_sdk_ecr::error::DisplayErrorContext(&e).to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: Option<&str>, reason: &str) -> EcrError {
        EcrError::Api { operation: "CreateRepository", reason: reason.into(), code: code.map(str::to_owned) }
    }

    /// (code, text, denied): ECR's code decides when it answered, even
    /// against its text; without one, STS's refusal in the text does.
    #[test]
    fn a_denial_is_told_by_its_code() {
        for (code, reason, denied) in [
            (Some("AccessDeniedException"), "User is not authorized to perform ecr:CreateRepository", true),
            (Some("LimitExceededException"), "AccessDenied to more repositories", false),
            (Some("InvalidParameterException"), "bad name", false),
            (None, "dispatch failure: AssumeRole: AccessDenied: not authorized to perform sts:AssumeRole", true),
            (None, "dispatch failure: connection refused", false),
        ] {
            assert_eq!(api(code, reason).is_denied(), denied, "{code:?} {reason}");
        }
        assert!(!EcrError::Token("AccessDenied".into()).is_denied());
    }
}
