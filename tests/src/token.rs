//! A small token issuer for the token-auth registry of the local stack
//! (`scripts/stack.sh` starts it with `auth.token` pointing here): the
//! Docker/distribution token flow as Harbor's core serves it. It checks Basic
//! credentials, grants the requested repository actions, and signs an ES256
//! JWT whose `x5c` header carries the certificate the registry trusts.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::Stack;

struct Issuer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
    /// Every scope asked for with valid credentials, in order.
    scopes: Mutex<Vec<String>>,
    refused: Mutex<usize>,
}

/// The running issuer; stops with the test's runtime.
#[derive(Clone)]
pub struct TokenIssuer {
    state: Arc<Issuer>,
}

impl TokenIssuer {
    /// Binds the stack's issuer address (`RELAY_TOKEN_ISSUER_ADDR`), granting
    /// `user`/`password` (`_stack` loaded means the stack's variables, which
    /// name the key and the address, are set). One issuer per process at a time.
    pub async fn start(_stack: &Stack, user: &str, password: &str) -> anyhow::Result<TokenIssuer> {
        let var = |k: &str| std::env::var(k).map_err(|_| anyhow::anyhow!("{k} not set: run scripts/stack.sh up"));
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &std::fs::read(var("RELAY_TOKEN_KEY")?)?, &rng)
                .map_err(|e| anyhow::anyhow!("token key: {e}"))?;
        let state = Arc::new(Issuer {
            key,
            cert_der: std::fs::read(var("RELAY_TOKEN_CERT")?)?,
            user: user.to_owned(),
            password: password.to_owned(),
            scopes: Mutex::new(Vec::new()),
            refused: Mutex::new(0),
        });
        let listener = tokio::net::TcpListener::bind(var("RELAY_TOKEN_ISSUER_ADDR")?).await?;
        let app = Router::new().route("/token", axum::routing::get(token)).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(TokenIssuer { state })
    }

    pub fn scopes(&self) -> Vec<String> {
        self.state.scopes.lock().unwrap().clone()
    }

    pub fn refused(&self) -> usize {
        *self.state.refused.lock().unwrap()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn token(State(issuer): State<Arc<Issuer>>, uri: Uri, headers: HeaderMap) -> Response {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", issuer.user, issuer.password))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        *issuer.refused.lock().unwrap() += 1;
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone()).unwrap_or_default();
    let mut access = Vec::new();
    for scope in params.iter().filter(|(k, _)| k == "scope").flat_map(|(_, v)| v.split(' ')) {
        issuer.scopes.lock().unwrap().push(scope.to_owned());
        // `repository:<name>:<actions>`; names hold no ':'.
        let mut parts = scope.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let actions: Vec<&str> = actions.split(',').collect();
        access.push(serde_json::json!({ "type": kind, "name": name, "actions": actions }));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({
        "alg": "ES256",
        "typ": "JWT",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&issuer.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": "relay-test-issuer", "sub": issuer.user, "aud": service,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{:x}", rand::random::<u64>()),
        "access": access,
    });
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let Ok(signature) = issuer.key.sign(&SystemRandom::new(), input.as_bytes()) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let jwt = format!("{input}.{}", b64url(signature.as_ref()));
    let body = serde_json::json!({ "token": jwt, "access_token": jwt, "expires_in": 300 });
    ([("content-type", "application/json")], body.to_string()).into_response()
}
