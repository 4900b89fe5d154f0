//! End-to-end benchmark of `billstream run`'s loop against a broker:
//! `scripts/bench-e2e.sh` starts tansu and runs this
//! (`cargo bench --bench kafka_e2e`, needs BILLSTREAM_BENCH_BROKERS).
//!
//! 1. Throughput: ACCOUNTS account openings and USAGE usage events are
//!    produced; then, on the same topics and broker, in the same run:
//!    raw consumption with an rdkafka `StreamConsumer` (no processing), and
//!    the full loop consume → fold → persist → produce → commit. Each is
//!    timed from its first record to its last; the ratio is the figure.
//!    The loop's last record is done when it is folded and the loop has
//!    stopped: the stop writes, publishes and commits everything the
//!    checkpoint still held, so the time covers all the work.
//!    Repeated ROUNDS times, each round with fresh groups and store.
//! 2. Latency: a loop in the same group and store runs while usage is
//!    produced at half the measured loop throughput for LATENCY_SECS;
//!    produce-to-persisted latency (Kafka create time to the state write,
//!    including the wait for the account's checkpoint) p50/p99.
//! 3. Restart: a new loop on the store with ACCOUNTS accounts in it, in the
//!    same group with the same `kafka.group_instance_id` as the loop before
//!    (static membership: a static member leaves no group when it stops,
//!    so to the broker this is a restart after a crash): time until its
//!    partitions are assigned and their accounts loaded, and until it folds
//!    a record produced before it started (processing resumed). Without
//!    static membership the broker's wait for a killed member's session to
//!    expire comes on top (`kafka.session_timeout`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use billstream::config::Settings;
use billstream::config::{BasicAuth, Replication, ScyllaSettings};
use billstream::contracts::Catalog;
use billstream::engine::events::*;
use billstream::engine::money::Currency;
use billstream::engine::plan::{Charge, Model, Plan};
use billstream::engine::time::{Anchor, Timestamp};
use billstream::runtime::service::{serve, Phase, Progress};
use billstream::runtime::ProcessorStats;
use billstream::source::kafka::KafkaSource;
use billstream::store::{EmbeddedStore, ScyllaStore, StateStore};
use billstream::telemetry::{Metrics, StoreStatsSource};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
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
    ];
    // Everything else is the shipped default, unless overridden the usual
    // way (e.g. BILLSTREAM__BATCH__MAX_WAIT=100ms in the environment).
    let overrides = std::env::vars().filter(|(k, _)| k.starts_with("BILLSTREAM__"));
    let mut s = Settings::from_layers(
        None,
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(overrides),
    )
    .expect("bench settings");
    // BENCH_KAFKA_PROPERTIES="linger.ms=20;compression.type=lz4": extra
    // librdkafka properties for the loop's clients, to compare settings.
    if let Ok(extra) = std::env::var("BENCH_KAFKA_PROPERTIES") {
        for kv in extra.split(';').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').expect("BENCH_KAFKA_PROPERTIES: k=v;k=v");
            s.kafka.properties.insert(k.to_string(), v.to_string());
        }
    }
    s
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

/// NaN when nothing was measured (`BENCH_VARIANTS=0`).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Time from the first to the last of `n` records of the usage topic,
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
    consumer
        .subscribe(&[&format!("{prefix}billing.usage.v1")])
        .unwrap();
    let mut seen = 0;
    let mut first = None;
    while seen < n {
        let _m = consumer.recv().await.expect("consume");
        first.get_or_insert_with(Instant::now);
        seen += 1;
    }
    first.unwrap().elapsed().as_secs_f64()
}

/// The loop's own source (`KafkaSource` with the loop's settings) in a
/// fresh group, taking batches as the loop takes them and doing nothing
/// with them, until `n` usage records came; seconds from the first record.
/// Tells the source's share of the loop's time from the rest.
async fn source_only(s: &Settings, n: u64) -> f64 {
    let mut source = KafkaSource::connect(s).expect("connect the source");
    let (mut seen, mut first) = (0, None);
    while seen < n {
        let batch = source
            .next_batch(
                s.batch.max_records,
                s.batch.max_wait,
                Duration::from_millis(500),
            )
            .await
            .expect("fetch");
        first = first.or(batch.first_at);
        seen += batch
            .records
            .iter()
            .filter(|m| m.topic() == s.topics.usage)
            .count() as u64;
    }
    first.expect("records came").elapsed().as_secs_f64()
}

