//! The read-only HTTP API: state built through the real `Processor` on an
//! embedded store, the router called in-process. Auth failures (401/403),
//! every route's content with exact values, 404s, 405 for writes, and the
//! OpenAPI file in step with the router.

use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use billstream::api::{router, ApiState, Verifier, ROUTES};
use billstream::config::{ApiSettings, JwtKey, JwtSettings};
use billstream::contracts::{parse_line, Decoded};
use billstream::engine::time::Timestamp;
use billstream::engine::Engine;
use billstream::runtime::SourcePos;
use billstream::store::EmbeddedStore;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::support::{engine_with_plan_p, processor_on};

const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes";

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// (topic, JSON line) in processing order; each is processed at its
/// `occurred_at`.
fn inputs() -> Vec<(&'static str, String)> {
    let usage = |id: &str, subject: &str, qty: &str, at: &str| {
        (
            "billing.usage.v1",
            format!(
                r#"{{"event_id":"{id}","account_id":"a1","subject":"{subject}","metric":"m","quantity":"{qty}","occurred_at":"{at}","environment":"prod","attributes":{{}}}}"#
            ),
        )
    };
    vec![
        ("billing.accounts.v1", r#"{"event_id":"open-a1","account_id":"a1","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0.1","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}"#.to_string()),
        ("billing.payments.v1", r#"{"event_id":"pm-1","account_id":"a1","kind":"payment_method_attached","occurred_at":"2026-03-02T00:00:00Z","token_ref":"tok_secret_ref","brand":"visa","last4":"4242","expires":"2027-08","environment":"prod"}"#.to_string()),
        usage("u1", "app-1", "2", "2026-03-03T10:00:00Z"),
        usage("u2", "app-2", "3.5", "2026-03-04T10:00:00Z"),
        usage("u3", "app-1", "1", "2026-03-05T10:00:00Z"),
        ("billing.payments.v1", r#"{"event_id":"fail-1","account_id":"a1","kind":"payment_failed","occurred_at":"2026-03-06T00:00:00Z","charge_id":"inv_a1_00001/attempt-1","invoice_id":"inv_a1_00001","retryable":true,"reason":"insufficient_funds","environment":"prod"}"#.to_string()),
        ("billing.payments.v1", r#"{"event_id":"top-1","account_id":"a1","kind":"credit_topped_up","occurred_at":"2026-03-06T12:00:00Z","amount":"5.00","currency":"EUR","environment":"prod"}"#.to_string()),
    ]
}

/// Runs the inputs, then the clock to 2026-04-02 (the March draft is
/// issued on 1 April after the grace hour).
async fn store_with_history(dir: &std::path::Path) -> (Arc<EmbeddedStore>, Engine) {
    let inputs = inputs()
        .into_iter()
        .map(|(topic, line)| (topic, line, None))
        .collect();
    store_from(dir, inputs, "2026-03-01T00:00:00Z", "2026-04-02T00:00:00Z").await
}

/// Runs (topic, JSON line, processing time: its `occurred_at` if `None`)
/// in order from `start`, then the clock to `until`.
async fn store_from(
    dir: &std::path::Path,
    inputs: Vec<(&str, String, Option<&str>)>,
    start: &str,
    until: &str,
) -> (Arc<EmbeddedStore>, Engine) {
    store_on(dir, engine_with_plan_p(), inputs, start, until).await
}

/// `store_from` with the price book of `engine`.
async fn store_on(
    dir: &std::path::Path,
    engine: Engine,
    inputs: Vec<(&str, String, Option<&str>)>,
    start: &str,
    until: &str,
) -> (Arc<EmbeddedStore>, Engine) {
    let store = Arc::new(EmbeddedStore::open(dir).unwrap());
    let mut p = processor_on(engine.clone(), store.clone(), ts(start)).await;
    for (offset, (topic, line, at)) in inputs.iter().enumerate() {
        let Ok(Decoded::Input(input)) = parse_line(line) else {
            panic!("bad test input {line}");
        };
        let pos = SourcePos {
            topic: topic.to_string(),
            partition: 0,
            offset: 100 + offset as i64,
        };
        let now = at.map_or(input.occurred_at(), ts);
        p.apply(&pos, Some(input.account_id()), line.as_bytes(), &input, now)
            .await
            .unwrap();
        // One flush per input: several writes, like a running processor.
        p.flush().await.unwrap();
    }
    p.advance_timers(ts(until));
    p.flush().await.unwrap();
    (store, engine)
}

fn hs256_settings() -> ApiSettings {
    ApiSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        role_claim: "roles".into(),
        report_max_accounts: 10,
        dead_letter_file: None,
        plans_file: None,
        jwt: JwtSettings {
            key: JwtKey::Hs256 {
                secret: SECRET.into(),
            },
            issuer: None,
            audience: None,
        },
    }
}

fn app(store: Arc<EmbeddedStore>, engine: Engine, settings: &ApiSettings) -> Router {
    let verifier = Arc::new(Verifier::from_settings(settings).unwrap());
    router(
        Arc::new(ApiState {
            store,
            engine: Arc::new(RwLock::new(engine)),
            report_max_accounts: settings.report_max_accounts,
        }),
        verifier,
    )
}

fn exp_in(secs: i64) -> i64 {
    chrono::Utc::now().timestamp() + secs
}

fn hs256(claims: Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn reader_token() -> String {
    hs256(
        json!({"sub": "support-1", "exp": exp_in(600), "roles": ["billing:read"]}),
        SECRET,
    )
}

async fn call(app: &Router, method: Method, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    };
    (status, body)
}

async fn get(app: &Router, uri: &str) -> Value {
    let (status, body) = call(app, Method::GET, uri, Some(&reader_token())).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    body
}

#[tokio::test]
async fn api_requests_without_a_valid_token_are_401_and_without_the_role_403() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let uri = "/v1/accounts/a1";

    // Missing header: 401 with a Bearer challenge.
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");

    // Not a bearer scheme.
    let resp = app
        .clone()
        .oneshot(
            Request::get(uri)
                .header(header::AUTHORIZATION, "Basic c3VwcG9ydDpwdw==")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let unauthorized = [
        ("malformed", "not.a.jwt".to_string()),
        (
            "bad signature",
            hs256(
                json!({"exp": exp_in(600), "roles": ["billing:read"]}),
                "another-secret-of-at-least-thirty-two-bytes",
            ),
        ),
        (
            "expired",
            hs256(
                json!({"exp": exp_in(-3600), "roles": ["billing:read"]}),
                SECRET,
            ),
        ),
        (
            "no expiry",
            hs256(json!({"roles": ["billing:read"]}), SECRET),
        ),
        (
            "not yet valid",
            hs256(
                json!({"exp": exp_in(7200), "nbf": exp_in(3600), "roles": ["billing:read"]}),
                SECRET,
            ),
        ),
    ];
    for (why, token) in &unauthorized {
        let (status, body) = call(&app, Method::GET, uri, Some(token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
        assert_eq!(
            body,
            json!({"error": "invalid or expired bearer token"}),
            "{why}"
        );
    }

    for (why, claims) in [
        ("no roles claim", json!({"exp": exp_in(600)})),
        (
            "other roles",
            json!({"exp": exp_in(600), "roles": ["billing:write", "admin"]}),
        ),
        (
            "role as a prefix only",
            json!({"exp": exp_in(600), "roles": "billing:readers"}),
        ),
    ] {
        let (status, body) = call(&app, Method::GET, uri, Some(&hs256(claims, SECRET))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{why}: {body}");
        assert_eq!(
            body,
            json!({"error": "the token does not grant the billing:read role (claim `roles`)"})
        );
    }

    // Roles as one space-separated string (OAuth `scope` style) are accepted.
    let token = hs256(
        json!({"exp": exp_in(600), "roles": "profile billing:read"}),
        SECRET,
    );
    assert_eq!(
        call(&app, Method::GET, uri, Some(&token)).await.0,
        StatusCode::OK
    );

    // Every route but /healthz is behind the check.
    for route in ROUTES.iter().filter(|r| **r != "/healthz") {
        let uri = route
            .replace("{account_id}", "a1")
            .replace("{invoice_id}", "inv_a1_00001")
            .replace("{line}", "0");
        assert_eq!(
            call(&app, Method::GET, &uri, None).await.0,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
    }
    let (status, body) = call(&app, Method::GET, "/healthz", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
}

#[tokio::test]
async fn api_rs256_tokens_issuer_and_audience_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let settings = ApiSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        role_claim: "realm_access.roles".into(),
        report_max_accounts: 10,
        dead_letter_file: None,
        plans_file: None,
        jwt: JwtSettings {
            key: JwtKey::Rs256 {
                public_key_path: fixtures.join("api_rs256_public.pem"),
            },
            issuer: Some("https://idp.example".into()),
            audience: Some("billstream".into()),
        },
    };
    let app = app(store, engine, &settings);
    let private = std::fs::read(fixtures.join("api_rs256_private.pem")).unwrap();
    let rs256 = |claims: Value| {
        encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&private).unwrap(),
        )
        .unwrap()
    };
    let good = json!({"exp": exp_in(600), "iss": "https://idp.example", "aud": "billstream",
                      "realm_access": {"roles": ["billing:read"]}});
    let uri = "/v1/accounts/a1/invoices";
    assert_eq!(
        call(&app, Method::GET, uri, Some(&rs256(good.clone())))
            .await
            .0,
        StatusCode::OK
    );

    let mut cases = Vec::new();
    for (field, value) in [
        ("iss", json!("https://evil.example")),
        ("aud", json!("other")),
    ] {
        let mut claims = good.clone();
        claims[field] = value;
        cases.push((format!("wrong {field}"), rs256(claims)));
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(field);
        cases.push((format!("no {field}"), rs256(claims)));
    }
    // An HS256 token cannot stand in for RS256 (no algorithm confusion).
    cases.push(("HS256 token".into(), hs256(good.clone(), SECRET)));
    for (why, token) in &cases {
        assert_eq!(
            call(&app, Method::GET, uri, Some(token)).await.0,
            StatusCode::UNAUTHORIZED,
            "{why}"
        );
    }
    let mut claims = good.clone();
    claims["realm_access"] = json!({"roles": ["billing:write"]});
    assert_eq!(
        call(&app, Method::GET, uri, Some(&rs256(claims))).await.0,
        StatusCode::FORBIDDEN
    );
}

#[test]
fn api_start_stops_naming_the_missing_key_field() {
    let mut settings = hs256_settings();
    settings.jwt.key = JwtKey::Hs256 {
        secret: String::new(),
    };
    let e = Verifier::from_settings(&settings).err().unwrap();
    assert!(e.to_string().contains("`api.jwt.secret`"), "{e}");
    settings.jwt.key = JwtKey::Rs256 {
        public_key_path: "/nonexistent/key.pem".into(),
    };
    let e = Verifier::from_settings(&settings).err().unwrap();
    assert!(e.to_string().contains("`api.jwt.public_key_path`"), "{e}");
    let not_a_key = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    settings.jwt.key = JwtKey::Rs256 {
        public_key_path: not_a_key,
    };
    let e = Verifier::from_settings(&settings).err().unwrap();
    assert!(e.to_string().contains("`api.jwt.public_key_path`"), "{e}");
}

#[tokio::test]
async fn api_account_state_shows_credit_draft_running_total_masked_method_and_dunning() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let body = get(&app, "/v1/accounts/a1").await;
    assert!(
        !body.to_string().contains("tok_secret_ref"),
        "token ref leaked: {body}"
    );
    assert_eq!(
        body,
        json!({
            "account_id": "a1",
            "currency": "EUR",
            "timezone": "UTC",
            "tax_rate": "0.1",
            "opened_at": "2026-03-01T00:00:00Z",
            "closed_at": null,
            "plan_id": "p",
            "pending_plan": null,
            "credit": "0.00",
            "credit_grants": [],
            "outstanding": "20.57",
            "dunning_stage": "overdue",
            "payment_method": {"brand": "visa", "last4": "4242", "expires": "2027-08", "masked": "visa •••• 4242"},
            "open_invoices": [
                {"invoice_id": "inv_a1_00001", "number": "a1-00001", "issued_at": "2026-03-01T00:00:00Z",
                 "due_at": "2026-03-15T00:00:00Z", "amount_due": "11.00", "paid": "5.00", "remaining": "6.00",
                 "overdue": true, "charge_attempts": 2, "charge_outstanding": 2, "next_retry_at": null,
                 "dunning_stopped": null, "stage": "overdue"},
                {"invoice_id": "inv_a1_00002", "number": "a1-00002", "issued_at": "2026-04-01T01:00:00Z",
                 "due_at": "2026-04-15T01:00:00Z", "amount_due": "14.57", "paid": "0.00", "remaining": "14.57",
                 "overdue": false, "charge_attempts": 1, "charge_outstanding": 1, "next_retry_at": null,
                 "dunning_stopped": null, "stage": "charge_pending"}
            ],
            "clock": "2026-04-02T00:00:00Z",
            "journal_seq": body["journal_seq"],
            "draft": {
                "invoice_id": "inv_a1_00003",
                "period_start": "2026-04-01T00:00:00Z",
                "period_end": "2026-05-01T00:00:00Z",
                "lines": [{"kind": "recurring_fee", "metric": null, "quantity": "1", "unit_price": null,
                           "amount": "10.00", "for_period_start": "2026-05-01T00:00:00Z",
                           "for_period_end": "2026-06-01T00:00:00Z", "subjects": {},
                           "description": "p recurring fee"}],
                "subtotal": "10.00",
                "tax": "1.00",
                "total": "11.00"
            },
            "alerts": {"thresholds": [], "thresholds_reached": [], "invoice_at": null,
                       "invoiced_this_period": {"invoices": 0, "subtotal": "0.00", "tax": "0.00"}}
        })
    );
    let (status, body) = call(
        &app,
        Method::GET,
        "/v1/accounts/nobody",
        Some(&reader_token()),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "no account \"nobody\""})
        )
    );
}

