//! Crash loop against a Kafka-protocol broker: `billstream run` is killed
//! with SIGKILL at random moments while it folds at least 100,000 events,
//! restarted, 20 times (BILLSTREAM_CRASH_KILLS for more by hand, e.g. 100;
//! BILLSTREAM_CRASH_EVENTS for the event count). An uninterrupted run over
//! the same input topics, into output topics of its own, is the reference:
//! at the end both stores hold the same state and journals, both sets of
//! distinct outputs are equal, no input was applied twice, no (invoice,
//! attempt) has two charge ids, and any output seen twice is identical.
//!
//! The card accounts' charge requests are answered by the payment-gateway
//! emulator (`billstream gateway`, one per run, each over its run's own
//! charges and payments topics: the baseline reads payments from
//! `billing.payments.v1.baseline`, where the set-up's payment records are
//! produced too). Its outcome is a pure function of the charge, so both
//! runs get the same results; they are applied before any usage arrives.
//!
//! Both runs use a frozen processing clock (`clock = <instant>`), so what
//! they emit cannot depend on when they ran. Needs `BILLSTREAM_TEST_BROKERS`
//! and `BILLSTREAM_TEST_CRASH=1`, which scripts/test.sh sets (its broker is
//! Apache Kafka); the CQL variant also needs `BILLSTREAM_SCYLLA_NODES`
//! (the test command's Cassandra), where both runs keep their state. The
//! rebalance test runs its members in this process, over one shared
//! embedded store (a single-process store); its crashed member is dropped
//! mid-flight, which closes its consumer, so the group sees it leave rather
//! than time out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use billstream::contracts::Catalog;
use billstream::engine::events::*;
use billstream::engine::money::Currency;
use billstream::engine::plan::{Charge, Model, Plan};
use billstream::engine::time::Timestamp;
use billstream::gateway::request::result_event_id;
use billstream::store::{
    AccountWrite, DedupRecord, EmbeddedStore, InvoiceRecord, JournalRecord, LoadedAccount, Micros,
    ScyllaStore, StateStore, StoreError, StoredAccount,
};
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;

use super::gateway::Gateway;
use super::kafka_e2e::{
    account_opened, billstream, cql_store, decode_output, event_id_of, header_of, output_ok,
    produce, setup_cql, setup_with, text, Records, Running, Setup, SESSION_TIMEOUT,
};

const PARTITIONS: u32 = 4;
const ACCOUNTS: usize = 200;
const CLOCK: &str = "2026-11-02T12:40:00Z";
const INPUTS: [&str; 3] = [
    "billing.accounts.v1",
    "billing.payments.v1",
    "billing.usage.v1",
];
/// The emulator answering the card accounts' charges: two providers, each
/// declining some charges (retryably or not), publishing some results
/// twice and holding some back.
const GATEWAY_CONFIG: &str = r#"
seed = 20
[providers.acme]
success_rate = 0.6
latency = "10ms"
latency_jitter = "50ms"
duplicate_rate = 0.3
duplicate_delay = "100ms"
out_of_order_rate = 0.3
out_of_order_delay = "200ms"
[[providers.acme.declines]]
code = "insufficient_funds"
retryable = true
weight = 2
[[providers.acme.declines]]
code = "card_stolen"
retryable = false

[providers.beta]
success_rate = 0.4
latency = "10ms"
[[providers.beta.declines]]
code = "do_not_honor"
retryable = true
[[providers.beta.declines]]
code = "expired_card"
retryable = false
"#;
const OUTPUTS: [(&str, &str); 6] = [
    ("INVOICES", "billing.invoices.v1"),
    ("CHARGES", "billing.charges.v1"),
    ("NOTIFICATIONS", "billing.notifications.v1"),
    ("USAGE_ROLLUPS", "billing.usage-rollups.v1"),
    ("JOURNAL", "billing.journal.v1"),
    ("DLQ", "billing.dlq.v1"),
];

/// Held by each heavy test: on two cores, the crash loop and the rebalance
/// test each load the broker enough; they take turns.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The broker's test setup, when the crash and rebalance tests are asked
/// for, with this test's turn.
fn heavy_setup(
    tag: &str,
    setup: fn(&str, u32) -> Option<Setup>,
) -> Option<(Setup, std::sync::MutexGuard<'static, ()>)> {
    if std::env::var("BILLSTREAM_TEST_CRASH").as_deref() != Ok("1") {
        eprintln!("kafka_crash: set BILLSTREAM_TEST_CRASH=1 to run the crash-loop and rebalance tests; not run");
        return None;
    }
    let turn = HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some((setup(tag, PARTITIONS)?, turn))
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// One processor configuration: its group, store and output topics.
struct Runner<'a> {
    setup: &'a Setup,
    group: String,
    store: std::path::PathBuf,
    /// Suffix of its output topic names and of its payments topic ("" =
    /// the default names).
    outputs: &'static str,
}