/// The same Kafka traffic as the loop with no billing in it: consume the
/// `n` usage records in batches (up to 10,000 or 100 ms), produce one
/// `out_bytes` record per input through an idempotent producer, wait for
/// the acks, commit. Seconds from the first record to the last commit.
/// What the broker allows a consume-and-produce relay, so the loop's
/// figure can be read against it.
async fn relay(brokers: &str, prefix: &str, group: &str, n: u64, out_bytes: usize) -> f64 {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("{prefix}billing.usage.v1")])
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let topic = format!("{prefix}relay");
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
    admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                &topic,
                PARTITIONS,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let payload = vec![b'x'; out_bytes];
    let mut seen = 0;
    let mut first = None;
    while seen < n {
        let m = consumer.recv().await.expect("consume");
        first.get_or_insert_with(Instant::now);
        let batch_end = Instant::now() + Duration::from_millis(100);
        let mut pending = vec![];
        let mut last = m.detach();
        loop {
            seen += 1;
            let key = last.key().unwrap_or_default().to_vec();
            pending.push(
                producer
                    .send_result(FutureRecord::to(&topic).key(&key).payload(&payload))
                    .map_err(|(e, _)| e)
                    .expect("queue"),
            );
            if seen >= n || pending.len() >= 10_000 {
                break;
            }
            match tokio::time::timeout_at(batch_end.into(), consumer.recv()).await {
                Ok(m) => last = m.expect("consume").detach(),
                Err(_) => break,
            }
        }
        for p in pending {
            p.await.expect("delivery").map_err(|(e, _)| e).expect("ack");
        }
        consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Async)
            .expect("commit");
    }
    first.unwrap().elapsed().as_secs_f64()
}

