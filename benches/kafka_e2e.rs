//! End-to-end benchmark of `billstream run`'s loop against a broker:
//! `scripts/bench-e2e.sh` starts tansu and runs this
//! (`cargo bench --bench kafka_e2e`, needs BILLSTREAM_BENCH_BROKERS).
//!
//! 1. Throughput: ACCOUNTS account openings and USAGE usage events are
//!    produced; then, on the same topics and broker, in the same run:
//!    raw consumption with an rdkafka `StreamConsumer` (no processing), and
//!    the full loop consume → fold → persist → produce → commit. Each is
//!    timed from its first record to its last; the ratio is the figure.
//!    Repeated ROUNDS times, each round with fresh groups and store.
//! 2. Latency: the loop keeps running while usage is produced at half the
//!    measured loop throughput for LATENCY_SECS; produce-to-persisted
//!    latency (Kafka create time to the state write) p50/p99.
//! 3. Restart: a new loop on the store with ACCOUNTS accounts in it, in the
//!    same group: time until its partitions are assigned and their
//!    accounts loaded, and until a record produced before it started is
//!    persisted. The broker's wait for a killed member's session to expire
//!    comes on top and is `kafka.session_timeout`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use billstream::config::Settings;
use billstream::contracts::Catalog;
use billstream::engine::events::*;
use billstream::engine::money::Currency;
use billstream::engine::plan::{Charge, Model, Plan};
use billstream::engine::time::{Anchor, Timestamp};
use billstream::runtime::service::{serve, Progress};
use billstream::store::EmbeddedStore;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;