impl<'a> Runner<'a> {
    /// The uninterrupted reference run: a group and store of its own, and
    /// output and payments topics suffixed `.baseline` (created here).
    /// On the CQL store when the test's own state is (`setup_cql`).
    fn baseline(setup: &'a Setup) -> Runner<'a> {
        let folder = if cql_store(&setup.store).is_some() {
            "cql-baseline"
        } else {
            "baseline"
        };
        let runner = Runner {
            setup,
            group: format!("{}-baseline", setup.group),
            store: setup._dir.path().join(folder),
            outputs: ".baseline",
        };
        output_ok(
            runner
                .command()
                .args(["topics", "create", "--partitions", &PARTITIONS.to_string()]),
            "topics create",
        );
        if cql_store(&runner.store).is_some() {
            output_ok(runner.command().arg("migrate"), "migrate");
        }
        runner
    }

    fn command(&self) -> std::process::Command {
        let mut c = billstream(
            &self.setup.prefix,
            &self.group,
            &self.store,
            &self.setup.brokers,
        );
        c.env("BILLSTREAM__CLOCK", CLOCK)
            .env("BILLSTREAM_LOG", "billstream=debug")
            .env("BILLSTREAM_LOG_FORMAT", "text")
            .env("BILLSTREAM__BATCH__MAX_RECORDS", "2000")
            // The checkpoint's record count stays the default (100); its
            // interval is short so the end of the input is written (and
            // committed) soon, and both triggers are exercised.
            .env("BILLSTREAM__BATCH__CHECKPOINT_INTERVAL", "5s")
            .env("BILLSTREAM__KAFKA__SESSION_TIMEOUT", SESSION_TIMEOUT)
            .env("BILLSTREAM__KAFKA__MAX_POLL_INTERVAL", "60s")
            // Static membership: a restart after kill -9 takes the killed
            // member's place at once, without waiting for its session to
            // expire (the rebalance test covers dynamic members).
            .env(
                "BILLSTREAM__KAFKA__GROUP_INSTANCE_ID",
                format!("{}-instance", self.group),
            );
        for (key, name) in OUTPUTS {
            c.env(
                format!("BILLSTREAM__TOPICS__{key}"),
                format!("{name}{}", self.outputs),
            );
        }
        c.env("BILLSTREAM__TOPICS__PAYMENTS", self.payments());
        c
    }

    /// Its payments topic (without the prefix).
    fn payments(&self) -> String {
        format!("billing.payments.v1{}", self.outputs)
    }

    /// Answer every charge request on its charges topic with `billstream
    /// gateway` into its payments topic, then stop the gateway.
    fn answer_charges(&self, catalog: &Catalog) {
        let config = self
            .setup
            ._dir
            .path()
            .join(format!("gateway{}.toml", self.outputs));
        std::fs::write(
            &config,
            GATEWAY_CONFIG.replace(
                "seed = 20",
                &format!("seed = 20\ngroup_id = \"{}-gateway\"", self.group),
            ),
        )
        .unwrap();
        let (prefix, brokers) = (&self.setup.prefix, &self.setup.brokers);
        let charges_topic = format!("billing.charges.v1{}", self.outputs);
        let gateway = Gateway::start_with(
            prefix,
            brokers,
            &config,
            &[
                ("BILLSTREAM__TOPICS__CHARGES".into(), charges_topic.clone()),
                ("BILLSTREAM__TOPICS__PAYMENTS".into(), self.payments()),
            ],
        );
        let requested: BTreeSet<String> = read_all(brokers, &format!("{prefix}{charges_topic}"))
            .iter()
            .map(|(_, payload)| text(&decode_output(catalog, payload)["charge_id"]))
            .collect();
        assert!(!requested.is_empty(), "the card accounts were charged");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let answered = results(brokers, &format!("{prefix}{}", self.payments()), catalog);
            if requested.iter().all(|id| answered.contains_key(id)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} charges answered within 120 s",
                answered.len(),
                requested.len()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(gateway.stop().success(), "billstream gateway stopped");
    }

    /// Start `billstream run`; its stderr is forwarded, and a message is
    /// sent once it reports its first batch persisted.
    fn spawn(&self) -> (Running, mpsc::Receiver<()>) {
        let mut child = self
            .command()
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("batch persisted") {
                    let _ = tx.send(());
                }
                eprintln!("[{:>6.2}s] {line}", started.elapsed().as_secs_f64());
            }
        });
        (Running(child), rx)
    }

    /// Run until the group has committed every input record, then stop.
    fn run_to_end(&self, deadline: Duration) {
        let (running, _) = self.spawn();
        wait_committed(
            &self.setup.brokers,
            &self.setup.prefix,
            &self.group,
            self.outputs,
            deadline,
        );
        let status = running.stop();
        assert!(status.success(), "run exited with {status}");
    }
}

