//! The routes: every one a GET (a `POST`, `PUT` or `DELETE` is answered
//! 405: there is nothing to write or delete through this API), every one
//! but `/healthz` behind the bearer-token check. `ROUTES` lists them for
//! the test that keeps `docs/openapi.yaml` in step.

use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{require_reader, Verifier};
use super::history::Projection;
use super::lineage::{Tracer, TracerState};
use super::paging::{decode_cursor, encode_cursor, parse_limit, PageQuery};
use super::views::{account_view, rendered, time};
use crate::engine::events::IssuedInvoice;
use crate::engine::time::Timestamp;
use crate::engine::{AccountState, Engine};
use crate::runtime::StoredJournalEntry;
use crate::store::{StateStore, StoreError};

/// What the handlers read: the store, and the engine (its price book) to
/// price the running draft.
pub struct ApiState<S: StateStore> {
    pub store: Arc<S>,
    pub engine: Arc<RwLock<Engine>>,
    /// `api.report_max_accounts`: the reports refuse more accounts.
    pub report_max_accounts: usize,
}

pub const HEALTHZ: &str = "/healthz";
pub const ACCOUNT: &str = "/v1/accounts/{account_id}";
pub const ACCOUNT_AS_OF: &str = "/v1/accounts/{account_id}/as-of";
pub const INVOICES: &str = "/v1/accounts/{account_id}/invoices";
pub const INVOICE: &str = "/v1/accounts/{account_id}/invoices/{invoice_id}";
pub const LINE_LINEAGE: &str =
    "/v1/accounts/{account_id}/invoices/{invoice_id}/lines/{line}/lineage";
pub const JOURNAL: &str = "/v1/accounts/{account_id}/journal";
pub const UPCOMING_INVOICE: &str = "/v1/accounts/{account_id}/upcoming-invoice";

pub use super::reports::{PROVIDERS as PROVIDER_REPORT, SETTLEMENT as SETTLEMENT_REPORT};

/// Every route of `router`, all `GET`.
pub const ROUTES: [&str; 10] = [
    HEALTHZ,
    ACCOUNT,
    ACCOUNT_AS_OF,
    INVOICES,
    INVOICE,
    LINE_LINEAGE,
    JOURNAL,
    UPCOMING_INVOICE,
    PROVIDER_REPORT,
    SETTLEMENT_REPORT,
];

use super::paging::MAX_PAGE;

/// The API's router.
pub fn router<S: StateStore>(state: Arc<ApiState<S>>, verifier: Arc<Verifier>) -> Router {
    let reads = Router::new()
        .route(ACCOUNT, get(account::<S>))
        .route(ACCOUNT_AS_OF, get(account_as_of::<S>))
        .route(INVOICES, get(invoices::<S>))
        .route(INVOICE, get(invoice::<S>))
        .route(LINE_LINEAGE, get(line_lineage::<S>))
        .route(JOURNAL, get(journal::<S>))
        .route(UPCOMING_INVOICE, get(upcoming_invoice::<S>))
        .route(PROVIDER_REPORT, get(super::reports::providers_report::<S>))
        .route(
            SETTLEMENT_REPORT,
            get(super::reports::settlement_report::<S>),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            verifier,
            require_reader,
        ))
        .with_state(state);
    Router::new()
        .route(HEALTHZ, get(|| async { Json(json!({"status": "ok"})) }))
        .merge(reads)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
}

pub fn error_body(message: &str) -> Json<Value> {
    Json(json!({ "error": message }))
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No such account, invoice, line or route: 404.
    #[error("{0}")]
    NotFound(String),
    /// A malformed parameter: 400.
    #[error("{0}")]
    BadRequest(String),
    /// More than a report may read per request (`api.report_max_accounts`): 422.
    #[error("{0}")]
    TooLarge(String),
    /// The store failed; the client may retry: 503.
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
    /// The answer needs a plan this instance's price book does not hold
    /// yet (still loading the plans topic): 503.
    #[error("{0}")]
    PriceBook(String),
    /// A stored record does not parse: a bug or corruption, 500.
    #[error("stored record does not parse: {0}")]
    Corrupt(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Store(_) | ApiError::PriceBook(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(
                error = %crate::contracts::redact::redact_text(&self.to_string()),
                "API read failed"
            );
        }
        (status, error_body(&self.to_string())).into_response()
    }
}

