//! The reports of `billstream report` under the read API:
//! `GET /v1/reports/providers` and `GET /v1/reports/settlement`, with
//! `month=YYYY-MM` or `day=YYYY-MM-DD` (at most one; none = the whole
//! journal). The figures are the `report` module's pure functions on the
//! journal of record, every account's, read from the state store; the
//! answer is what `billstream report --format json` prints (source
//! `state store`), or its CSV with `Accept: text/csv` or `format=csv`.
//! The header `x-billstream-reconciles` says whether every check held.
//!
//! Cost: a request reads every account's whole journal (the settlement
//! report opens a month with the balances of the months before it), so
//! it is a scan of the store; with more accounts than
//! `api.report_max_accounts` it is refused (422) before any journal is
//! read, pointing at `billstream report`, which reads the journal topic.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::paging::MAX_PAGE;
use super::routes::{parse_entry, ApiError, ApiState};
use crate::report::{providers, render, settlement, Journal, Window};
use crate::store::StateStore;

pub const PROVIDERS: &str = "/v1/reports/providers";
pub const SETTLEMENT: &str = "/v1/reports/settlement";

/// What the JSON answer names as the journal's source.
pub const SOURCE: &str = "state store";

/// Says whether every check of the report held: `true` or `false`.
pub const RECONCILES_HEADER: &str = "x-billstream-reconciles";

/// Every account's journal in the store, in seq order: what the report
/// functions take. Accounts without entries are left out. More than
/// `max` accounts is refused before a journal is read.
pub async fn stored_journal<S: StateStore>(store: &S, max: usize) -> Result<Journal, ApiError> {
    let ids = store.all_accounts(max.saturating_add(1)).await?;
    if ids.len() > max {
        return Err(ApiError::TooLarge(format!(
            "more than {max} account(s) (api.report_max_accounts): a report across them is not \
             made per request; run `billstream report --from topic`, or raise the setting"
        )));
    }
    let mut journal = Journal::new();
    for account_id in ids {
        let mut entries = Vec::new();
        let mut from = 1;
        loop {
            let page = store.read_journal(&account_id, from, MAX_PAGE).await?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for record in &page {
                entries.push(parse_entry(&account_id, record.seq, &record.bytes)?);
            }
        }
        if !entries.is_empty() {
            journal.insert(account_id, entries);
        }
    }
    Ok(journal)
}

#[derive(Deserialize)]
pub struct ReportQuery {
    month: Option<String>,
    day: Option<String>,
    format: Option<String>,
}

enum Format {
    Json,
    Csv,
}

impl ReportQuery {
    fn window(&self) -> Result<Window, ApiError> {
        Window::parse(self.month.as_deref(), self.day.as_deref()).map_err(|e| {
            ApiError::BadRequest(e.replace("--month", "`month`").replace("--day", "`day`"))
        })
    }

    /// `format=json|csv`, else by `Accept` (`text/csv`), else JSON.
    fn format(&self, headers: &HeaderMap) -> Result<Format, ApiError> {
        match self.format.as_deref() {
            Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some(other) => Err(ApiError::BadRequest(format!(
                "`format` = {other:?} is not \"json\" or \"csv\""
            ))),
            None => {
                let wants_csv = headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|t| t.split(';').next().unwrap_or("").trim() == "text/csv");
                Ok(if wants_csv { Format::Csv } else { Format::Json })
            }
        }
    }
}

/// The report in its format: `json` or `csv` of it, whichever is asked.
fn answer<R>(
    report: &R,
    format: Format,
    json: fn(&R, &str) -> serde_json::Value,
    csv: fn(&R) -> String,
    reconciles: bool,
) -> Response {
    let mut response = match format {
        Format::Json => Json(json(report, SOURCE)).into_response(),
        Format::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            csv(report),
        )
            .into_response(),
    };
    response.headers_mut().insert(
        RECONCILES_HEADER,
        HeaderValue::from_static(if reconciles { "true" } else { "false" }),
    );
    response
}

fn corrupt(e: crate::report::ReportError) -> ApiError {
    ApiError::Corrupt(format!("the journal cannot be reported: {e}"))
}

pub async fn providers_report<S: StateStore>(
    State(api): State<Arc<ApiState<S>>>,
    Query(q): Query<ReportQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let window = q.window()?;
    let format = q.format(&headers)?;
    let journal = stored_journal(&*api.store, api.report_max_accounts).await?;
    let r = providers(&journal, &window).map_err(corrupt)?;
    let reconciles = r.checks.iter().all(|c| c.ok);
    Ok(answer(
        &r,
        format,
        render::providers_json,
        render::providers_csv,
        reconciles,
    ))
}

pub async fn settlement_report<S: StateStore>(
    State(api): State<Arc<ApiState<S>>>,
    Query(q): Query<ReportQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let window = q.window()?;
    let format = q.format(&headers)?;
    let journal = stored_journal(&*api.store, api.report_max_accounts).await?;
    let r = settlement(&journal, &window).map_err(corrupt)?;
    let reconciles = r.checks.iter().all(|c| c.ok);
    Ok(answer(
        &r,
        format,
        render::settlement_json,
        render::settlement_csv,
        reconciles,
    ))
}
