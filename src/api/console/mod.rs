//! The support console: read-only HTML pages served next to the JSON API
//! (`/console`), for people rather than programs.
//!
//! - Who may look: the same JWT and `billing:read` role as the API. The
//!   login page takes a token and sets it as an HttpOnly, SameSite=Strict
//!   cookie; its POST and the logout's must come from the console's own
//!   origin (`cross_site`: `Origin`, else `Referer`, against `Host`;
//!   403 otherwise); every page checks it exactly as the API checks a bearer
//!   header (`Verifier::check`), and a bearer header works too. The login
//!   page and the stylesheet are the only pages without a token.
//! - What it shows comes from the JSON API itself: the pages call its
//!   router in-process with the visitor's token (`Console::api_get`), so
//!   the state, draft, upcoming invoice, invoices, lineage, journal and
//!   state as of an instant are computed once, by the API's own code. The
//!   console adds only what the API has no route for: account search (the
//!   store's first `api.report_max_accounts` account ids, the page says
//!   when there are more), per-month figures and the dunning funnel from
//!   the journal, and dead letters (`DeadLetterSource`). The home page
//!   charts every account: invoiced and collected by month per currency
//!   from the settlement report (`report::settlement`, as the API's
//!   `/v1/reports/settlement`) and the dunning funnel by the account
//!   page's fold, on the journal `api::reports::stored_journal` reads
//!   (refused above `api.report_max_accounts`, as the reports are).
//! - Every value shown is escaped (`html::esc`); ids in links are
//!   percent-encoded path segments (`html::seg`). Charts are inline SVG
//!   drawn here (`charts`); the stylesheet is embedded in the binary.

pub mod charts;
pub mod html;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::Value;
use tower::ServiceExt;

use self::charts::{Chart, Series};
use self::html::{
    account_href, cell, error_box, esc, fields_table, invoice_href, link, page, rows_table, seg,
};
use super::auth::{AuthError, Verifier, READ_ROLE};
use super::reports::stored_journal;
use super::routes::ApiError;
use crate::config::Settings;
use crate::dlq::{DlqRecord, Filter};
use crate::engine::events::DomainEvent;
use crate::engine::money::{Currency, Minor};
use crate::engine::time::Timestamp;
use crate::report::{settlement, MonthRow, Window};
use crate::runtime::StoredJournalEntry;
use crate::store::StateStore;

/// The cookie that carries the token.
pub const COOKIE: &str = "billstream_console";
const CSS: &str = include_str!("console.css");
/// Accounts a search lists at most.
const SEARCH_LIMIT: usize = 50;
/// Dead letters read from the DLQ topic are kept this long.
const DLQ_CACHE: Duration = Duration::from_secs(30);
const DLQ_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest JSON answer of the API the console reads.
const API_BODY_LIMIT: usize = 64 << 20;
/// Journal entries on one timeline page.
const TIMELINE_PAGE: usize = 200;

/// Where the console reads dead letters.
pub enum DeadLetterSource {
    /// Not available (the console says so).
    None,
    /// The embedded mode's JSON-lines file (`<out>/billing.dlq.v1.jsonl`).
    File(PathBuf),
    /// The DLQ topic of these settings, read from start to end (cached
    /// for `DLQ_CACHE`).
    Topic(Box<Settings>),
}

struct DeadLetters {
    source: DeadLetterSource,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Vec<DlqRecord>>)>>,
}

impl DeadLetters {
    async fn all(&self) -> Result<Option<Arc<Vec<DlqRecord>>>, String> {
        let mut cache = self.cache.lock().await;
        if let Some((at, records)) = cache.as_ref() {
            if at.elapsed() < DLQ_CACHE {
                return Ok(Some(records.clone()));
            }
        }
        let records = match &self.source {
            DeadLetterSource::None => return Ok(None),
            DeadLetterSource::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || crate::dlq::record::read_file(&path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{e:#}"))?
            }
            DeadLetterSource::Topic(settings) => {
                let settings = settings.clone();
                tokio::task::spawn_blocking(move || {
                    crate::dlq::kafka::read_topic(&settings, DLQ_READ_TIMEOUT)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{e:#}"))?
                .records
            }
        };
        let records = Arc::new(records);
        *cache = Some((Instant::now(), records.clone()));
        Ok(Some(records))
    }
}

/// What the console's pages read.
pub struct Console<S: StateStore> {
    /// The JSON API's router (`api::router`), called in-process.
    api: Router,
    verifier: Arc<Verifier>,
    /// For account search (`StateStore::all_accounts`) and the journals.
    store: Arc<S>,
    dead_letters: DeadLetters,
    /// `api.report_max_accounts`: the home page's charts across accounts
    /// are not drawn for more.
    report_max_accounts: usize,
}

impl<S: StateStore> Console<S> {
    pub fn new(
        api: Router,
        verifier: Arc<Verifier>,
        store: Arc<S>,
        dead_letters: DeadLetterSource,
        report_max_accounts: usize,
    ) -> Console<S> {
        Console {
            api,
            verifier,
            store,
            dead_letters: DeadLetters {
                source: dead_letters,
                cache: tokio::sync::Mutex::new(None),
            },
            report_max_accounts,
        }
    }

    /// `GET uri` on the JSON API with the visitor's credentials.
    async fn api_get(&self, bearer: &Bearer, uri: &str) -> Result<Value, Failure> {
        let request = Request::get(uri)
            .header(header::AUTHORIZATION, &bearer.0)
            .body(Body::empty())
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let Ok(response) = self.api.clone().oneshot(request).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), API_BODY_LIMIT)
            .await
            .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            let message = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the read API failed")
                .to_string();
            Err(Failure::new(status, message))
        }
    }
}

/// The `Authorization` value a page was let in with (a header, or
/// `Bearer <cookie>`), passed on to the API.
#[derive(Clone)]
struct Bearer(String);

/// A read that failed: its status and message, shown as the page.
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let title = if self.status == StatusCode::NOT_FOUND {
            "Not found"
        } else {
            "Cannot show this page"
        };
        (
            self.status,
            Html(page(title, &error_box(&self.message), true)),
        )
            .into_response()
    }
}