#[tokio::test]
async fn api_state_as_of_a_past_instant_is_rebuilt_from_the_journal() {
    // Before the close: the draft carries March's usage, a retry is due.
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let body = get(&app, "/v1/accounts/a1/as-of?at=2026-03-06T18:00:00Z").await;
    assert_eq!(
        body,
        json!({
            "as_of": "2026-03-06T18:00:00Z",
            "journal_seq": body["journal_seq"],
            "last_change_at": "2026-03-06T12:00:00Z",
            "account_id": "a1",
            "currency": "EUR",
            "timezone": "UTC",
            "tax_rate": "0.1",
            "opened_at": "2026-03-01T00:00:00Z",
            "closed_at": null,
            "plan_id": "p",
            "pending_plan": null,
            "credit": "0.00",
            "credit_grants": [],
            "outstanding": "6.00",
            "dunning_stage": "retry_scheduled",
            "payment_method": {"brand": "visa", "last4": "4242", "expires": "2027-08", "masked": "visa •••• 4242"},
            "open_invoices": [
                {"invoice_id": "inv_a1_00001", "number": "a1-00001", "issued_at": "2026-03-01T00:00:00Z",
                 "due_at": "2026-03-15T00:00:00Z", "amount_due": "11.00", "paid": "5.00", "remaining": "6.00",
                 "overdue": false, "charge_attempts": 1, "charge_outstanding": null,
                 "next_retry_at": "2026-03-07T00:00:00Z", "dunning_stopped": null, "stage": "retry_scheduled"}
            ],
            "draft": {
                "invoice_id": "inv_a1_00002",
                "period_start": "2026-03-01T00:00:00Z",
                "period_end": "2026-04-01T00:00:00Z",
                "usage": [{"metric": "m", "for_period_start": "2026-03-01T00:00:00Z", "quantity": "6.5",
                           "subjects": {"app-1": "3", "app-2": "3.5"}}],
                "late_usage": [],
                "adjustments": []
            }
        })
    );
    // Before the first change of the account, and of an unknown account.
    let (status, body) = call(
        &app,
        Method::GET,
        "/v1/accounts/a1/as-of?at=2026-02-01T00:00:00Z",
        Some(&reader_token()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body,
        json!({"error": "account \"a1\" was not open at 2026-02-01T00:00:00Z"})
    );
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/accounts/nobody/as-of?at=2026-03-01T00:00:00Z",
        Some(&reader_token()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for bad in [
        "/v1/accounts/a1/as-of",
        "/v1/accounts/a1/as-of?at=yesterday",
    ] {
        let (status, _) = call(&app, Method::GET, bad, Some(&reader_token())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn api_state_as_of_now_matches_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let mut live = get(&app, "/v1/accounts/a1").await;
    let mut rebuilt = get(&app, "/v1/accounts/a1/as-of?at=2026-04-02T00:00:00Z").await;
    assert_eq!(live["journal_seq"], rebuilt["journal_seq"]);
    for v in [&mut live, &mut rebuilt] {
        let map = v.as_object_mut().unwrap();
        // `alerts` is live state only (as-of rebuilds from the journal).
        for k in [
            "draft",
            "clock",
            "journal_seq",
            "as_of",
            "last_change_at",
            "alerts",
        ] {
            map.remove(k);
        }
    }
    assert_eq!(live, rebuilt);
}

#[tokio::test]
async fn api_invoices_list_and_one_invoice_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let list = get(&app, "/v1/accounts/a1/invoices").await;
    assert_eq!(
        list,
        json!({
            "account_id": "a1",
            "draft_invoice_id": "inv_a1_00003",
            "invoices": [
                {"invoice_id": "inv_a1_00001", "number": "a1-00001",
                 "period": {"start": "2026-03-01T00:00:00Z", "end": "2026-04-01T00:00:00Z"},
                 "issued_at": "2026-03-01T00:00:00Z", "due_at": "2026-03-15T00:00:00Z", "currency": "EUR",
                 "subtotal": "10.00", "tax": "1.00", "total": "11.00", "credit_applied": "0.00", "credit_applied_paid": "0.00", "credit_applied_promotional": "0.00",
                 "amount_due": "11.00", "interim": false, "status": "overdue", "amount_paid": "5.00", "remaining": "6.00"},
                {"invoice_id": "inv_a1_00002", "number": "a1-00002",
                 "period": {"start": "2026-03-01T00:00:00Z", "end": "2026-04-01T00:00:00Z"},
                 "issued_at": "2026-04-01T01:00:00Z", "due_at": "2026-04-15T01:00:00Z", "currency": "EUR",
                 "subtotal": "13.25", "tax": "1.32", "total": "14.57", "credit_applied": "0.00", "credit_applied_paid": "0.00", "credit_applied_promotional": "0.00",
                 "amount_due": "14.57", "interim": false, "status": "open", "amount_paid": "0.00", "remaining": "14.57"}
            ],
            "next": null
        })
    );
    let inv = get(&app, "/v1/accounts/a1/invoices/inv_a1_00002").await;
    assert_eq!(
        inv["lines"],
        json!([
            {"kind": "usage", "metric": "m", "quantity": "6.5", "unit_price": "0.5", "amount": "3.25",
             "for_period": {"start": "2026-03-01T00:00:00Z", "end": "2026-04-01T00:00:00Z"},
             "subjects": {"app-1": "3", "app-2": "3.5"}, "description": null},
            {"kind": "recurring_fee", "metric": null, "quantity": "1", "unit_price": null, "amount": "10.00",
             "for_period": {"start": "2026-04-01T00:00:00Z", "end": "2026-05-01T00:00:00Z"},
             "subjects": {}, "description": "p recurring fee"}
        ])
    );
    let mut without_lines = inv.clone();
    without_lines.as_object_mut().unwrap().remove("lines");
    assert_eq!(without_lines, list["invoices"][1]);

    for (uri, error) in [
        ("/v1/accounts/a1/invoices/inv_a1_00009", "no issued invoice \"inv_a1_00009\" for account \"a1\""),
        ("/v1/accounts/a1/invoices/inv_a1_00003", "no issued invoice \"inv_a1_00003\" for account \"a1\" (it is the open draft: see the account's state)"),
        ("/v1/accounts/nobody/invoices/inv_a1_00001", "no account \"nobody\""),
        ("/v1/accounts/nobody/invoices", "no account \"nobody\""),
    ] {
        let (status, body) = call(&app, Method::GET, uri, Some(&reader_token())).await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, json!({"error": error})), "{uri}");
    }
}

#[tokio::test]
async fn api_line_lineage_names_the_input_events_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let body = get(
        &app,
        "/v1/accounts/a1/invoices/inv_a1_00002/lines/0/lineage",
    )
    .await;
    assert_eq!(body["traced_quantity"], "6.5");
    assert_eq!(body["line"]["amount"], "3.25");
    let inputs: Vec<Value> = body["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            json!([
                i["event_id"],
                i["source"],
                i["quantity"],
                i["subject"],
                i["entry_type"]
            ])
        })
        .collect();
    let src = |offset: i64| json!({"topic": "billing.usage.v1", "partition": 0, "offset": offset});
    assert_eq!(
        inputs,
        vec![
            json!(["u1", src(102), "2", "app-1", "usage_applied"]),
            json!(["u2", src(103), "3.5", "app-2", "usage_applied"]),
            json!(["u3", src(104), "1", "app-1", "usage_applied"]),
        ]
    );
    // The recurring fee goes back to the account's opening (its plan).
    let body = get(
        &app,
        "/v1/accounts/a1/invoices/inv_a1_00002/lines/1/lineage",
    )
    .await;
    assert_eq!(
        body["inputs"],
        json!([{"event_id": "open-a1", "journal_seq": 1, "at": "2026-03-01T00:00:00Z",
                "source": {"topic": "billing.accounts.v1", "partition": 0, "offset": 100},
                "entry_type": "account_opened", "quantity": null, "subject": null}])
    );
    assert_eq!(body["traced_quantity"], Value::Null);

    let (status, body) = call(
        &app,
        Method::GET,
        "/v1/accounts/a1/invoices/inv_a1_00002/lines/2/lineage",
        Some(&reader_token()),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "invoice \"inv_a1_00002\" has 2 lines, no line 2"})
        )
    );
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/accounts/a1/invoices/inv_a1_00002/lines/x/lineage",
        Some(&reader_token()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn api_journal_pages_in_order_with_sources_and_rendered_money() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let page = get(&app, "/v1/accounts/a1/journal?from_seq=1&limit=3").await;
    assert_eq!(page["next_from_seq"], 4);
    let e = &page["entries"];
    assert_eq!(
        e[0],
        json!({"account_id": "a1", "seq": 1, "at": "2026-03-01T00:00:00Z", "causation_id": "open-a1",
               "event": {"type": "account_opened", "plan_id": "p", "currency": "EUR", "timezone": "UTC",
                         "tax_rate": "0.1", "anchor": "calendar", "opened_at": "2026-03-01T00:00:00Z"},
               "source": {"topic": "billing.accounts.v1", "partition": 0, "offset": 100}})
    );
    assert_eq!(e[1]["event"]["type"], "invoice_issued");
    assert_eq!(e[1]["event"]["invoice"]["total"], "11.00");
    assert_eq!(e[1]["event"]["invoice"]["lines"][0]["amount"], "10.00");
    assert_eq!(
        e[2]["event"],
        json!({"type": "invoice_opened", "invoice_id": "inv_a1_00002",
        "period": {"start": "2026-03-01T00:00:00Z", "end": "2026-04-01T00:00:00Z"}})
    );

    // Walk every page: seqs 1..=head without gaps; the last page says so.
    let head = get(&app, "/v1/accounts/a1").await["journal_seq"]
        .as_u64()
        .unwrap();
    let mut from = 1;
    let mut seen = Vec::new();
    loop {
        let page = get(
            &app,
            &format!("/v1/accounts/a1/journal?from_seq={from}&limit=4"),
        )
        .await;
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_u64().unwrap()),
        );
        match page["next_from_seq"].as_u64() {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(seen, (1..=head).collect::<Vec<_>>());
    // Timer-driven entries carry no input position.
    let last = get(&app, &format!("/v1/accounts/a1/journal?from_seq={head}")).await;
    assert_eq!(last["entries"][0]["source"], Value::Null);
    assert!(last["entries"][0]["causation_id"]
        .as_str()
        .unwrap()
        .starts_with("timer:"));

    for bad in ["limit=0", "limit=1001", "from_seq=x"] {
        let (status, _) = call(
            &app,
            Method::GET,
            &format!("/v1/accounts/a1/journal?{bad}"),
            Some(&reader_token()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/accounts/nobody/journal",
        Some(&reader_token()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn api_has_no_route_that_writes_or_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let token = reader_token();
    for route in ROUTES {
        let uri = route
            .replace("{account_id}", "a1")
            .replace("{invoice_id}", "inv_a1_00001")
            .replace("{line}", "0");
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let (status, _) = call(&app, method.clone(), &uri, Some(&token)).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        }
    }
    let (status, body) = call(&app, Method::GET, "/v1/accounts", Some(&token)).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"error": "no such route"}))
    );
}

