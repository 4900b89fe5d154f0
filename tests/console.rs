//! The support console (`/console`): its pages on a store built through
//! the real `Processor` (an account with a paid invoice after one retried
//! charge, and one whose id and subject are markup), dead letters from an
//! embedded-mode file. Auth (login page / 401, 403, the cookie), escaping,
//! the pages' content through the router in-process, and the whole path
//! in a real headless Chromium driven over the DevTools protocol.

use std::future::IntoFuture;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use billstream::api::console::{self, Console, DeadLetterSource};
use billstream::api::{router, ApiState, Verifier};
use billstream::config::{ApiSettings, JwtKey, JwtSettings};
use billstream::contracts::{parse_line, DeadLetter, Decoded};
use billstream::engine::time::Timestamp;
use billstream::runtime::SourcePos;
use billstream::store::{EmbeddedStore, StateStore};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::support::{engine_with_plan_p, processor_on};

const SECRET: &str = "console-test-secret-of-at-least-32-bytes";
const HOSTILE_ACCOUNT: &str = "<script>alert('acct')</script>";
const HOSTILE_SUBJECT: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_REASON: &str = "plan <script>alert('dlq')</script> is unknown";

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

fn token(roles: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "support-1", "exp": chrono::Utc::now().timestamp() + 600, "roles": roles}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn reader() -> String {
    token(json!(["billing:read"]))
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    invoice_id: String,
    store: Arc<EmbeddedStore>,
    engine: billstream::engine::Engine,
    dlq: PathBuf,
}