/// The console's routes; merge them into the API's router.
pub fn router<S: StateStore>(console: Arc<Console<S>>) -> Router {
    let pages = Router::new()
        .route("/console", get(home::<S>))
        .route("/console/search", get(search::<S>))
        .route("/console/accounts/{account_id}", get(account_page::<S>))
        .route(
            "/console/accounts/{account_id}/invoices/{invoice_id}",
            get(invoice_page::<S>),
        )
        .route(
            "/console/accounts/{account_id}/journal",
            get(journal_page::<S>),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            console.verifier.clone(),
            require_reader_page,
        ))
        .with_state(console.clone());
    Router::new()
        // The API's fallback would answer JSON: the page is `/console`.
        .route(
            "/console/",
            get(|| async { axum::response::Redirect::permanent("/console") }),
        )
        .route("/console/login", get(login_form).post(login::<S>))
        .route("/console/logout", post(logout))
        .route("/console/static/console.css", get(css))
        .with_state(console)
        .merge(pages)
        .layer(axum::middleware::from_fn(page_headers))
}

/// What a browser may do with the pages: no script at all, styles and
/// forms of this origin only, not framed; account data not cached, not
/// sniffed, no referrer sent to another site (`same-origin`: the
/// console's own forms still carry their origin, `cross_site` checks it).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn page_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    response
}

// ---- who may look ----

