//! The S3-compatible blob store: `object_store`'s S3 client (feature `aws-base`, request
//! signing with `ring`) over the workspace's own `reqwest`.
//!
//! Why not the `aws` feature: it brings `reqwest` 0.13 (a second reqwest beside the
//! workspace's 0.12) and `aws-lc-rs` (a large C build). `aws-base` is the same S3 client
//! without a transport; [`ReqwestConnector`] supplies one. Credentials come from the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), never
//! from the config file.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};

use crate::config::MediaConfig;

/// Builds the S3 store the config names. Fails on a missing bucket or credentials.
pub(super) fn store(config: &MediaConfig) -> Result<Arc<dyn ObjectStore>, String> {
    let bucket = config
        .bucket
        .as_deref()
        .filter(|b| !b.is_empty())
        .ok_or("[media] store = \"s3\" needs a bucket")?;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_allow_http(config.allow_http)
        .with_http_connector(ReqwestConnector {
            allow_http: config.allow_http,
        });
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    let store = builder
        .build()
        .map_err(|e| format!("S3 store for bucket {bucket}: {e}"))?;
    Ok(Arc::new(store))
}

/// `object_store`'s transport, through the workspace's `reqwest` 0.12.
#[derive(Debug)]
struct ReqwestConnector {
    allow_http: bool,
}

impl HttpConnector for ReqwestConnector {
    fn connect(&self, _options: &object_store::ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .https_only(!self.allow_http)
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(ReqwestService(client)))
    }
}

#[derive(Debug)]
struct ReqwestService(reqwest::Client);

fn kind(e: &reqwest::Error) -> HttpErrorKind {
    if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_decode() {
        HttpErrorKind::Decode
    } else if e.is_body() || e.is_request() {
        HttpErrorKind::Request
    } else {
        HttpErrorKind::Unknown
    }
}

#[async_trait::async_trait]
impl HttpService for ReqwestService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        let mut request = reqwest::Request::new(parts.method, url);
        *request.headers_mut() = parts.headers;
        // Bodies are in memory (object_store hands over whole parts): send them with
        // their length, as S3 wants.
        let bytes = match body.as_bytes() {
            Some(b) => b.clone(),
            None => body
                .collect()
                .await
                .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?
                .to_bytes(),
        };
        *request.body_mut() = Some(reqwest::Body::from(bytes));
        let response = self
            .0
            .execute(request)
            .await
            .map_err(|e| HttpError::new(kind(&e), e))?;
        let response: axum::http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let body = body.map_err(|e| HttpError::new(kind(&e), e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}
