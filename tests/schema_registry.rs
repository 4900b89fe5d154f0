//! The Schema Registry edge (`src/contracts/registry/`): its client, the
//! learning of writer schemas, `billstream schemas register` and
//! `billstream run` against an in-process mock of the Confluent REST API;
//! one end-to-end run against the test broker; and a live test against a
//! real registry, gated on `BILLSTREAM_SCHEMA_REGISTRY_URL`.
//!
//! The mock keeps to the part of the API billstream uses and answers as
//! Confluent's registry does: ids are global and sequential, the same
//! schema gets the same id under any subject, a 404 carries
//! `error_code` 40401 (subject not found) or 40403 (schema not found),
//! answers are `application/vnd.schemaregistry.v1+json`, a missing basic
//! auth is a 401, a backend failure a 500 with 50001.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use billstream::config::{BasicAuth, RegistrySettings, Settings};
use billstream::contracts::registry::{
    register_all, registry_ids, RegistryClient, RegistryError, RetryPolicy, WriterSchemas,
};
use billstream::contracts::{framing, Catalog, Decoded, Decoder};
use billstream::engine::events::*;
use billstream::engine::time::Timestamp;
use rust_decimal::Decimal;
use serde_json::json;

use crate::kafka_e2e::{
    account_opened, billstream, output_ok, per_unit_plan, read_until, setup, text, Running,
};

// ---------------------------------------------------------------- the mock

/// A schema the mock holds.
struct Stored {
    id: u32,
    schema: String,
    /// Parsed JSON: two texts of one schema (spacing, key order) are equal.
    parsed: serde_json::Value,
    schema_type: String,
}

/// The mock's state; tests read and change it through `MockRegistry::with`.
pub(crate) struct Registry {
    next_id: u32,
    schemas: Vec<Stored>,
    /// Subject → the schema id of each version, oldest first.
    subjects: BTreeMap<String, Vec<u32>>,
    /// Required basic auth credentials.
    pub auth: Option<(String, String)>,
    /// Answer every request with a 500 (a registry whose backend is down).
    pub failing: bool,
    /// "METHOD path" of every request, in order.
    pub requests: Vec<String>,
}

/// An error answer: status, Confluent error code, message.
type Refusal = (StatusCode, i64, String);

impl Registry {
    /// Register `schema` under `subject` (Confluent's rules: an id per
    /// distinct schema across subjects; a schema already under the subject
    /// keeps its version).
    pub fn register(
        &mut self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<u32, Refusal> {
        let parsed = self.parse(schema, schema_type)?;
        let id = match self
            .schemas
            .iter()
            .find(|s| s.parsed == parsed && s.schema_type == schema_type)
        {
            Some(s) => s.id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.schemas.push(Stored {
                    id,
                    schema: schema.to_string(),
                    parsed,
                    schema_type: schema_type.to_string(),
                });
                id
            }
        };
        let versions = self.subjects.entry(subject.to_string()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        Ok(id)
    }

    /// (id, version) of `schema` under `subject`.
    fn lookup(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<(u32, usize), Refusal> {
        let parsed = self.parse(schema, schema_type)?;
        let Some(versions) = self.subjects.get(subject) else {
            return Err((
                StatusCode::NOT_FOUND,
                40401,
                format!("Subject '{subject}' not found."),
            ));
        };
        versions
            .iter()
            .enumerate()
            .find(|(_, id)| {
                self.schemas
                    .iter()
                    .any(|s| s.id == **id && s.parsed == parsed && s.schema_type == schema_type)
            })
            .map(|(v, id)| (*id, v + 1))
            .ok_or((StatusCode::NOT_FOUND, 40403, "Schema not found".into()))
    }

    fn parse(&self, schema: &str, schema_type: &str) -> Result<serde_json::Value, Refusal> {
        let invalid = |e: String| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                42201,
                format!("Invalid schema {schema}: {e}"),
            )
        };
        if schema_type == "AVRO" {
            Schema::parse_str(schema).map_err(|e| invalid(e.to_string()))?;
            serde_json::from_str(schema).map_err(|e| invalid(e.to_string()))
        } else {
            Ok(serde_json::Value::String(schema.to_string()))
        }
    }

    /// The id of the latest version under `subject`.
    pub fn latest(&self, subject: &str) -> Option<u32> {
        self.subjects.get(subject)?.last().copied()
    }

    /// The text of the schema with `id`.
    pub fn schema(&self, id: u32) -> Option<&str> {
        self.schemas
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.schema.as_str())
    }
}