/// The request's credentials: its `Authorization` header, else the
/// console cookie as a bearer token.
fn bearer_of(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(value.to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"))
}

fn login_page(message: Option<&str>) -> String {
    let body = format!(
        r#"{}<p>Paste a token (a JWT with the <code>{}</code> role, the one the read API takes).</p>
<form class="login" method="post" action="/console/login">
<label for="token">Token</label><br><textarea id="token" name="token" rows="5" required autocomplete="off"></textarea><br>
<button type="submit" id="login-submit">Sign in</button></form>"#,
        message.map(error_box).unwrap_or_default(),
        esc(READ_ROLE),
    );
    page("Sign in", &body, false)
}

fn refused(e: &AuthError) -> Response {
    match e {
        AuthError::Unauthenticated(m) => {
            (StatusCode::UNAUTHORIZED, Html(login_page(Some(m)))).into_response()
        }
        AuthError::Forbidden(_) => (
            StatusCode::FORBIDDEN,
            Html(page(
                "Not allowed",
                &format!(
                    r#"{}<form method="post" action="/console/logout"><button type="submit">Sign in with another token</button></form>"#,
                    error_box(&e.to_string())
                ),
                false,
            )),
        )
            .into_response(),
    }
}

/// In front of every page: no valid token → 401 with the login page, a
/// token without the role → 403.
async fn require_reader_page(
    State(verifier): State<Arc<Verifier>>,
    mut request: Request,
    next: Next,
) -> Response {
    let bearer = bearer_of(request.headers());
    match verifier.check(bearer.as_deref()) {
        Ok(()) => {
            request
                .extensions_mut()
                .insert(Bearer(bearer.unwrap_or_default()));
            next.run(request).await
        }
        Err(AuthError::Unauthenticated(_)) if bearer.is_none() => {
            (StatusCode::UNAUTHORIZED, Html(login_page(None))).into_response()
        }
        Err(e) => refused(&e),
    }
}

async fn login_form() -> Html<String> {
    Html(login_page(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// The form's origin is checked first (`cross_site`), then the token
/// before it is kept: a bad one never becomes a cookie.
async fn login<S: StateStore>(
    State(console): State<Arc<Console<S>>>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Some(refused) = cross_site(&headers, &uri) {
        return refused;
    }
    let token = form.token.trim();
    let token_is_cookie_safe = token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='));
    if token.is_empty() || !token_is_cookie_safe {
        return refused(&AuthError::Unauthenticated(
            "that is not a JWT (three base64url parts joined by dots)".into(),
        ));
    }
    match console.verifier.check(Some(&format!("Bearer {token}"))) {
        Ok(()) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/console".to_string()),
                (
                    header::SET_COOKIE,
                    format!("{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict"),
                ),
            ],
        )
            .into_response(),
        Err(e) => refused(&e),
    }
}

async fn logout(request: Request) -> Response {
    if let Some(refused) = cross_site(request.headers(), request.uri()) {
        return refused;
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/console/login".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

/// The 403 for a login or logout POST from another site (cross-site
/// request forgery: a form on another site signing the visitor in with
/// its token, or out), else `None`. The POST's `Origin`, else its `Referer`, must name this request's own
/// host and port (`Host`, else the URI's authority; the scheme is not
/// compared, as TLS may end at a proxy in front). `Origin: null` and an
/// origin with no host to check it against are refused, 403. A POST with
/// neither header is let through: browsers send `Origin` on every POST
/// (the pages' `Referrer-Policy: same-origin` keeps it a real origin on
/// the console's own forms), so such a request comes from a program, not
/// a forged form in a visitor's browser.
fn cross_site(headers: &HeaderMap, uri: &Uri) -> Option<Response> {
    let named = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or(""));
    // Neither header: let through (see above).
    let claimed = named(header::ORIGIN).or_else(|| named(header::REFERER))?;
    // `scheme://host[:port]`, and a referer's path after it.
    let authority = claimed
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
    let own = named(header::HOST)
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()));
    match (authority, own) {
        (Some(theirs), Some(own)) if !theirs.is_empty() && theirs.eq_ignore_ascii_case(&own) => {
            None
        }
        _ => Some(
            (
                StatusCode::FORBIDDEN,
                Html(page(
                    "Not allowed",
                    &error_box(
                        "this form was sent from another site (its Origin is not this console's): \
                     sign in from the console's own login page",
                    ),
                    false,
                )),
            )
                .into_response(),
        ),
    }
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

// ---- pages ----

type PageResult = Result<Html<String>, Failure>;

/// Home: the search box, the charts across every account, and the dead
/// letters of every account by reason.
async fn home<S: StateStore>(State(console): State<Arc<Console<S>>>) -> PageResult {
    let mut body = String::from(
        r#"<form class="search-big" method="get" action="/console/search"><label for="home-q">Find an account (its id, or part of it)</label><br>
<input type="search" id="home-q" name="q" required> <button type="submit">Search</button></form>
<h2>All accounts</h2>"#,
    );
    body.push_str(&all_accounts_charts(&console).await);
    body.push_str("<h2>Dead letters</h2>");
    body.push_str(&dead_letter_section(&console, None).await);
    Ok(Html(page("Support console", &body, true)))
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// An account id, or part of one: the account itself when it exists,
/// else the accounts whose ids contain it (case-insensitive).
async fn search<S: StateStore>(
    State(console): State<Arc<Console<S>>>,
    Query(q): Query<SearchQuery>,
) -> Result<Response, Failure> {
    let wanted = q.q.trim();
    if wanted.is_empty() {
        return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/console")]).into_response());
    }
    let store_failed = |e: crate::store::StoreError| {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
    };
    if console
        .store
        .load_account(wanted)
        .await
        .map_err(store_failed)?
        .is_some()
    {
        return Ok((
            StatusCode::SEE_OTHER,
            [(header::LOCATION, account_href(wanted))],
        )
            .into_response());
    }
    // At most `report_max_accounts` ids are read per search, as the
    // reports read at most that many accounts.
    let max = console.report_max_accounts;
    let mut ids = console
        .store
        .all_accounts(max.saturating_add(1))
        .await
        .map_err(store_failed)?;
    let cut = ids.len() > max;
    ids.truncate(max);
    let needle = wanted.to_lowercase();
    let mut found = BTreeSet::new();
    let mut more = false;
    for id in ids {
        if id.to_lowercase().contains(&needle) {
            if found.len() == SEARCH_LIMIT {
                more = true;
            } else {
                found.insert(id);
            }
        }
    }
    let mut body = format!("<p>Accounts whose id contains <b>{}</b>:</p>", esc(wanted));
    if cut {
        body.push_str(&format!(
            r#"<p class="note" id="search-cut">only the first {max} account(s) of the store were searched (api.report_max_accounts): an account's full id opens it whatever the bound</p>"#
        ));
    }
    if found.is_empty() {
        body.push_str(r#"<p class="none" id="no-match">no account matches</p>"#);
    } else {
        body.push_str(r#"<ul class="results">"#);
        for id in &found {
            body.push_str(&format!("<li>{}</li>", link(&account_href(id), id)));
        }
        body.push_str("</ul>");
        if more {
            body.push_str(&format!(
                r#"<p class="note">the first {SEARCH_LIMIT} are shown: narrow the search</p>"#
            ));
        }
    }
    Ok(Html(page("Search", &body, true)).into_response())
}

fn currency_of(state: &Value) -> Result<Currency, Failure> {
    state
        .get("currency")
        .and_then(Value::as_str)
        .and_then(Currency::from_code)
        .ok_or_else(|| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the account has no known currency",
            )
        })
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

const LINE_COLUMNS: [(&str, &str); 7] = [
    ("Kind", "kind"),
    ("Metric", "metric"),
    ("Quantity", "quantity"),
    ("Unit price", "unit_price"),
    ("Amount", "amount"),
    ("Description", "description"),
    ("By subject", "subjects"),
];

async fn account_page<S: StateStore>(
    State(console): State<Arc<Console<S>>>,
    Extension(bearer): Extension<Bearer>,
    Path(account_id): Path<String>,
) -> PageResult {
    let base = format!("/v1/accounts/{}", seg(&account_id));
    let state = console.api_get(&bearer, &base).await?;
    let currency = currency_of(&state)?;
    let mut body = format!(
        r#"<p>{} · {}</p>"#,
        link(
            &format!("{}/journal", account_href(&account_id)),
            "journal timeline and state as of an instant"
        ),
        r##"<a href="#dead-letters">dead letters</a>"##
    );

    body.push_str("<h2>State</h2>");
    let mut shown = state.clone();
    if let Some(map) = shown.as_object_mut() {
        let masked = state
            .pointer("/payment_method/masked")
            .cloned()
            .unwrap_or(Value::Null);
        map.insert("payment_method".into(), masked);
        let pending = state
            .get("pending_plan")
            .filter(|p| !p.is_null())
            .map(|p| {
                Value::String(format!(
                    "{} from {}",
                    p["plan_id"].as_str().unwrap_or(""),
                    p["effective_at"].as_str().unwrap_or("")
                ))
            })
            .unwrap_or(Value::Null);
        map.insert("pending_plan".into(), pending);
    }
    body.push_str(&fields_table(
        &shown,
        &[
            ("Account", "account_id"),
            ("Currency", "currency"),
            ("Time zone", "timezone"),
            ("Tax rate", "tax_rate"),
            ("Plan", "plan_id"),
            ("Plan change", "pending_plan"),
            ("Opened", "opened_at"),
            ("Closed", "closed_at"),
            ("Credit", "credit"),
            ("Outstanding", "outstanding"),
            ("Dunning stage", "dunning_stage"),
            ("Payment method", "payment_method"),
            ("Last change", "clock"),
            ("Journal entries", "journal_seq"),
        ],
    ));

    body.push_str("<h2>Credit by grant</h2>");
    body.push_str(&rows_table(
        "grants",
        array(&state, "credit_grants"),
        &[
            ("Grant", "grant_id"),
            ("Kind", "kind"),
            ("Priority", "priority"),
            ("Granted", "granted"),
            ("Remaining", "remaining"),
            ("Granted at", "granted_at"),
            ("Expires", "expires_at"),
        ],
        None,
    ));

    body.push_str("<h2>Open draft</h2>");
    match state.get("draft").filter(|d| !d.is_null()) {
        None => body.push_str(r#"<p class="none">no draft: the final invoice is issued</p>"#),
        Some(draft) => {
            body.push_str(&fields_table(
                draft,
                &[
                    ("Invoice", "invoice_id"),
                    ("Period start", "period_start"),
                    ("Period end", "period_end"),
                    ("Subtotal", "subtotal"),
                    ("Tax", "tax"),
                    ("Running total", "total"),
                ],
            ));
            body.push_str(&rows_table(
                "lines",
                array(draft, "lines"),
                &LINE_COLUMNS,
                None,
            ));
        }
    }

    body.push_str("<h2>Upcoming invoice</h2>");
    match console
        .api_get(&bearer, &format!("{base}/upcoming-invoice"))
        .await
    {
        Ok(upcoming) => {
            body.push_str(&fields_table(
                &upcoming,
                &[
                    ("Invoice", "invoice_id"),
                    ("Worked out at", "preview_at"),
                    ("Subtotal", "subtotal"),
                    ("Discount", "discount"),
                    ("Tax", "tax"),
                    ("Total", "total"),
                    ("Credit applied", "credit_applied"),
                    ("Amount due", "amount_due"),
                ],
            ));
            body.push_str(&rows_table(
                "lines",
                array(&upcoming, "lines"),
                &LINE_COLUMNS,
                None,
            ));
        }
        Err(f) if f.status == StatusCode::NOT_FOUND => {
            body.push_str(&format!(r#"<p class="none">{}</p>"#, esc(&f.message)));
        }
        Err(f) => return Err(f),
    }

    body.push_str("<h2>Open invoices</h2>");
    let invoice_link = |v: &Value| {
        let id = v["invoice_id"].as_str().unwrap_or_default();
        link(&invoice_href(&account_id, id), id)
    };
    body.push_str(&rows_table(
        "open-invoices",
        array(&state, "open_invoices"),
        &[
            ("Invoice", "invoice_id"),
            ("Number", "number"),
            ("Due", "due_at"),
            ("Amount due", "amount_due"),
            ("Paid", "paid"),
            ("Remaining", "remaining"),
            ("Stage", "stage"),
            ("Charge attempts", "charge_attempts"),
            ("Next retry", "next_retry_at"),
        ],
        Some(&invoice_link),
    ));

    body.push_str("<h2>Invoices</h2>");
    let mut invoices = Vec::new();
    let mut uri = format!("{base}/invoices?limit={}", super::paging::MAX_PAGE);
    loop {
        let page = console.api_get(&bearer, &uri).await?;
        invoices.extend(array(&page, "invoices").iter().cloned());
        match page.get("next").and_then(Value::as_str) {
            Some(next) => {
                uri = format!(
                    "{base}/invoices?limit={}&cursor={}",
                    super::paging::MAX_PAGE,
                    seg(next)
                )
            }
            None => break,
        }
    }
    body.push_str(&rows_table(
        "invoices",
        &invoices,
        &[
            ("Invoice", "invoice_id"),
            ("Number", "number"),
            ("Issued", "issued_at"),
            ("Total", "total"),
            ("Credit applied", "credit_applied"),
            ("Amount due", "amount_due"),
            ("Paid", "amount_paid"),
            ("Status", "status"),
        ],
        Some(&invoice_link),
    ));

    body.push_str(r#"<h2>Charts</h2><div class="charts">"#);
    let figures = AccountFigures::read(&*console.store, &account_id).await?;
    body.push_str(&figures.money_chart(currency).render());
    body.push_str(&figures.funnel_chart().render());
    body.push_str("</div>");

    body.push_str(r#"<h2 id="dead-letters">Dead letters</h2>"#);
    body.push_str(&dead_letter_section(&console, Some(&account_id)).await);

    Ok(Html(page(&format!("Account {account_id}"), &body, true)))
}

async fn invoice_page<S: StateStore>(
    State(console): State<Arc<Console<S>>>,
    Extension(bearer): Extension<Bearer>,
    Path((account_id, invoice_id)): Path<(String, String)>,
) -> PageResult {
    let base = format!(
        "/v1/accounts/{}/invoices/{}",
        seg(&account_id),
        seg(&invoice_id)
    );
    let invoice = console.api_get(&bearer, &base).await?;
    let mut body = format!(
        "<p>{}</p>",
        link(
            &account_href(&account_id),
            &format!("← account {account_id}")
        )
    );
    let mut shown = invoice.clone();
    if let Some(map) = shown.as_object_mut() {
        let period = format!(
            "{} – {}",
            invoice
                .pointer("/period/start")
                .and_then(Value::as_str)
                .unwrap_or(""),
            invoice
                .pointer("/period/end")
                .and_then(Value::as_str)
                .unwrap_or("")
        );
        map.insert("period".into(), Value::String(period));
    }
    body.push_str(&fields_table(
        &shown,
        &[
            ("Invoice", "invoice_id"),
            ("Number", "number"),
            ("Period", "period"),
            ("Issued", "issued_at"),
            ("Due", "due_at"),
            ("Subtotal", "subtotal"),
            ("Tax", "tax"),
            ("Total", "total"),
            ("Credit applied (paid)", "credit_applied_paid"),
            ("Credit applied (promotional)", "credit_applied_promotional"),
            ("Amount due", "amount_due"),
            ("Paid", "amount_paid"),
            ("Remaining", "remaining"),
            ("Status", "status"),
        ],
    ));
    body.push_str("<h2>Lines, and the input events behind each</h2>");
    for (index, line) in array(&invoice, "lines").iter().enumerate() {
        body.push_str(&format!(
            r#"<section class="line" id="line-{index}"><h3>Line {index}: {} {}</h3>"#,
            cell(line.get("kind")),
            cell(line.get("metric")),
        ));
        body.push_str(&rows_table(
            "lines",
            std::slice::from_ref(line),
            &LINE_COLUMNS,
            None,
        ));
        let lineage = console
            .api_get(
                &bearer,
                &format!(
                    "{base}/lines/{index}/lineage?limit={}",
                    super::paging::MAX_PAGE
                ),
            )
            .await?;
        let inputs: Vec<Value> = array(&lineage, "inputs")
            .iter()
            .map(|i| {
                let mut i = i.clone();
                let source = match i.get("source") {
                    Some(Value::Object(s)) => Value::String(format!(
                        "{}/{}/{}",
                        s.get("topic").and_then(Value::as_str).unwrap_or(""),
                        s.get("partition").map(Value::to_string).unwrap_or_default(),
                        s.get("offset").map(Value::to_string).unwrap_or_default()
                    )),
                    _ => Value::Null,
                };
                if let Some(map) = i.as_object_mut() {
                    map.insert("source".into(), source);
                }
                i
            })
            .collect();
        body.push_str(r#"<div class="lineage">"#);
        body.push_str(&format!(
            "<p>{} input event(s){}</p>",
            inputs.len(),
            match lineage.get("traced_quantity").and_then(Value::as_str) {
                Some(q) => format!(", quantity {}", esc(q)),
                None => String::new(),
            }
        ));
        body.push_str(&rows_table(
            "lineage",
            &inputs,
            &[
                ("Event", "event_id"),
                ("Entry", "entry_type"),
                ("At", "at"),
                ("Quantity", "quantity"),
                ("Subject", "subject"),
                ("Read from (topic/partition/offset)", "source"),
                ("Journal seq", "journal_seq"),
            ],
            None,
        ));
        if lineage.get("next").is_some_and(|n| !n.is_null()) {
            body.push_str(&format!(
                r#"<p class="note">more than {} inputs: page through them with the read API (<code>{}</code>)</p>"#,
                super::paging::MAX_PAGE,
                esc(&format!("{base}/lines/{index}/lineage"))
            ));
        }
        body.push_str("</div></section>");
    }
    Ok(Html(page(&format!("Invoice {invoice_id}"), &body, true)))
}

#[derive(Deserialize)]
struct TimelineQuery {
    at: Option<String>,
    from_seq: Option<u64>,
}

/// The journal as a timeline, and the state as of an instant (`at`; each
/// entry links to the state just after it).
async fn journal_page<S: StateStore>(
    State(console): State<Arc<Console<S>>>,
    Extension(bearer): Extension<Bearer>,
    Path(account_id): Path<String>,
    Query(q): Query<TimelineQuery>,
) -> PageResult {
    let base = format!("/v1/accounts/{}", seg(&account_id));
    let here = format!("{}/journal", account_href(&account_id));
    let at = q.at.as_deref().map(str::trim).filter(|a| !a.is_empty());
    let mut body = format!(
        r#"<p>{}</p><form class="asof" method="get" action="{}"><label for="at">State as of (RFC 3339)</label> <input id="at" name="at" value="{}" placeholder="2026-03-15T00:00:00Z"> <button type="submit">Show</button></form>"#,
        link(
            &account_href(&account_id),
            &format!("← account {account_id}")
        ),
        esc(&here),
        esc(at.unwrap_or("")),
    );
    if let Some(at) = at {
        body.push_str(&format!(r#"<h2 id="as-of">State as of {}</h2>"#, esc(at)));
        match console
            .api_get(&bearer, &format!("{base}/as-of?at={}", seg(at)))
            .await
        {
            Ok(state) => {
                body.push_str(&fields_table(
                    &state,
                    &[
                        ("As of", "as_of"),
                        ("Last entry", "journal_seq"),
                        ("Made at", "last_change_at"),
                        ("Plan", "plan_id"),
                        ("Credit", "credit"),
                        ("Outstanding", "outstanding"),
                        ("Dunning stage", "dunning_stage"),
                        ("Closed", "closed_at"),
                    ],
                ));
                body.push_str("<h3>Credit by grant</h3>");
                body.push_str(&rows_table(
                    "grants",
                    array(&state, "credit_grants"),
                    &[
                        ("Grant", "grant_id"),
                        ("Kind", "kind"),
                        ("Remaining", "remaining"),
                        ("Expires", "expires_at"),
                    ],
                    None,
                ));
                body.push_str("<h3>Open invoices</h3>");
                body.push_str(&rows_table(
                    "open-invoices",
                    array(&state, "open_invoices"),
                    &[
                        ("Invoice", "invoice_id"),
                        ("Remaining", "remaining"),
                        ("Stage", "stage"),
                    ],
                    None,
                ));
                if let Some(draft) = state.get("draft").filter(|d| !d.is_null()) {
                    body.push_str("<h3>Draft usage (quantities)</h3>");
                    body.push_str(&rows_table(
                        "usage",
                        array(draft, "usage"),
                        &[
                            ("Metric", "metric"),
                            ("Period", "for_period_start"),
                            ("Quantity", "quantity"),
                            ("By subject", "subjects"),
                        ],
                        None,
                    ));
                }
            }
            // A bad instant or one before the account: said on the page.
            Err(f) if f.status.is_client_error() => body.push_str(&error_box(&f.message)),
            Err(f) => return Err(f),
        }
    }
    let from = q.from_seq.unwrap_or(1).max(1);
    let journal = console
        .api_get(
            &bearer,
            &format!("{base}/journal?from_seq={from}&limit={TIMELINE_PAGE}"),
        )
        .await?;
    body.push_str(&format!(
        "<h2>Journal from entry {from}</h2><ol class=\"timeline\">"
    ));
    for entry in array(&journal, "entries") {
        let at = entry.get("at").and_then(Value::as_str).unwrap_or("");
        let mut event = entry.get("event").cloned().unwrap_or(Value::Null);
        let kind = event.get("type").cloned();
        if let Some(map) = event.as_object_mut() {
            map.remove("type");
        }
        let detail = match event.as_object() {
            Some(m) if !m.is_empty() => format!(" <code>{}</code>", esc(&event.to_string())),
            _ => String::new(),
        };
        let read_from = match entry.get("source") {
            Some(Value::Object(s)) => format!(
                " · read from {}",
                esc(&format!(
                    "{}/{}/{}",
                    s.get("topic").and_then(Value::as_str).unwrap_or(""),
                    s.get("partition").map(Value::to_string).unwrap_or_default(),
                    s.get("offset").map(Value::to_string).unwrap_or_default()
                ))
            ),
            _ => String::new(),
        };
        body.push_str(&format!(
            r#"<li value="{seq}"><b>{kind}</b> at {when} · caused by {cause}{read_from} · {asof}{detail}</li>"#,
            seq = entry.get("seq").and_then(Value::as_u64).unwrap_or(0),
            kind = cell(kind.as_ref()),
            when = esc(at),
            cause = cell(entry.get("causation_id")),
            asof = link(&format!("{here}?at={}#as-of", seg(at)), "state as of then"),
        ));
    }
    body.push_str("</ol>");
    if let Some(next) = journal.get("next_from_seq").and_then(Value::as_u64) {
        body.push_str(&format!(
            "<p>{}</p>",
            link(&format!("{here}?from_seq={next}"), "later entries →")
        ));
    }
    Ok(Html(page(&format!("Journal of {account_id}"), &body, true)))
}

// ---- figures for the charts ----

/// Month of an instant, `YYYY-MM` (UTC).
fn month(t: Timestamp) -> String {
    t.to_rfc3339().chars().take(7).collect()
}

/// An account's money by month and its dunning funnel, read from its
/// journal.
#[derive(Debug, Default, PartialEq)]
struct AccountFigures {
    /// Invoice totals by month of issue.
    invoiced: BTreeMap<String, Minor>,
    /// Card payments and bank transfers applied to invoices, by month.
    collected: BTreeMap<String, Minor>,
    /// Charges requested, succeeded, failed with a retry scheduled,
    /// failed for good, invoices overdue.
    funnel: [u64; 5],
}

const FUNNEL: [&str; 5] = ["requested", "succeeded", "retried", "failed", "overdue"];

impl AccountFigures {
    fn add(map: &mut BTreeMap<String, Minor>, key: String, amount: Minor) -> Result<(), Failure> {
        let slot = map.entry(key).or_insert(Minor::ZERO);
        *slot = slot.checked_add(amount).ok_or_else(|| {
            Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "a monthly sum overflows")
        })?;
        Ok(())
    }

    fn see(&mut self, stored: &StoredJournalEntry) -> Result<(), Failure> {
        let at = stored.entry.at;
        match &stored.entry.event {
            DomainEvent::InvoiceIssued { invoice } => {
                Self::add(&mut self.invoiced, month(invoice.issued_at), invoice.total)?
            }
            DomainEvent::PaymentSucceeded { amount, .. } => {
                self.funnel[1] += 1;
                Self::add(&mut self.collected, month(at), *amount)?
            }
            DomainEvent::BankTransferApplied {
                invoice_id: Some(_),
                amount,
                ..
            } => Self::add(&mut self.collected, month(at), *amount)?,
            DomainEvent::ChargeRequested { .. } => self.funnel[0] += 1,
            DomainEvent::PaymentFailed { next_retry_at, .. } => {
                self.funnel[if next_retry_at.is_some() { 2 } else { 3 }] += 1
            }
            DomainEvent::InvoiceOverdue { .. } => self.funnel[4] += 1,
            _ => {}
        }
        Ok(())
    }

    async fn read<S: StateStore>(store: &S, account_id: &str) -> Result<AccountFigures, Failure> {
        let mut figures = AccountFigures::default();
        let mut from = 1;
        loop {
            let page = store
                .read_journal(account_id, from, super::paging::MAX_PAGE)
                .await
                .map_err(|e| {
                    Failure::new(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
                })?;
            let Some(last) = page.last() else {
                return Ok(figures);
            };
            from = last.seq + 1;
            for record in &page {
                let stored: StoredJournalEntry =
                    serde_json::from_slice(&record.bytes).map_err(|e| {
                        Failure::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("journal entry {}: {e}", record.seq),
                        )
                    })?;
                figures.see(&stored)?;
            }
        }
    }

    fn money_chart(&self, c: Currency) -> Chart<'static> {
        let months: Vec<String> = self
            .invoiced
            .keys()
            .chain(self.collected.keys())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let series = |name: &str, map: &BTreeMap<String, Minor>| Series {
            name: name.to_string(),
            values: months
                .iter()
                .map(|m| {
                    let v = map.get(m).copied().unwrap_or(Minor::ZERO);
                    (v.0 as f64, c.format(v))
                })
                .collect(),
        };
        Chart {
            id: "chart-revenue",
            title: "Invoiced and collected by month",
            series: vec![
                series("invoiced", &self.invoiced),
                series("collected", &self.collected),
            ],
            categories: months,
            stacked: false,
        }
    }

    fn funnel_chart(&self) -> Chart<'static> {
        self.funnel_chart_as("chart-dunning", "Dunning funnel (charges)")
    }

    fn funnel_chart_as<'a>(&self, id: &'a str, title: &'a str) -> Chart<'a> {
        Chart {
            id,
            title,
            categories: FUNNEL.iter().map(|s| s.to_string()).collect(),
            series: vec![Series {
                name: "count".into(),
                values: self
                    .funnel
                    .iter()
                    .map(|n| (*n as f64, n.to_string()))
                    .collect(),
            }],
            stacked: false,
        }
    }
}

/// Invoiced and collected by month in one currency, from the settlement
/// report's rows of that currency.
fn settlement_chart<'a>(id: &'a str, title: &'a str, rows: &[&MonthRow]) -> Chart<'a> {
    let series = |name: &str, amount: fn(&MonthRow) -> Minor| Series {
        name: name.to_string(),
        values: rows
            .iter()
            .map(|r| {
                let v = amount(r);
                (v.0 as f64, r.currency.format(v))
            })
            .collect(),
    };
    Chart {
        id,
        title,
        categories: rows.iter().map(|r| r.month.clone()).collect(),
        series: vec![
            series("invoiced", |r| r.invoiced),
            series("collected", |r| r.collected),
            series("overdue at month end", |r| r.overdue),
        ],
        stacked: false,
    }
}

/// The home page's charts across every account: per currency, invoiced,
/// collected and overdue by month (the settlement report); the dunning
/// funnel (the account page's fold over every journal). Above
/// `report_max_accounts` accounts a note says to use the reports.
async fn all_accounts_charts<S: StateStore>(console: &Console<S>) -> String {
    let journal = match stored_journal(&*console.store, console.report_max_accounts).await {
        Ok(journal) => journal,
        Err(ApiError::TooLarge(m)) => {
            return format!(
                r#"<p class="note" id="all-accounts-too-many">no charts: {}</p>"#,
                esc(&m)
            )
        }
        Err(e) => return error_box(&format!("the charts across accounts cannot be drawn: {e}")),
    };
    let report = match settlement(&journal, &Window::All) {
        Ok(report) => report,
        Err(e) => return error_box(&format!("the settlement report cannot be made: {e}")),
    };
    let mut by_currency: BTreeMap<&str, Vec<&MonthRow>> = BTreeMap::new();
    for row in &report.rows {
        by_currency
            .entry(row.currency.code())
            .or_default()
            .push(row);
    }
    let mut funnel = AccountFigures::default();
    for entry in journal.values().flatten() {
        if let Err(f) = funnel.see(entry) {
            return error_box(&f.message);
        }
    }
    let mut out = String::from(r#"<div class="charts">"#);
    if by_currency.is_empty() {
        out.push_str(
            &settlement_chart("chart-revenue-all", "Invoiced and collected by month", &[]).render(),
        );
    }
    for (code, rows) in &by_currency {
        let id = format!("chart-revenue-all-{code}");
        let title = format!("Invoiced, collected and overdue by month, {code}");
        out.push_str(&settlement_chart(&id, &title, rows).render());
    }
    out.push_str(
        &funnel
            .funnel_chart_as(
                "chart-dunning-all",
                "Dunning funnel, all accounts (charges)",
            )
            .render(),
    );
    out.push_str("</div>");
    out.push_str(&format!(
        r#"<p class="note">{} account(s) with a journal; the figures as <code>GET /v1/reports/settlement</code> and <code>billstream report settlement</code> give them</p>"#,
        journal.len()
    ));
    out
}

/// Dead letters by reason (error kind) over time: by day, or by month
/// when they span more than a month of days.
fn dead_letter_chart(records: &[&DlqRecord]) -> Chart<'static> {
    let day = |r: &DlqRecord| -> String { r.received_at.to_rfc3339().chars().take(10).collect() };
    let days: BTreeSet<String> = records.iter().map(|r| day(r)).collect();
    let bucket = |r: &DlqRecord| -> String {
        if days.len() > 31 {
            month(r.received_at)
        } else {
            day(r)
        }
    };
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut buckets = BTreeSet::new();
    for r in records {
        let b = bucket(r);
        *counts
            .entry(r.error_kind.clone())
            .or_default()
            .entry(b.clone())
            .or_default() += 1;
        buckets.insert(b);
    }
    let categories: Vec<String> = buckets.into_iter().collect();
    Chart {
        id: "chart-dlq",
        title: "Dead letters by reason over time",
        series: counts
            .into_iter()
            .map(|(kind, by)| Series {
                name: kind,
                values: categories
                    .iter()
                    .map(|c| {
                        let n = by.get(c).copied().unwrap_or(0);
                        (n as f64, n.to_string())
                    })
                    .collect(),
            })
            .collect(),
        categories,
        stacked: true,
    }
}

/// The dead letters of one account (the record key), or of all: the chart
/// and the latest ones.
async fn dead_letter_section<S: StateStore>(
    console: &Console<S>,
    account_id: Option<&str>,
) -> String {
    let all = match console.dead_letters.all().await {
        Ok(Some(all)) => all,
        Ok(None) => {
            return r#"<p class="note">no dead-letter source is configured for this console</p>"#
                .to_string()
        }
        Err(e) => return error_box(&format!("dead letters cannot be read: {e}")),
    };
    let filter = Filter {
        account: account_id.map(str::to_string),
        ..Filter::default()
    };
    let mut records: Vec<&DlqRecord> = all.iter().filter(|r| filter.matches(r)).collect();
    records.sort_by_key(|r| r.received_at);
    let mut out = String::new();
    out.push_str(r#"<div class="charts">"#);
    out.push_str(&dead_letter_chart(&records).render());
    out.push_str("</div>");
    let latest: Vec<Value> = records
        .iter()
        .rev()
        .take(100)
        .map(|r| {
            serde_json::json!({
                "received_at": r.received_at.to_rfc3339(),
                "error_kind": r.error_kind,
                "reason": r.reason,
                "key": r.key,
                "source": r.source(),
                "event_id": r.event_id,
            })
        })
        .collect();
    out.push_str(&format!(
        "<p>{} dead letter(s){}; the latest 100 at most, newest first (replay them with <code>billstream dlq replay</code>):</p>",
        records.len(),
        if account_id.is_some() { " with this account's key" } else { "" }
    ));
    out.push_str(&rows_table(
        "dead-letters",
        &latest,
        &[
            ("Received", "received_at"),
            ("Kind", "error_kind"),
            ("Reason", "reason"),
            ("Account (key)", "key"),
            ("Source record", "source"),
            ("Id", "event_id"),
        ],
        None,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_header_or_else_the_console_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_of(&h), None);
        h.insert(
            header::COOKIE,
            "other=1; billstream_console=abc.def.ghi; x=y"
                .parse()
                .unwrap(),
        );
        assert_eq!(bearer_of(&h).as_deref(), Some("Bearer abc.def.ghi"));
        h.insert(header::AUTHORIZATION, "Bearer t.u.v".parse().unwrap());
        assert_eq!(bearer_of(&h).as_deref(), Some("Bearer t.u.v"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "billstream_console=".parse().unwrap());
        assert_eq!(bearer_of(&h), None);
    }

    #[test]
    fn dead_letters_are_counted_by_reason_and_day() {
        let r = |kind: &str, at: &str| DlqRecord {
            event_id: format!("{kind}{at}"),
            source_topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            error_kind: kind.into(),
            reason: String::new(),
            payload: Vec::new(),
            received_at: Timestamp::parse_rfc3339(at).unwrap(),
            found_at: String::new(),
        };
        let records = [
            r("unknown_account", "2026-03-01T10:00:00Z"),
            r("unknown_account", "2026-03-01T11:00:00Z"),
            r("bad_quantity", "2026-03-02T00:00:00Z"),
        ];
        let refs: Vec<&DlqRecord> = records.iter().collect();
        let chart = dead_letter_chart(&refs);
        assert_eq!(chart.categories, ["2026-03-01", "2026-03-02"]);
        let values = |i: usize| -> Vec<String> {
            chart.series[i]
                .values
                .iter()
                .map(|(_, l)| l.clone())
                .collect()
        };
        assert_eq!(chart.series[0].name, "bad_quantity");
        assert_eq!(values(0), ["0", "1"]);
        assert_eq!(chart.series[1].name, "unknown_account");
        assert_eq!(values(1), ["2", "0"]);
    }
}