type Reply = Result<Json<Value>, ApiError>;

async fn load_state<S: StateStore>(store: &S, account_id: &str) -> Result<AccountState, ApiError> {
    let stored = store
        .load_account(account_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no account {account_id:?}")))?;
    serde_json::from_slice(&stored.snapshot)
        .map_err(|e| ApiError::Corrupt(format!("snapshot of {account_id}: {e}")))
}

pub(super) fn parse_entry(
    account_id: &str,
    seq: u64,
    bytes: &[u8],
) -> Result<StoredJournalEntry, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Corrupt(format!("journal entry {account_id}/{seq}: {e}")))
}

/// Read the journal from seq `from`, in pages, while `f` asks for more.
async fn read_journal<S: StateStore>(
    store: &S,
    account_id: &str,
    mut from: u64,
    mut f: impl FnMut(StoredJournalEntry) -> bool,
) -> Result<(), ApiError> {
    loop {
        let page = store.read_journal(account_id, from, MAX_PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        from = last.seq + 1;
        for record in &page {
            if !f(parse_entry(account_id, record.seq, &record.bytes)?) {
                return Ok(());
            }
        }
    }
}

async fn account<S: StateStore>(
    State(api): State<Arc<ApiState<S>>>,
    Path(account_id): Path<String>,
) -> Reply {
    let st = load_state(&*api.store, &account_id).await?;
    let draft = if st.finished {
        None
    } else {
        let engine = api.engine.read().unwrap_or_else(|e| e.into_inner());
        check_price_book(&engine, &st)?;
        Some(engine.draft(&st))
    };
    Ok(Json(json!(account_view(&st, draft))))
}

/// Refuse to price an account whose plans this instance's price book does
/// not hold (yet).
fn check_price_book(engine: &Engine, st: &AccountState) -> Result<(), ApiError> {
    let needed = std::iter::once(st.plan_id.as_str())
        .chain(st.pending_plan.as_ref().map(|(p, _)| p.as_str()))
        .chain(st.open.iter().map(|u| u.plan_id.as_str()));
    for plan_id in needed {
        if engine.plans.get(plan_id).is_none() {
            return Err(ApiError::PriceBook(format!(
                "plan {plan_id:?} is not in this instance's price book (yet): the draft cannot be priced"
            )));
        }
    }
    Ok(())
}

/// The upcoming invoice in its JSON shape: the invoice document, both
/// parts of `credit_applied`, the discount total, and when it was worked out.
pub fn upcoming_json(st: &AccountState, inv: &IssuedInvoice, at: Timestamp) -> Value {
    let c = st.currency;
    let discount = crate::engine::money::Minor::saturating_sum(
        inv.lines
            .iter()
            .filter(|l| l.kind == crate::engine::events::LineKind::Discount)
            .map(|l| l.amount.saturating_neg()),
    );
    let mut v = rendered(inv, c);
    if let Value::Object(map) = &mut v {
        map.insert("status".into(), json!("upcoming"));
        map.insert("interim".into(), json!(inv.interim));
        map.insert("preview_at".into(), json!(time(at)));
        map.insert("discount".into(), json!(c.format(discount)));
        map.insert(
            "credit_applied_paid".into(),
            json!(c.format(inv.credit_applied_paid())),
        );
        map.insert(
            "credit_applied_promotional".into(),
            json!(c.format(inv.credit_applied_promotional)),
        );
    }
    v
}

#[derive(Deserialize)]
struct UpcomingQuery {
    at: Option<String>,
}

/// `GET …/upcoming-invoice`: the invoice the account's current period
/// will be issued as if no further input arrives (`Engine::preview`: the
/// engine's own close, on a copy of the state; nothing is written). `at`
/// (RFC 3339) is the instant to preview from; by default the account's
/// processing clock, the instant its snapshot stands at.
async fn upcoming_invoice<S: StateStore>(
    State(api): State<Arc<ApiState<S>>>,
    Path(account_id): Path<String>,
    Query(q): Query<UpcomingQuery>,
) -> Reply {
    let st = load_state(&*api.store, &account_id).await?;
    let at = match q.at.as_deref() {
        None => st.clock,
        Some(text) => Timestamp::parse_rfc3339(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`at` = {text:?} is not an RFC 3339 instant such as 2026-03-15T00:00:00Z"
            ))
        })?,
    };
    let engine = api.engine.read().unwrap_or_else(|e| e.into_inner());
    check_price_book(&engine, &st)?;
    let inv = engine.preview(&st, at.max(st.clock)).ok_or_else(|| {
        ApiError::NotFound(format!(
            "account {account_id:?} has issued its final invoice: nothing is upcoming"
        ))
    })?;
    Ok(Json(upcoming_json(&st, &inv, at.max(st.clock))))
}