/// The mock on 127.0.0.1 (a port of the system's choosing), on a thread
/// of its own; stopped when dropped.
pub(crate) struct MockRegistry {
    pub url: String,
    state: Arc<Mutex<Registry>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockRegistry {
    /// Ids start at `first_id` (Confluent's start at 1; tests pick other
    /// numbers so that registry ids differ from the manifest's).
    pub(crate) fn start(first_id: u32) -> MockRegistry {
        let state = Arc::new(Mutex::new(Registry {
            next_id: first_id,
            schemas: Vec::new(),
            subjects: BTreeMap::new(),
            auth: None,
            failing: false,
            requests: Vec::new(),
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}", post(lookup))
            .route("/schemas/ids/{id}", get(by_id))
            .with_state(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        MockRegistry {
            url,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub(crate) fn settings(&self) -> RegistrySettings {
        RegistrySettings {
            url: self.url.clone(),
            basic_auth: None,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Drop for MockRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            "application/vnd.schemaregistry.v1+json",
        )],
        body.to_string(),
    )
        .into_response()
}

fn refuse((status, code, message): Refusal) -> Response {
    answer(status, json!({"error_code": code, "message": message}))
}

/// What every request goes through: the log, the failure switch, basic
/// auth, and for a body, its content type and shape.
fn gate(
    state: &Mutex<Registry>,
    request: String,
    headers: &HeaderMap,
    body: Option<&Bytes>,
) -> Result<Option<(String, String)>, Refusal> {
    let mut r = state.lock().unwrap();
    r.requests.push(request);
    if r.failing {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend datastore".into(),
        ));
    }
    if let Some((user, password)) = &r.auth {
        use base64_shim::encode;
        let expected = format!("Basic {}", encode(format!("{user}:{password}").as_bytes()));
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&expected)
        {
            return Err((StatusCode::UNAUTHORIZED, 401, "Unauthorized".into()));
        }
    }
    let Some(body) = body else { return Ok(None) };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accepted = [
        "application/vnd.schemaregistry.v1+json",
        "application/vnd.schemaregistry+json",
        "application/json",
        "application/octet-stream",
    ];
    if !accepted.contains(&content_type) {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            "HTTP 415 Unsupported Media Type".into(),
        ));
    }
    let parsed: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Unrecognized request: {e}"),
        )
    })?;
    let schema = parsed["schema"].as_str().ok_or_else(|| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Empty schema".into(),
        )
    })?;
    let schema_type = parsed["schemaType"].as_str().unwrap_or("AVRO");
    Ok(Some((schema.to_string(), schema_type.to_string())))
}

async fn register(
    State(state): State<Arc<Mutex<Registry>>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = format!("POST /subjects/{subject}/versions");
    let (schema, schema_type) = match gate(&state, request, &headers, Some(&body)) {
        Ok(Some(s)) => s,
        Ok(None) => unreachable!(),
        Err(e) => return refuse(e),
    };
    let registered = state
        .lock()
        .unwrap()
        .register(&subject, &schema, &schema_type);
    match registered {
        Ok(id) => answer(StatusCode::OK, json!({ "id": id })),
        Err(e) => refuse(e),
    }
}

async fn lookup(
    State(state): State<Arc<Mutex<Registry>>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = format!("POST /subjects/{subject}");
    let (schema, schema_type) = match gate(&state, request, &headers, Some(&body)) {
        Ok(Some(s)) => s,
        Ok(None) => unreachable!(),
        Err(e) => return refuse(e),
    };
    let found = state
        .lock()
        .unwrap()
        .lookup(&subject, &schema, &schema_type);
    match found {
        Ok((id, version)) => answer(
            StatusCode::OK,
            json!({"subject": subject, "version": version, "id": id, "schema": schema}),
        ),
        Err(e) => refuse(e),
    }
}

async fn by_id(
    State(state): State<Arc<Mutex<Registry>>>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = gate(&state, format!("GET /schemas/ids/{id}"), &headers, None) {
        return refuse(e);
    }
    let r = state.lock().unwrap();
    match r.schemas.iter().find(|s| s.id == id) {
        Some(s) if s.schema_type == "AVRO" => answer(StatusCode::OK, json!({ "schema": s.schema })),
        Some(s) => answer(
            StatusCode::OK,
            json!({ "schemaType": s.schema_type, "schema": s.schema }),
        ),
        None => refuse((
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        )),
    }
}