/// Paths and methods of docs/openapi.yaml, read line by line (paths sit
/// two spaces in under `paths:`, methods four).
fn openapi_operations() -> Vec<(String, String)> {
    let text = include_str!("../docs/openapi.yaml");
    let mut ops = Vec::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end_matches(':')));
        } else if let Some(m) = line.strip_prefix("    ").filter(|m| !m.starts_with(' ')) {
            let method = m.trim_end_matches(':').to_string();
            ops.push((path.clone().expect("a method under a path"), method));
        }
    }
    ops
}

#[test]
fn api_openapi_file_and_router_list_the_same_routes() {
    let mut documented = openapi_operations();
    documented.sort();
    let mut routed: Vec<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.to_string(), "get".to_string()))
        .collect();
    routed.sort();
    assert_eq!(documented, routed);
}

#[tokio::test]
async fn api_every_documented_route_is_served() {
    // ROUTES is what the router mounts: each answers something other than
    // the fallback's "no such route".
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    for (path, _) in openapi_operations() {
        let uri = path
            .replace("{account_id}", "a1")
            .replace("{invoice_id}", "inv_a1_00001")
            .replace("{line}", "0")
            + "?at=2026-03-10T00:00:00Z";
        let (status, body) = call(&app, Method::GET, &uri, Some(&reader_token())).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
}

/// Account a2 from 2026-01-01: 25 usage events in January, two a month
/// after, two January events delivered late in February, to 2026-12-02:
/// 12 issued invoices, lines with 1 to 25 inputs.
async fn store_with_long_history(dir: &std::path::Path) -> (Arc<EmbeddedStore>, Engine) {
    let usage = |id: String, qty: &str, at: String| {
        format!(
            r#"{{"event_id":"{id}","account_id":"a2","subject":"app-1","metric":"m","quantity":"{qty}","occurred_at":"{at}","environment":"prod","attributes":{{}}}}"#
        )
    };
    let mut inputs = vec![(
        "billing.accounts.v1",
        r#"{"event_id":"open-a2","account_id":"a2","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0.1","opened_at":"2026-01-01T00:00:00Z","environment":"prod"}"#.to_string(),
        None,
    )];
    for day in 1..=25 {
        let at = format!("2026-01-{day:02}T10:00:00Z");
        inputs.push((
            "billing.usage.v1",
            usage(format!("jan-{day}"), "1.5", at),
            None,
        ));
    }
    for (i, late) in ["2026-01-28T10:00:00Z", "2026-01-29T10:00:00Z"]
        .iter()
        .enumerate()
    {
        let line = usage(format!("late-{i}"), "2", late.to_string());
        inputs.push(("billing.usage.v1", line, Some("2026-02-10T00:00:00Z")));
    }
    for month in 2..=11 {
        for day in [3, 17] {
            let at = format!("2026-{month:02}-{day:02}T10:00:00Z");
            inputs.push((
                "billing.usage.v1",
                usage(format!("u-{month}-{day}"), "4", at),
                None,
            ));
        }
    }
    store_from(dir, inputs, "2026-01-01T00:00:00Z", "2026-12-02T00:00:00Z").await
}

/// Every page of `uri` (with `limit`), following `next`; each page holds at
/// most `limit` items of `field`, and only the last has no `next`.
async fn walk(app: &Router, uri: &str, field: &str, limit: usize) -> (Vec<Value>, Vec<Value>) {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut pages = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut page_uri = format!("{uri}{sep}limit={limit}");
        if let Some(c) = &next {
            page_uri.push_str(&format!("&cursor={c}"));
        }
        let page = get(app, &page_uri).await;
        let got = page[field].as_array().unwrap().clone();
        assert!(got.len() <= limit, "{page_uri}: {} items", got.len());
        next = page["next"].as_str().map(str::to_string);
        if next.is_some() {
            assert_eq!(got.len(), limit, "{page_uri}: a short page before the last");
        }
        items.extend(got);
        pages.push(page);
        if next.is_none() {
            return (items, pages);
        }
        assert!(pages.len() < 1000, "{uri}: paging does not end");
    }
}