#[derive(Deserialize)]
struct AsOfQuery {
    at: Option<String>,
}

async fn account_as_of<S: StateStore>(
    State(api): State<Arc<ApiState<S>>>,
    Path(account_id): Path<String>,
    Query(q): Query<AsOfQuery>,
) -> Reply {
    let text = q.at.ok_or_else(|| {
        ApiError::BadRequest("query parameter `at` (RFC 3339) is required".into())
    })?;
    let at = Timestamp::parse_rfc3339(&text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "`at` = {text:?} is not an RFC 3339 instant such as 2026-03-15T00:00:00Z"
        ))
    })?;
    let mut projection: Option<Projection> = None;
    let mut bad_start = None;
    read_journal(&*api.store, &account_id, 1, |stored| {
        if stored.entry.at > at {
            return false;
        }
        match projection.as_mut() {
            Some(p) => p.apply(&stored.entry),
            None => match Projection::open(&stored.entry) {
                Some(p) => projection = Some(p),
                None => {
                    bad_start = Some(stored.entry.seq);
                    return false;
                }
            },
        }
        true
    })
    .await?;
    if let Some(seq) = bad_start {
        return Err(ApiError::Corrupt(format!(
            "journal of {account_id} starts at seq {seq} without AccountOpened"
        )));
    }
    match projection {
        Some(p) => Ok(Json(json!(p.view(at)))),
        None => {
            // Tell "never existed" from "not yet open at that instant".
            load_state(&*api.store, &account_id).await?;
            Err(ApiError::NotFound(format!(
                "account {account_id:?} was not open at {}",
                time(at)
            )))
        }
    }
}

fn parse_invoice(account_id: &str, bytes: &[u8]) -> Result<IssuedInvoice, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Corrupt(format!("invoice of {account_id}: {e}")))
}

/// An issued invoice as the API shows it: the document plus where its
/// collection stands (from the account's snapshot).
fn invoice_json(st: &AccountState, inv: &IssuedInvoice, with_lines: bool) -> Value {
    let c = st.currency;
    let open = st.invoices.iter().find(|o| o.invoice_id == inv.invoice_id);
    let (status, paid, remaining) = match open {
        Some(o) if o.overdue => ("overdue", o.paid, o.remaining()),
        Some(o) => ("open", o.paid, o.remaining()),
        None => ("paid", inv.amount_due, crate::engine::money::Minor::ZERO),
    };
    let mut v = rendered(inv, c);
    if let Value::Object(map) = &mut v {
        if !with_lines {
            map.remove("lines");
        }
        // Always both parts of `credit_applied` (the stored invoice leaves
        // out a zero promotional part).
        map.insert(
            "credit_applied_paid".into(),
            json!(c.format(inv.credit_applied_paid())),
        );
        map.insert(
            "credit_applied_promotional".into(),
            json!(c.format(inv.credit_applied_promotional)),
        );
        // Always (the stored invoice leaves out `false`).
        map.insert("interim".into(), json!(inv.interim));
        map.insert("status".into(), json!(status));
        map.insert("amount_paid".into(), json!(c.format(paid)));
        map.insert("remaining".into(), json!(c.format(remaining)));
    }
    v
}