/// Standard base64 for the mock's auth check (the crate's own is private).
mod base64_shim {
    pub fn encode(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

// ------------------------------------------------------------- fixtures

fn default_settings() -> Settings {
    Settings::from_layers(None, std::iter::empty()).unwrap()
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(10),
    }
}

/// UsageRecorded as a producer evolved it: an extra field with a default.
fn evolved_usage_schema() -> String {
    let catalog = Catalog::shared().unwrap();
    let mut schema: serde_json::Value =
        serde_json::from_str(catalog.by_record("UsageRecorded").unwrap().text).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "region", "type": "string", "default": "unknown"}));
    schema.to_string()
}

/// A usage record encoded with the evolved schema, framed with `id`.
fn evolved_usage_record(id: u32, usage: &UsageRecorded) -> Vec<u8> {
    let catalog = Catalog::shared().unwrap();
    let input = Input::Usage(usage.clone());
    let json = billstream::contracts::input_to_json(&input);
    let Value::Record(mut fields) = catalog
        .avro_value("UsageRecorded", &json, &["kind"])
        .unwrap()
    else {
        panic!("a record")
    };
    fields.push(("region".into(), Value::String("eu-west".into())));
    let schema = Schema::parse_str(&evolved_usage_schema()).unwrap();
    framing::encode(
        id,
        &apache_avro::to_avro_datum(&schema, Value::Record(fields)).unwrap(),
    )
}

/// The same record under another frame id.
fn reframe(framed: &[u8], id: u32) -> Vec<u8> {
    framing::encode(id, &framed[framing::HEADER_LEN..])
}

fn sample_usage(event_id: &str, account: &str, qty: &str, at: Timestamp) -> UsageRecorded {
    UsageRecorded {
        event_id: event_id.into(),
        account_id: account.into(),
        subject: "app-1".into(),
        metric: "m".into(),
        quantity: qty.parse::<Decimal>().unwrap(),
        occurred_at: at,
        environment: "prod".into(),
        attributes: Default::default(),
    }
}

// ------------------------------------------------------------------ client

#[tokio::test]
async fn registry_client_registers_looks_up_and_fetches_like_confluent() {
    let mock = MockRegistry::start(1);
    let client = RegistryClient::new(&mock.settings()).unwrap();
    let usage = Catalog::shared()
        .unwrap()
        .by_record("UsageRecorded")
        .unwrap()
        .text;
    assert_eq!(
        client.lookup("t-value", usage).await,
        Ok(None),
        "no subject yet"
    );
    let id = client
        .register("t-billstream.v1.UsageRecorded", usage)
        .await
        .unwrap();
    assert_eq!(id, 1);
    assert_eq!(
        client
            .register("t-billstream.v1.UsageRecorded", usage)
            .await,
        Ok(1),
        "registering again keeps the id"
    );
    assert_eq!(
        client.register("t-value", usage).await,
        Ok(1),
        "the same schema has the same id under any subject"
    );
    let found = client.lookup("t-value", usage).await.unwrap().unwrap();
    assert_eq!((found.id, found.version), (1, Some(1)));
    let evolved = evolved_usage_schema();
    assert_eq!(
        client.lookup("t-value", &evolved).await,
        Ok(None),
        "a schema not under the subject (40403)"
    );
    assert_eq!(client.register("t-value", &evolved).await, Ok(2));
    let fetched = client.schema_by_id(2).await.unwrap().unwrap();
    assert_eq!(
        (fetched.schema.as_str(), fetched.schema_type.as_str()),
        (evolved.as_str(), "AVRO")
    );
    assert_eq!(
        client.schema_by_id(77).await,
        Ok(None),
        "an id it does not have (40403)"
    );
    let e = client.register("t-value", "{not avro").await.unwrap_err();
    assert!(
        matches!(&e, RegistryError::Refused { status: 422, error_code: Some(42201), url, .. } if url.ends_with("/subjects/t-value/versions")),
        "{e}"
    );
    assert_eq!(
        mock.with(|r| r.requests.len()),
        10,
        "one request per call: no retries for answers that cannot change"
    );
}

