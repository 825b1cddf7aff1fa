//! The AWS SDK's HTTP client: reqwest, the HTTP stack the registry side
//! already runs on, instead of the SDK's default client (hyper-util with
//! HTTP/2 and a TLS set-up of its own). Every AWS endpoint the relay calls
//! (SQS, Secrets Manager, SSM, S3, ECR, CloudWatch Logs, STS, the instance
//! metadata) accepts HTTP/1.1, which is what calls now use; the second
//! stack was 0.8 MB of the worker's text, which the long-running worker
//! mostly held resident (the kernel maps code pages with their
//! neighbours). BENCHMARKS.md has the figures (issue 31, third pass).
//!
//! Bodies stream both ways; the SDK keeps its own retries, attempt
//! timeouts and signing, and this client applies the connect and read
//! timeouts it is given, as the SDK's contract for an HTTP client asks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::body::SdkBody;

/// The client to give the SDK's configuration loader
/// (`aws_config::ConfigLoader::http_client`).
pub fn http_client() -> SharedHttpClient {
    SharedHttpClient::new(ReqwestClient::default())
}

/// A connect and a read timeout, each optional.
type Timeouts = (Option<Duration>, Option<Duration>);

/// One connection pool per distinct timeout pair the SDK asks for (its
/// clients share one; the credentials providers' calls have their own).
#[derive(Debug, Default)]
struct ReqwestClient {
    connectors: Mutex<HashMap<Timeouts, SharedHttpConnector>>,
}

impl ReqwestClient {
    fn connector(&self, connect: Option<Duration>, read: Option<Duration>) -> SharedHttpConnector {
        let mut connectors = self.connectors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        connectors
            .entry((connect, read))
            .or_insert_with(|| SharedHttpConnector::new(Connector::new(connect, read)))
            .clone()
    }
}

impl HttpClient for ReqwestClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        self.connector(settings.connect_timeout(), settings.read_timeout())
    }
}

#[derive(Debug)]
struct Connector {
    /// The TLS back end failed to start: every call says so.
    client: Result<reqwest::Client, String>,
}

impl Connector {
    fn new(connect: Option<Duration>, read: Option<Duration>) -> Connector {
        // As the SDK's own client: no redirects (the SDK reads every
        // answer itself) and no proxy taken from the environment.
        let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy();
        if let Some(connect) = connect {
            builder = builder.connect_timeout(connect);
        }
        if let Some(read) = read {
            builder = builder.read_timeout(read);
        }
        Connector { client: builder.build().map_err(|e| format!("the AWS SDK's HTTP client: {e}")) }
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        HttpConnectorFuture::new(async move {
            let client = client.map_err(|e| ConnectorError::other(e.into(), None))?;
            let request = request.try_into_http1x().map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = request.into_parts();
            let body = match body.bytes() {
                Some(bytes) => reqwest::Body::from(bytes::Bytes::copy_from_slice(bytes)),
                None => reqwest::Body::wrap(body),
            };
            let request = reqwest::Request::try_from(http::Request::from_parts(parts, body))
                .map_err(|e| ConnectorError::user(e.into()))?;
            let response = client.execute(request).await.map_err(classify)?;
            let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
            let response = http::Response::from_parts(parts, SdkBody::from_body_1_x(body));
            Response::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// The SDK retries timeouts and I/O errors as transient; the rest are
/// final.
fn classify(error: reqwest::Error) -> ConnectorError {
    if error.is_timeout() {
        ConnectorError::timeout(error.into())
    } else if error.is_connect() || error.is_request() || error.is_body() {
        ConnectorError::io(error.into())
    } else {
        ConnectorError::other(error.into(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn request(url: &str, body: SdkBody) -> HttpRequest {
        let request = http::Request::builder().method("POST").uri(url).body(body).unwrap();
        HttpRequest::try_from(request).unwrap()
    }

    /// An endpoint on loopback answering every request with `handler`; its URL.
    async fn endpoint<H, T>(handler: H) -> String
    where
        H: axum::handler::Handler<T, ()>,
        T: 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
        url
    }

    /// A streamed request body (no bytes in hand, as an SDK body built from
    /// a stream) reaches the endpoint whole, and the answer's status,
    /// headers and body come back to the SDK.
    #[tokio::test]
    async fn a_streamed_body_goes_whole_and_the_answer_comes_back() {
        let (seen, received) = tokio::sync::oneshot::channel();
        let seen = std::sync::Arc::new(Mutex::new(Some(seen)));
        let url = endpoint(move |request: axum::extract::Request| {
            let seen = seen.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let answer = format!("got {} bytes", body.len());
                if let Some(seen) = seen.lock().unwrap().take() {
                    let _ = seen.send((parts.method, parts.version, body));
                }
                (http::StatusCode::IM_A_TEAPOT, [("x-amzn-requestid", "r-1")], answer)
            }
        })
        .await;
        let payload = bytes::Bytes::from(vec![7u8; 300_000]);
        let streamed = SdkBody::from_body_1_x(http_body_util::Full::new(payload.clone()));
        assert!(streamed.bytes().is_none(), "the body must be a streamed one for this test");
        let connector = Connector::new(Some(Duration::from_secs(2)), Some(Duration::from_secs(5)));
        let response = connector.call(request(&url, streamed)).await.unwrap();
        assert_eq!(response.status().as_u16(), 418);
        assert_eq!(response.headers().get("x-amzn-requestid"), Some("r-1"));
        assert_eq!(response.body().bytes(), None, "the answer streams");
        let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        assert_eq!(&body[..], b"got 300000 bytes");
        let (method, version, got) = received.await.unwrap();
        assert_eq!((method, version), (http::Method::POST, http::Version::HTTP_11));
        assert_eq!(got, payload);
    }

    /// An endpoint that takes the request and never answers fails the
    /// attempt as a timeout (which the SDK retries) within the read
    /// timeout, instead of holding the call until the attempt's timeout.
    #[tokio::test]
    async fn a_silent_endpoint_is_a_timeout_within_the_read_timeout() {
        let url = endpoint(|body: bytes::Bytes| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            format!("{} bytes, too late", body.len())
        })
        .await;
        let connector = Connector::new(Some(Duration::from_secs(2)), Some(Duration::from_millis(300)));
        let started = std::time::Instant::now();
        let call = connector.call(request(&url, SdkBody::from("Action=ReceiveMessage")));
        let error = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the read timeout did not end the call")
            .unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    /// Nothing listening: an I/O error, which the SDK retries.
    #[tokio::test]
    async fn a_refused_connection_is_an_io_error() {
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let connector = Connector::new(Some(Duration::from_secs(2)), None);
        let error = connector.call(request(&format!("http://127.0.0.1:{port}/"), SdkBody::empty())).await.unwrap_err();
        assert!(error.is_io(), "{error:?}");
    }

    /// The SDK's clients share one pool; other timeouts get their own.
    #[test]
    fn one_connector_per_timeout_pair() {
        let client = ReqwestClient::default();
        let (three, one, two) = (Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(2));
        let _ = client.connector(Some(three), Some(one));
        let _ = client.connector(Some(three), Some(one));
        let _ = client.connector(Some(three), Some(two));
        let _ = client.connector(None, None);
        assert_eq!(client.connectors.lock().unwrap().len(), 3);
    }
}