/// A page of an account's issued invoices, in invoice id order (ids grow
/// with each invoice, so a new one lands after every cursor: the order is
/// stable while pages are read). The cursor is the last id shown.
async fn invoices<S: StateStore>(
    State(api): State<Arc<ApiState<S>>>,
    Path(account_id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Reply {
    let limit = parse_limit(q.limit.as_deref())?;
    let listing = ["invoices", account_id.as_str()];
    let after: Option<String> = q
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c, &listing))
        .transpose()?;
    let st = load_state(&*api.store, &account_id).await?;
    let mut records = api.store.invoices(&account_id).await?;
    records.sort_unstable_by(|a, b| a.invoice_id.cmp(&b.invoice_id));
    let start = after.map_or(0, |a| records.partition_point(|r| r.invoice_id <= a));
    let page = &records[start..(start + limit).min(records.len())];
    let mut list = Vec::with_capacity(page.len());
    for r in page {
        list.push(invoice_json(
            &st,
            &parse_invoice(&account_id, &r.bytes)?,
            false,
        ));
    }
    let next = page
        .last()
        .filter(|_| start + page.len() < records.len())
        .map(|r| encode_cursor(&listing, &r.invoice_id));
    Ok(Json(json!({
        "account_id": account_id,
        "draft_invoice_id": (!st.finished).then_some(&st.draft_invoice_id),
        "invoices": list,
        "next": next,
    })))
}

async fn load_invoice<S: StateStore>(
    store: &S,
    account_id: &str,
    invoice_id: &str,
) -> Result<(AccountState, IssuedInvoice), ApiError> {
    let st = load_state(store, account_id).await?;
    let record = store
        .invoice(account_id, invoice_id)
        .await?
        .ok_or_else(|| {
            let hint = if !st.finished && st.draft_invoice_id == invoice_id {
                " (it is the open draft: see the account's state)"
            } else {
                ""
            };
            ApiError::NotFound(format!(
                "no issued invoice {invoice_id:?} for account {account_id:?}{hint}"
            ))
        })?;
    let inv = parse_invoice(account_id, &record.bytes)?;
    Ok((st, inv))
}

async fn invoice<S: StateStore>(
    State(api): State<Arc<ApiState<S>>>,
    Path((account_id, invoice_id)): Path<(String, String)>,
) -> Reply {
    let (st, inv) = load_invoice(&*api.store, &account_id, &invoice_id).await?;
    Ok(Json(invoice_json(&st, &inv, true)))
}

/// Where a page of a lineage stopped: after journal entry `seq`, with the
/// tracer's state there and the quantity traced so far.
#[derive(Serialize, Deserialize)]
struct LineageCursor {
    seq: u64,
    tracer: TracerState,
    traced: Option<rust_decimal::Decimal>,
}