const PARTITIONS: i32 = 4;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings(brokers: &str, prefix: &str, group: &str) -> Settings {
    let vars = [
        ("BILLSTREAM__KAFKA__BROKERS", brokers),
        ("BILLSTREAM__KAFKA__TOPIC_PREFIX", prefix),
        ("BILLSTREAM__KAFKA__GROUP_ID", group),
        ("BILLSTREAM__KAFKA__SESSION_TIMEOUT", "30s"),
        ("BILLSTREAM__BATCH__MAX_RECORDS", "20000"),
        ("BILLSTREAM__BATCH__MAX_WAIT", "100ms"),
    ];
    Settings::from_layers(
        None,
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .expect("bench settings")
}

struct Producer {
    producer: FutureProducer,
    prefix: String,
}

impl Producer {
    async fn send(&self, records: &[(&str, String, Vec<u8>)]) {
        for chunk in records.chunks(10_000) {
            let mut pending = Vec::with_capacity(chunk.len());
            for (topic, key, payload) in chunk {
                let topic = format!("{}{topic}", self.prefix);
                let r = FutureRecord::to(&topic).key(key).payload(payload);
                pending.push(
                    self.producer
                        .send_result(r)
                        .map_err(|(e, _)| e)
                        .expect("queue"),
                );
            }
            for p in pending {
                p.await.expect("delivery").map_err(|(e, _)| e).expect("ack");
            }
        }
    }
}

fn usage(
    catalog: &Catalog,
    accounts: usize,
    from: usize,
    n: usize,
) -> Vec<(&'static str, String, Vec<u8>)> {
    let now = Timestamp::from_datetime(chrono::Utc::now());
    (from..from + n)
        .map(|i| {
            let a = (i * 7919) % accounts;
            let u = Input::Usage(UsageRecorded {
                event_id: format!("u-{i}"),
                account_id: format!("acct-{a}"),
                subject: format!("app-{}", i % 5),
                metric: "m".into(),
                quantity: Decimal::ONE,
                occurred_at: Timestamp(now.0 - 60_000_000),
                environment: "prod".into(),
                attributes: Default::default(),
            });
            (
                "billing.usage.v1",
                format!("acct-{a}"),
                catalog.encode_input(&u).unwrap(),
            )
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Time from the first to the last of `n` records of the input topics,
/// consumed raw by a fresh group.
async fn raw_consume(brokers: &str, prefix: &str, group: &str, n: u64) -> f64 {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .unwrap();
    let topics: Vec<String> = [
        "billing.usage.v1",
        "billing.payments.v1",
        "billing.accounts.v1",
    ]
    .iter()
    .map(|t| format!("{prefix}{t}"))
    .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).unwrap();
    let mut seen = 0;
    let mut first = None;
    while seen < n {
        let _m = consumer.recv().await.expect("consume");
        first.get_or_insert_with(Instant::now);
        seen += 1;
    }
    first.unwrap().elapsed().as_secs_f64()
}

/// Wait until the running loop has done `n` records; seconds from its
/// first record to its last.
async fn until_done(progress: &Progress, n: u64) -> f64 {
    let mut first = None;
    loop {
        let done = progress.records_done();
        if done > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if done >= n {
            return first.unwrap().elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    let Ok(brokers) = std::env::var("BILLSTREAM_BENCH_BROKERS") else {
        eprintln!("kafka_e2e bench: BILLSTREAM_BENCH_BROKERS is not set; run scripts/bench-e2e.sh");
        return;
    };
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let accounts = env("BENCH_ACCOUNTS", 100_000);
    let events = env("BENCH_USAGE", 200_000);
    let rounds = env("BENCH_ROUNDS", 3);
    let latency_secs = env("BENCH_LATENCY_SECS", 10);
    let catalog = Catalog::shared().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tag = std::process::id();
    let prefix = format!("bench{tag}.");
    let s = settings(&brokers, &prefix, "x");
    assert!(billstream::cli::topics::create_all(&s, PARTITIONS, 1).unwrap());
    rt.block_on(async {
        let producer = Producer {
            producer: ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "20")
                .create()
                .unwrap(),
            prefix: prefix.clone(),
        };
        let plan = Plan {
            plan_id: "p".into(),
            currency: Currency::from_code("EUR").unwrap(),
            recurring_fee: Decimal::ZERO,
            minimum_spend: Decimal::ZERO,
            charges: vec![Charge {
                metric: "m".into(),
                model: Model::PerUnit,
                unit_price: Decimal::from_str("0.01").unwrap(),
                package_size: None,
                free_units: Decimal::ZERO,
                tiers: vec![],
            }],
        };
        producer.send(&[("billing.plans.v1", "p".into(), catalog.encode_plan(&plan).unwrap())]).await;
        let month = chrono::Utc::now().format("%Y-%m").to_string();
        let opened = Timestamp::parse_rfc3339(&format!("{month}-01T00:00:00Z")).unwrap();
        let opens: Vec<_> = (0..accounts)
            .map(|a| {
                let open = Input::Account(AccountCommand {
                    event_id: format!("open-{a}"),
                    account_id: format!("acct-{a}"),
                    occurred_at: opened,
                    environment: Some("prod".into()),
                    kind: AccountKind::AccountOpened {
                        plan_id: "p".into(),
                        currency: "EUR".into(),
                        timezone: "UTC".into(),
                        tax_rate: Decimal::ZERO,
                        billing_anchor: Anchor::Calendar,
                    },
                });
                ("billing.accounts.v1", format!("acct-{a}"), catalog.encode_input(&open).unwrap())
            })
            .collect();
        let t = Instant::now();
        producer.send(&opens).await;
        producer.send(&usage(catalog, accounts, 0, events)).await;
        let total = (accounts + events) as u64;
        println!(
            "produced {total} records ({accounts} account openings, {events} usage) in {:.1} s",
            t.elapsed().as_secs_f64()
        );

        let dir = tempfile::tempdir().unwrap();
        let (mut raw_rates, mut loop_rates, mut ratios) = (vec![], vec![], vec![]);
        let mut kept = None;
        for round in 0..rounds {
            let raw = raw_consume(&brokers, &prefix, &format!("raw-{tag}-{round}"), total).await;
            let group = format!("loop-{tag}-{round}");
            let store = Arc::new(EmbeddedStore::open(&dir.path().join(format!("s{round}"))).unwrap());
            let progress = Arc::new(Progress::default());
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let s = settings(&brokers, &prefix, &group);
            let (p, st) = (progress.clone(), store.clone());
            let handle = tokio::spawn(async move {
                serve(&s, st, "bench", p, async {
                    let _ = stop_rx.await;
                })
                .await
            });
            let took = until_done(&progress, total).await;
            let (raw_rate, loop_rate) = (total as f64 / raw, total as f64 / took);
            println!(
                "round {}: raw consume {:.0} records/s, billstream loop {:.0} records/s, ratio {:.2}",
                round + 1,
                raw_rate,
                loop_rate,
                loop_rate / raw_rate
            );
            raw_rates.push(raw_rate);
            loop_rates.push(loop_rate);
            ratios.push(loop_rate / raw_rate);
            if round + 1 == rounds {
                kept = Some((handle, stop_tx, progress, store, group));
            } else {
                let _ = stop_tx.send(());
                handle.await.unwrap().unwrap();
            }
        }
        println!(
            "throughput (median of {rounds}): raw {:.0}/s, loop {:.0}/s, ratio {:.2}",
            median(raw_rates),
            median(loop_rates.clone()),
            median(ratios)
        );

        // Latency at half the loop's throughput.
        let (handle, stop_tx, progress, store, group) = kept.unwrap();
        let rate = (median(loop_rates) / 2.0).max(100.0);
        progress.latency.lock().unwrap().clear();
        let n = (rate * latency_secs as f64) as usize;
        let records = usage(catalog, accounts, events, n);
        let start = Instant::now();
        let per_tick = (rate / 100.0).ceil() as usize;
        for (i, chunk) in records.chunks(per_tick).enumerate() {
            let due = start + Duration::from_millis(10 * i as u64);
            tokio::time::sleep_until(due.into()).await;
            producer.send(chunk).await;
        }
        until_done(&progress, total + n as u64).await;
        {
            let h = progress.latency.lock().unwrap();
            println!(
                "latency at {rate:.0} records/s for {latency_secs} s: {} records, p50 {} ms, p99 {} ms (produce → state persisted)",
                h.count(),
                h.quantile(0.5).unwrap_or(0),
                h.quantile(0.99).unwrap_or(0)
            );
        }
        let _ = stop_tx.send(());
        handle.await.unwrap().unwrap();

        // Restart with ACCOUNTS accounts in the store.
        producer.send(&usage(catalog, accounts, events + n, PARTITIONS as usize * 4)).await;
        let progress = Arc::new(Progress::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let s = settings(&brokers, &prefix, &group);
        let p = progress.clone();
        let start = Instant::now();
        let handle = tokio::spawn(async move {
            serve(&s, store, "bench-restart", p, async {
                let _ = stop_rx.await;
            })
            .await
        });
        while progress.partitions_owned.load(std::sync::atomic::Ordering::Relaxed) < PARTITIONS as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let loaded = start.elapsed();
        while progress.records_done() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!(
            "restart with {accounts} accounts in the store: partitions assigned and accounts loaded after {:.2} s, first record persisted after {:.2} s (plus the broker's session expiry of a killed member)",
            loaded.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        let _ = stop_tx.send(());
        handle.await.unwrap().unwrap();
    });
}
