//! Prometheus metrics: every name and label set in one place (STYLE §8:
//! `billstream_<noun>_<unit>[_total]`, labels from small fixed sets, never
//! an account id or an error text). The runtime updates them once per
//! batch, not per record; the store's operation counters are read from
//! `StoreStats` when scraped. `dashboards/` may query only these names (a
//! test checks).

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::contracts::{OutputRecord, OutputTopic};
use crate::store::{StoreOp, StoreStats};

/// Every metric family the code registers: name, type, labels and help
/// text; the dashboards test reads this list.
pub const METRICS: &[(&str, &str, &[&str], &str)] = &[
    (
        "billstream_records_consumed_total",
        "counter",
        &["topic"],
        "Input records consumed, by topic",
    ),
    (
        "billstream_records_processed_total",
        "counter",
        &["outcome"],
        "Input records by outcome (applied, duplicate, replay, rejected)",
    ),
    (
        "billstream_dead_letters_total",
        "counter",
        &["reason"],
        "Records sent to the dead-letter topic, by reason kind",
    ),
    (
        "billstream_batch_records",
        "histogram",
        &[],
        "Records per batch",
    ),
    (
        "billstream_batch_duration_seconds",
        "histogram",
        &["phase"],
        "Time per batch in each phase of the loop",
    ),
    (
        "billstream_persist_latency_seconds",
        "histogram",
        &[],
        "From a record's Kafka timestamp to its state being persisted",
    ),
    (
        "billstream_consumer_lag_records",
        "gauge",
        &["topic", "partition"],
        "Records behind the end of each input partition",
    ),
    (
        "billstream_partitions_owned",
        "gauge",
        &[],
        "Partitions this instance owns",
    ),
    (
        "billstream_ready",
        "gauge",
        &[],
        "1 once the plans table is loaded and partitions are assigned",
    ),
    (
        "billstream_store_operations_total",
        "counter",
        &["op", "outcome"],
        "State store operations, by kind and outcome",
    ),
    (
        "billstream_invoices_issued_total",
        "counter",
        &["currency"],
        "Invoices issued, by currency",
    ),
    (
        "billstream_invoiced_amount_total",
        "counter",
        &["currency"],
        "Total of issued invoices, by currency (in currency units; exact amounts are in the invoices topic)",
    ),
    (
        "billstream_charge_requests_total",
        "counter",
        &["attempt"],
        "Charge requests published, by attempt",
    ),
    (
        "billstream_payments_total",
        "counter",
        &["outcome"],
        "Payment results applied, by outcome",
    ),
    (
        "billstream_notifications_total",
        "counter",
        &["kind"],
        "Notifications published, by kind",
    ),
    (
        "billstream_timers_fired_total",
        "counter",
        &[],
        "Timer events produced (period closes, due dates, retries, rollups)",
    ),
    (
        "billstream_outputs_published_total",
        "counter",
        &["topic"],
        "Output records acknowledged by the broker, by topic",
    ),
    (
        "billstream_rebalances_total",
        "counter",
        &["change"],
        "Partition assignment changes, by change (assigned, revoked)",
    ),
];

/// The metrics of one running instance.
pub struct Metrics {
    registry: Registry,
    pub records_consumed: IntCounterVec,
    pub records_processed: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub batch_records: Histogram,
    pub batch_duration: HistogramVec,
    pub persist_latency: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub partitions_owned: IntGauge,
    pub ready: IntGauge,
    pub invoices_issued: IntCounterVec,
    pub invoiced_amount: prometheus::CounterVec,
    pub charge_requests: IntCounterVec,
    pub payments: IntCounterVec,
    pub notifications: IntCounterVec,
    pub timers_fired: IntCounter,
    pub outputs_published: IntCounterVec,
    pub rebalances: IntCounterVec,
}

fn spec(
    name: &str,
) -> &'static (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
) {
    METRICS
        .iter()
        .find(|(n, _, _, _)| *n == name)
        .expect("every metric is listed in METRICS")
}

fn help(name: &str) -> &'static str {
    spec(name).3
}

fn labels(name: &str) -> &'static [&'static str] {
    spec(name).2
}

fn counter_vec(registry: &Registry, name: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help(name)), labels(name)).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn histogram(registry: &Registry, name: &str, buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help(name)).buckets(buckets),
        labels(name),
    )
    .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("registered once");
    h
}