/// A page of the inputs behind one line, in journal order. The journal is
/// read from where the previous page stopped (the cursor carries the
/// tracer's state) until the page is full and one more input is seen, or
/// the invoice's issue entry.
async fn line_lineage<S: StateStore>(
    State(api): State<Arc<ApiState<S>>>,
    Path((account_id, invoice_id, line)): Path<(String, String, String)>,
    Query(q): Query<PageQuery>,
) -> Reply {
    let (st, inv) = load_invoice(&*api.store, &account_id, &invoice_id).await?;
    let index: usize = line
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("line {line:?} is not a line index")))?;
    let mut tracer = Tracer::new(&inv, index).ok_or_else(|| {
        ApiError::NotFound(format!(
            "invoice {invoice_id:?} has {} lines, no line {index}",
            inv.lines.len()
        ))
    })?;
    if !additive(&st, &inv.lines[index]) {
        tracer.whole_period();
    }
    let limit = parse_limit(q.limit.as_deref())?;
    let line_index = index.to_string();
    let listing = [
        "lineage",
        account_id.as_str(),
        invoice_id.as_str(),
        line_index.as_str(),
    ];
    let resume: Option<LineageCursor> = q
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c, &listing))
        .transpose()?;
    let (from, traced_before) = match resume {
        Some(c) => {
            tracer.resume(c.tracer);
            (c.seq.saturating_add(1), c.traced)
        }
        None => (1, None),
    };
    // (seq, tracer state) just after the page's last input.
    let mut page_end: Option<(u64, TracerState)> = None;
    read_journal(&*api.store, &account_id, from, |stored| {
        tracer.see(&stored);
        if tracer.inputs.len() > limit {
            return false;
        }
        if tracer.inputs.len() == limit && page_end.is_none() {
            page_end = Some((stored.entry.seq, tracer.state()));
        }
        !tracer.done
    })
    .await?;
    let more = tracer.inputs.len() > limit;
    tracer.inputs.truncate(limit);
    let traced = tracer
        .inputs
        .iter()
        .filter_map(|i| i.quantity.as_deref()?.parse::<rust_decimal::Decimal>().ok())
        .chain(traced_before)
        .try_fold(None, |sum: Option<rust_decimal::Decimal>, q| {
            sum.map_or(Some(q), |s| s.checked_add(q)).map(Some)
        })
        .ok_or_else(|| {
            ApiError::Corrupt(format!(
                "the quantities behind line {index} of {invoice_id} overflow"
            ))
        })?;
    let next = page_end.filter(|_| more).map(|(seq, tracer)| {
        encode_cursor(
            &listing,
            LineageCursor {
                seq,
                tracer,
                traced,
            },
        )
    });
    Ok(Json(json!({
        "account_id": account_id,
        "invoice_id": invoice_id,
        "line_index": index,
        "line": rendered(&inv.lines[index], st.currency),
        "inputs": tracer.inputs,
        "traced_quantity": traced.map(|q| q.to_string()),
        "difference": tracer.difference(),
        "note": difference_note(&tracer),
        "next": next,
    })))
}

/// Whether the line's metric adds up event by event (`sum`, `count`), as
/// far as the account still knows its period (the open periods, the
/// issued ones kept for late usage); assumed when it no longer does.
fn additive(st: &AccountState, line: &crate::engine::events::Line) -> bool {
    use crate::engine::aggregation::Aggregation;
    let Some(metric) = line.metric.as_deref() else {
        return true;
    };
    let p = line.for_period;
    let open = st
        .open
        .iter()
        .filter(|u| u.period == p)
        .flat_map(|u| &u.metrics)
        .find(|m| m.metric.as_str() == metric)
        .map(|m| m.aggregation);
    let closed = || {
        st.closed
            .iter()
            .filter(|c| c.period == p)
            .flat_map(|c| &c.aggregates)
            .find(|a| a.metric == metric)
            .map(|a| a.aggregation)
    };
    open.or_else(closed)
        .is_none_or(|a| matches!(a, Aggregation::Sum | Aggregation::Count))
}

/// What a difference line's lineage stands for (`None` for another line).
fn difference_note(tracer: &Tracer) -> Option<&'static str> {
    if !tracer.difference() {
        None
    } else if tracer.traces_whole_period() {
        Some("a difference line: its quantity is the period's total less what the period's earlier invoices billed; its metric's aggregation does not add up event by event, so the inputs are the period's whole usage, the earlier invoices' included")
    } else {
        Some("a difference line: its quantity is the period's total less what the period's earlier invoices billed; the inputs are the usage applied since the period's previous invoice")
    }
}

#[derive(Deserialize)]
struct JournalQuery {
    from_seq: Option<u64>,
    limit: Option<String>,
}

async fn journal<S: StateStore>(
    State(api): State<Arc<ApiState<S>>>,
    Path(account_id): Path<String>,
    Query(q): Query<JournalQuery>,
) -> Reply {
    let from = q.from_seq.unwrap_or(1).max(1);
    let limit = parse_limit(q.limit.as_deref())?;
    let st = load_state(&*api.store, &account_id).await?;
    let page = api.store.read_journal(&account_id, from, limit).await?;
    let mut entries = Vec::with_capacity(page.len());
    for r in &page {
        entries.push(rendered(
            &parse_entry(&account_id, r.seq, &r.bytes)?,
            st.currency,
        ));
    }
    let next = page
        .last()
        .map(|r| r.seq + 1)
        .filter(|n| page.len() == limit && *n <= st.journal_seq);
    Ok(Json(json!({
        "account_id": account_id,
        "from_seq": from,
        "entries": entries,
        "next_from_seq": next,
    })))
}