#[tokio::test]
async fn registry_client_sends_basic_auth_and_a_refusal_names_the_url_and_error_code() {
    let mock = MockRegistry::start(1);
    mock.with(|r| r.auth = Some(("billstream".into(), "s3cret".into())));
    let anonymous = RegistryClient::new(&mock.settings()).unwrap();
    let e = anonymous.schema_by_id(1).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Schema Registry GET {}/schemas/ids/1: HTTP 401 (error_code 401): Unauthorized",
            mock.url
        )
    );
    let wrong = RegistryClient::new(&RegistrySettings {
        basic_auth: Some(BasicAuth {
            username: "billstream".into(),
            password: "guess".into(),
        }),
        ..mock.settings()
    })
    .unwrap();
    assert!(matches!(
        wrong.lookup("s", "\"string\"").await,
        Err(RegistryError::Refused { status: 401, .. })
    ));
    let client = RegistryClient::new(&RegistrySettings {
        basic_auth: Some(BasicAuth {
            username: "billstream".into(),
            password: "s3cret".into(),
        }),
        ..mock.settings()
    })
    .unwrap();
    assert_eq!(client.register("s", "\"string\"").await, Ok(1));
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[tokio::test]
async fn registry_client_retries_a_failing_or_absent_registry_then_says_where() {
    let mock = MockRegistry::start(1);
    mock.with(|r| r.failing = true);
    let client = RegistryClient::new(&mock.settings())
        .unwrap()
        .with_retry(quick());
    let e = client.schema_by_id(5).await.unwrap_err();
    assert!(
        matches!(
            &e,
            RegistryError::Refused {
                status: 500,
                error_code: Some(50001),
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&format!("{}/schemas/ids/5", mock.url)),
        "{e}"
    );
    assert_eq!(mock.with(|r| r.requests.len()), 3, "three attempts");

    // Nothing listening: no answer, after the same attempts.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let client = RegistryClient::new(&RegistrySettings {
        url: url.clone(),
        ..mock.settings()
    })
    .unwrap()
    .with_retry(quick());
    let e = client.lookup("s-value", "\"string\"").await.unwrap_err();
    assert!(
        matches!(&e, RegistryError::Unavailable { attempts: 3, url: u, .. } if *u == format!("{url}/subjects/s-value")),
        "{e}"
    );

    // A 404 that is not the registry's (a wrong base URL) is an error, not "not found".
    let client = RegistryClient::new(&RegistrySettings {
        url: format!("{}/wrong/prefix", mock.url),
        ..mock.settings()
    })
    .unwrap();
    mock.with(|r| r.failing = false);
    assert!(matches!(
        client.schema_by_id(1).await,
        Err(RegistryError::Refused {
            status: 404,
            error_code: None,
            ..
        })
    ));
}

// ------------------------------------------------------- writer schemas