#[tokio::test]
async fn issue_12_api_invoices_page_through_every_invoice_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_long_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let uri = "/v1/accounts/a2/invoices";
    let (all, pages) = walk(&app, uri, "invoices", 1000).await;
    assert_eq!(pages.len(), 1);
    let ids: Vec<String> = (1..=12).map(|n| format!("inv_a2_{n:05}")).collect();
    let got: Vec<&str> = all
        .iter()
        .map(|i| i["invoice_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids, "every issued invoice, in invoice id order");
    for limit in [1, 2, 5, 11, 12, 13] {
        let (items, pages) = walk(&app, uri, "invoices", limit).await;
        assert_eq!(items, all, "limit {limit}");
        assert_eq!(pages.len(), 12_usize.div_ceil(limit), "limit {limit}");
        for p in &pages {
            assert_eq!(p["draft_invoice_id"], "inv_a2_00013");
        }
    }
    // Without a limit: the default page (100) holds them all.
    let page = get(&app, uri).await;
    assert_eq!(page["invoices"].as_array().unwrap().len(), 12);
    assert_eq!(page["next"], Value::Null);
}

#[tokio::test]
async fn issue_12_api_lineage_pages_through_every_input_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_long_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let mut seen_big = false;
    let mut seen_late = false;
    for n in 1..=12 {
        let invoice = get(&app, &format!("/v1/accounts/a2/invoices/inv_a2_{n:05}")).await;
        for (index, line) in invoice["lines"].as_array().unwrap().iter().enumerate() {
            let uri = format!("/v1/accounts/a2/invoices/inv_a2_{n:05}/lines/{index}/lineage");
            let (all, pages) = walk(&app, &uri, "inputs", 1000).await;
            assert_eq!(pages.len(), 1);
            let whole = &pages[0];
            if line["kind"] == "usage" || line["kind"] == "late_usage" {
                assert_eq!(whole["traced_quantity"], line["quantity"], "{uri}");
            }
            seen_big |= all.len() == 25;
            seen_late |= line["kind"] == "late_usage" && all.len() == 2;
            for limit in [1, 2, 3, 7] {
                let (items, pages) = walk(&app, &uri, "inputs", limit).await;
                assert_eq!(items, all, "{uri} limit {limit}");
                assert_eq!(
                    pages.len(),
                    all.len().div_ceil(limit).max(1),
                    "{uri} limit {limit}"
                );
                let last = pages.last().unwrap();
                assert_eq!(
                    last["traced_quantity"], whole["traced_quantity"],
                    "{uri} limit {limit}"
                );
                for p in &pages {
                    assert_eq!(p["line"], whole["line"]);
                }
            }
        }
    }
    assert!(
        seen_big && seen_late,
        "the history has a 25-input line and a late line"
    );
}