impl Metrics {
    /// All metrics registered in a fresh registry, with the store's
    /// operation counters read from `store` at each scrape.
    pub fn new(store: Option<Arc<dyn StoreStatsSource>>) -> Metrics {
        let registry = Registry::new();
        let seconds = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let gauge = |name: &str| {
            let g = IntGauge::new(name, help(name)).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "billstream_consumer_lag_records",
                help("billstream_consumer_lag_records"),
            ),
            labels("billstream_consumer_lag_records"),
        )
        .expect("valid metric");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("registered once");
        let invoiced_amount = prometheus::CounterVec::new(
            Opts::new(
                "billstream_invoiced_amount_total",
                help("billstream_invoiced_amount_total"),
            ),
            labels("billstream_invoiced_amount_total"),
        )
        .expect("valid metric");
        registry
            .register(Box::new(invoiced_amount.clone()))
            .expect("registered once");
        let timers_fired = IntCounter::new(
            "billstream_timers_fired_total",
            help("billstream_timers_fired_total"),
        )
        .expect("valid metric");
        registry
            .register(Box::new(timers_fired.clone()))
            .expect("registered once");
        if let Some(store) = store {
            registry
                .register(Box::new(StoreCollector::new(store)))
                .expect("registered once");
        }
        Metrics {
            records_consumed: counter_vec(&registry, "billstream_records_consumed_total"),
            records_processed: counter_vec(&registry, "billstream_records_processed_total"),
            dead_letters: counter_vec(&registry, "billstream_dead_letters_total"),
            batch_records: histogram(
                &registry,
                "billstream_batch_records",
                prometheus::exponential_buckets(1.0, 4.0, 10).expect("buckets"),
            )
            .with_label_values::<&str>(&[]),
            batch_duration: histogram(
                &registry,
                "billstream_batch_duration_seconds",
                seconds.clone(),
            ),
            persist_latency: histogram(&registry, "billstream_persist_latency_seconds", seconds)
                .with_label_values::<&str>(&[]),
            consumer_lag,
            partitions_owned: gauge("billstream_partitions_owned"),
            ready: gauge("billstream_ready"),
            invoices_issued: counter_vec(&registry, "billstream_invoices_issued_total"),
            invoiced_amount,
            charge_requests: counter_vec(&registry, "billstream_charge_requests_total"),
            payments: counter_vec(&registry, "billstream_payments_total"),
            notifications: counter_vec(&registry, "billstream_notifications_total"),
            timers_fired,
            outputs_published: counter_vec(&registry, "billstream_outputs_published_total"),
            rebalances: counter_vec(&registry, "billstream_rebalances_total"),
            registry,
        }
    }

    /// Count what a batch's acknowledged outputs say about billing.
    pub fn published(&self, outputs: &[OutputRecord]) {
        for r in outputs {
            self.outputs_published
                .with_label_values(&[r.topic.default_name()])
                .inc();
            match (r.topic, r.kind) {
                (OutputTopic::Invoices, "InvoiceIssued") => {
                    let currency = field(r, "currency");
                    self.invoices_issued.with_label_values(&[currency]).inc();
                    if let Some(total) = r.json.get("total").and_then(amount) {
                        self.invoiced_amount
                            .with_label_values(&[currency])
                            .inc_by(total);
                    }
                }
                (OutputTopic::Charges, _) => {
                    let attempt = r
                        .json
                        .get("attempt")
                        .and_then(serde_json::Value::as_u64)
                        .map_or("other", |a| match a {
                            1 => "1",
                            2 => "2",
                            3 => "3",
                            4 => "4",
                            _ => "5+",
                        });
                    self.charge_requests.with_label_values(&[attempt]).inc();
                }
                (OutputTopic::Notifications, _) => {
                    self.notifications
                        .with_label_values(&[field(r, "kind")])
                        .inc();
                }
                (OutputTopic::Dlq, _) => {
                    self.dead_letters
                        .with_label_values(&[field(r, "error_kind")])
                        .inc();
                }
                (OutputTopic::Journal, _) => {
                    let outcome = match r.json.get("type").and_then(serde_json::Value::as_str) {
                        Some("payment_succeeded") => Some("succeeded"),
                        Some("payment_failed") => Some("failed"),
                        Some("credit_refunded") => Some("refunded"),
                        Some("bank_transfer_applied") => Some("bank_transfer"),
                        Some("credit_added") => Some("top_up"),
                        _ => None,
                    };
                    if let Some(outcome) = outcome {
                        self.payments.with_label_values(&[outcome]).inc();
                    }
                }
                _ => {}
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Bind `listen` (failing with the field name) and serve `/metrics`,
/// `/healthz` (the process answers) and `/readyz` (200 once the plans
/// table is loaded and partitions are assigned, 503 before) in a task of
/// its own. Returns the bound address (`listen` may ask for port 0).
pub async fn serve_http(
    listen: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    progress: Arc<crate::runtime::service::Progress>,
) -> anyhow::Result<std::net::SocketAddr> {
    use anyhow::Context;
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("config field `metrics.listen`: cannot bind {listen}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let progress = progress.clone();
                async move {
                    if progress.ready.load(std::sync::atomic::Ordering::Relaxed) == 1 {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: plans loading or no partitions assigned\n",
                        )
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// A label value from a small fixed set: anything that is not a short
/// lowercase identifier is "other", so a bad value cannot explode the
/// label set.
fn field<'a>(r: &'a OutputRecord, name: &str) -> &'a str {
    match r.json.get(name).and_then(serde_json::Value::as_str) {
        Some(v)
            if v.len() <= 40
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') =>
        {
            v
        }
        _ => "other",
    }
}

/// A decimal string as a float, for a metric only (exact amounts live in
/// the invoices).
fn amount(v: &serde_json::Value) -> Option<f64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_f64())
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Where the store's counters come from at scrape time.
pub trait StoreStatsSource: Send + Sync {
    fn store_stats(&self) -> &StoreStats;
}

impl<S: crate::store::StateStore> StoreStatsSource for S {
    fn store_stats(&self) -> &StoreStats {
        self.stats()
    }
}

/// Exports `StoreStats` as `billstream_store_operations_total{op,outcome}`.
struct StoreCollector {
    store: Arc<dyn StoreStatsSource>,
    desc: Desc,
}

impl StoreCollector {
    fn new(store: Arc<dyn StoreStatsSource>) -> StoreCollector {
        let name = "billstream_store_operations_total";
        let desc = Desc::new(
            name.into(),
            help(name).into(),
            labels(name).iter().map(|l| l.to_string()).collect(),
            Default::default(),
        )
        .expect("valid metric");
        StoreCollector { store, desc }
    }
}

impl Collector for StoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let counter = IntCounterVec::new(
            Opts::new(
                "billstream_store_operations_total",
                help("billstream_store_operations_total"),
            ),
            labels("billstream_store_operations_total"),
        )
        .expect("valid metric");
        let stats = self.store.store_stats();
        for op in StoreOp::ALL {
            let errors = stats.errors(op);
            let ok = stats.get(op).saturating_sub(errors);
            counter.with_label_values(&[op.name(), "ok"]).inc_by(ok);
            counter
                .with_label_values(&[op.name(), "error"])
                .inc_by(errors);
        }
        counter.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_metric_is_registered_and_follows_the_naming_rule() {
        let store = crate::store::EmbeddedStore::open(tempfile::tempdir().unwrap().path()).ok();
        let metrics = Metrics::new(store.map(|s| Arc::new(s) as Arc<dyn StoreStatsSource>));
        // Touch every vector so it appears in the output.
        metrics
            .records_consumed
            .with_label_values(&["billing.usage.v1"])
            .inc();
        metrics
            .records_processed
            .with_label_values(&["applied"])
            .inc();
        metrics.dead_letters.with_label_values(&["bad_magic"]).inc();
        metrics
            .batch_duration
            .with_label_values(&["fold"])
            .observe(0.01);
        metrics
            .consumer_lag
            .with_label_values(&["billing.usage.v1", "0"])
            .set(3);
        metrics.invoices_issued.with_label_values(&["EUR"]).inc();
        metrics
            .invoiced_amount
            .with_label_values(&["EUR"])
            .inc_by(33.0);
        metrics.charge_requests.with_label_values(&["1"]).inc();
        metrics.payments.with_label_values(&["succeeded"]).inc();
        metrics
            .notifications
            .with_label_values(&["invoice_issued"])
            .inc();
        metrics
            .outputs_published
            .with_label_values(&["billing.journal.v1"])
            .inc();
        metrics.rebalances.with_label_values(&["assigned"]).inc();
        let text = metrics.render();
        for (name, kind, _, help) in METRICS {
            assert!(!help.is_empty(), "{name} has help text");
            assert!(
                text.contains(&format!("# TYPE {name} {kind}")),
                "{name} ({kind}) missing from:\n{text}"
            );
            assert!(name.starts_with("billstream_"), "{name}");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            assert_eq!(
                *kind == "counter",
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
        }
        assert!(text.contains("billstream_store_operations_total{op=\"commit\",outcome=\"ok\"} 0"));
    }
}