/// acme-1: opened 1 March with a card, usage of two subjects (one of them
/// markup); the March invoice is issued on 1 April with a charge, which
/// fails (retryable), is retried, and succeeds. The markup account has
/// usage too. Two dead letters of acme-1 on two days, one with markup in
/// its reason.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("state")).unwrap());
    let engine = engine_with_plan_p();
    let mut p = processor_on(engine.clone(), store.clone(), ts("2026-03-01T00:00:00Z")).await;
    let mut offset = 100;
    let hostile = serde_json::to_string(HOSTILE_ACCOUNT).unwrap();
    let hostile_subject = serde_json::to_string(HOSTILE_SUBJECT).unwrap();
    let usage = |id: &str, account: &str, subject: &str, qty: &str, at: &str| {
        format!(
            r#"{{"event_id":"{id}","account_id":{account},"subject":{subject},"metric":"m","quantity":"{qty}","occurred_at":"{at}","environment":"prod","attributes":{{}}}}"#
        )
    };
    let mut inputs: Vec<(&str, String)> = vec![
        ("billing.accounts.v1", r#"{"event_id":"open-acme","account_id":"acme-1","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0.1","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}"#.to_string()),
        ("billing.accounts.v1", format!(r#"{{"event_id":"open-x","account_id":{hostile},"plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}}"#)),
        ("billing.payments.v1", r#"{"event_id":"pm-1","account_id":"acme-1","kind":"payment_method_attached","occurred_at":"2026-03-02T00:00:00Z","token_ref":"tok_ref","brand":"visa","last4":"4242","expires":"2030-08","environment":"prod"}"#.to_string()),
    ];
    inputs.push((
        "billing.usage.v1",
        usage("u1", "\"acme-1\"", "\"app-1\"", "2", "2026-03-03T10:00:00Z"),
    ));
    inputs.push((
        "billing.usage.v1",
        usage(
            "u2",
            "\"acme-1\"",
            &hostile_subject,
            "3.5",
            "2026-03-04T10:00:00Z",
        ),
    ));
    inputs.push((
        "billing.usage.v1",
        usage(
            "x1",
            &hostile,
            &hostile_subject,
            "1",
            "2026-03-04T11:00:00Z",
        ),
    ));
    for (topic, line) in &inputs {
        feed(&mut p, topic, line, None, &mut offset).await;
    }
    // The March invoice is issued on 1 April, and charged.
    p.advance_timers(ts("2026-04-02T00:00:00Z"));
    p.flush().await.unwrap();
    let invoice_id = "inv_acme-1_00002".to_string();
    let fail = format!(
        r#"{{"event_id":"fail-1","account_id":"acme-1","kind":"payment_failed","occurred_at":"2026-04-02T00:00:00Z","charge_id":"{invoice_id}/attempt-1","invoice_id":"{invoice_id}","retryable":true,"reason":"insufficient_funds","environment":"prod"}}"#
    );
    feed(&mut p, "billing.payments.v1", &fail, None, &mut offset).await;
    // The retry a day later.
    p.advance_timers(ts("2026-04-04T00:00:00Z"));
    p.flush().await.unwrap();
    let record = store.invoice("acme-1", &invoice_id).await.unwrap().unwrap();
    let issued: Value = serde_json::from_slice(&record.bytes).unwrap();
    let due = issued["amount_due"].as_i64().unwrap();
    assert!(due > 0, "{issued}");
    let paid = format!(
        r#"{{"event_id":"paid-2","account_id":"acme-1","kind":"payment_succeeded","occurred_at":"2026-04-04T00:00:00Z","charge_id":"{invoice_id}/attempt-2","invoice_id":"{invoice_id}","amount":"{}.{:02}","currency":"EUR","environment":"prod"}}"#,
        due / 100,
        due % 100
    );
    feed(&mut p, "billing.payments.v1", &paid, None, &mut offset).await;

    let dlq = dir.path().join("billing.dlq.v1.jsonl");
    let letter = |offset: i64, kind: &str, reason: &str, at: &str| {
        let out = DeadLetter {
            source_topic: "billing.usage.v1".into(),
            partition: 0,
            offset,
            key: Some("acme-1".into()),
            error_kind: kind.into(),
            reason: reason.into(),
            payload: br#"{"event_id":"bad"}"#.to_vec(),
            received_at: ts(at),
        }
        .to_output();
        serde_json::to_string(&out.json).unwrap()
    };
    std::fs::write(
        &dlq,
        [
            letter(7, "unknown_plan", HOSTILE_REASON, "2026-03-05T09:00:00Z"),
            letter(
                8,
                "bad_quantity",
                "quantity \"-1\" is negative",
                "2026-03-06T09:00:00Z",
            ),
            letter(
                9,
                "unknown_plan",
                "plan q is unknown",
                "2026-03-06T10:00:00Z",
            ),
        ]
        .join("\n"),
    )
    .unwrap();
    Fixture {
        app: app(store.clone(), engine.clone(), dlq.clone(), 10),
        _dir: dir,
        invoice_id,
        store,
        engine,
        dlq,
    }
}

async fn feed(
    p: &mut billstream::runtime::Processor<EmbeddedStore>,
    topic: &str,
    line: &str,
    at: Option<&str>,
    offset: &mut i64,
) {
    let Ok(Decoded::Input(input)) = parse_line(line) else {
        panic!("bad test input {line}");
    };
    let pos = SourcePos {
        topic: topic.to_string(),
        partition: 0,
        offset: *offset,
    };
    *offset += 1;
    let now = at.map_or(input.occurred_at(), ts);
    p.apply(&pos, Some(input.account_id()), line.as_bytes(), &input, now)
        .await
        .unwrap();
    p.flush().await.unwrap();
}

fn app(
    store: Arc<EmbeddedStore>,
    engine: billstream::engine::Engine,
    dlq: PathBuf,
    report_max_accounts: usize,
) -> Router {
    let settings = ApiSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        role_claim: "roles".into(),
        report_max_accounts,
        dead_letter_file: Some(dlq.clone()),
        plans_file: None,
        jwt: JwtSettings {
            key: JwtKey::Hs256 {
                secret: SECRET.into(),
            },
            issuer: None,
            audience: None,
        },
    };
    let verifier = Arc::new(Verifier::from_settings(&settings).unwrap());
    let api = router(
        Arc::new(ApiState {
            store: store.clone(),
            engine: Arc::new(RwLock::new(engine)),
            report_max_accounts: settings.report_max_accounts,
        }),
        verifier.clone(),
    );
    let console = Console::new(
        api.clone(),
        verifier,
        store,
        DeadLetterSource::File(dlq),
        settings.report_max_accounts,
    );
    api.merge(console::router(Arc::new(console)))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(request).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn page(app: &Router, uri: &str, cookie: Option<&str>) -> Reply {
    let mut req = Request::builder().method(Method::GET).uri(uri);
    if let Some(t) = cookie {
        req = req.header(header::COOKIE, format!("{}={t}", console::COOKIE));
    }
    send(app, req.body(Body::empty()).unwrap()).await
}

async fn ok_page(app: &Router, uri: &str) -> String {
    let r = page(app, uri, Some(&reader())).await;
    assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
    assert!(!r.body.contains(r#"class="error""#), "{uri}: {}", r.body);
    r.body
}

async fn login(app: &Router, token: &str) -> Reply {
    let form = format!("token={token}");
    send(
        app,
        Request::post("/console/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn issue_14_console_without_a_token_shows_the_login_page_401_and_without_the_role_403() {
    let f = fixture().await;
    for uri in [
        "/console",
        "/console/accounts/acme-1",
        "/console/accounts/acme-1/journal",
        "/console/search?q=acme",
    ] {
        let r = page(&f.app, uri, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(
            r.body.contains(r#"<form class="login""#),
            "{uri}: {}",
            r.body
        );
        assert!(!r.body.contains("acme-1"), "{uri} leaks: {}", r.body);

        let r = page(&f.app, uri, Some("not.a.jwt")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(
            r.body.contains("invalid or expired bearer token"),
            "{}",
            r.body
        );

        let r = page(&f.app, uri, Some(&token(json!(["billing:admin"])))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}");
        assert!(
            r.body.contains("does not grant the billing:read role"),
            "{}",
            r.body
        );
        assert!(!r.body.contains("acme-1"), "{uri} leaks: {}", r.body);
    }
    // The login page and the stylesheet need no token.
    let r = page(&f.app, "/console/login", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains(r#"id="token""#));
    let r = page(&f.app, "/console/static/console.css", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    // No script may run in a page, whatever got into it.
    for uri in ["/console/login", "/console/accounts/acme-1"] {
        let r = page(&f.app, uri, Some(&reader())).await;
        assert_eq!(
            r.headers[header::CONTENT_SECURITY_POLICY],
            console::CONTENT_SECURITY_POLICY,
            "{uri}"
        );
        assert!(console::CONTENT_SECURITY_POLICY.starts_with("default-src 'none';"));
        assert!(!console::CONTENT_SECURITY_POLICY.contains("script-src"));
        assert_eq!(r.headers[header::CACHE_CONTROL], "no-store", "{uri}");
    }
    // A bearer header is as good as the cookie.
    let r = send(
        &f.app,
        Request::get("/console/accounts/acme-1")
            .header(header::AUTHORIZATION, format!("Bearer {}", reader()))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn issue_14_console_login_keeps_a_valid_token_in_an_httponly_strict_cookie_and_refuses_others(
) {
    let f = fixture().await;
    let good = reader();
    let r = login(&f.app, &good).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.headers[header::LOCATION], "/console");
    assert_eq!(
        r.headers[header::SET_COOKIE],
        format!("billstream_console={good}; Path=/console; HttpOnly; SameSite=Strict").as_str()
    );
    for (bad, status, says) in [
        (
            "not.a.jwt".to_string(),
            StatusCode::UNAUTHORIZED,
            "invalid or expired bearer token",
        ),
        (
            "a b".to_string(),
            StatusCode::UNAUTHORIZED,
            "that is not a JWT",
        ),
        (
            token(json!("billing:write")),
            StatusCode::FORBIDDEN,
            "does not grant the billing:read role",
        ),
    ] {
        let r = login(&f.app, &bad).await;
        assert_eq!(r.status, status, "{bad}: {}", r.body);
        assert!(r.headers.get(header::SET_COOKIE).is_none(), "{bad}");
        assert!(r.body.contains(says), "{bad}: {}", r.body);
    }
    let r = send(
        &f.app,
        Request::post("/console/logout")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}

#[tokio::test]
async fn issue_14_console_account_page_shows_state_grants_draft_upcoming_invoices_charts_and_dead_letters(
) {
    let f = fixture().await;
    let html = ok_page(&f.app, "/console/accounts/acme-1").await;
    for expected in [
        "<h1>Account acme-1</h1>",
        "<th>Payment method</th><td>visa •••• 4242</td>",
        "<h2>Credit by grant</h2>",
        "<h2>Open draft</h2>",
        "<th>Invoice</th><td>inv_acme-1_00003</td>",
        "<h2>Upcoming invoice</h2>",
        r#"<a href="/console/accounts/acme-1/invoices/inv_acme-1_00002">inv_acme-1_00002</a>"#,
        "<td>paid</td>",
        r#"id="chart-revenue""#,
        r#"id="chart-dunning""#,
        r#"id="chart-dlq""#,
        "3 dead letter(s) with this account's key",
    ] {
        assert!(html.contains(expected), "missing {expected}: {html}");
    }
    // The funnel: three charges requested (the fee invoice of 1 March
    // when the card is attached, the March invoice twice), one retried,
    // one succeeded; the fee invoice overdue.
    assert!(
        html.contains("<title>requested: count: 3</title>"),
        "{html}"
    );
    assert!(html.contains("<title>overdue: count: 1</title>"), "{html}");
    assert!(
        html.contains("<title>succeeded: count: 1</title>"),
        "{html}"
    );
    assert!(html.contains("<title>retried: count: 1</title>"), "{html}");
    // Invoiced and collected in April, the same amount.
    let invoiced = html
        .split("<title>2026-04: invoiced: ")
        .nth(1)
        .and_then(|s| s.split("</title>").next())
        .expect("an April invoiced bar");
    assert!(
        html.contains(&format!("<title>2026-04: collected: {invoiced}</title>")),
        "{html}"
    );
    // Dead letters by reason over two days.
    assert!(
        html.contains("<title>2026-03-06: unknown_plan: 1</title>"),
        "{html}"
    );
    assert!(
        html.contains("<title>2026-03-06: bad_quantity: 1</title>"),
        "{html}"
    );

    // Search: part of an id lists it; a whole id goes to the account.
    let html = ok_page(&f.app, "/console/search?q=ACME").await;
    assert!(
        html.contains(r#"<a href="/console/accounts/acme-1">acme-1</a>"#),
        "{html}"
    );
    let r = page(&f.app, "/console/search?q=acme-1", Some(&reader())).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/console/accounts/acme-1");
    let html = ok_page(&f.app, "/console/search?q=nobody").await;
    assert!(html.contains("no account matches"), "{html}");
    // An unknown account is the API's 404, on a page.
    let r = page(&f.app, "/console/accounts/nobody", Some(&reader())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.body.contains(r#"class="error""#) && r.body.contains("no account"),
        "{}",
        r.body
    );
}

/// The title of the bar of `category` and `series` in `html`.
fn bar<'a>(html: &'a str, category: &str, series: &str) -> Option<&'a str> {
    html.split(&format!("<title>{category}: {series}: "))
        .nth(1)
        .and_then(|s| s.split("</title>").next())
}

#[tokio::test]
async fn issue_14_console_home_charts_money_and_the_dunning_funnel_across_all_accounts() {
    use billstream::report::{settlement, Journal, Window};
    let f = fixture().await;
    let html = ok_page(&f.app, "/console").await;
    let home = html.split("<h2>Dead letters</h2>").next().unwrap();
    assert!(home.contains(r#"id="chart-revenue-all-EUR""#), "{home}");
    assert!(home.contains(r#"id="chart-dunning-all""#), "{home}");
    assert!(home.contains("2 account(s) with a journal"), "{home}");

    // The money bars are the settlement report's figures of every
    // account's stored journal, month by month.
    let mut journal = Journal::new();
    for account in ["acme-1", HOSTILE_ACCOUNT] {
        let entries = f
            .store
            .read_journal(account, 1, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.bytes).unwrap())
            .collect();
        journal.insert(account.to_string(), entries);
    }
    let report = settlement(&journal, &Window::All).unwrap();
    assert!(!report.rows.is_empty());
    for row in &report.rows {
        let c = row.currency;
        for (series, amount) in [("invoiced", row.invoiced), ("collected", row.collected)] {
            let shown = bar(home, &row.month, series);
            if amount.is_positive() {
                assert_eq!(
                    shown,
                    Some(c.format(amount).as_str()),
                    "{} {series}: {home}",
                    row.month
                );
            } else {
                assert_eq!(shown, None, "a zero is no bar: {home}");
            }
        }
    }
    // April: the March invoice of acme-1, collected in full after a retry.
    let april = report.rows.iter().find(|r| r.month == "2026-04").unwrap();
    assert!(april.collected.is_positive());
    assert!(bar(home, "2026-04", "collected").is_some(), "{home}");

    // The funnel sums every account's: acme-1's three charges (one
    // retried, one succeeded, its fee invoice overdue) and the other
    // account's, which has no card to charge.
    let acme = ok_page(&f.app, "/console/accounts/acme-1").await;
    let all_dunning = home.split(r#"id="chart-dunning-all""#).nth(1).unwrap();
    for stage in ["requested", "succeeded", "retried"] {
        assert_eq!(
            bar(all_dunning, stage, "count"),
            bar(&acme, stage, "count"),
            "{stage}: {home}"
        );
    }
    assert_eq!(bar(all_dunning, "requested", "count"), Some("3"), "{home}");
    let overdue: u64 = bar(all_dunning, "overdue", "count")
        .unwrap()
        .parse()
        .unwrap();
    assert!(overdue >= 1, "{home}");

    // Fewer accounts allowed than there are: a note instead of charts,
    // not an error; the dead letters are still shown.
    let narrow = app(f.store.clone(), f.engine.clone(), f.dlq.clone(), 1);
    let html = ok_page(&narrow, "/console").await;
    assert!(
        html.contains(r#"id="all-accounts-too-many""#)
            && html.contains("more than 1 account(s) (api.report_max_accounts)"),
        "{html}"
    );
    assert!(!html.contains(r#"id="chart-dunning-all""#), "{html}");
    assert!(html.contains(r#"id="chart-dlq""#), "{html}");
}

/// A POST of the console with these extra headers (e.g. `Host`, `Origin`).
async fn post_with(app: &Router, uri: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(app, req.body(Body::from(body.to_string())).unwrap()).await
}

#[tokio::test]
async fn f8_console_login_and_logout_from_another_origin_are_refused_403() {
    let f = fixture().await;
    let form = format!("token={}", reader());
    let host = ("host", "console.example:8080");
    // The console's own forms carry their origin (`no-referrer` would
    // make a browser send `Origin: null`), other sites get no referrer.
    let r = page(&f.app, "/console/login", None).await;
    assert_eq!(r.headers[header::REFERRER_POLICY], "same-origin");
    for uri in ["/console/login", "/console/logout"] {
        for cross in [
            vec![host, ("origin", "https://evil.example")],
            // Another port is another origin.
            vec![host, ("origin", "http://console.example:9090")],
            // A sandboxed or privacy-stripped request says `null`.
            vec![host, ("origin", "null")],
            // No Origin: the Referer names the page the form was on.
            vec![host, ("referer", "https://evil.example/page")],
            // An origin with no Host to check it against.
            vec![("origin", "http://console.example:8080")],
        ] {
            let r = post_with(&f.app, uri, &form, &cross).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{uri} {cross:?}: {}",
                r.body
            );
            assert!(
                r.headers.get(header::SET_COOKIE).is_none(),
                "{uri} {cross:?}"
            );
            assert!(
                r.body.contains("another site"),
                "{uri} {cross:?}: {}",
                r.body
            );
        }
        // The console's own origin (scheme aside: TLS may end at a proxy).
        for same in [
            vec![host, ("origin", "http://console.example:8080")],
            vec![host, ("origin", "https://Console.Example:8080")],
            vec![
                host,
                ("referer", "http://console.example:8080/console/login"),
            ],
        ] {
            let r = post_with(&f.app, uri, &form, &same).await;
            assert_eq!(
                r.status,
                StatusCode::SEE_OTHER,
                "{uri} {same:?}: {}",
                r.body
            );
            assert!(
                r.headers.get(header::SET_COOKIE).is_some(),
                "{uri} {same:?}"
            );
        }
    }
}

#[tokio::test]
async fn f7_console_search_reads_at_most_report_max_accounts_and_says_when_the_list_is_cut() {
    let f = fixture().await;
    // Both accounts' ids hold a "c"; with room for both, both are listed.
    let html = ok_page(&f.app, "/console/search?q=c").await;
    assert!(
        html.contains("acme-1") && html.contains("&lt;script&gt;"),
        "{html}"
    );
    assert!(!html.contains(r#"id="search-cut""#), "{html}");
    // One account read per search: one listed, and the page says so.
    let narrow = app(f.store.clone(), f.engine.clone(), f.dlq.clone(), 1);
    let html = ok_page(&narrow, "/console/search?q=c").await;
    let listed = html.matches("<li>").count();
    assert_eq!(listed, 1, "{html}");
    assert!(
        html.contains(r#"id="search-cut""#)
            && html.contains("only the first 1 account(s) of the store were searched"),
        "{html}"
    );
    // A full id still opens its account, whatever the bound.
    let r = page(&narrow, "/console/search?q=acme-1", Some(&reader())).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
}

#[tokio::test]
async fn issue_14_console_with_a_trailing_slash_redirects_to_the_console() {
    let f = fixture().await;
    let r = page(&f.app, "/console/", None).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT, "{}", r.body);
    assert_eq!(r.headers[header::LOCATION], "/console");
}

#[tokio::test]
async fn issue_14_console_invoice_page_lists_each_line_with_the_input_events_behind_it() {
    let f = fixture().await;
    let html = ok_page(
        &f.app,
        &format!("/console/accounts/acme-1/invoices/{}", f.invoice_id),
    )
    .await;
    assert!(html.contains("<th>Status</th><td>paid</td>"), "{html}");
    // The usage line: u1 and u2, read from billing.usage.v1 at offsets
    // 103 and 104, 5.5 in all; the recurring fee: the account's opening.
    let usage = html
        .split(r#"<section class="line""#)
        .find(|s| s.contains("<h3>Line") && s.contains("usage"))
        .expect("a usage line");
    assert!(usage.contains("2 input event(s), quantity 5.5"), "{usage}");
    assert!(
        usage.contains("<td>u1</td>") && usage.contains("<td>u2</td>"),
        "{usage}"
    );
    assert!(usage.contains("billing.usage.v1/0/103"), "{usage}");
    assert!(usage.contains("billing.usage.v1/0/104"), "{usage}");
    let fee = html
        .split(r#"<section class="line""#)
        .find(|s| s.contains("recurring_fee"))
        .expect("a recurring fee line");
    assert!(fee.contains("<td>open-acme</td>"), "{fee}");

    // The timeline, and the state as of an instant before the invoice.
    let html = ok_page(
        &f.app,
        "/console/accounts/acme-1/journal?at=2026-03-03T12:00:00Z",
    )
    .await;
    assert!(
        html.contains("<h2 id=\"as-of\">State as of 2026-03-03T12:00:00Z</h2>"),
        "{html}"
    );
    assert!(html.contains("<b>invoice_issued</b>"), "{html}");
    assert!(html.contains("<b>payment_succeeded</b>"), "{html}");
    let r = page(
        &f.app,
        "/console/accounts/acme-1/journal?at=soon",
        Some(&reader()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("is not an RFC 3339 instant"), "{}", r.body);
}

#[tokio::test]
async fn issue_14_console_renders_markup_in_account_ids_subjects_and_reasons_escaped() {
    let f = fixture().await;
    let href = format!(
        "/console/accounts/{}",
        billstream::api::console::html::seg(HOSTILE_ACCOUNT)
    );
    let html = ok_page(&f.app, &href).await;
    assert!(
        html.contains("<h1>Account &lt;script&gt;alert(&#39;acct&#39;)&lt;/script&gt;</h1>"),
        "{html}"
    );
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "{html}"
    );
    // Its March invoice, where the markup subject is.
    let invoice = format!(
        "{href}/invoices/{}",
        billstream::api::console::html::seg(&format!("inv_{HOSTILE_ACCOUNT}_00002"))
    );
    assert!(html.contains(&format!(r#"<a href="{invoice}">"#)), "{html}");
    let html = ok_page(&f.app, &invoice).await;
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "{html}"
    );
    let html = ok_page(&f.app, "/console/search?q=script").await;
    assert!(html.contains("&lt;script&gt;"), "{html}");
    assert!(!html.contains("<script"), "{html}");
    let html = ok_page(&f.app, "/console/accounts/acme-1").await;
    assert!(
        html.contains("plan &lt;script&gt;alert(&#39;dlq&#39;)&lt;/script&gt; is unknown"),
        "{html}"
    );
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "{html}"
    );
    let html = ok_page(
        &f.app,
        &format!("/console/accounts/acme-1/invoices/{}", f.invoice_id),
    )
    .await;
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(!html.contains("<img"), "{html}");
}

// ---- the browser ----

/// The Chromium binary: `BILLSTREAM_CHROMIUM`, else the first of the usual
/// names on the PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BILLSTREAM_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        ["chromium", "chromium-browser", "google-chrome", "chrome"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
    })
}

/// The smallest WebSocket client the DevTools protocol needs: text frames
/// out (masked, as a client must), text frames in (reassembled).
struct WebSocket {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl WebSocket {
    fn connect(url: &str) -> WebSocket {
        let rest = url.strip_prefix("ws://").expect("a ws:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let stream = TcpStream::connect(host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        write!(
            writer,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 101 "), "DevTools handshake: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        WebSocket { reader, writer }
    }

    fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.writer.write_all(&frame).unwrap();
    }

    fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.reader.read_exact(&mut head).unwrap();
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.reader.read_exact(&mut b).unwrap();
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.reader.read_exact(&mut b).unwrap();
                    u64::from_be_bytes(b) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.reader.read_exact(&mut payload).unwrap();
            match opcode {
                0x8 => panic!("DevTools closed the connection"),
                0x9 | 0xa => continue,
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return String::from_utf8(message).unwrap();
            }
        }
    }
}

/// A DevTools session on one page of the browser.
struct DevTools {
    ws: WebSocket,
    next_id: u64,
    session: Option<String>,
}

impl DevTools {
    /// Start the browser and attach to a new blank page of it (the browser
    /// runs as long as the returned `Browser` lives).
    fn open(binary: &Path) -> (Browser, DevTools) {
        let (browser, url) = launch(binary);
        let mut dt = DevTools {
            ws: WebSocket::connect(&url),
            next_id: 0,
            session: None,
        };
        let target = dt.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = dt.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        dt.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        dt.call("Page.enable", json!({}));
        dt.call("Runtime.enable", json!({}));
        (browser, dt)
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            message["sessionId"] = json!(s);
        }
        self.ws.send(&message.to_string());
        loop {
            let reply: Value = serde_json::from_str(&self.ws.receive()).unwrap();
            if reply["id"] == json!(id) {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Wait until the page at `path` (and query) has loaded.
    fn wait_for(&mut self, path_and_query: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let here = self.eval(
                "document.readyState === 'complete' ? location.pathname + location.search : ''",
            );
            if here.as_str() == Some(path_and_query) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the browser is at {here}, not {path_and_query}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Click the element `selector` selects.
    fn click(&mut self, selector: &str) {
        let found = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
            json!(selector)
        ));
        assert_eq!(found, json!(true), "no element {selector}");
    }

    /// Focus the input `selector` and type `text` into it.
    fn type_into(&mut self, selector: &str, text: &str) {
        let found = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.focus(); return true; }})()",
            json!(selector)
        ));
        assert_eq!(found, json!(true), "no element {selector}");
        self.call("Input.insertText", json!({"text": text}));
    }

    /// The page shows no error box, and each chart `ids` names has at
    /// least one bar with a non-zero size on screen.
    fn assert_no_error_and_charts_drawn(&mut self, ids: &[&str]) {
        let errors = self.eval(
            "Array.from(document.querySelectorAll('.error')).map(e => e.innerText).join(' | ')",
        );
        assert_eq!(errors, json!(""), "the page shows an error");
        for id in ids {
            let bars = self.eval(&format!(
                "Array.from(document.querySelectorAll('#{id} svg rect.bar')).filter(r => {{ const b = r.getBoundingClientRect(); return b.width > 0 && b.height > 0; }}).length"
            ));
            assert!(bars.as_u64().unwrap_or(0) > 0, "chart {id} is empty");
        }
    }
}

struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start headless Chromium; its browser-wide DevTools URL.
fn launch(binary: &Path) -> (Browser, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary)
        .args([
            "--headless=new",
            "--remote-debugging-port=0",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                if !sent {
                    let _ = tx.send(url.trim().to_string());
                    sent = true;
                }
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("Chromium printed no DevTools URL within 60 s");
    (
        Browser {
            child,
            _profile: profile,
        },
        url,
    )
}

fn drive(base: &str, binary: &Path, invoice_id: &str) {
    let (_browser, mut dt) = DevTools::open(binary);

    // Login: the console without a token shows the login form.
    dt.call("Page.navigate", json!({"url": format!("{base}/console")}));
    dt.wait_for("/console");
    assert_eq!(
        dt.eval("!!document.querySelector('form.login #token')"),
        json!(true)
    );
    dt.type_into("#token", &reader());
    dt.click("#login-submit");
    dt.wait_for("/console");
    assert_eq!(
        dt.eval("!!document.querySelector('form.login')"),
        json!(false)
    );
    // The token is in an HttpOnly cookie: no script sees it.
    assert_eq!(dt.eval("document.cookie"), json!(""));
    // The home page charts every account: money by month (EUR), the
    // dunning funnel, dead letters by reason.
    dt.assert_no_error_and_charts_drawn(&[
        "chart-revenue-all-EUR",
        "chart-dunning-all",
        "chart-dlq",
    ]);

    // Search for part of the id, pick the account.
    dt.type_into("#home-q", "acme");
    dt.click("form.search-big button");
    dt.wait_for("/console/search?q=acme");
    dt.assert_no_error_and_charts_drawn(&[]);
    dt.click("ul.results a[href='/console/accounts/acme-1']");
    dt.wait_for("/console/accounts/acme-1");
    dt.assert_no_error_and_charts_drawn(&["chart-revenue", "chart-dunning", "chart-dlq"]);
    let heading = dt.eval("document.querySelector('h1').innerText");
    assert_eq!(heading, json!("Account acme-1"));

    // The invoice, with the inputs behind its usage line.
    dt.click(&format!("table.invoices a[href$='/{invoice_id}']"));
    dt.wait_for(&format!("/console/accounts/acme-1/invoices/{invoice_id}"));
    dt.assert_no_error_and_charts_drawn(&[]);
    let lineage = dt.eval(
        "Array.from(document.querySelectorAll('section.line')).filter(s => s.querySelector('h3').innerText.includes('usage')).map(s => Array.from(s.querySelectorAll('table.lineage tbody tr')).map(r => r.cells[0].innerText)).flat()",
    );
    assert_eq!(lineage, json!(["u1", "u2"]));
    // A subject that is markup shows as text: no element was made of it.
    assert_eq!(dt.eval("document.querySelectorAll('img').length"), json!(0));
    assert_eq!(
        dt.eval(&format!(
            "document.body.innerText.includes({})",
            json!(HOSTILE_SUBJECT)
        )),
        json!(true)
    );

    // The journal timeline, and the state as of its first entry.
    dt.call(
        "Page.navigate",
        json!({"url": format!("{base}/console/accounts/acme-1/journal")}),
    );
    dt.wait_for("/console/accounts/acme-1/journal");
    dt.click("ol.timeline li a");
    dt.wait_for("/console/accounts/acme-1/journal?at=2026-03-01T00%3A00%3A00Z");
    dt.assert_no_error_and_charts_drawn(&[]);
    assert_eq!(
        dt.eval("document.querySelector('#as-of').innerText"),
        json!("State as of 2026-03-01T00:00:00Z")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_console_in_a_real_browser_login_search_invoice_lineage_and_charts() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("BILLSTREAM_TEST_BROWSER").is_none(),
            "BILLSTREAM_TEST_BROWSER is set but no chromium binary is on the PATH (apt-get install chromium, or set BILLSTREAM_CHROMIUM)"
        );
        eprintln!(
            "SKIPPED issue_14_console_in_a_real_browser: no chromium binary on the PATH (scripts/test.sh installs Debian's chromium and sets BILLSTREAM_TEST_BROWSER)"
        );
        return;
    };
    let f = fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(axum::serve(listener, f.app.clone()).into_future());
    let invoice_id = f.invoice_id.clone();
    let driven = tokio::task::spawn_blocking(move || drive(&base, &binary, &invoice_id)).await;
    server.abort();
    if let Err(e) = driven {
        std::panic::resume_unwind(e.into_panic());
    }
}

// ---- the demo, watched in the console (issue 14 "done when") ----

/// A `billstream api` started as a user would; killed when dropped.
struct ApiProcess {
    child: std::process::Child,
    base: String,
    /// What it printed to stderr, for failure messages.
    stderr: Arc<std::sync::Mutex<String>>,
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `argv` (the command the demo printed) with the API on a free port,
/// no `BILLSTREAM__*` variable of the test's environment, and brokers and
/// a Schema Registry that do not exist: it must need neither. Waits for
/// the address it says it listens on.
fn start_api(argv: &[&str]) -> ApiProcess {
    let mut cmd = std::process::Command::new(argv[0]);
    cmd.args(&argv[1..]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BILLSTREAM__") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .env("BILLSTREAM__API__LISTEN", "127.0.0.1:0")
        .env("BILLSTREAM__KAFKA__BROKERS", "127.0.0.1:9")
        .env(
            "BILLSTREAM__KAFKA__SCHEMA_REGISTRY_URL",
            "http://127.0.0.1:9",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
    let stderr = child.stderr.take().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
            log.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let mut api = ApiProcess {
        child,
        base: String::new(),
        stderr: seen,
    };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => api.base = format!("http://{addr}"),
        Err(_) => {
            let status = api.child.try_wait().unwrap();
            panic!(
                "`{}` did not say where it listens within 60 s (exit: {status:?}):\n{}",
                argv.join(" "),
                api.stderr.lock().unwrap()
            );
        }
    }
    api
}

/// `GET path` over plain HTTP/1.1 with the console's cookie: status and body.
fn http_get(base: &str, path: &str, token: &str) -> (u16, String) {
    let host = base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {}={token}\r\nConnection: close\r\n\r\n",
        console::COOKIE
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{path}: a chunked answer: {head}"
    );
    (status, body.to_string())
}

/// A console page that must be there: 200 and no error box.
fn console_page(api: &ApiProcess, path: &str, token: &str) -> String {
    let (status, body) = http_get(&api.base, path, token);
    assert_eq!(
        status,
        200,
        "{path}: {body}\nthe API said:\n{}",
        api.stderr.lock().unwrap()
    );
    assert!(!body.contains(r#"class="error""#), "{path}: {body}");
    body
}

fn count(html: &str, stage: &str) -> u64 {
    bar(html, stage, "count").map_or(0, |c| c.parse().unwrap())
}

/// The demo's output, as it leaves it.
struct DemoRun {
    _dir: tempfile::TempDir,
    out: PathBuf,
    stdout: String,
}

fn run_demo() -> DemoRun {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args([
            "demo",
            "--accounts",
            "60",
            "--days",
            "70",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        o.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    DemoRun {
        _dir: dir,
        out,
        stdout,
    }
}

/// The journal entries of the demo's output file with this `type`.
fn journal_of_type(out: &Path, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(out.join("billing.journal.v1.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == json!(kind))
        .collect()
}

#[test]
fn issue_14_the_demo_prints_how_to_watch_its_dunning_in_the_console_and_that_works_without_kafka() {
    let demo = run_demo();
    // The command, exactly as printed: this program, `api`, a config.
    let argv: Vec<&str> = demo
        .stdout
        .lines()
        .map(str::split_whitespace)
        .map(Iterator::collect::<Vec<_>>)
        .find(|w| w.len() == 4 && w[1] == "api" && w[2] == "--config")
        .unwrap_or_else(|| {
            panic!(
                "the demo prints no `billstream api --config …` command:\n{}",
                demo.stdout
            )
        });
    assert_eq!(argv[0], env!("CARGO_BIN_EXE_billstream"));
    let token = demo
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("eyJ") && w.matches('.').count() == 2)
        .unwrap_or_else(|| panic!("the demo prints no token:\n{}", demo.stdout))
        .to_string();
    let api = start_api(&argv);

    // Home: the dunning funnel of every account, with retries, final
    // declines and overdue invoices; dead letters by reason.
    let home = console_page(&api, "/console", &token);
    let funnel = home
        .split(r#"id="chart-dunning-all""#)
        .nth(1)
        .unwrap_or_else(|| panic!("no funnel over all accounts: {home}"));
    for stage in ["requested", "succeeded", "retried", "failed", "overdue"] {
        assert!(count(funnel, stage) > 0, "{stage} is 0: {home}");
    }
    assert!(count(funnel, "requested") > count(funnel, "succeeded"));
    let dead_letters = std::fs::read_to_string(demo.out.join("billing.dlq.v1.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(dead_letters > 0);
    assert!(
        home.contains(&format!("<p>{dead_letters} dead letter(s); the latest")),
        "{dead_letters} dead letters: {home}"
    );
    assert!(home.contains(r#"<table class="dead-letters">"#), "{home}");

    // An account whose invoice went overdue: its page shows the invoice
    // and the overdue stage; one whose charge was declined: the decline.
    let overdue = journal_of_type(&demo.out, "invoice_overdue");
    let entry = overdue.first().expect("an overdue invoice in the demo");
    let account = entry["account_id"].as_str().unwrap();
    let payload: Value = serde_json::from_str(entry["payload"].as_str().unwrap()).unwrap();
    let invoice = payload["invoice_id"].as_str().unwrap();
    let page = console_page(&api, &format!("/console/accounts/{account}"), &token);
    assert!(
        page.contains(&format!("<h1>Account {account}</h1>")),
        "{page}"
    );
    assert!(count(&page, "overdue") > 0, "{page}");
    assert!(
        page.contains(&format!(
            r#"<a href="/console/accounts/{account}/invoices/{invoice}">{invoice}</a>"#
        )),
        "{page}"
    );
    let declined = journal_of_type(&demo.out, "payment_failed");
    let account = declined[0]["account_id"].as_str().unwrap();
    let page = console_page(&api, &format!("/console/accounts/{account}"), &token);
    assert!(
        count(&page, "retried") + count(&page, "failed") > 0,
        "{page}"
    );

    // An invoice with usage lines: each with the input events behind it.
    let (account, invoice) = first_invoice_with_usage(&demo.out);
    let page = console_page(
        &api,
        &format!("/console/accounts/{account}/invoices/{invoice}"),
        &token,
    );
    let usage = page
        .split(r#"<section class="line""#)
        .find(|s| s.contains("usage"))
        .unwrap_or_else(|| panic!("no usage line: {page}"));
    let events = usage
        .split(r#"<table class="lineage">"#)
        .nth(1)
        .unwrap_or_else(|| panic!("no inputs behind the usage line: {page}"));
    assert!(events.contains("<td>usage_applied</td>"), "{page}");
    assert!(events.contains("billing.usage.v1/0/"), "{page}");

    // And in a real browser, when there is one.
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("BILLSTREAM_TEST_BROWSER").is_none(),
            "BILLSTREAM_TEST_BROWSER is set but no chromium binary is on the PATH"
        );
        eprintln!("SKIPPED the browser part: no chromium binary on the PATH");
        return;
    };
    drive_demo(&api.base, &binary, &token, &account, &invoice);
}

/// The first issued invoice in the demo's output with a usage line.
fn first_invoice_with_usage(out: &Path) -> (String, String) {
    std::fs::read_to_string(out.join("billing.invoices.v1.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|i| {
            i["lines"]
                .as_array()
                .is_some_and(|ls| ls.iter().any(|l| l["kind"] == json!("usage")))
        })
        .map(|i| {
            (
                i["account_id"].as_str().unwrap().to_string(),
                i["invoice_id"].as_str().unwrap().to_string(),
            )
        })
        .expect("an invoice with a usage line")
}

/// Sign in with the demo's token, see the funnel and dead letters drawn,
/// open an invoice and see the input events behind its usage line.
fn drive_demo(base: &str, binary: &Path, token: &str, account: &str, invoice: &str) {
    let (_browser, mut dt) = DevTools::open(binary);
    dt.call("Page.navigate", json!({"url": format!("{base}/console")}));
    dt.wait_for("/console");
    dt.type_into("#token", token);
    dt.click("#login-submit");
    dt.wait_for("/console");
    dt.assert_no_error_and_charts_drawn(&["chart-dunning-all", "chart-dlq"]);
    let stages = dt.eval(
        "Array.from(document.querySelectorAll('#chart-dunning-all svg rect.bar title')).map(t => t.textContent)",
    );
    for stage in ["retried", "overdue"] {
        assert!(
            stages.as_array().unwrap().iter().any(|t| t
                .as_str()
                .unwrap()
                .starts_with(&format!("{stage}: count: "))),
            "no {stage} bar: {stages}"
        );
    }
    let path = format!("/console/accounts/{account}/invoices/{invoice}");
    dt.call("Page.navigate", json!({"url": format!("{base}{path}")}));
    dt.wait_for(&path);
    dt.assert_no_error_and_charts_drawn(&[]);
    let inputs = dt.eval(
        "Array.from(document.querySelectorAll('section.line')).filter(s => s.querySelector('h3').innerText.includes('usage')).map(s => s.querySelectorAll('table.lineage tbody tr').length).reduce((a, b) => a + b, 0)",
    );
    assert!(inputs.as_u64().unwrap() > 0, "no input events shown");
}

#[test]
fn issue_14_api_plans_file_that_is_not_plans_stops_the_start_naming_the_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans.jsonl");
    let usage = r#"{"event_id":"u1","account_id":"a","subject":"s","metric":"m","quantity":"1","occurred_at":"2026-03-03T10:00:00Z","environment":"prod","attributes":{}}"#;
    for (text, says) in [
        (
            format!("\n{usage}\n"),
            ":2: expected a plan, found an event",
        ),
        ("{\"plan_id\": 1}\n".to_string(), ":1: "),
        (String::new(), "holds no plan"),
    ] {
        std::fs::write(&plans, &text).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_billstream"))
            .arg("api")
            .env("BILLSTREAM__STORE__PATH", dir.path().join("state"))
            .env("BILLSTREAM__API__LISTEN", "127.0.0.1:0")
            .env("BILLSTREAM__API__PLANS_FILE", &plans)
            .env("BILLSTREAM__API__JWT__SECRET", SECRET)
            .env("BILLSTREAM__KAFKA__BROKERS", "127.0.0.1:9")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(
            stderr.contains("config field `api.plans_file`") && stderr.contains(says),
            "{text:?}: {stderr}"
        );
    }
}