#[tokio::test]
async fn issue_12_api_bad_limit_or_cursor_is_a_400_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_long_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    let invoices = "/v1/accounts/a2/invoices";
    let line0 = "/v1/accounts/a2/invoices/inv_a2_00002/lines/0/lineage";
    let line1 = "/v1/accounts/a2/invoices/inv_a2_00002/lines/1/lineage";
    let invoices_next = get(&app, &format!("{invoices}?limit=1")).await["next"]
        .as_str()
        .unwrap()
        .to_string();
    let line0_next = get(&app, &format!("{line0}?limit=1")).await["next"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cases: Vec<(String, &str)> = Vec::new();
    for uri in [invoices, line0] {
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=abc",
            "limit=-1",
            "limit=",
            "limit=1.5",
        ] {
            cases.push((format!("{uri}?{bad}"), "`limit`"));
        }
        for bad in ["cursor=", "cursor=nope", "cursor=00", "cursor=%F0%9F%92%B8"] {
            cases.push((format!("{uri}?{bad}"), "`cursor`"));
        }
    }
    // A cursor is good only for the listing that gave it.
    cases.push((format!("{line0}?cursor={invoices_next}"), "`cursor`"));
    cases.push((format!("{invoices}?cursor={line0_next}"), "`cursor`"));
    cases.push((format!("{line1}?cursor={line0_next}"), "`cursor`"));
    cases.push((
        format!("/v1/accounts/a2/invoices/inv_a2_00003/lines/0/lineage?cursor={line0_next}"),
        "`cursor`",
    ));
    for (uri, names) in &cases {
        let (status, body) = call(&app, Method::GET, uri, Some(&reader_token())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(names), "{uri}: {message}");
    }
}