/// Wait until `group` has committed the end of every input partition (its
/// payments topic suffixed `payments`).
fn wait_committed(brokers: &str, prefix: &str, group: &str, payments: &str, deadline: Duration) {
    let end = Instant::now() + deadline;
    loop {
        let behind = records_behind(brokers, prefix, group, payments);
        if behind == 0 {
            return;
        }
        assert!(
            Instant::now() < end,
            "group {group} still {behind} records behind after {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Input records `group` has not committed yet (its payments topic
/// suffixed `payments`).
fn records_behind(brokers: &str, prefix: &str, group: &str, payments: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut highs = BTreeMap::new();
    for topic in INPUTS {
        let suffix = if topic == "billing.payments.v1" {
            payments
        } else {
            ""
        };
        let topic = format!("{prefix}{topic}{suffix}");
        for p in 0..PARTITIONS as i32 {
            let (_, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(30))
                .unwrap();
            highs.insert((topic.clone(), p), high);
            tpl.add_partition(&topic, p);
        }
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| {
            let high = highs[&(e.topic().to_string(), e.partition())];
            match e.offset() {
                Offset::Offset(o) => (high - o).max(0),
                _ => high,
            }
        })
        .sum()
}

/// Every record of an output topic: (event_id header, payload).
fn read_all(brokers: &str, topic: &str) -> Vec<(String, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{topic}"))
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .unwrap();
        if high > low {
            ends.insert(p, high);
        }
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "{topic} not read to its end");
        let Some(m) = consumer.poll(Duration::from_millis(300)) else {
            continue;
        };
        let m = m.unwrap();
        if ends
            .get(&m.partition())
            .is_some_and(|e| m.offset() + 1 >= *e)
        {
            ends.remove(&m.partition());
        }
        // kafka.id_headers is off by default: the ids are only in the payload.
        assert_eq!(header_of(&m, "event_id"), None);
        records.push((event_id_of(&m), m.payload().unwrap_or_default().to_vec()));
    }
    records
}

/// The charge results on a payments topic: each charge id's distinct
/// payloads.
fn results(brokers: &str, topic: &str, catalog: &Catalog) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
    let mut by_charge: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (_, payload) in read_all(brokers, topic) {
        let r = decode_output(catalog, &payload);
        if let Some(charge_id) = r.get("charge_id") {
            by_charge
                .entry(text(charge_id))
                .or_default()
                .insert(payload);
        }
    }
    by_charge
}

/// `first` and, on the baseline's payments topic, its payment records
/// again.
fn with_baseline_payments(first: &Records) -> Records {
    let mut all = first.clone();
    all.extend(
        first
            .iter()
            .filter(|(topic, _, _)| topic == "billing.payments.v1")
            .map(|(topic, key, payload)| {
                (format!("{topic}.baseline"), key.clone(), payload.clone())
            }),
    );
    all
}

/// A stored journal entry as the runs' journals are compared. The baseline
/// reads payments from a topic of its own, which the entries' source
/// positions (lineage) name: compared as the payments topic. And each run
/// has its own gateway, whose results land in its payments topic in the
/// order the gateway published them: the source offset of an entry caused
/// by a result (one of `results`) is left out; all else is compared.
fn as_compared(bytes: &[u8], results: &BTreeSet<String>) -> serde_json::Value {
    let mut entry: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let by_result = entry["causation_id"]
        .as_str()
        .is_some_and(|c| results.contains(c));
    if let Some(source) = entry.get_mut("source").and_then(|s| s.as_object_mut()) {
        if let Some(topic) = source.get("topic").and_then(|t| t.as_str()) {
            let topic = topic.trim_end_matches(".baseline").to_string();
            source.insert("topic".into(), topic.into());
        }
        if by_result {
            source.remove("offset");
        }
    }
    entry
}

/// Per account: its snapshot (as JSON, so map order does not matter) and
/// every journal record's bytes.
type Dump = BTreeMap<String, (serde_json::Value, Vec<Vec<u8>>)>;

fn dump_store(dir: &Path) -> Dump {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match cql_store(dir) {
            Some(settings) => dump(&ScyllaStore::connect(&settings).await.unwrap()).await,
            None => dump(&EmbeddedStore::open(dir).unwrap()).await,
        }
    })
}

async fn dump(store: &impl StateStore) -> Dump {
    let mut dump = BTreeMap::new();
    for p in 0..PARTITIONS {
        for id in store.accounts(p).await.unwrap() {
            let stored = store.load_account(&id).await.unwrap().unwrap();
            let snapshot: serde_json::Value = serde_json::from_slice(&stored.snapshot).unwrap();
            let mut journal = Vec::new();
            let mut from = 1;
            loop {
                let page = store.read_journal(&id, from, 1000).await.unwrap();
                let Some(last) = page.last() else { break };
                from = last.seq + 1;
                journal.extend(page.into_iter().map(|r| r.bytes));
            }
            dump.insert(id, (snapshot, journal));
        }
    }
    dump
}