/// CPU seconds this process has used so far (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// Wait until the running loop has done `n` records; seconds from the
/// arrival of its first record to the commit of the last. Panics if the
/// loop stopped on its own (its error is in the message).
/// Wait until `n` records are done (written and published); seconds since
/// the first record.
async fn until_done(running: &mut Running, n: u64) -> f64 {
    while running.progress.records_done() < n {
        if running.handle.is_finished() {
            let ended = (&mut running.handle).await;
            panic!("the loop ended before {n} records were done: {ended:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    running
        .progress
        .first_record_at
        .get()
        .expect("records were done, so one arrived")
        .elapsed()
        .as_secs_f64()
}

/// Wait until `n` records are folded, then stop the loop (which writes,
/// publishes and commits whatever the checkpoint held); seconds from the
/// first record to the end of the stop.
async fn fold_and_stop(mut running: Running, n: u64) -> f64 {
    while running
        .progress
        .records_folded
        .load(std::sync::atomic::Ordering::Relaxed)
        < n
    {
        if running.handle.is_finished() {
            let ended = (&mut running.handle).await;
            panic!("the loop ended before {n} records were folded: {ended:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = *running
        .progress
        .first_record_at
        .get()
        .expect("records were folded, so one arrived");
    running.stop().await;
    first.elapsed().as_secs_f64()
}

/// A running loop: stop it with `stop`.
struct Running {
    handle: tokio::task::JoinHandle<anyhow::Result<ProcessorStats>>,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    progress: Arc<Progress>,
}

/// The store a loop runs on: the embedded store (default), or with
/// `BENCH_STORE=scylla` a fresh keyspace of the CQL database at
/// `BILLSTREAM_SCYLLA_NODES` (with `BILLSTREAM_SCYLLA_USERNAME` /
/// `_PASSWORD` when set), made by `migrate`.
#[derive(Clone)]
enum BenchStore {
    Embedded(Arc<EmbeddedStore>),
    Cql(Arc<ScyllaStore>),
}

impl BenchStore {
    async fn open(dir: &std::path::Path, name: &str) -> BenchStore {
        if std::env::var("BENCH_STORE").as_deref() != Ok("scylla") {
            return BenchStore::Embedded(Arc::new(EmbeddedStore::open(&dir.join(name)).unwrap()));
        }
        let nodes = std::env::var("BILLSTREAM_SCYLLA_NODES")
            .expect("BENCH_STORE=scylla needs BILLSTREAM_SCYLLA_NODES");
        let settings = ScyllaSettings {
            nodes: nodes.split(',').map(|n| n.trim().to_string()).collect(),
            keyspace: format!("bench_{}_{}", std::process::id(), name.replace('-', "_")),
            replication: Replication::Simple { factor: 1 },
            local_datacenter: None,
            dedup_ttl: Duration::from_secs(36 * 86_400),
            auth: std::env::var("BILLSTREAM_SCYLLA_USERNAME")
                .ok()
                .map(|username| BasicAuth {
                    username,
                    password: std::env::var("BILLSTREAM_SCYLLA_PASSWORD").unwrap_or_default(),
                }),
            tls_ca_file: None,
        };
        billstream::store::scylla::migrate(&settings).await.unwrap();
        BenchStore::Cql(Arc::new(ScyllaStore::connect(&settings).await.unwrap()))
    }
}

/// Start a loop on `store`; with `metrics`, as `billstream run` does by
/// default (Prometheus metrics updated; nothing scrapes them here).
fn start(s: Settings, store: BenchStore, owner: &'static str, metrics: bool) -> Running {
    match store {
        BenchStore::Embedded(store) => start_on(s, store, owner, metrics),
        BenchStore::Cql(store) => start_on(s, store, owner, metrics),
    }
}

fn start_on<S: StateStore + 'static>(
    s: Settings,
    store: Arc<S>,
    owner: &'static str,
    metrics: bool,
) -> Running {
    let mut progress = Progress::default();
    if metrics {
        progress.metrics = Some(Arc::new(Metrics::new(Some(
            store.clone() as Arc<dyn StoreStatsSource>
        ))));
    }
    let progress = Arc::new(progress);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let p = progress.clone();
    let handle = tokio::spawn(async move {
        serve(&s, store, owner, p, async {
            let _ = stop_rx.await;
        })
        .await
    });
    Running {
        handle,
        stop_tx,
        progress,
    }
}

impl Running {
    /// Stop cleanly; the workload is valid, so a rejection is a bench bug.
    async fn stop(self) {
        let _ = self.stop_tx.send(());
        let stats = self.handle.await.unwrap().unwrap();
        assert!(
            stats.rejected.is_empty(),
            "the bench workload was rejected: {:?}",
            stats.rejected
        );
    }
}

fn plan(catalog: &Catalog) -> (&'static str, String, Vec<u8>) {
    let plan = Plan {
        plan_id: "p".into(),
        currency: Currency::from_code("EUR").unwrap(),
        recurring_fee: Decimal::ZERO,
        minimum_spend: Decimal::ZERO,
        version: 1,
        charges: vec![Charge {
            metric: "m".into(),
            model: Model::PerUnit,
            unit_price: Decimal::from_str("0.01").unwrap(),
            package_size: None,
            free_units: Decimal::ZERO,
            tiers: vec![],
            aggregation: Default::default(),
        }],
    };
    (
        "billing.plans.v1",
        "p".into(),
        catalog.encode_plan(&plan).unwrap(),
    )
}

fn openings(catalog: &Catalog, accounts: usize) -> Vec<(&'static str, String, Vec<u8>)> {
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let opened = Timestamp::parse_rfc3339(&format!("{month}-01T00:00:00Z")).unwrap();
    (0..accounts)
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
                    thresholds: Vec::new(),
                    invoice_at: None,
                },
            });
            (
                "billing.accounts.v1",
                format!("acct-{a}"),
                catalog.encode_input(&open).unwrap(),
            )
        })
        .collect()
}