#[tokio::test]
async fn issue_13_the_account_shows_its_credit_by_grant_in_draw_order_live_and_as_of() {
    let dir = tempfile::tempdir().unwrap();
    let open = r#"{"event_id":"open-a1","account_id":"a1","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0.1","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}"#;
    // Promotional 20.00 until 1 May pays the 11.00 opening invoice (9.00
    // left); then paid 5.00 without grant fields. Drawn first: the
    // promotional grant (priority 0, expires first), then the paid one.
    let promo = r#"{"event_id":"top-1","account_id":"a1","kind":"credit_topped_up","occurred_at":"2026-03-02T00:00:00Z","amount":"20.00","currency":"EUR","environment":"prod","grant":{"kind":"promotional","expires_at":"2026-05-01T00:00:00Z"}}"#;
    let paid = r#"{"event_id":"top-2","account_id":"a1","kind":"credit_topped_up","occurred_at":"2026-03-03T00:00:00Z","amount":"5.00","currency":"EUR","environment":"prod"}"#;
    let inputs = [
        ("billing.accounts.v1", open),
        ("billing.payments.v1", promo),
        ("billing.payments.v1", paid),
    ]
    .into_iter()
    .map(|(t, l)| (t, l.to_string(), None))
    .collect();
    let (store, engine) = store_from(
        dir.path(),
        inputs,
        "2026-03-01T00:00:00Z",
        "2026-03-10T00:00:00Z",
    )
    .await;
    let app = app(store, engine, &hs256_settings());
    let mut live = get(&app, "/v1/accounts/a1").await;
    assert_eq!(live["credit"], json!("14.00"));
    assert_eq!(
        live["credit_grants"],
        json!([
            {"grant_id": "gr_a1_00001", "kind": "promotional", "priority": 0, "expires_at": "2026-05-01T00:00:00Z",
             "granted_at": "2026-03-02T00:00:00Z", "granted": "20.00", "remaining": "9.00"},
            {"grant_id": "gr_a1_00002", "kind": "paid", "priority": 0, "expires_at": null,
             "granted_at": "2026-03-03T00:00:00Z", "granted": "5.00", "remaining": "5.00"}
        ])
    );
    // The journal rebuilds the same grants.
    let mut rebuilt = get(&app, "/v1/accounts/a1/as-of?at=2026-03-10T00:00:00Z").await;
    for v in [&mut live, &mut rebuilt] {
        let map = v.as_object_mut().unwrap();
        // `alerts` is live state only (as-of rebuilds from the journal).
        for k in [
            "draft",
            "clock",
            "journal_seq",
            "as_of",
            "last_change_at",
            "alerts",
        ] {
            map.remove(k);
        }
    }
    assert_eq!(live, rebuilt);
}

/// Issue 13, item 6: the upcoming invoice is behind the same token check
/// as every route, and is the invoice the engine then issues.
#[tokio::test]
async fn issue_13_api_upcoming_invoice_needs_a_reader_and_equals_the_invoice_then_issued() {
    let open = r#"{"event_id":"open-a1","account_id":"a1","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0.1","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}"#;
    let coupon = r#"{"event_id":"c-1","account_id":"a1","kind":"coupon_applied","occurred_at":"2026-03-01T01:00:00Z","coupon_id":"TEN","percent_off":"10","environment":"prod"}"#;
    let usage = r#"{"event_id":"u1","account_id":"a1","subject":"app-1","metric":"m","quantity":"4","occurred_at":"2026-03-03T10:00:00Z","environment":"prod","attributes":{}}"#;
    let inputs = || {
        [
            ("billing.accounts.v1", open),
            ("billing.accounts.v1", coupon),
            ("billing.usage.v1", usage),
        ]
        .into_iter()
        .map(|(t, l)| (t, l.to_string(), None))
        .collect()
    };
    let uri = "/v1/accounts/a1/upcoming-invoice";
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_from(
        dir.path(),
        inputs(),
        "2026-03-01T00:00:00Z",
        "2026-03-10T00:00:00Z",
    )
    .await;
    let app = app(store, engine, &hs256_settings());
    let (status, _) = call(&app, Method::GET, uri, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let no_role = hs256(
        json!({"sub": "x", "exp": exp_in(600), "roles": ["other"]}),
        SECRET,
    );
    let (status, _) = call(&app, Method::GET, uri, Some(&no_role)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut upcoming = get(&app, uri).await;
    // 4 × 0.50 = 2.00 + April's fee 10.00 = 12.00; 10% off = 1.20;
    // subtotal 10.80; tax 10% = 1.08; total 11.88; no credit: all due.
    assert_eq!(upcoming["status"], "upcoming");
    assert_eq!(upcoming["discount"], "1.20");
    assert_eq!(upcoming["subtotal"], "10.80");
    assert_eq!(upcoming["tax"], "1.08");
    assert_eq!(upcoming["total"], "11.88");
    assert_eq!(upcoming["credit_applied_paid"], "0.00");
    assert_eq!(upcoming["credit_applied_promotional"], "0.00");
    assert_eq!(upcoming["amount_due"], "11.88");
    let kinds: Vec<&str> = upcoming["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["usage", "recurring_fee", "discount"]);
    // The same inputs, and the clock past the close: the issued invoice is
    // the preview (its lines, money, ids and dates).
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_from(
        dir.path(),
        inputs(),
        "2026-03-01T00:00:00Z",
        "2026-04-02T00:00:00Z",
    )
    .await;
    let later = self::app(store, engine, &hs256_settings());
    let id = upcoming["invoice_id"].as_str().unwrap().to_string();
    let mut issued = get(&later, &format!("/v1/accounts/a1/invoices/{id}")).await;
    for v in [&mut upcoming, &mut issued] {
        let map = v.as_object_mut().unwrap();
        for k in [
            "status",
            "preview_at",
            "discount",
            "amount_paid",
            "remaining",
        ] {
            map.remove(k);
        }
    }
    assert_eq!(upcoming, issued);
}

/// `GET uri` with a reader's token and `accept`: status, content type,
/// the reconciliation header, the body as text.
async fn get_text(app: &Router, uri: &str, accept: &str) -> (StatusCode, String, String, String) {
    let resp = app
        .clone()
        .oneshot(
            Request::get(uri)
                .header(header::AUTHORIZATION, format!("Bearer {}", reader_token()))
                .header(header::ACCEPT, accept)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (content_type, reconciles) = (text("content-type"), text("x-billstream-reconciles"));
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        content_type,
        reconciles,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// The store's journal of every account, as `billstream report` reads a
/// journal: for the expected answers, made by the report functions.
async fn journal_of(store: &EmbeddedStore, accounts: &[&str]) -> billstream::report::Journal {
    use billstream::store::StateStore;
    let mut journal = billstream::report::Journal::new();
    for account in accounts {
        let entries = store
            .read_journal(account, 1, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.bytes).unwrap())
            .collect();
        journal.insert(account.to_string(), entries);
    }
    journal
}

#[tokio::test]
async fn issue_14_api_reports_are_billstream_report_on_the_stored_journal_as_json_and_csv() {
    use billstream::report::{providers, render, settlement, Window};
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let journal = journal_of(&store, &["a1"]).await;
    let app = app(store, engine, &hs256_settings());

    // Settlement for April: what `billstream report settlement --month
    // 2026-04 --format json` prints of the same journal.
    let april = Window::Month("2026-04".into());
    let expected = settlement(&journal, &april).unwrap();
    let body = get(&app, "/v1/reports/settlement?month=2026-04").await;
    assert_eq!(body, render::settlement_json(&expected, "state store"));
    // The March invoice was issued on 1 April: April invoiced it.
    assert_eq!(body["rows"][0]["month"], "2026-04", "{body}");
    assert_ne!(body["rows"][0]["invoiced"], "0.00", "{body}");
    assert!(
        body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true),
        "{body}"
    );

    // Providers for one day: the failed charge of 6 March, by reason.
    let day = Window::Day("2026-03-06".into());
    let expected = providers(&journal, &day).unwrap();
    let body = get(&app, "/v1/reports/providers?day=2026-03-06").await;
    assert_eq!(body, render::providers_json(&expected, "state store"));
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["failed"], 1, "{body}");
    assert_eq!(
        rows[0]["failed_by_reason"], "insufficient_funds=1",
        "{body}"
    );

    // CSV by Accept or by format=csv, the same text as the CLI's.
    let csv = render::providers_csv(&expected);
    for (uri, accept) in [
        ("/v1/reports/providers?day=2026-03-06", "text/csv"),
        (
            "/v1/reports/providers?day=2026-03-06&format=csv",
            "application/json",
        ),
    ] {
        let (status, content_type, reconciles, text) = get_text(&app, uri, accept).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {text}");
        assert_eq!(content_type, "text/csv; charset=utf-8", "{uri}");
        assert_eq!(reconciles, "true", "{uri}");
        assert_eq!(text, csv, "{uri}");
        assert!(
            text.starts_with("day,provider,currency,requested,"),
            "{text}"
        );
    }
    let (_, content_type, _, text) =
        get_text(&app, "/v1/reports/settlement?format=csv", "*/*").await;
    assert_eq!(content_type, "text/csv; charset=utf-8");
    assert_eq!(
        text,
        render::settlement_csv(&settlement(&journal, &Window::All).unwrap())
    );
}

#[tokio::test]
async fn issue_14_api_reports_refuse_a_bad_window_or_format_with_a_400() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = store_with_history(dir.path()).await;
    let app = app(store, engine, &hs256_settings());
    for (uri, says) in [
        ("/v1/reports/settlement?month=2026-4", "`month` \"2026-4\""),
        (
            "/v1/reports/providers?day=2026-03-32",
            "`day` \"2026-03-32\"",
        ),
        (
            "/v1/reports/providers?day=2026-03-01&month=2026-03",
            "not both",
        ),
        ("/v1/reports/settlement?format=xml", "`format` = \"xml\""),
    ] {
        let (status, body) = call(&app, Method::GET, uri, Some(&reader_token())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(says), "{uri}: {message}");
    }
}

#[tokio::test]
async fn issue_14_api_reports_refuse_more_accounts_than_report_max_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs: Vec<(&str, String, Option<&str>)> = inputs()
        .into_iter()
        .map(|(topic, line)| (topic, line, None))
        .collect();
    inputs.push((
        "billing.accounts.v1",
        r#"{"event_id":"open-b1","account_id":"b1","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}"#.to_string(),
        None,
    ));
    let (store, engine) = store_from(
        dir.path(),
        inputs,
        "2026-03-01T00:00:00Z",
        "2026-04-02T00:00:00Z",
    )
    .await;
    let journal = journal_of(&store, &["a1", "b1"]).await;
    let two = ApiSettings {
        report_max_accounts: 2,
        ..hs256_settings()
    };
    // Two accounts, two allowed: both in the report.
    let app2 = app(store.clone(), engine.clone(), &two);
    let body = get(&app2, "/v1/reports/settlement").await;
    let expected =
        billstream::report::settlement(&journal, &billstream::report::Window::All).unwrap();
    assert_eq!(
        body,
        billstream::report::render::settlement_json(&expected, "state store")
    );
    // One allowed: refused, saying which setting and what to run instead.
    let one = ApiSettings {
        report_max_accounts: 1,
        ..hs256_settings()
    };
    let app1 = app(store, engine, &one);
    for uri in ["/v1/reports/settlement", "/v1/reports/providers"] {
        let (status, body) = call(&app1, Method::GET, uri, Some(&reader_token())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("more than 1 account(s) (api.report_max_accounts)")
                && message.contains("billstream report"),
            "{message}"
        );
    }
}