/// The set-up records (plan, accounts, payments), then the usage.
fn inputs(catalog: &Catalog, events: usize) -> (Records, Records) {
    let plan = Plan {
        plan_id: "hosting".into(),
        currency: Currency::from_code("EUR").unwrap(),
        recurring_fee: Decimal::from_str("9.00").unwrap(),
        minimum_spend: Decimal::ZERO,
        version: 1,
        charges: vec![Charge {
            metric: "m".into(),
            model: Model::PerUnit,
            unit_price: Decimal::from_str("0.013").unwrap(),
            package_size: None,
            free_units: Decimal::from(50),
            tiers: vec![],
            aggregation: Default::default(),
        }],
    };
    let account = |a: usize| format!("acct-{a}");
    let mut first = vec![(
        "billing.plans.v1".to_string(),
        "hosting".to_string(),
        catalog.encode_plan(&plan).unwrap(),
    )];
    for a in 0..ACCOUNTS {
        let open = account_opened(
            &format!("open-{a}"),
            &account(a),
            "hosting",
            "0.19",
            ts("2026-11-01T00:00:00Z"),
        );
        first.push((
            "billing.accounts.v1".into(),
            account(a),
            catalog.encode_input(&open).unwrap(),
        ));
        // A third top up their credit (the opening invoice is paid from
        // it), a third attach a card (it is charged), the rest do neither.
        let kind = match a % 3 {
            0 => Some(PaymentKind::CreditToppedUp {
                amount: Decimal::from(25),
                currency: "EUR".into(),
                grant: Default::default(),
            }),
            1 => Some(PaymentKind::PaymentMethodAttached {
                token_ref: format!("tok_{}_{a}", ["acme", "beta"][a / 3 % 2]),
                brand: "visa".into(),
                last4: "4242".into(),
                expires: "2030-01".into(),
            }),
            _ => None,
        };
        if let Some(kind) = kind {
            let pay = Input::Payment(PaymentEvent {
                event_id: format!("pay-{a}"),
                account_id: account(a),
                occurred_at: ts("2026-11-01T00:10:00Z"),
                environment: Some("prod".into()),
                kind,
            });
            first.push((
                "billing.payments.v1".into(),
                account(a),
                catalog.encode_input(&pay).unwrap(),
            ));
        }
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let start = ts("2026-11-02T12:00:00Z").0;
    let mut usage = Vec::with_capacity(events + events / 50);
    for i in 0..events {
        // One account in ten is ten times as busy as the others.
        let a = if rng.random_bool(0.5) {
            rng.random_range(0..ACCOUNTS / 10) * 10
        } else {
            rng.random_range(0..ACCOUNTS)
        };
        let u = Input::Usage(UsageRecorded {
            event_id: format!("u-{i}"),
            account_id: account(a),
            subject: format!("app-{}", i % 7),
            metric: "m".into(),
            quantity: Decimal::new(rng.random_range(1..10_000), 2),
            occurred_at: Timestamp(start + rng.random_range(0..39 * 60) * 1_000_000),
            environment: "prod".into(),
            attributes: Default::default(),
        });
        let bytes = catalog.encode_input(&u).unwrap();
        match i % 997 {
            // A duplicate right behind the original.
            1 => {
                usage.push(("billing.usage.v1".into(), account(a), bytes.clone()));
                usage.push(("billing.usage.v1".into(), account(a), bytes));
            }
            // Bytes that decode to nothing.
            2 => usage.push((
                "billing.usage.v1".into(),
                account(a),
                b"\x00garbage".to_vec(),
            )),
            // An account that was never opened.
            3 => {
                let ghost = Input::Usage(UsageRecorded {
                    account_id: "acct-ghost".into(),
                    ..match u {
                        Input::Usage(u) => u,
                        _ => unreachable!(),
                    }
                });
                usage.push((
                    "billing.usage.v1".into(),
                    "acct-ghost".into(),
                    catalog.encode_input(&ghost).unwrap(),
                ));
            }
            _ => usage.push(("billing.usage.v1".into(), account(a), bytes)),
        }
    }
    (first, usage)
}

#[test]
fn killed_twenty_times_ends_equal_to_an_uninterrupted_run() {
    let Some((setup, _turn)) = heavy_setup("c", setup_with) else {
        return;
    };
    crash_loop(&setup);
}

/// The same crash loop with both runs' state in the CQL store (Cassandra
/// in the test command): every kill lands somewhere in a commit made of
/// CQL writes, the claim's lightweight transaction and Kafka's offsets.
#[test]
fn killed_twenty_times_on_the_cql_store_ends_equal_to_an_uninterrupted_run() {
    let Some((setup, _turn)) = heavy_setup("q", setup_cql) else {
        return;
    };
    crash_loop(&setup);
}

fn crash_loop(setup: &Setup) {
    let kills = env_count("BILLSTREAM_CRASH_KILLS", 20);
    let events = env_count("BILLSTREAM_CRASH_EVENTS", 100_000);
    let catalog = Catalog::shared().unwrap();
    let baseline = Runner::baseline(setup);
    let crashed = Runner {
        setup,
        group: setup.group.clone(),
        store: setup.store.clone(),
        outputs: "",
    };

    // Accounts, plans and payments first, folded by both before any usage,
    // so each account's records meet the engine in one order in both runs;
    // then each run's charges answered by its gateway, and the results
    // folded, still before any usage.
    let (first, usage) = inputs(catalog, events);
    produce(
        &setup.brokers,
        &setup.prefix,
        &with_baseline_payments(&first),
    );
    for run in [&baseline, &crashed] {
        run.run_to_end(Duration::from_secs(120));
        run.answer_charges(catalog);
        run.run_to_end(Duration::from_secs(120));
    }
    std::thread::sleep(Duration::from_secs(1));

    let started = Instant::now();
    produce(&setup.brokers, &setup.prefix, &usage);
    eprintln!(
        "crash loop: {} usage records produced in {:?}",
        usage.len(),
        started.elapsed()
    );
    let started = Instant::now();
    baseline.run_to_end(Duration::from_secs(600));
    eprintln!("crash loop: uninterrupted run took {:?}", started.elapsed());

    let seed: u64 = rand::rng().random();
    eprintln!("crash loop: {kills} kills, seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for k in 0..kills {
        let (mut running, working) = crashed.spawn();
        // Kill at a random moment in the 3 s after its first batch is
        // persisted (or on the way there, if it is slow to come): a batch
        // takes about a second in the debug build, and a batch's offsets
        // are committed once the next batch is persisted, so lives die
        // mid-fold, mid-flush, mid-publish, between a publish and its
        // commit, and mid-commit. Timing from the assignment instead had
        // every kill land before the first commit on a loaded machine.
        let _ = working.recv_timeout(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(rng.random_range(0..3000)));
        running.0.kill().unwrap();
        running.0.wait().unwrap();
        let behind = records_behind(&setup.brokers, &setup.prefix, &crashed.group, "");
        eprintln!(
            "crash loop: kill {} of {kills}, {behind} of {} usage records left",
            k + 1,
            usage.len()
        );
        // No wait for the session to expire: the next run has the same
        // group.instance.id and replaces the killed member at once.
    }
    let behind = records_behind(&setup.brokers, &setup.prefix, &crashed.group, "");
    assert!(
        behind < usage.len() as i64,
        "the killed runs committed nothing: the kills came too early to test anything"
    );
    crashed.run_to_end(Duration::from_secs(600));

    assert_same_as_baseline(setup, catalog, events, &baseline, &crashed.store, "");

    // Each run's gateway gave every charge one result, the same in both.
    let payments = |run: &Runner| {
        results(
            &setup.brokers,
            &format!("{}{}", setup.prefix, run.payments()),
            catalog,
        )
    };
    let (base_results, got_results) = (payments(&baseline), payments(&crashed));
    assert!(
        got_results.values().all(|forms| forms.len() == 1),
        "a charge with two different results"
    );
    assert!(
        base_results == got_results,
        "the runs' gateways answered differently"
    );
    // Both dunning outcomes were folded: paid invoices and declines.
    let state = dump_store(&crashed.store);
    let folded = |kind: &str| {
        state
            .values()
            .flat_map(|(_, journal)| journal)
            .filter(|bytes| {
                serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["event"]["type"] == kind
            })
            .count()
    };
    let (succeeded, failed) = (folded("payment_succeeded"), folded("payment_failed"));
    eprintln!("crash loop: {succeeded} charges succeeded, {failed} declined");
    assert!(
        succeeded > 0 && failed > 0,
        "{succeeded} succeeded, {failed} declined"
    );
    assert_eq!(
        succeeded + failed,
        got_results.len(),
        "every result applied once"
    );
}

/// The state in `store` and the outputs on the topics suffixed `outputs`
/// equal those of the uninterrupted `baseline` run.
fn assert_same_as_baseline(
    setup: &Setup,
    catalog: &Catalog,
    events: usize,
    baseline: &Runner,
    store: &Path,
    outputs: &str,
) {
    // Outputs: the same set of distinct (id, payload) on every topic; an id
    // seen twice always carries the same payload.
    let mut charge_ids: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (_, name) in OUTPUTS {
        let base = read_all(&setup.brokers, &format!("{}{name}.baseline", setup.prefix));
        let got = read_all(&setup.brokers, &format!("{}{name}{outputs}", setup.prefix));
        let mut by_id: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for (id, payload) in &got {
            if id.is_empty() {
                continue;
            }
            if let Some(previous) = by_id.insert(id, payload) {
                assert_eq!(
                    previous,
                    &payload[..],
                    "{name}: output {id} repeated with another payload"
                );
            }
            if name == "billing.charges.v1" {
                let r = decode_output(catalog, payload);
                charge_ids
                    .entry((text(&r["invoice_id"]), text(&r["attempt"])))
                    .or_default()
                    .insert(text(&r["charge_id"]));
            }
        }
        let distinct = |v: &[(String, Vec<u8>)]| v.iter().cloned().collect::<BTreeSet<_>>();
        let (base_set, got_set) = (distinct(&base), distinct(&got));
        assert_eq!(
            base_set.len(),
            got_set.len(),
            "{name}: {} distinct outputs after the crashes, {} without ({} records in all)",
            got_set.len(),
            base_set.len(),
            got.len()
        );
        assert!(base_set == got_set, "{name}: the distinct outputs differ");
        eprintln!(
            "crash loop: {name}: {} distinct outputs, {} published in all",
            got_set.len(),
            got.len()
        );
    }
    assert!(!charge_ids.is_empty(), "the card accounts were charged");
    for (key, ids) in &charge_ids {
        assert_eq!(ids.len(), 1, "{key:?} has charge ids {ids:?}");
    }

    // State: the same snapshot and journal for every account; every valid
    // usage event applied exactly once.
    let (base, got) = (dump_store(&baseline.store), dump_store(store));
    // The event ids of the gateway's results (a function of the charge id).
    let results: BTreeSet<String> = charge_ids
        .values()
        .flatten()
        .map(|id| result_event_id(id))
        .collect();
    assert_eq!(base.len(), ACCOUNTS);
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    let mut applied = BTreeSet::new();
    for (id, (snapshot, journal)) in &got {
        let (base_snapshot, base_journal) = &base[id];
        assert_eq!(snapshot, base_snapshot, "{id}: state differs");
        assert_eq!(
            journal.len(),
            base_journal.len(),
            "{id}: journal length differs"
        );
        let (journal_seen, base_seen) = (
            journal
                .iter()
                .map(|b| as_compared(b, &results))
                .collect::<Vec<_>>(),
            base_journal
                .iter()
                .map(|b| as_compared(b, &results))
                .collect::<Vec<_>>(),
        );
        if let Some((x, y)) = journal_seen.iter().zip(&base_seen).find(|(x, y)| x != y) {
            panic!("{id}: journal differs:\n{x}\nwithout crashes:\n{y}");
        }
        for bytes in journal {
            let entry: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            if entry["event"]["type"] == "usage_applied" {
                let cause = entry["causation_id"].as_str().unwrap().to_string();
                assert!(applied.insert(cause.clone()), "{cause} applied twice");
            }
        }
    }
    let valid = (0..events).filter(|i| !matches!(i % 997, 2 | 3)).count();
    assert_eq!(applied.len(), valid, "every valid usage event applied once");
}

/// One in-process group member on its own thread: `serve` over a store
/// shared with the other members (the embedded store is single-process;
/// this is how several members can share one here). `stop` ends it
/// gracefully; `crash` drops it mid-flight: the batch in hand is neither
/// persisted, published nor committed.
struct Member {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    crash: Option<tokio::sync::oneshot::Sender<()>>,
    progress: std::sync::Arc<billstream::runtime::service::Progress>,
    thread: Option<
        std::thread::JoinHandle<Option<anyhow::Result<billstream::runtime::ProcessorStats>>>,
    >,
}

impl Member {
    fn start(
        setup: &Setup,
        group: &str,
        store: std::sync::Arc<EmbeddedStore>,
        name: &str,
    ) -> Member {
        Member::start_with(setup, group, store, name, &[])
    }

    /// `start` over any store, with extra settings (`BILLSTREAM__…`).
    fn start_with<S: StateStore>(
        setup: &Setup,
        group: &str,
        store: std::sync::Arc<S>,
        name: &str,
        extra: &[(&str, &str)],
    ) -> Member {
        let mut vars = vec![
            ("BILLSTREAM__KAFKA__BROKERS", setup.brokers.clone()),
            ("BILLSTREAM__KAFKA__TOPIC_PREFIX", setup.prefix.clone()),
            ("BILLSTREAM__KAFKA__GROUP_ID", group.to_string()),
            (
                "BILLSTREAM__KAFKA__SESSION_TIMEOUT",
                SESSION_TIMEOUT.to_string(),
            ),
            ("BILLSTREAM__KAFKA__MAX_POLL_INTERVAL", "60s".to_string()),
            ("BILLSTREAM__CLOCK", CLOCK.to_string()),
            ("BILLSTREAM__BATCH__MAX_RECORDS", "2000".to_string()),
            ("BILLSTREAM__BATCH__MAX_WAIT", "200ms".to_string()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let settings = billstream::config::Settings::from_layers(
            None,
            vars.iter().map(|(k, v)| (k.to_string(), v.clone())),
        )
        .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
        let progress = std::sync::Arc::new(billstream::runtime::service::Progress::default());
        let owner = format!("{group}/{name}");
        let p = progress.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let stop = async move {
                    let _ = stop_rx.await;
                };
                tokio::select! {
                    r = billstream::runtime::service::serve(&settings, store, &owner, p, stop) => Some(r),
                    _ = crash_rx => None,
                }
            })
        });
        Member {
            stop: Some(stop_tx),
            crash: Some(crash_tx),
            progress,
            thread: Some(thread),
        }
    }

    fn done(&self) -> u64 {
        self.progress.records_done()
    }

    fn partitions(&self) -> u64 {
        self.progress
            .partitions_owned
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = self.thread.take().unwrap().join().unwrap();
        result
            .expect("stopped, not crashed")
            .expect("member ran cleanly");
    }

    fn crash(mut self) {
        let _ = self.crash.take().unwrap().send(());
        assert!(self.thread.take().unwrap().join().unwrap().is_none());
    }
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rebalance_a_third_member_joins_and_one_crashes_ends_equal_to_an_uninterrupted_run() {
    let Some((setup, _turn)) = heavy_setup("r", setup_with) else {
        return;
    };
    let events = env_count("BILLSTREAM_REBALANCE_EVENTS", 30_000);
    let catalog = Catalog::shared().unwrap();
    let baseline = Runner::baseline(&setup);
    let store = std::sync::Arc::new(EmbeddedStore::open(&setup.store).unwrap());
    let group = setup.group.clone();

    let (first, usage) = inputs(catalog, events);
    produce(
        &setup.brokers,
        &setup.prefix,
        &with_baseline_payments(&first),
    );
    baseline.run_to_end(Duration::from_secs(120));
    let only = Member::start(&setup, &group, store.clone(), "setup");
    wait_committed(
        &setup.brokers,
        &setup.prefix,
        &group,
        "",
        Duration::from_secs(120),
    );
    only.stop();

    // The usage arrives in three parts, so every member change happens
    // while there is work left: a and b share the first part, c joins, the
    // second part is shared by three, a crashes, the third part is left to
    // b and c.
    let third = usage.len() / 3;
    let parts = [
        &usage[..third],
        &usage[third..2 * third],
        &usage[2 * third..],
    ];
    produce(&setup.brokers, &setup.prefix, &parts[0].to_vec());
    let a = Member::start(&setup, &group, store.clone(), "a");
    let b = Member::start(&setup, &group, store.clone(), "b");
    let done = |m: &[&Member]| m.iter().map(|m| m.done()).sum::<u64>();
    wait_for("half of the first part", Duration::from_secs(300), || {
        done(&[&a, &b]) >= third as u64 / 2
    });
    let c = Member::start(&setup, &group, store.clone(), "c");
    wait_for(
        "the third member's partitions",
        Duration::from_secs(300),
        || c.partitions() > 0,
    );
    produce(&setup.brokers, &setup.prefix, &parts[1].to_vec());
    wait_for(
        "work done by the third member",
        Duration::from_secs(300),
        || c.done() > 0,
    );
    eprintln!(
        "rebalance: crashing member a ({} / {} / {} records done by a / b / c)",
        a.done(),
        b.done(),
        c.done()
    );
    a.crash();
    produce(&setup.brokers, &setup.prefix, &parts[2].to_vec());
    wait_committed(
        &setup.brokers,
        &setup.prefix,
        &group,
        "",
        Duration::from_secs(600),
    );
    b.stop();
    c.stop();
    drop(store);
    baseline.run_to_end(Duration::from_secs(600));

    assert_same_as_baseline(&setup, catalog, events, &baseline, &setup.store, "");
}

