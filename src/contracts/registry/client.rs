//! A client for the part of the Confluent Schema Registry REST API that
//! billstream uses: register a schema under a subject, look a schema's id
//! up under a subject, fetch a schema by id. Confluent's content type,
//! optional HTTP basic auth, a timeout per request, and retries with
//! backoff for what may pass (no answer, 5xx, 408, 429); anything else
//! fails at once. Every error names the method and URL (so the subject or
//! id) and carries the registry's `error_code` and `message`.
//!
//! HTTP is hyper's own client (the hyper axum already builds) with rustls
//! for `https://` registries, trusting the system's CA certificates
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` point elsewhere).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::config::RegistrySettings;
use crate::contracts::dead_letter::base64_encode;

/// Confluent's content type for requests and answers.
pub const CONTENT_TYPE_V1: &str = "application/vnd.schemaregistry.v1+json";

/// Largest answer read (a schema is a few KiB; this is a guard, not a limit).
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// Confluent error codes meaning "not there" (HTTP 404): subject, version,
/// schema not found.
const NOT_FOUND_CODES: [i64; 3] = [40401, 40402, 40403];

/// Why a registry call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No answer: connection refused, reset, TLS failure or timeout, after
    /// every attempt.
    #[error("Schema Registry {method} {url}: no answer after {attempts} attempt(s): {reason}")]
    Unavailable {
        method: &'static str,
        url: String,
        attempts: u32,
        reason: String,
    },
    /// The registry answered with an error (after every attempt when it
    /// was a 5xx, 408 or 429).
    #[error("Schema Registry {method} {url}: HTTP {status}{}: {message}", code_text(*.error_code))]
    Refused {
        method: &'static str,
        url: String,
        status: u16,
        error_code: Option<i64>,
        message: String,
    },
    /// A success answer that is not what the API documents.
    #[error("Schema Registry {method} {url}: unexpected answer: {reason}")]
    BadAnswer {
        method: &'static str,
        url: String,
        reason: String,
    },
    /// The client cannot be set up (no CA certificates for https).
    #[error("config field `kafka.schema_registry_url`: {0}")]
    Setup(String),
    /// `billstream run`: schemas of this build are not registered under
    /// their subjects.
    #[error("config field `kafka.schema_registry_url`: the Schema Registry at {url} has no id for {} of billstream's schemas under their subjects ({}); run `billstream schemas register` with the same configuration first", subjects.len(), subjects.join(", "))]
    NotRegistered { url: String, subjects: Vec<String> },
    /// `billstream run`: the writer schema of an id seen in the batch in
    /// hand could not be fetched; the loop stops rather than dead-letter
    /// good records because the registry is unavailable.
    #[error("schema id {id} of a record in the batch: {source}; stopping before the batch is processed (none of its records is dead-lettered or committed: a restart reads them again)")]
    WriterSchema { id: u32, source: Box<RegistryError> },
}

fn code_text(code: Option<i64>) -> String {
    code.map(|c| format!(" (error_code {c})"))
        .unwrap_or_default()
}

/// How often and how patiently a call is retried when it may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each later one.
    pub first_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts, waiting 0.25, 0.5, 1 and 2 s between them.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(250),
        }
    }
}

/// A schema as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    /// The schema text (for Avro, its JSON).
    pub schema: String,
    /// `AVRO` (the registry leaves it out then), `PROTOBUF` or `JSON`.
    pub schema_type: String,
}

/// Where a schema stands under a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectVersion {
    pub id: u32,
    pub version: Option<u32>,
}

/// One Schema Registry.
#[derive(Clone)]
pub struct RegistryClient {
    url: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    retry: RetryPolicy,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .field("basic_auth", &self.authorization.is_some())
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
    version: Option<u32>,
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// What one attempt gave: an answer, or no answer.
enum Attempt {
    Answer(StatusCode, Bytes),
    NoAnswer(String),
}

impl RegistryClient {
    /// A client for `settings` (no request is sent yet).
    pub fn new(settings: &RegistrySettings) -> Result<RegistryClient, RegistryError> {
        let mut roots = rustls::RootCertStore::empty();
        if settings.url.starts_with("https://") {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(RegistryError::Setup(format!(
                    "{} is https, but no CA certificate was found in the system trust store (install ca-certificates, or point SSL_CERT_FILE at a PEM bundle){}",
                    settings.url,
                    found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Setup(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(settings.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let authorization = match &settings.basic_auth {
            None => None,
            Some(auth) => {
                let token =
                    base64_encode(format!("{}:{}", auth.username, auth.password).as_bytes());
                let mut value = HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                    RegistryError::Setup(
                        "kafka.schema_registry_username has characters HTTP cannot carry".into(),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(RegistryClient {
            url: settings.url.clone(),
            authorization,
            timeout: settings.timeout,
            retry: RetryPolicy::default(),
            http: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// The same client with another retry policy (tests use a short one).
    pub fn with_retry(mut self, retry: RetryPolicy) -> RegistryClient {
        self.retry = RetryPolicy {
            attempts: retry.attempts.max(1),
            ..retry
        };
        self
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Register `schema` (Avro text) under `subject` and return its id.
    /// Idempotent: a schema already under the subject keeps its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{}/versions", path_segment(subject));
        let body = serde_json::json!({ "schema": schema }).to_string();
        let (url, bytes) = self.call(Method::POST, &path, Some(body)).await?;
        let answer: IdBody = parse("POST", &url, &bytes)?;
        Ok(answer.id)
    }

    /// The id (and version) of `schema` under `subject`; `None` when the
    /// subject does not exist or does not hold that schema.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<SubjectVersion>, RegistryError> {
        let path = format!("/subjects/{}", path_segment(subject));
        let body = serde_json::json!({ "schema": schema }).to_string();
        match self.call(Method::POST, &path, Some(body)).await {
            Ok((url, bytes)) => {
                let answer: IdBody = parse("POST", &url, &bytes)?;
                Ok(Some(SubjectVersion {
                    id: answer.id,
                    version: answer.version,
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The schema registered under `id`; `None` when the registry has no
    /// schema of that id.
    pub async fn schema_by_id(&self, id: u32) -> Result<Option<RegisteredSchema>, RegistryError> {
        let path = format!("/schemas/ids/{id}");
        match self.call(Method::GET, &path, None).await {
            Ok((url, bytes)) => {
                let answer: SchemaBody = parse("GET", &url, &bytes)?;
                Ok(Some(RegisteredSchema {
                    schema: answer.schema,
                    schema_type: answer.schema_type.unwrap_or_else(|| "AVRO".into()),
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One call with retries: the URL called and the body of a 2xx answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(String, Bytes), RegistryError> {
        let url = format!("{}{path}", self.url);
        let name = if method == Method::GET { "GET" } else { "POST" };
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            let error = match self.attempt(&method, &url, body.clone()).await {
                Attempt::Answer(status, bytes) if status.is_success() => return Ok((url, bytes)),
                Attempt::Answer(status, bytes) => {
                    let parsed: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
                    let error_code = parsed.as_ref().and_then(|b| b.error_code);
                    let message = parsed
                        .and_then(|b| b.message)
                        .unwrap_or_else(|| snippet(&bytes));
                    let error = RegistryError::Refused {
                        method: name,
                        url: url.clone(),
                        status: status.as_u16(),
                        error_code,
                        message,
                    };
                    let may_pass = status.is_server_error()
                        || status == StatusCode::REQUEST_TIMEOUT
                        || status == StatusCode::TOO_MANY_REQUESTS;
                    if !may_pass {
                        return Err(error);
                    }
                    error
                }
                Attempt::NoAnswer(reason) => RegistryError::Unavailable {
                    method: name,
                    url: url.clone(),
                    attempts: attempt,
                    reason,
                },
            };
            if attempt >= self.retry.attempts {
                return Err(error);
            }
            tracing::warn!(error = %error, attempt, "Schema Registry call failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    async fn attempt(&self, method: &Method, url: &str, body: Option<String>) -> Attempt {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(url)
            .header(
                ACCEPT,
                "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json; q=0.9, application/json; q=0.5",
            );
        if body.is_some() {
            request = request.header(CONTENT_TYPE, CONTENT_TYPE_V1);
        }
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = match request.body(Full::new(Bytes::from(body.unwrap_or_default()))) {
            Ok(r) => r,
            Err(e) => return Attempt::NoAnswer(format!("invalid request: {e}")),
        };
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, bytes))) => Attempt::Answer(status, bytes),
            Ok(Err(reason)) => Attempt::NoAnswer(reason),
            Err(_) => Attempt::NoAnswer(format!(
                "no answer within {} ms (kafka.schema_registry_timeout)",
                self.timeout.as_millis()
            )),
        }
    }
}

/// A 404 the registry itself gave (its error code says what is missing);
/// a 404 without one is a wrong URL, not a missing schema.
fn is_not_found(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Refused { status: 404, error_code: Some(code), .. } if NOT_FOUND_CODES.contains(code))
}

fn parse<'a, T: Deserialize<'a>>(
    method: &'static str,
    url: &str,
    bytes: &'a [u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::BadAnswer {
        method,
        url: url.to_string(),
        reason: format!("{e} in {}", snippet(bytes)),
    })
}

/// The start of a body, for an error message.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    if cut.trim().is_empty() {
        "(empty body)".into()
    } else {
        cut
    }
}

/// An error with its causes (hyper's own message is terse: "client error (Connect)").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A subject as one path segment: unreserved characters as they are,
/// anything else percent-encoded.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_path_segment() {
        assert_eq!(
            path_segment("acme.billing.usage.v1-billstream.v1.UsageRecorded"),
            "acme.billing.usage.v1-billstream.v1.UsageRecorded"
        );
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn an_https_client_builds_on_the_system_roots_or_says_what_is_missing() {
        let settings = RegistrySettings {
            url: "https://registry.example:8081".into(),
            basic_auth: Some(crate::config::BasicAuth {
                username: "u".into(),
                password: "pw-never-printed".into(),
            }),
            timeout: Duration::from_secs(1),
        };
        // No request is sent; on a machine without CA certificates the
        // error names the way out.
        match RegistryClient::new(&settings) {
            Ok(client) => assert!(!format!("{client:?}").contains("pw-never-printed")),
            Err(e) => assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}"),
        }
    }

    #[test]
    fn only_the_registry_s_own_404_means_not_found() {
        let refused = |status, error_code| RegistryError::Refused {
            method: "GET",
            url: "http://r/schemas/ids/7".into(),
            status,
            error_code,
            message: "m".into(),
        };
        assert!(is_not_found(&refused(404, Some(40403))));
        assert!(is_not_found(&refused(404, Some(40401))));
        assert!(!is_not_found(&refused(404, None)), "a wrong URL");
        assert!(!is_not_found(&refused(500, Some(50001))));
        assert_eq!(
            refused(404, Some(40403)).to_string(),
            "Schema Registry GET http://r/schemas/ids/7: HTTP 404 (error_code 40403): m"
        );
    }
}