#[tokio::test]
async fn writer_schemas_learn_evolved_schemas_refuse_unreadable_ones_and_remember_unknown_ids() {
    let mock = MockRegistry::start(500);
    let catalog = Catalog::shared().unwrap();
    let topics = default_settings().topics;
    let client = RegistryClient::new(&mock.settings()).unwrap();
    register_all(&client, catalog, &topics).await.unwrap();
    let ids = registry_ids(&client, catalog, &topics).await.unwrap();
    let usage_index = catalog.index_of("UsageRecorded").unwrap();
    assert_eq!(
        ids.get(usage_index),
        500,
        "the registry's id, not the manifest's"
    );
    let mut decoder = Decoder::with_ids(catalog, &ids).unwrap();

    let evolved_id = mock
        .with(|r| r.register("billing.usage.v1-value", &evolved_usage_schema(), "AVRO"))
        .unwrap();
    let protobuf_id = mock
        .with(|r| {
            r.register(
                "other-value",
                "syntax = \"proto3\"; message M {}",
                "PROTOBUF",
            )
        })
        .unwrap();
    let invoice_id = ids.get(catalog.index_of("InvoiceIssued").unwrap());
    let usage = sample_usage("u-1", "acct-1", "2.5", Timestamp(1_767_225_600_000_000));
    let own = catalog.encode_input(&Input::Usage(usage.clone())).unwrap();
    let evolved = evolved_usage_record(evolved_id, &usage);
    let (unknown_id, not_framed) = (424_242, b"{\"specversion\":\"1.0\"}".to_vec());
    let batch = [
        reframe(&own, ids.get(usage_index)),
        evolved.clone(),
        evolved.clone(),
        reframe(&own, protobuf_id),
        reframe(&own, invoice_id),
        reframe(&own, unknown_id),
        not_framed,
        vec![0, 1],
    ];

    let mut writers = WriterSchemas::registry(client.clone());
    let before = mock.with(|r| r.requests.len());
    let learned = writers
        .learn(&mut decoder, batch.iter().map(Vec::as_slice))
        .await
        .unwrap();
    assert_eq!(
        (learned.registered, learned.refused, learned.unknown),
        (1, 2, 1)
    );
    assert_eq!(
        mock.with(|r| r.requests.len()) - before,
        4,
        "one fetch per new id"
    );
    assert_eq!(
        decoder.decode(&evolved),
        Ok(Decoded::Input(Input::Usage(usage.clone())))
    );
    let kind = |bytes: &[u8]| decoder.decode(bytes).unwrap_err().kind();
    assert_eq!(kind(&batch[3]), "incompatible_schema");
    assert_eq!(kind(&batch[4]), "incompatible_schema");
    assert_eq!(kind(&batch[5]), "unknown_schema_id");
    assert!(decoder
        .decode(&batch[3])
        .unwrap_err()
        .to_string()
        .contains("PROTOBUF"));

    // Known, refused and lately unknown ids are not asked for again...
    let before = mock.with(|r| r.requests.len());
    let again = writers
        .learn(&mut decoder, batch.iter().map(Vec::as_slice))
        .await
        .unwrap();
    assert_eq!(again, Default::default());
    assert_eq!(mock.with(|r| r.requests.len()), before);
    // ...until the negative entry expires: then the id is asked for again,
    // and one registered in the meantime is learnt.
    let mut writers = writers.with_negative_ttl(Duration::ZERO);
    let late_id = mock
        .with(|r| {
            r.next_id = unknown_id;
            r.register(
                "late-value",
                &evolved_usage_schema().replace("unknown", "late"),
                "AVRO",
            )
        })
        .unwrap();
    assert_eq!(late_id, unknown_id);
    let learned = writers
        .learn(&mut decoder, batch.iter().map(Vec::as_slice))
        .await
        .unwrap();
    assert_eq!(learned.registered, 1);
    assert!(
        matches!(decoder.decode(&batch[5]), Err(e) if e.kind() == "body_mismatch"),
        "the usage body lacks the evolved schema's extra field"
    );
}