/// A usage input of metric `m` for `account`.
fn usage_of(
    account: &str,
    id: &str,
    qty: &str,
    at: &str,
) -> (&'static str, String, Option<&'static str>) {
    (
        "billing.usage.v1",
        format!(
            r#"{{"event_id":"{id}","account_id":"{account}","subject":"app-1","metric":"m","quantity":"{qty}","occurred_at":"{at}","environment":"prod","attributes":{{}}}}"#
        ),
        None,
    )
}

fn opening(account: &str) -> (&'static str, String, Option<&'static str>) {
    (
        "billing.accounts.v1",
        format!(
            r#"{{"event_id":"open-{account}","account_id":"{account}","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0.1","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}}"#
        ),
        None,
    )
}

/// Per line of `invoice_id` of `account`: the line, and its lineage's
/// (event ids, entry types, summed quantity).
async fn lines_with_lineage(
    app: &Router,
    account: &str,
    invoice_id: &str,
) -> Vec<(
    Value,
    Value,
    Vec<String>,
    Vec<String>,
    rust_decimal::Decimal,
)> {
    let inv = get(
        app,
        &format!("/v1/accounts/{account}/invoices/{invoice_id}"),
    )
    .await;
    let mut out = Vec::new();
    for (i, line) in inv["lines"].as_array().unwrap().iter().enumerate() {
        let body = get(
            app,
            &format!("/v1/accounts/{account}/invoices/{invoice_id}/lines/{i}/lineage?limit=100"),
        )
        .await;
        let inputs = body["inputs"].as_array().unwrap();
        let ids = inputs
            .iter()
            .map(|i| i["event_id"].as_str().unwrap().to_string())
            .collect();
        let types = inputs
            .iter()
            .map(|i| i["entry_type"].as_str().unwrap().to_string())
            .collect();
        let traced = inputs
            .iter()
            .filter_map(|i| i["quantity"].as_str())
            .map(|q| q.parse::<rust_decimal::Decimal>().unwrap())
            .sum();
        out.push((line.clone(), body, ids, types, traced));
    }
    out
}