/// A store whose commits wait `delay` first while `slow` is set (a store
/// under load, a GC pause): the writes land later than they were asked for.
struct SlowCommits {
    inner: std::sync::Arc<EmbeddedStore>,
    slow: std::sync::atomic::AtomicBool,
    delay: Duration,
    /// Commits that waited, counted once they returned.
    waited: std::sync::atomic::AtomicU64,
}

impl StateStore for SlowCommits {
    async fn commit(&self, writes: &[AccountWrite]) -> Result<(), StoreError> {
        if !self.slow.load(std::sync::atomic::Ordering::Relaxed) {
            return self.inner.commit(writes).await;
        }
        tokio::time::sleep(self.delay).await;
        let result = self.inner.commit(writes).await;
        self.waited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result
    }
    async fn load_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        self.inner.load_account(id).await
    }
    async fn load_dedup(&self, id: &str, since: Micros) -> Result<Vec<DedupRecord>, StoreError> {
        self.inner.load_dedup(id, since).await
    }
    async fn read_journal(
        &self,
        id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<JournalRecord>, StoreError> {
        self.inner.read_journal(id, from_seq, limit).await
    }
    async fn mark_published(
        &self,
        id: &str,
        partition: u32,
        epoch: u64,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.inner.mark_published(id, partition, epoch, seq).await
    }
    async fn invoice(&self, id: &str, invoice: &str) -> Result<Option<InvoiceRecord>, StoreError> {
        self.inner.invoice(id, invoice).await
    }
    async fn invoices(&self, id: &str) -> Result<Vec<InvoiceRecord>, StoreError> {
        self.inner.invoices(id).await
    }
    async fn due_timers(
        &self,
        partition: u32,
        up_to: Micros,
        limit: usize,
    ) -> Result<Vec<(Micros, String)>, StoreError> {
        self.inner.due_timers(partition, up_to, limit).await
    }
    async fn accounts(&self, partition: u32) -> Result<Vec<String>, StoreError> {
        self.inner.accounts(partition).await
    }
    async fn all_accounts(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.inner.all_accounts(limit).await
    }
    async fn load_partition(
        &self,
        partition: u32,
        since: Option<Micros>,
    ) -> Result<Vec<LoadedAccount>, StoreError> {
        self.inner.load_partition(partition, since).await
    }
    async fn claim_partition(&self, partition: u32, owner: &str) -> Result<u64, StoreError> {
        self.inner.claim_partition(partition, owner).await
    }
    fn stats(&self) -> &billstream::store::StoreStats {
        self.inner.stats()
    }
}