fn main() {
    let Ok(brokers) = std::env::var("BILLSTREAM_BENCH_BROKERS") else {
        eprintln!("kafka_e2e bench: BILLSTREAM_BENCH_BROKERS is not set; run scripts/bench-e2e.sh");
        return;
    };
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    billstream::cli::init_logging();
    let accounts = env("BENCH_ACCOUNTS", 100_000);
    let events = env("BENCH_USAGE", 200_000);
    let rounds = env("BENCH_ROUNDS", 3);
    let latency_secs = env("BENCH_LATENCY_SECS", 10);
    // BENCH_VARIANTS=0: only the loop (no metrics-off and id-headers loops).
    let variants = env("BENCH_VARIANTS", 1) == 1;
    let catalog = Catalog::shared().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tag = std::process::id();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (mut raw_rates, mut loop_rates, mut ratios) = (vec![], vec![], vec![]);
        let mut relay_ratios = vec![];
        let mut overheads = vec![];
        let mut header_costs = vec![];
        let mut kept = None;
        for round in 0..rounds {
            // Each round on its own topics, group and store.
            let prefix = format!("bench{tag}r{round}.");
            let group = format!("loop-{tag}-{round}");
            let s = settings(&brokers, &prefix, &group);
            assert!(billstream::cli::topics::create_all_async(&s, PARTITIONS, 1).await.unwrap());
            let producer = Producer {
                producer: ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .set("linger.ms", "20")
                    .set("partitioner", "murmur2_random")
                    .create()
                    .unwrap(),
                prefix: prefix.clone(),
            };
            producer.send(&[plan(catalog)]).await;
            producer.send(&openings(catalog, accounts)).await;
            // The accounts are opened first (usage of an account nobody
            // opened yet is a dead letter, not billing work).
            let store = BenchStore::open(dir.path(), &format!("s{round}")).await;
            // A second store and group for the same loop without metrics.
            let plain_store = BenchStore::open(dir.path(), &format!("s{round}-plain")).await;
            let plain_settings = settings(&brokers, &prefix, &format!("{group}-plain"));
            // A third for the loop with `kafka.id_headers` (two more headers
            // per output record), to show what headers cost on this broker.
            let headers_store = BenchStore::open(dir.path(), &format!("s{round}-headers")).await;
            let mut headers_settings = settings(&brokers, &prefix, &format!("{group}-headers"));
            headers_settings.kafka.id_headers = true;
            let began = Instant::now();
            let mut warm = start(s.clone(), store.clone(), "bench", true);
            until_done(&mut warm, accounts as u64).await;
            let opened = began.elapsed().as_secs_f64();
            warm.stop().await;
            let warm_variants = if variants {
                vec![
                    (&plain_settings, &plain_store),
                    (&headers_settings, &headers_store),
                ]
            } else {
                vec![]
            };
            for (warm_settings, warm_store) in warm_variants {
                let mut warm = start(warm_settings.clone(), warm_store.clone(), "bench", false);
                until_done(&mut warm, accounts as u64).await;
                warm.stop().await;
            }
            let t = Instant::now();
            producer.send(&usage(catalog, accounts, 0, events)).await;
            println!(
                "round {}: {accounts} accounts opened by the loop in {opened:.1} s (with the group join); {events} usage events produced in {:.1} s",
                round + 1,
                t.elapsed().as_secs_f64()
            );
            let raw = raw_consume(&brokers, &prefix, &format!("raw-{tag}-{round}"), events as u64).await;
            let sourced = source_only(
                &settings(&brokers, &prefix, &format!("source-{tag}-{round}")),
                events as u64,
            )
            .await;
            println!(
                "  the loop's source alone (its batches, no processing): {:.0} records/s",
                events as f64 / sourced
            );
            // Journal entries of usage are about 310 bytes.
            let cpu = cpu_seconds();
            let relayed = relay(&brokers, &prefix, &format!("relay-{tag}-{round}"), events as u64, 310).await;
            let relay_cpu = cpu_seconds() - cpu;
            // The loop without metrics, before or after the one with them
            // (alternating by round, so drift does not favour either).
            let plain = |first: bool| {
                let (ps, pst) = (plain_settings.clone(), plain_store.clone());
                async move {
                    if !variants || first != (round % 2 == 0) {
                        return None;
                    }
                    let plain = start(ps, pst, "bench-plain", false);
                    Some(fold_and_stop(plain, events as u64).await)
                }
            };
            let plain_before = plain(true).await;
            let running = start(s.clone(), store.clone(), "bench", true);
            let progress = running.progress.clone();
            let cpu = cpu_seconds();
            let took = fold_and_stop(running, events as u64).await;
            let loop_cpu = cpu_seconds() - cpu;
            if variants {
                let plain_took = match plain_before {
                    Some(t) => t,
                    None => plain(false).await.expect("runs after"),
                };
                let overhead = took / plain_took;
                println!(
                    "  loop with metrics {:.0} records/s, without {:.0} records/s: time with / without {overhead:.3}",
                    events as f64 / took,
                    events as f64 / plain_took
                );
                overheads.push(overhead);
                let with_headers = fold_and_stop(
                    start(headers_settings, headers_store, "bench-headers", true),
                    events as u64,
                )
                .await;
                println!(
                    "  loop with kafka.id_headers {:.0} records/s: time with / without {:.3}",
                    events as f64 / with_headers,
                    with_headers / took
                );
                header_costs.push(with_headers / took);
            }
            let (raw_rate, loop_rate) = (events as f64 / raw, events as f64 / took);
            let relay_rate = events as f64 / relayed;
            println!(
                "  usage: raw consume {raw_rate:.0} records/s, relay {relay_rate:.0} records/s, billstream loop {loop_rate:.0} records/s; ratio to raw {:.2}, to relay {:.2}",
                loop_rate / raw_rate,
                loop_rate / relay_rate
            );
            println!(
                "  CPU of this process: relay {:.1} µs per record, loop {:.1} µs per record",
                relay_cpu * 1e6 / events as f64,
                loop_cpu * 1e6 / events as f64
            );
            relay_ratios.push(loop_rate / relay_rate);
            let phases: Vec<String> = Phase::ALL
                .iter()
                .map(|ph| format!("{} {:.2} s", ph.name(), progress.phase_seconds(*ph)))
                .collect();
            println!(
                "  loop phases over {} batches: {}",
                progress.batches.load(std::sync::atomic::Ordering::Relaxed),
                phases.join(", ")
            );
            raw_rates.push(raw_rate);
            loop_rates.push(loop_rate);
            ratios.push(loop_rate / raw_rate);
            if round + 1 == rounds {
                kept = Some((store, s, producer));
            }
        }
        println!(
            "throughput (median of {rounds}): raw {:.0}/s, loop {:.0}/s, ratio to raw {:.2}, ratio to relay {:.2}",
            median(raw_rates),
            median(loop_rates.clone()),
            median(ratios),
            median(relay_ratios)
        );
        println!(
            "metrics overhead (median of {rounds}): loop time with metrics / without {:.3}",
            median(overheads)
        );
        println!(
            "id headers (median of {rounds}): loop time with kafka.id_headers / without {:.3}",
            median(header_costs)
        );

        // Latency at half the loop's throughput.
        let (store, mut s, producer) = kept.unwrap();
        // Static membership from here on (`kafka.group_instance_id`), so the
        // restart below takes this loop's place the way a restarted pod
        // does, without a rebalance.
        s.kafka.group_instance_id = Some(format!("bench-{}", std::process::id()));
        let rate = (median(loop_rates) / 2.0).max(100.0);
        let mut running = start(s.clone(), store.clone(), "bench", true);
        while running.progress.ready.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let n = (rate * latency_secs as f64) as usize;
        let records = usage(catalog, accounts, events, n);
        let start_at = Instant::now();
        let per_tick = (rate / 100.0).ceil() as usize;
        for (i, chunk) in records.chunks(per_tick).enumerate() {
            let due = start_at + Duration::from_millis(10 * i as u64);
            tokio::time::sleep_until(due.into()).await;
            producer.send(chunk).await;
        }
        // Done means written: records held by the checkpoint wait for it.
        until_done(&mut running, n as u64).await;
        {
            let h = running.progress.latency.lock().unwrap();
            println!(
                "latency at {rate:.0} records/s for {latency_secs} s: {} records, p50 {} ms, p99 {} ms (produce → state persisted, checkpoint {} records / {:?})",
                h.count(),
                h.quantile(0.5).unwrap_or(0),
                h.quantile(0.99).unwrap_or(0),
                s.batch.checkpoint_events,
                s.batch.checkpoint_interval
            );
        }
        running.stop().await;

        // Restart with ACCOUNTS accounts in the store.
        producer.send(&usage(catalog, accounts, events + n, PARTITIONS as usize * 4)).await;
        let began = Instant::now();
        let running = start(s, store, "bench-restart", true);
        while running.progress.partitions_owned.load(std::sync::atomic::Ordering::Relaxed) < PARTITIONS as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let loaded = began.elapsed();
        while running.progress.records_folded.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!(
            "restart with {accounts} accounts in the store: partitions assigned and accounts loaded after {:.2} s, first record folded after {:.2} s (static membership: no session expiry to wait for)",
            loaded.as_secs_f64(),
            began.elapsed().as_secs_f64()
        );
        running.stop().await;
    });
}