#[tokio::test]
async fn lineage_of_a_plan_segment_traces_its_own_usage_and_the_fees_the_plan_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = engine_with_plan_p();
    let q = r#"{"plan_id":"q","currency":"EUR","recurring_fee":"20.00","minimum_spend":"0","charges":[{"metric":"m","model":"per_unit","unit_price":"1"}]}"#;
    match parse_line(q).unwrap() {
        Decoded::Plan(p) => engine.plans.upsert(p).unwrap(),
        _ => unreachable!(),
    }
    let inputs = vec![
        opening("a3"),
        usage_of("a3", "u1", "2", "2026-03-03T10:00:00Z"),
        usage_of("a3", "u2", "3", "2026-03-10T10:00:00Z"),
        (
            "billing.accounts.v1",
            r#"{"event_id":"chg","account_id":"a3","kind":"plan_changed","plan_id":"q","version":1,"effective":"immediately","occurred_at":"2026-03-16T00:00:00Z","environment":"prod"}"#.to_string(),
            None,
        ),
        usage_of("a3", "u3", "4", "2026-03-20T10:00:00Z"),
        usage_of("a3", "u4", "1.5", "2026-03-25T10:00:00Z"),
    ];
    let (store, engine) = store_on(
        dir.path(),
        engine,
        inputs,
        "2026-03-01T00:00:00Z",
        "2026-04-02T00:00:00Z",
    )
    .await;
    let app = app(store, engine, &hs256_settings());
    let lines = lines_with_lineage(&app, "a3", "inv_a3_00002").await;
    let mut usage = Vec::new();
    let mut fees = 0;
    for (line, body, ids, types, traced) in &lines {
        let quantity: rust_decimal::Decimal = line["quantity"].as_str().unwrap().parse().unwrap();
        match line["kind"].as_str().unwrap() {
            "usage" => {
                assert_eq!(*traced, quantity, "{line}: {body}");
                usage.push(ids.clone());
            }
            "recurring_fee"
                if line["description"]
                    .as_str()
                    .unwrap()
                    .contains("plan changed") =>
            {
                fees += 1;
                assert_eq!(ids, &["chg"], "{line}: {body}");
                assert_eq!(types, &["plan_changed"], "{line}: {body}");
            }
            _ => {}
        }
    }
    assert_eq!(usage, vec![vec!["u1", "u2"], vec!["u3", "u4"]], "{lines:?}");
    assert_eq!(fees, 2, "{lines:?}");
}

#[tokio::test]
async fn lineage_of_interim_and_final_invoices_traces_the_usage_each_billed() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = vec![
        opening("a4"),
        (
            "billing.accounts.v1",
            r#"{"event_id":"t1","account_id":"a4","kind":"thresholds_set","occurred_at":"2026-03-02T00:00:00Z","environment":"prod","thresholds":[],"currency":"EUR","invoice_at":"2.00"}"#.to_string(),
            None,
        ),
        usage_of("a4", "u1", "3", "2026-03-03T10:00:00Z"),
        usage_of("a4", "u2", "2", "2026-03-04T10:00:00Z"),
        usage_of("a4", "u3", "5", "2026-03-05T10:00:00Z"),
        usage_of("a4", "u4", "1", "2026-03-06T10:00:00Z"),
    ];
    let (store, engine) = store_from(
        dir.path(),
        inputs,
        "2026-03-01T00:00:00Z",
        "2026-04-02T00:00:00Z",
    )
    .await;
    let app = app(store, engine, &hs256_settings());
    let list = get(&app, "/v1/accounts/a4/invoices").await;
    let mut traced_usage = Vec::new();
    for inv in list["invoices"].as_array().unwrap() {
        let id = inv["invoice_id"].as_str().unwrap();
        for (line, body, ids, _, traced) in lines_with_lineage(&app, "a4", id).await {
            if line["kind"] != "usage" {
                continue;
            }
            let quantity: rust_decimal::Decimal =
                line["quantity"].as_str().unwrap().parse().unwrap();
            assert_eq!(traced, quantity, "{id} {line}: {body}");
            let difference = line["description"]
                .as_str()
                .is_some_and(|d| d.contains("invoiced earlier in the period"));
            assert_eq!(body["difference"], difference, "{id} {line}: {body}");
            traced_usage.push(ids);
        }
    }
    assert_eq!(
        traced_usage,
        vec![vec!["u1", "u2"], vec!["u3"], vec!["u4"]],
        "{list}"
    );
}

/// An account with `invoice_at` 2.00 and a 3.00 spend alert (plan `p`:
/// 10.00 a month in advance, `m` at 0.50; tax 10%), March usage of 3, 2,
/// 5 and 1 units, the clock run to `until`.
async fn progressive_store(dir: &std::path::Path, until: &str) -> (Arc<EmbeddedStore>, Engine) {
    let inputs = vec![
        opening("a5"),
        (
            "billing.accounts.v1",
            r#"{"event_id":"t1","account_id":"a5","kind":"thresholds_set","occurred_at":"2026-03-02T00:00:00Z","environment":"prod","thresholds":["3.00"],"currency":"EUR","invoice_at":"2.00"}"#.to_string(),
            None,
        ),
        usage_of("a5", "u1", "3", "2026-03-03T10:00:00Z"),
        usage_of("a5", "u2", "2", "2026-03-04T10:00:00Z"),
        usage_of("a5", "u3", "5", "2026-03-05T10:00:00Z"),
        usage_of("a5", "u4", "1", "2026-03-06T10:00:00Z"),
    ];
    store_from(dir, inputs, "2026-03-01T00:00:00Z", until).await
}

#[tokio::test]
async fn issue_13_api_flags_interim_invoices_and_shows_the_accounts_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = progressive_store(dir.path(), "2026-03-10T00:00:00Z").await;
    let running = app(store, engine, &hs256_settings());
    // u1: 1.50 accrued, below 2.00; u2: 2.50, an interim invoice; u3: 2.50
    // more, another; u4: 0.50, waiting. The opening's fee invoice is not
    // interim.
    let list = get(&running, "/v1/accounts/a5/invoices").await;
    let flags: Vec<(&str, &Value, &Value)> = list["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["invoice_id"].as_str().unwrap(),
                &i["subtotal"],
                &i["interim"],
            )
        })
        .collect();
    assert_eq!(
        flags,
        vec![
            ("inv_a5_00001", &json!("10.00"), &json!(false)),
            ("inv_a5_00002", &json!("2.50"), &json!(true)),
            ("inv_a5_00003", &json!("2.50"), &json!(true)),
        ],
        "{list}"
    );
    let one = get(&running, "/v1/accounts/a5/invoices/inv_a5_00002").await;
    assert_eq!(one["interim"], json!(true));
    // The account: its alert (reached: the draft's subtotal is 5.50 of
    // usage + April's 10.00 fee), invoice_at, and what the two interim
    // invoices billed: 5.00, tax 10% = 0.50.
    let account = get(&running, "/v1/accounts/a5").await;
    assert_eq!(
        account["alerts"],
        json!({"thresholds": ["3.00"], "thresholds_reached": ["3.00"], "invoice_at": "2.00",
               "invoiced_this_period": {"invoices": 2, "subtotal": "5.00", "tax": "0.50"}}),
        "{account}"
    );

    // After the close: the final invoice of March (0.50 of usage and
    // April's fee) is not interim; April starts with nothing invoiced.
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = progressive_store(dir.path(), "2026-04-02T00:00:00Z").await;
    let closed = app(store, engine, &hs256_settings());
    let list = get(&closed, "/v1/accounts/a5/invoices").await;
    let last = list["invoices"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["invoice_id"], &last["subtotal"], &last["interim"]),
        (&json!("inv_a5_00004"), &json!("10.50"), &json!(false)),
        "{list}"
    );
    let account = get(&closed, "/v1/accounts/a5").await;
    assert_eq!(
        account["alerts"]["invoiced_this_period"],
        json!({"invoices": 0, "subtotal": "0.00", "tax": "0.00"})
    );
}