/// Issue 15: a member losing partitions hands them over (writes what its
/// checkpoint held, publishes it, commits the offsets) before the group may
/// give them to their next owner, however long its writes take. Member a
/// folds every record with its checkpoint holding all of it; its store
/// then takes 3 s per write; b joins. The next owner must start where a
/// stopped: a's hand-over is never fenced and b re-reads none of the
/// records a folded. (Before the fix the consumer let go of the partitions
/// inside the callback, b claimed them while a's write waited, a's write
/// was fenced and b read all of its partitions' records again.)
#[test]
fn issue_15_a_revoked_member_hands_over_before_the_next_owner_starts() {
    let Some(setup) = setup_with("h", PARTITIONS) else {
        return;
    };
    let _turn = HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let catalog = Catalog::shared().unwrap();
    let (first, usage) = inputs(catalog, 3_000);
    produce(&setup.brokers, &setup.prefix, &first);
    let shared = std::sync::Arc::new(EmbeddedStore::open(&setup.store).unwrap());
    let slow_store = std::sync::Arc::new(SlowCommits {
        inner: shared.clone(),
        slow: Default::default(),
        delay: Duration::from_secs(3),
        waited: Default::default(),
    });
    let hold = [
        ("BILLSTREAM__BATCH__CHECKPOINT_EVENTS", "1000000"),
        ("BILLSTREAM__BATCH__CHECKPOINT_INTERVAL", "1h"),
    ];
    let a = Member::start_with(&setup, &setup.group, slow_store.clone(), "a", &hold);
    let folded = |m: &Member| {
        m.progress
            .records_folded
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // The openings and payments are written at once (the plan is not an
    // input record); then the usage, which the checkpoint holds.
    let setup_records = (first.len() - 1) as u64;
    wait_for("a to write the openings", Duration::from_secs(120), || {
        a.done() >= setup_records
    });
    produce(&setup.brokers, &setup.prefix, &usage);
    let inputs_count = setup_records + usage.len() as u64;
    wait_for("a to fold every record", Duration::from_secs(120), || {
        folded(&a) >= inputs_count
    });
    let held = inputs_count - a.done();
    assert!(
        held > usage.len() as u64 / 2,
        "the checkpoint should hold the usage unwritten ({held} held)"
    );
    slow_store
        .slow
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let b = Member::start_with(&setup, &setup.group, shared.clone(), "b", &hold);
    wait_for("b's partitions", Duration::from_secs(120), || {
        b.partitions() > 0
    });
    // a takes back its share only after its hand-over (one loop).
    wait_for("the partitions shared out", Duration::from_secs(60), || {
        b.partitions() > 0 && a.partitions() > 0 && a.partitions() + b.partitions() == 4
    });
    assert!(
        slow_store.waited.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "a's hand-over never wrote"
    );
    let fenced = a
        .progress
        .handovers_fenced
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fenced, 0, "a's hand-over was fenced by b's claim");
    wait_committed(
        &setup.brokers,
        &setup.prefix,
        &setup.group,
        "",
        Duration::from_secs(60),
    );
    assert_eq!(
        folded(&b),
        0,
        "b read again records a had folded and handed over"
    );
    a.stop();
    b.stop();
    // Each valid usage event applied once, in a's hand-over.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dump = rt.block_on(dump(shared.as_ref()));
    let applied: usize = dump
        .values()
        .flat_map(|(_, journal)| journal)
        .filter(|bytes| {
            let entry: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            entry["event"]["type"] == "usage_applied"
        })
        .count();
    let valid = (0..3_000).filter(|i| !matches!(i % 997, 2 | 3)).count();
    assert_eq!(applied, valid);
}