#[tokio::test]
async fn writer_schemas_stop_with_an_error_when_the_registry_does_not_answer() {
    let mock = MockRegistry::start(1);
    let catalog = Catalog::shared().unwrap();
    let mut decoder = Decoder::new(catalog).unwrap();
    let client = RegistryClient::new(&mock.settings())
        .unwrap()
        .with_retry(quick());
    let mut writers = WriterSchemas::registry(client);
    mock.with(|r| r.failing = true);
    let record = framing::encode(31_337, b"\x02x");
    let e = writers
        .learn(&mut decoder, [record.as_slice()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::WriterSchema { id: 31_337, .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("none of its records is dead-lettered"),
        "{e}"
    );
    assert!(!decoder.knows(31_337), "nothing remembered about the id");
    // Without a registry, learning asks nobody.
    let mut manifest = WriterSchemas::manifest();
    assert_eq!(
        manifest.learn(&mut decoder, [record.as_slice()]).await,
        Ok(Default::default())
    );
}

// --------------------------------------------------- the binary, no broker

fn binary(registry: &str, store: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_billstream"));
    c.env("BILLSTREAM__KAFKA__SCHEMA_REGISTRY_URL", registry)
        .env("BILLSTREAM__KAFKA__TOPIC_PREFIX", "acme.")
        // Nothing listens there: these tests must not need a broker.
        .env("BILLSTREAM__KAFKA__BROKERS", "127.0.0.1:1")
        .env("BILLSTREAM__STORE__PATH", store)
        .env("BILLSTREAM__METRICS__LISTEN", "");
    c
}

#[test]
fn schemas_register_puts_every_schema_under_its_subjects_and_is_idempotent() {
    let mock = MockRegistry::start(1);
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = output_ok(
            binary(&mock.url, &dir.path().join("state")).args(["schemas", "register"]),
            "schemas register",
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    let catalog = Catalog::shared().unwrap();
    let subjects = mock.with(|r| r.subjects.clone());
    // One subject per schema, plus `-value` for the topics with one record type.
    assert!(subjects.contains_key("acme.billing.usage.v1-billstream.v1.UsageRecorded"));
    assert!(subjects.contains_key("acme.billing.usage.v1-value"));
    assert!(!subjects.contains_key("acme.billing.payments.v1-value"));
    for e in catalog.entries() {
        let id = mock
            .with(|r| r.latest(&format!("acme.{}-{}", e.topic, e.name)))
            .unwrap_or_else(|| panic!("{} not registered", e.name));
        let line = first
            .lines()
            .find(|l| l.starts_with(&format!("acme.{}-{} ", e.topic, e.name)))
            .unwrap_or_else(|| panic!("{} not printed:\n{first}", e.name));
        assert!(
            line.contains(&format!("id {id:>6}")) && line.ends_with("  registered"),
            "{line}"
        );
    }
    assert!(
        first.contains(&format!("{} subjects at {}", subjects.len(), mock.url)),
        "{first}"
    );
    // Only the newest version of a schema is registered; it says so for
    // the earlier ones (schemas/history).
    for e in catalog.history() {
        assert!(
            first.contains(&format!(
                "{} version {} (manifest id {}) not registered",
                e.name, e.version, e.id
            )),
            "{first}"
        );
        let old: serde_json::Value = serde_json::from_str(e.text).unwrap();
        assert!(mock.with(|r| r.schemas.iter().all(|s| s.parsed != old)));
    }
    let ids_before = mock.with(|r| r.schemas.len());
    let second = run();
    assert_eq!(mock.with(|r| r.schemas.len()), ids_before, "no new schema");
    assert_eq!(
        mock.with(|r| r.subjects.clone()),
        subjects,
        "no new version"
    );
    assert_eq!(
        second
            .lines()
            .filter(|l| l.ends_with("already registered"))
            .count(),
        subjects.len(),
        "{second}"
    );

    // Without a registry configured, it says which field to set.
    let out = binary("", &dir.path().join("state"))
        .args(["schemas", "register"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`kafka.schema_registry_url`"));
}

#[test]
fn run_with_a_registry_that_lacks_the_schemas_stops_naming_the_field_and_the_command() {
    let mock = MockRegistry::start(1);
    let dir = tempfile::tempdir().unwrap();
    let out = binary(&mock.url, &dir.path().join("state"))
        .arg("run")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config field `kafka.schema_registry_url`")
            && stderr.contains("run `billstream schemas register`")
            && stderr.contains("acme.billing.usage.v1-billstream.v1.UsageRecorded"),
        "{stderr}"
    );
}

// ------------------------------------------------------- end to end (Kafka)

/// Issue 3, item 1: `billstream run` against the broker with its registry
/// URL on the mock, whose ids differ from the manifest's. Inputs framed
/// with the registry's ids are applied; outputs are framed with them; a
/// usage record written with an evolved schema (an extra field with a
/// default, a new registry id) is applied; a record whose id the registry
/// does not know and one whose schema is not an input are dead-lettered;
/// a good record after them is applied.
#[test]
fn run_with_a_schema_registry_frames_with_its_ids_and_learns_evolved_writer_schemas() {
    let Some(setup) = setup("sr") else {
        return;
    };
    let mock = MockRegistry::start(101);
    let catalog = Catalog::shared().unwrap();
    let with_registry = |c: &mut Command| {
        c.env("BILLSTREAM__KAFKA__SCHEMA_REGISTRY_URL", &mock.url);
    };
    let mut register = billstream(&setup.prefix, &setup.group, &setup.store, &setup.brokers);
    with_registry(&mut register);
    output_ok(register.args(["schemas", "register"]), "schemas register");
    let id_of = |record: &str| {
        let e = catalog.by_record(record).unwrap();
        let id = mock
            .with(|r| r.latest(&format!("{}{}-{}", setup.prefix, e.topic, e.name)))
            .unwrap();
        assert_ne!(
            id, e.id,
            "{record}: the registry's id differs from the manifest's"
        );
        id
    };
    let evolved_id = mock
        .with(|r| {
            r.register(
                &format!("{}billing.usage.v1-value", setup.prefix),
                &evolved_usage_schema(),
                "AVRO",
            )
        })
        .unwrap();

    // The processing clock is frozen so nothing depends on the day.
    const CLOCK: &str = "2026-03-15T12:00:00Z";
    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let acct = "acct-sr";
    let plan = per_unit_plan("metered", "0", "0.50");
    let open = account_opened("open-sr", acct, "metered", "0", at("2026-03-01T00:00:00Z"));
    let used_at = at("2026-03-15T10:00:00Z");
    let own_usage = |id: &str, qty: &str| {
        reframe(
            &catalog
                .encode_input(&Input::Usage(sample_usage(id, acct, qty, used_at)))
                .unwrap(),
            id_of("UsageRecorded"),
        )
    };
    let unknown_id = 9_999_999;
    let records: crate::kafka_e2e::Records = vec![
        (
            "billing.plans.v1".into(),
            "metered".into(),
            reframe(&catalog.encode_plan(&plan).unwrap(), id_of("Plan")),
        ),
        (
            "billing.accounts.v1".into(),
            acct.into(),
            reframe(
                &catalog.encode_input(&open).unwrap(),
                id_of("AccountOpened"),
            ),
        ),
        (
            "billing.usage.v1".into(),
            acct.into(),
            own_usage("u-own", "1"),
        ),
        (
            "billing.usage.v1".into(),
            acct.into(),
            evolved_usage_record(evolved_id, &sample_usage("u-evolved", acct, "2", used_at)),
        ),
        (
            "billing.usage.v1".into(),
            acct.into(),
            reframe(&own_usage("u-unknown", "4"), unknown_id),
        ),
        (
            "billing.usage.v1".into(),
            acct.into(),
            reframe(&own_usage("u-invoice", "8"), id_of("InvoiceIssued")),
        ),
        (
            "billing.usage.v1".into(),
            acct.into(),
            own_usage("u-after", "16"),
        ),
    ];
    // The plan and the opening first, and the usage once the account is
    // open: records of different topics have no order between them, and
    // usage of an account not yet open is a dead letter.
    let (opening, usage) = records.split_at(2);
    crate::kafka_e2e::produce(&setup.brokers, &setup.prefix, &opening.to_vec());

    let mut run = billstream(&setup.prefix, &setup.group, &setup.store, &setup.brokers);
    with_registry(&mut run);
    let running = Running(
        run.env("BILLSTREAM__CLOCK", CLOCK)
            // Usage outputs as soon as their batch is written (the test
            // reads them while the loop runs), not at the checkpoint.
            .env("BILLSTREAM__BATCH__CHECKPOINT_EVENTS", "1")
            // Output ids read from headers: the payloads are framed with the
            // mock registry's ids, which the tests' catalog does not know.
            .env("BILLSTREAM__KAFKA__ID_HEADERS", "true")
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let opened = read_until(
        &setup.brokers,
        &format!("{}-opened", setup.group),
        &format!("{}billing.journal.v1", setup.prefix),
        Duration::from_secs(90),
        |records| {
            records.iter().any(|(_, payload)| {
                text(&read_with_registry(&mock, payload).1["type"]) == "account_opened"
            })
        },
    );
    assert!(!opened.is_empty(), "the account was never opened");
    crate::kafka_e2e::produce(&setup.brokers, &setup.prefix, &usage.to_vec());
    let journal_id = id_of("JournalEntry");
    let mut applied = BTreeMap::new();
    let journal = read_until(
        &setup.brokers,
        &format!("{}-journal", setup.group),
        &format!("{}billing.journal.v1", setup.prefix),
        Duration::from_secs(90),
        |records| {
            for (_, payload) in records {
                let (id, fields) = read_with_registry(&mock, payload);
                assert_eq!(
                    id, journal_id,
                    "journal records framed with the registry's id"
                );
                if text(&fields["type"]) == "usage_applied" {
                    applied.insert(text(&fields["causation_id"]), ());
                }
            }
            applied.contains_key("u-after")
        },
    );
    let dead = read_until(
        &setup.brokers,
        &format!("{}-dlq", setup.group),
        &format!("{}billing.dlq.v1", setup.prefix),
        Duration::from_secs(30),
        |records| records.len() >= 2,
    );
    let status = running.stop();
    assert!(status.success(), "billstream run exited with {status}");
    assert!(!journal.is_empty());
    assert_eq!(
        applied.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["u-after", "u-evolved", "u-own"],
        "the own-schema, evolved-schema and later records are applied; the others are not"
    );
    let dlq_id = id_of("DeadLetter");
    let mut kinds: Vec<(String, String)> = dead
        .iter()
        .map(|(_, payload)| {
            let (id, fields) = read_with_registry(&mock, payload);
            assert_eq!(id, dlq_id, "dead letters framed with the registry's id");
            (text(&fields["error_kind"]), text(&fields["reason"]))
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(kinds[0].0, "incompatible_schema");
    assert!(kinds[0].1.contains("not an input record"), "{kinds:?}");
    assert_eq!(
        kinds[1],
        (
            "unknown_schema_id".into(),
            format!("unknown schema id {unknown_id}")
        )
    );
    // Fetched once each, however many records carry them.
    let fetches = mock.with(|r| {
        r.requests
            .iter()
            .filter(|q| q.starts_with("GET /schemas/ids/"))
            .count()
    });
    assert_eq!(fetches, 3, "evolved, unknown and InvoiceIssued ids");
}

/// What a consumer does: the frame's id, the writer schema of that id from
/// the registry, the record decoded with it.
fn read_with_registry(mock: &MockRegistry, payload: &[u8]) -> (u32, BTreeMap<String, Value>) {
    let (id, body) = framing::split(payload).unwrap();
    let text = mock
        .with(|r| r.schema(id).map(str::to_string))
        .unwrap_or_else(|| panic!("schema id {id} is not in the registry"));
    let schema = Schema::parse_str(&text).unwrap();
    match apache_avro::from_avro_datum(&schema, &mut &body[..], None).unwrap() {
        Value::Record(fields) => (id, fields.into_iter().collect()),
        other => panic!("not a record: {other:?}"),
    }
}

// ---------------------------------------------------------------- live

/// Against a real Confluent-compatible registry (`docker compose up -d
/// schema-registry`, then `BILLSTREAM_SCHEMA_REGISTRY_URL=http://127.0.0.1:8081`;
/// `BILLSTREAM_SCHEMA_REGISTRY_USERNAME` / `_PASSWORD` for basic auth).
/// Registers every schema under subjects of a fresh topic prefix
/// (`billstream-test-<pid>-<time>.`; they are left behind), checks the ids
/// `billstream run` would look up, registers an evolved usage schema
/// (backward compatible) and learns it. Not run in this project's CI.
#[tokio::test]
async fn live_schema_registry_registers_looks_up_and_learns() {
    let Ok(url) = std::env::var("BILLSTREAM_SCHEMA_REGISTRY_URL") else {
        eprintln!("skipped: BILLSTREAM_SCHEMA_REGISTRY_URL is not set");
        return;
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let prefix = format!("billstream-test-{}-{stamp}.", std::process::id());
    let mut vars = vec![
        ("BILLSTREAM__KAFKA__SCHEMA_REGISTRY_URL".to_string(), url),
        (
            "BILLSTREAM__KAFKA__TOPIC_PREFIX".to_string(),
            prefix.clone(),
        ),
    ];
    for (from, to) in [
        (
            "BILLSTREAM_SCHEMA_REGISTRY_USERNAME",
            "BILLSTREAM__KAFKA__SCHEMA_REGISTRY_USERNAME",
        ),
        (
            "BILLSTREAM_SCHEMA_REGISTRY_PASSWORD",
            "BILLSTREAM__KAFKA__SCHEMA_REGISTRY_PASSWORD",
        ),
    ] {
        if let Ok(v) = std::env::var(from) {
            vars.push((to.to_string(), v));
        }
    }
    let settings = Settings::from_layers(None, vars.into_iter()).unwrap();
    let registry = settings.kafka.schema_registry.clone().unwrap();
    let catalog = Catalog::shared().unwrap();
    let client = RegistryClient::new(&registry).unwrap();
    let first = register_all(&client, catalog, &settings.topics)
        .await
        .unwrap();
    let again = register_all(&client, catalog, &settings.topics)
        .await
        .unwrap();
    assert!(again.iter().all(|r| r.already));
    assert_eq!(
        first.iter().map(|r| r.id).collect::<Vec<_>>(),
        again.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    let ids = registry_ids(&client, catalog, &settings.topics)
        .await
        .unwrap();
    let mut decoder = Decoder::with_ids(catalog, &ids).unwrap();
    let usage_subject = format!("{prefix}billing.usage.v1-billstream.v1.UsageRecorded");
    let evolved_id = client
        .register(&usage_subject, &evolved_usage_schema())
        .await
        .unwrap();
    let usage = sample_usage("u-live", "acct-live", "1", Timestamp(1_767_225_600_000_000));
    let record = evolved_usage_record(evolved_id, &usage);
    let mut writers = WriterSchemas::registry(client);
    let started = Instant::now();
    writers
        .learn(&mut decoder, [record.as_slice()])
        .await
        .unwrap();
    assert_eq!(
        decoder.decode(&record),
        Ok(Decoded::Input(Input::Usage(usage)))
    );
    eprintln!(
        "live registry: {} subjects under {prefix}, evolved usage schema id {evolved_id}, learnt in {} ms",
        first.len(),
        started.elapsed().as_millis()
    );
}
