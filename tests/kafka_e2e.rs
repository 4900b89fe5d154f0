//! End to end against a Kafka-protocol broker: a client produces plans,
//! accounts, usage (Avro and CloudEvents JSON), payments and bad records;
//! the real `billstream run` binary processes them; the test reads the
//! output topics and checks invoices, charge requests and dead letters.
//!
//! Needs a broker: `scripts/test.sh` installs and starts tansu on
//! 127.0.0.1 and sets `BILLSTREAM_TEST_BROKERS`; without it this test says
//! so and does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use billstream::config::{BasicAuth, Replication, ScyllaSettings};
use billstream::contracts::{framing, Catalog};
use billstream::engine::events::*;
use billstream::engine::money::Currency;
use billstream::engine::plan::{Charge, Model, Plan};
use billstream::engine::time::{Anchor, Timestamp};
use billstream::engine::tripwire::mask_card_numbers;
use billstream::engine::Rejection;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;

/// How long a restart waits after a kill -9 before rejoining the group:
/// the killed member's session (`SESSION_TIMEOUT`) must expire first. tansu 0.6 mishandles
/// a member that joins while a dead one is still in the group: the
/// rebalance that expires the dead member leaves a departed member as the
/// group leader, and the live member is handed no partitions, for good
/// (seen with librdkafka's `debug=cgrp`; README "Known broker issues").
pub(crate) const SESSION_EXPIRY: Duration = Duration::from_secs(16);
/// Session timeout of processors that tests kill: tansu answers heartbeats
/// late while it is busy writing, so anything much shorter has live
/// members time out.
pub(crate) const SESSION_TIMEOUT: &str = "15s";

pub(crate) fn brokers() -> Option<String> {
    std::env::var("BILLSTREAM_TEST_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
}

pub(crate) fn billstream(
    prefix: &str,
    group: &str,
    store: &std::path::Path,
    brokers: &str,
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_billstream"));
    c.env("BILLSTREAM__KAFKA__BROKERS", brokers)
        .env("BILLSTREAM__KAFKA__TOPIC_PREFIX", prefix)
        .env("BILLSTREAM__KAFKA__GROUP_ID", group)
        .env("BILLSTREAM__STORE__PATH", store)
        .env("BILLSTREAM__BATCH__MAX_WAIT", "200ms")
        // Metrics on a port of the system's choosing (tests run several
        // processors at once); a test that reads them sets its own.
        .env("BILLSTREAM__METRICS__LISTEN", "127.0.0.1:0")
        // A producer queue smaller than a batch's outputs: publishing must
        // wait for room instead of failing (the default holds 100,000).
        .env(
            "BILLSTREAM__KAFKA__PROPERTIES__QUEUE.BUFFERING.MAX.MESSAGES",
            "\"16\"",
        );
    scylla_store_env(&mut c, store);
    c
}

/// The CQL store a test's `billstream` commands use, when they use one:
/// its nodes (`BILLSTREAM_SCYLLA_NODES`: the Cassandra the test command
/// starts, or a ScyllaDB) and a keyspace named after the test's store
/// folder, so a restarted member finds the same state. A test asks for it
/// by naming its store folder `cql…` (`setup_cql`); with
/// `BILLSTREAM_TEST_STORE=scylla` every Kafka test does. `setup_with`
/// creates the keyspace with `billstream migrate`.
pub(crate) fn cql_store(store: &std::path::Path) -> Option<ScyllaSettings> {
    let asked = store
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("cql"));
    if !asked && std::env::var("BILLSTREAM_TEST_STORE").as_deref() != Ok("scylla") {
        return None;
    }
    let nodes = std::env::var("BILLSTREAM_SCYLLA_NODES")
        .expect("a CQL store needs BILLSTREAM_SCYLLA_NODES (scripts/test.sh sets it)");
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(store, &mut hasher);
    Some(ScyllaSettings {
        nodes: nodes.split(',').map(|n| n.trim().to_string()).collect(),
        keyspace: format!("billstream_e2e_{:016x}", std::hash::Hasher::finish(&hasher)),
        replication: Replication::Simple { factor: 1 },
        local_datacenter: None,
        dedup_ttl: Duration::from_secs(36 * 86_400),
        // The test command's Cassandra runs with PasswordAuthenticator.
        auth: std::env::var("BILLSTREAM_SCYLLA_USERNAME")
            .ok()
            .map(|username| BasicAuth {
                username,
                password: std::env::var("BILLSTREAM_SCYLLA_PASSWORD").unwrap_or_default(),
            }),
        tls_ca_file: None,
    })
}

/// Points `c` at the test's CQL store (`cql_store`), if it uses one.
pub(crate) fn scylla_store_env(c: &mut Command, store: &std::path::Path) -> bool {
    let Some(cql) = cql_store(store) else {
        return false;
    };
    let list: Vec<String> = cql.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    c.env("BILLSTREAM__STORE__KIND", "scylla")
        .env(
            "BILLSTREAM__STORE__SCYLLA_NODES",
            format!("[{}]", list.join(",")),
        )
        .env("BILLSTREAM__STORE__KEYSPACE", cql.keyspace)
        .env("BILLSTREAM__STORE__REPLICATION_CLASS", "SimpleStrategy")
        .env("BILLSTREAM__STORE__REPLICATION_FACTOR", "1");
    if let Some(auth) = cql.auth {
        c.env("BILLSTREAM__STORE__USERNAME", auth.username)
            .env("BILLSTREAM__STORE__PASSWORD", auth.password);
    }
    true
}

/// Stops the processor with SIGTERM when dropped (and kills it if needed).
pub(crate) struct Running(pub Child);

impl Running {
    /// `billstream run` as `command` configures it, its log on this
    /// test's stderr.
    pub(crate) fn start(command: &mut Command) -> Running {
        Running(
            command
                .arg("run")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.0.kill();
                panic!("billstream run did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
    }
}

pub(crate) fn decode_output(catalog: &Catalog, bytes: &[u8]) -> BTreeMap<String, Value> {
    let (id, body) = framing::split(bytes).expect("framed");
    let entry = catalog.by_id(id).expect("known schema id");
    match apache_avro::from_avro_datum(&entry.schema, &mut &body[..], None).expect("valid avro") {
        Value::Record(fields) => fields.into_iter().collect(),
        other => panic!("not a record: {other:?}"),
    }
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Union(_, inner) => text(inner),
        other => format!("{other:?}"),
    }
}

/// What each test owns: its topics (a unique prefix), consumer group and
/// store folder, with the topics created through `billstream topics create`.
pub(crate) struct Setup {
    pub brokers: String,
    pub prefix: String,
    pub group: String,
    pub _dir: tempfile::TempDir,
    pub store: std::path::PathBuf,
}

pub(crate) fn setup(tag: &str) -> Option<Setup> {
    setup_with(tag, 1)
}

pub(crate) fn setup_with(tag: &str, partitions: u32) -> Option<Setup> {
    setup_in(tag, partitions, "state")
}

/// As `setup_with`, with the state in a keyspace of the CQL store the test
/// command starts (`cql_store`); `None` (test not run) without a broker or
/// without `BILLSTREAM_SCYLLA_NODES`.
pub(crate) fn setup_cql(tag: &str, partitions: u32) -> Option<Setup> {
    if std::env::var_os("BILLSTREAM_SCYLLA_NODES").is_none() {
        eprintln!("BILLSTREAM_SCYLLA_NODES is not set (scripts/test.sh starts Cassandra and sets it); not run");
        return None;
    }
    setup_in(tag, partitions, "cql-state")
}

fn setup_in(tag: &str, partitions: u32, store_folder: &str) -> Option<Setup> {
    let Some(brokers) = brokers() else {
        eprintln!("kafka_e2e: BILLSTREAM_TEST_BROKERS is not set (scripts/test.sh starts Kafka and sets it); not run");
        return None;
    };
    let suffix = format!("{tag}{}", std::process::id());
    let (prefix, group) = (format!("{suffix}."), format!("billstream-{suffix}"));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(store_folder);
    output_ok(
        billstream(&prefix, &group, &store, &brokers).args([
            "topics",
            "create",
            "--partitions",
            &partitions.to_string(),
        ]),
        "topics create",
    );
    let mut migrate = billstream(&prefix, &group, &store, &brokers);
    if scylla_store_env(&mut migrate, &store) {
        output_ok(migrate.arg("migrate"), "migrate");
    }
    Some(Setup {
        brokers,
        prefix,
        group,
        _dir: dir,
        store,
    })
}

/// The output of `command` run to its end; panics with `what` and the
/// command's stderr unless it succeeded.
pub(crate) fn output_ok(command: &mut Command, what: &str) -> std::process::Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Instants on the wall clock (the processing clock of `run`): the start
/// of this month (UTC), and two hours ago but at least two minutes after
/// that start: usage whose hourly rollup has closed, so it is emitted at
/// once.
pub(crate) fn month_start_and_used_at() -> (Timestamp, Timestamp) {
    let now = Timestamp::from_datetime(chrono::Utc::now());
    let month_start =
        Timestamp::parse_rfc3339(&format!("{}-01T00:00:00Z", &now.to_rfc3339()[..7])).unwrap();
    let used_at = Timestamp((now.0 - 2 * 3_600_000_000).max(month_start.0 + 120_000_000));
    (month_start, used_at)
}

/// A plan in EUR: `recurring_fee` a month and one per-unit charge on
/// metric `m` at `unit_price`, with no free units and no minimum spend.
pub(crate) fn per_unit_plan(plan_id: &str, recurring_fee: &str, unit_price: &str) -> Plan {
    Plan {
        plan_id: plan_id.into(),
        currency: Currency::from_code("EUR").unwrap(),
        recurring_fee: Decimal::from_str(recurring_fee).unwrap(),
        minimum_spend: Decimal::ZERO,
        version: 1,
        charges: vec![Charge {
            metric: "m".into(),
            model: Model::PerUnit,
            unit_price: Decimal::from_str(unit_price).unwrap(),
            package_size: None,
            free_units: Decimal::ZERO,
            tiers: vec![],
            aggregation: Default::default(),
        }],
    }
}

/// The command opening `account` on plan `plan_id` at `opened_at`: in EUR,
/// UTC, calendar months, the `prod` environment, taxed at `tax_rate`.
pub(crate) fn account_opened(
    event_id: &str,
    account: &str,
    plan_id: &str,
    tax_rate: &str,
    opened_at: Timestamp,
) -> Input {
    Input::Account(AccountCommand {
        event_id: event_id.into(),
        account_id: account.into(),
        occurred_at: opened_at,
        environment: Some("prod".into()),
        kind: AccountKind::AccountOpened {
            plan_id: plan_id.into(),
            currency: "EUR".into(),
            timezone: "UTC".into(),
            tax_rate: Decimal::from_str(tax_rate).unwrap(),
            billing_anchor: Anchor::Calendar,
            thresholds: Vec::new(),
            invoice_at: None,
        },
    })
}

#[test]
fn run_folds_kafka_inputs_into_invoices_charges_and_dead_letters() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("e2e")
    else {
        return;
    };

    let catalog = Catalog::shared().unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let send = |topic: &str, key: &str, payload: Vec<u8>| {
        let topic = format!("{prefix}{topic}");
        let producer = producer.clone();
        let key = key.to_string();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    let d = |s: &str| Decimal::from_str(s).unwrap();
    let acct = "acct-e2e";
    // Dates relative to the wall clock (the processing clock of `run`):
    // the account opens at the start of this month (UTC), usage two hours
    // ago, so its hourly rollup has closed and is emitted at once.
    let (month_start, used_at) = month_start_and_used_at();
    let plan = per_unit_plan("metered", "30.00", "0.50");
    let open = account_opened("open-1", acct, "metered", "0.10", month_start);
    let card = Input::Payment(PaymentEvent {
        event_id: "card-1".into(),
        account_id: acct.into(),
        occurred_at: month_start.plus(60_000_000),
        environment: Some("prod".into()),
        kind: PaymentKind::PaymentMethodAttached {
            token_ref: "psp:tok_1".into(),
            brand: "visa".into(),
            last4: "4242".into(),
            expires: "2030-01".into(),
        },
    });
    let usage = |id: &str, subject: &str, qty: &str| {
        Input::Usage(UsageRecorded {
            event_id: id.into(),
            account_id: acct.into(),
            subject: subject.into(),
            metric: "m".into(),
            quantity: d(qty),
            occurred_at: used_at,
            environment: "prod".into(),
            attributes: Default::default(),
        })
    };
    let cloud_event = format!(
        r#"{{"specversion":"1.0","type":"billing.usage.v1","source":"/test","id":"u-ce","time":"{used}","data":{{"event_id":"u-ce","account_id":"{acct}","subject":"app-2","metric":"m","quantity":"4","occurred_at":"{used}","environment":"prod","attributes":{{}}}}}}"#,
        used = used_at.to_rfc3339()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The price book and the account exist before usage arrives (Kafka
    // orders records only within one topic's partition).
    rt.block_on(async {
        send(
            "billing.plans.v1",
            "metered",
            catalog.encode_plan(&plan).unwrap(),
        )
        .await;
        send(
            "billing.accounts.v1",
            acct,
            catalog.encode_input(&open).unwrap(),
        )
        .await;
        send(
            "billing.payments.v1",
            acct,
            catalog.encode_input(&card).unwrap(),
        )
        .await;
    });

    let metrics_addr = free_local_addr();
    let running = Running::start(
        billstream(&prefix, &group, &store, &brokers)
            .env("BILLSTREAM__METRICS__LISTEN", &metrics_addr)
            .env("BILLSTREAM__KAFKA__ID_HEADERS", "true"),
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{group}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let out = |t: &str| format!("{prefix}{t}");
    let (invoices, charges, dlq, rollups) = (
        out("billing.invoices.v1"),
        out("billing.charges.v1"),
        out("billing.dlq.v1"),
        out("billing.usage-rollups.v1"),
    );
    consumer
        .subscribe(&[&invoices, &charges, &dlq, &rollups])
        .unwrap();
    let mut seen: BTreeMap<String, Vec<BTreeMap<String, Value>>> = BTreeMap::new();
    let poll = |seen: &mut BTreeMap<String, Vec<BTreeMap<String, Value>>>| {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            let record = decode_output(catalog, m.payload().unwrap());
            // kafka.id_headers: the ids in the headers are the payload's.
            assert_eq!(header_of(&m, "event_id"), Some(text(&record["event_id"])));
            assert_eq!(
                header_of(&m, "causation_id"),
                Some(text(&record["causation_id"]))
            );
            seen.entry(m.topic().to_string()).or_default().push(record);
        }
    };
    // The account is open once its first draft invoice is announced.
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.get(&invoices).is_none_or(|v| v.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the account was not opened within 90 s"
        );
        poll(&mut seen);
    }
    rt.block_on(async {
        send(
            "billing.usage.v1",
            acct,
            catalog.encode_input(&usage("u-1", "app-1", "10")).unwrap(),
        )
        .await;
        // The same event again: a duplicate, ignored.
        send(
            "billing.usage.v1",
            acct,
            catalog.encode_input(&usage("u-1", "app-1", "10")).unwrap(),
        )
        .await;
        send("billing.usage.v1", acct, cloud_event.into_bytes()).await;
        let card_in_subject = usage("u-card", "4111 1111 1111 1111", "1");
        send(
            "billing.usage.v1",
            acct,
            catalog.encode_input(&card_in_subject).unwrap(),
        )
        .await;
        send("billing.usage.v1", acct, b"\x07garbage".to_vec()).await;
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let done = seen.get(&charges).is_some_and(|v| !v.is_empty())
            && seen.get(&dlq).is_some_and(|v| v.len() >= 2)
            && seen.get(&rollups).is_some_and(|v| v.len() >= 2);
        if done {
            break;
        }
        poll(&mut seen);
    }
    // What the instance says about itself, before it stops.
    let (ready_status, _) = http_get(&metrics_addr, "/readyz");
    assert_eq!(ready_status, 200, "/readyz once partitions are assigned");
    let (health_status, _) = http_get(&metrics_addr, "/healthz");
    assert_eq!(health_status, 200);
    // A batch is counted once its outputs are acknowledged, which the loop
    // checks on its next turn (at most an idle wait later): scrape until
    // the last batch's dead letters show.
    let scrape_until = Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let (metrics_status, metrics) = http_get(&metrics_addr, "/metrics");
        assert_eq!(metrics_status, 200);
        let settled = metrics.contains("billstream_dead_letters_total{reason=\"bad_magic\"}")
            && metrics.contains("billstream_dead_letters_total{reason=\"card_number\"}");
        if settled || Instant::now() > scrape_until {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} not in /metrics:\n{metrics}"))
    };
    assert_eq!(
        value("billstream_dead_letters_total{reason=\"bad_magic\"}"),
        1.0
    );
    assert_eq!(
        value("billstream_dead_letters_total{reason=\"card_number\"}"),
        1.0
    );
    assert_eq!(
        value("billstream_invoices_issued_total{currency=\"EUR\"}"),
        1.0
    );
    assert_eq!(
        value("billstream_invoiced_amount_total{currency=\"EUR\"}"),
        33.0
    );
    assert_eq!(
        value("billstream_charge_requests_total{attempt=\"1\"}"),
        1.0
    );
    assert_eq!(value("billstream_ready"), 1.0);
    assert!(value("billstream_records_processed_total{outcome=\"applied\"}") >= 4.0);
    assert_eq!(
        value("billstream_records_processed_total{outcome=\"duplicate\"}"),
        1.0
    );
    assert!(
        value(&format!(
            "billstream_records_consumed_total{{topic=\"{prefix}billing.usage.v1\"}}"
        )) >= 4.0
    );
    assert!(value("billstream_store_operations_total{op=\"commit\",outcome=\"ok\"}") >= 1.0);
    let status = running.stop();
    assert!(status.success(), "billstream run exited with {status}");

    // Opening at the start of the month issues the month's fee in advance:
    // 30.00 + 10% tax = 33.00; attaching the card then requests the charge.
    let issued: Vec<_> = seen
        .get(&invoices)
        .into_iter()
        .flatten()
        .filter(|r| r.contains_key("lines"))
        .collect();
    assert_eq!(issued.len(), 1, "one invoice issued: {issued:?}");
    assert_eq!(text(&issued[0]["invoice_id"]), format!("inv_{acct}_00001"));
    assert_eq!(text(&issued[0]["total"]), "33.00");
    let charge = &seen.get(&charges).expect("a charge request")[0];
    assert_eq!(
        text(&charge["charge_id"]),
        format!("inv_{acct}_00001/attempt-1")
    );
    assert_eq!(text(&charge["amount"]), "33.00");
    assert_eq!(text(&charge["token_ref"]), "psp:tok_1");
    // Usage: 10 (Avro; its duplicate ignored) on app-1, 4 (CloudEvents) on app-2.
    let mut rolled: Vec<(String, String, String)> = seen
        .get(&rollups)
        .into_iter()
        .flatten()
        .map(|r| {
            (
                text(&r["subject"]),
                text(&r["quantity"]),
                format!("{:?}", r["count"]),
            )
        })
        .collect();
    rolled.sort();
    assert_eq!(
        rolled,
        vec![
            ("app-1".into(), "10".into(), "Long(1)".into()),
            ("app-2".into(), "4".into(), "Long(1)".into())
        ]
    );
    let mut kinds: Vec<String> = seen
        .get(&dlq)
        .into_iter()
        .flatten()
        .map(|r| text(&r["error_kind"]))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["bad_magic".to_string(), "card_number".to_string()]
    );
}

/// A 127.0.0.1 address with a port free right now.
pub(crate) fn free_local_addr() -> String {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().to_string()
}

/// A plain HTTP/1.0 GET: (status, body).
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The `event_id` of an output record: its header with `kafka.id_headers`,
/// else read from the payload (every output schema has the field).
pub(crate) fn event_id_of(m: &impl Message) -> String {
    header_of(m, "event_id").unwrap_or_else(|| {
        let record = decode_output(Catalog::shared().unwrap(), m.payload().unwrap_or_default());
        text(&record["event_id"])
    })
}

/// A header's value as text, if the record has it.
pub(crate) fn header_of(m: &impl Message, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).to_string())
    })
}

/// Records to produce: (topic without prefix, key, payload).
pub(crate) type Records = Vec<(String, String, Vec<u8>)>;

/// The `metered` plan (EUR, 0.01 per unit of `m`, no fee) and the openings
/// of `acct-0`…`acct-{accounts-1}` at `opened_at`.
pub(crate) fn metered_plan_and_accounts(
    catalog: &Catalog,
    accounts: usize,
    opened_at: Timestamp,
) -> Records {
    let plan = per_unit_plan("metered", "0", "0.01");
    let mut records = vec![(
        "billing.plans.v1".to_string(),
        "metered".to_string(),
        catalog.encode_plan(&plan).unwrap(),
    )];
    for a in 0..accounts {
        let open = account_opened(
            &format!("open-{a}"),
            &format!("acct-{a}"),
            "metered",
            "0",
            opened_at,
        );
        records.push((
            "billing.accounts.v1".into(),
            format!("acct-{a}"),
            catalog.encode_input(&open).unwrap(),
        ));
    }
    records
}

/// `n` usage events `u-0`… of one unit of `m`, spread over the accounts
/// of `metered_plan_and_accounts` in turn, on subjects `app-0..2`.
pub(crate) fn metered_usage(
    catalog: &Catalog,
    accounts: usize,
    n: usize,
    at: Timestamp,
) -> Records {
    (0..n)
        .map(|i| {
            let a = i % accounts;
            let u = Input::Usage(UsageRecorded {
                event_id: format!("u-{i}"),
                account_id: format!("acct-{a}"),
                subject: format!("app-{}", i % 3),
                metric: "m".into(),
                quantity: Decimal::ONE,
                occurred_at: at,
                environment: "prod".into(),
                attributes: Default::default(),
            });
            (
                "billing.usage.v1".to_string(),
                format!("acct-{a}"),
                catalog.encode_input(&u).unwrap(),
            )
        })
        .collect()
}

/// Produce `records` under the topic `prefix` and wait for every ack.
pub(crate) fn produce(brokers: &str, prefix: &str, records: &Records) {
    produce_with(brokers, prefix, records, &[]);
}

/// `produce` with extra librdkafka properties (`security.protocol`…).
pub(crate) fn produce_with(
    brokers: &str,
    prefix: &str,
    records: &Records,
    properties: &[(&str, &str)],
) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        // The partitioner billstream checks input records against by
        // default (`kafka.input_partitioner = "murmur2"`).
        .set("partitioner", "murmur2_random");
    for (k, v) in properties {
        config.set(*k, *v);
    }
    let producer: FutureProducer = config.create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for chunk in records.chunks(5000) {
            let mut pending = Vec::with_capacity(chunk.len());
            for (topic, key, payload) in chunk {
                let topic = format!("{prefix}{topic}");
                let record = FutureRecord::to(&topic).key(key).payload(payload);
                pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            }
            for p in pending {
                p.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    });
}

/// Read every record of `topic` from the beginning until `done` says so
/// or the deadline passes.
pub(crate) fn read_until(
    brokers: &str,
    group: &str,
    topic: &str,
    deadline: Duration,
    done: impl FnMut(&[(String, Vec<u8>)]) -> bool,
) -> Vec<(String, Vec<u8>)> {
    read_until_with(brokers, group, topic, deadline, &[], done)
}

/// `read_until` with extra librdkafka properties (`security.protocol`…).
pub(crate) fn read_until_with(
    brokers: &str,
    group: &str,
    topic: &str,
    deadline: Duration,
    properties: &[(&str, &str)],
    mut done: impl FnMut(&[(String, Vec<u8>)]) -> bool,
) -> Vec<(String, Vec<u8>)> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest");
    for (k, v) in properties {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = Vec::new();
    let end = Instant::now() + deadline;
    while Instant::now() < end && !done(&records) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(300)) {
            records.push((event_id_of(&m), m.payload().unwrap_or_default().to_vec()));
        }
    }
    records
}

/// (account, type, causation id) of journal entries, each with the number
/// of entries (distinct entry ids) that have it.
pub(crate) type Journal = BTreeMap<(String, String, String), usize>;

/// The journal of the topics under `prefix`, read from the start by
/// consumer group `group` until `want` holds or 300 s have passed.
pub(crate) fn journal_until(
    brokers: &str,
    group: &str,
    prefix: &str,
    want: &dyn Fn(&Journal) -> bool,
) -> Journal {
    let catalog = Catalog::shared().unwrap();
    let mut ids = BTreeSet::new();
    let mut entries = Journal::new();
    let mut scanned = 0;
    read_until(
        brokers,
        group,
        &format!("{prefix}billing.journal.v1"),
        // Returns as soon as `want` holds; the bound only matters on a
        // broker slowed by the crash loop running beside it.
        Duration::from_secs(300),
        |r| {
            for (id, payload) in &r[scanned..] {
                if ids.insert(id.clone()) {
                    let e = decode_output(catalog, payload);
                    *entries
                        .entry((
                            text(&e["account_id"]),
                            text(&e["type"]),
                            text(&e["causation_id"]),
                        ))
                        .or_default() += 1;
                }
            }
            scanned = r.len();
            want(&entries)
        },
    );
    entries
}

#[test]
fn run_killed_mid_batch_resumes_without_applying_anything_twice() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("k")
    else {
        return;
    };

    let catalog = Catalog::shared().unwrap();
    let (month_start, used_at) = month_start_and_used_at();
    const ACCOUNTS: usize = 20;
    const USAGE: usize = 4000;
    let setup = metered_plan_and_accounts(catalog, ACCOUNTS, month_start);
    produce(&brokers, &prefix, &setup);

    let spawn = |group: &str| {
        Running::start(
            billstream(&prefix, group, &store, &brokers)
                .env("BILLSTREAM__BATCH__MAX_RECORDS", "500")
                // The killed instance stays a group member until its session
                // times out; keep that short so the restart gets the partition.
                .env("BILLSTREAM__KAFKA__SESSION_TIMEOUT", SESSION_TIMEOUT)
                .env("BILLSTREAM__KAFKA__MAX_POLL_INTERVAL", "60s"),
        )
    };
    let first = spawn(&group);
    let journal = format!("{prefix}billing.journal.v1");
    // Wait until every account is open (one account_opened journal entry each).
    let opened = read_until(
        &brokers,
        &format!("{group}-r1"),
        &journal,
        Duration::from_secs(90),
        |r| r.len() >= ACCOUNTS * 2,
    );
    assert!(
        opened.len() >= ACCOUNTS * 2,
        "accounts not opened: {} journal records",
        opened.len()
    );

    let usage = metered_usage(catalog, ACCOUNTS, USAGE, used_at);
    produce(&brokers, &prefix, &usage);
    // Let it get some way into the stream, then kill -9 mid-flight.
    std::thread::sleep(Duration::from_millis(700));
    let mut first = first;
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    // The restart joins the same group once the killed member's session has
    // expired (see `SESSION_EXPIRY`), and resumes from the committed offsets;
    // what was applied but not committed before the crash is redelivered
    // and must be skipped.
    std::thread::sleep(SESSION_EXPIRY);
    let second = spawn(&group);
    // Until every usage event shows up as applied (reading incrementally).
    let mut scanned = 0;
    let mut causes = std::collections::BTreeSet::new();
    let all = read_until(
        &brokers,
        &format!("{group}-r2"),
        &journal,
        Duration::from_secs(120),
        |r| {
            for (_, payload) in &r[scanned..] {
                let record = decode_output(catalog, payload);
                if record.get("type").map(text).as_deref() == Some("usage_applied") {
                    causes.insert(text(&record["causation_id"]));
                }
            }
            scanned = r.len();
            causes.len() >= USAGE
        },
    );
    let status = second.stop();
    assert!(status.success(), "second run exited with {status}");

    // Every usage event applied exactly once: one usage_applied entry per
    // input event id; a journal record seen twice is the same record.
    let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut applied: BTreeMap<String, String> = BTreeMap::new();
    for (id, payload) in &all {
        if let Some(previous) = by_id.insert(id.clone(), payload.clone()) {
            assert_eq!(
                &previous, payload,
                "output {id} republished with a different payload"
            );
        }
        let record = decode_output(catalog, payload);
        if record.get("type").map(text).as_deref() == Some("usage_applied") {
            let cause = text(&record["causation_id"]);
            if let Some(other) = applied.insert(cause.clone(), id.clone()) {
                assert_eq!(other, *id, "input {cause} applied twice");
            }
        }
    }
    assert_eq!(applied.len(), USAGE, "every usage event applied once");
}

/// Issue 3: bad records of every kind the engine rejects (all of
/// `Rejection::KINDS`), an invalid plan, and undecodable bytes of every
/// `DecodeError` kind a producer can send all arrive in the DLQ, each with
/// its source topic, partition, offset, key, kind and original bytes
/// (card digits masked); a good usage record produced after them, on the
/// same account and partition, is applied.
#[test]
fn every_rejected_and_undecodable_record_reaches_the_dlq_and_processing_continues() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("dlq")
    else {
        return;
    };
    const REJECTION_KINDS: [&str; 20] = [
        "conflict",
        "from_future",
        "before_account_opened",
        "account_closed",
        "unknown_account",
        "account_already_open",
        "unknown_plan",
        "unknown_metric",
        "invalid_quantity",
        "invalid_amount",
        "currency_mismatch",
        "card_number",
        "wrong_environment",
        "unknown_charge",
        "invalid_field",
        "too_late",
        "refund_exceeds_credit",
        "too_many_grants",
        "unknown_payment_method",
        "key_mismatch",
    ];
    // Every `DecodeError::kind()` a producer can cause without a Schema
    // Registry (`incompatible_schema` needs one: tests/schema_registry.rs).
    const DECODE_KINDS: [&str; 7] = [
        "too_short",
        "bad_magic",
        "unknown_schema_id",
        "body_mismatch",
        "invalid_field",
        "bad_json",
        "not_cloud_event",
    ];
    // `wrong_partition` needs a topic of two partitions or more (every
    // key hashes to partition 0 of one):
    // kafka_partitions::a_record_a_producer_put_in_another_partition_….
    const NEEDS_PARTITIONS: [&str; 1] = ["wrong_partition"];
    assert_eq!(
        Rejection::KINDS.iter().copied().collect::<BTreeSet<_>>(),
        REJECTION_KINDS
            .into_iter()
            .chain(NEEDS_PARTITIONS)
            .collect(),
        "Rejection::KINDS changed: give this test a record for the new kind"
    );
    assert_eq!(
        Rejection::KINDS.len(),
        REJECTION_KINDS.len() + NEEDS_PARTITIONS.len()
    );
    // `KINDS` is a list kept by hand: a new `Rejection` variant stops this
    // match from compiling until the lists here and a record below cover it.
    fn _every_variant_is_listed(r: &Rejection) {
        use Rejection::*;
        match r {
            Conflict { .. }
            | FromFuture { .. }
            | BeforeAccountOpened { .. }
            | AccountClosed { .. }
            | UnknownAccount { .. }
            | AccountAlreadyOpen { .. }
            | UnknownPlan { .. }
            | UnknownMetric { .. }
            | InvalidQuantity { .. }
            | InvalidAmount { .. }
            | CurrencyMismatch { .. }
            | CardNumber { .. }
            | WrongEnvironment { .. }
            | UnknownCharge { .. }
            | InvalidField { .. }
            | TooLate { .. }
            | TooOld { .. }
            | RefundExceedsCredit { .. }
            | TooManyGrants { .. }
            | UnknownPaymentMethod { .. }
            | KeyMismatch { .. }
            | WrongPartition { .. } => {}
        }
    }

    /// Who refuses the record: the engine (a `Rejection`), the decoder (a
    /// `DecodeError`) or the price book (a plan that does not validate).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Origin {
        Engine,
        Decode,
        Plan,
    }
    /// A bad input as produced, and the kind its dead letter must carry.
    struct Bad {
        key: String,
        kind: &'static str,
        origin: Origin,
        payload: Vec<u8>,
    }
    /// (account, type, causation id) of journal entries.
    type Entries = Journal;
    fn has(entries: &Entries, account: &str, kind: &str, cause: &str) -> bool {
        entries.contains_key(&(account.to_string(), kind.to_string(), cause.to_string()))
    }

    let catalog = Catalog::shared().unwrap();
    let d = |s: &str| Decimal::from_str(s).unwrap();
    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    // The processing clock is frozen, so "from the future" and "too late"
    // do not depend on when the test runs.
    const CLOCK: &str = "2026-03-15T12:00:00Z";
    const RECENT: &str = "2026-03-15T10:00:00Z";
    // `a` opened in October 2025: at the clock, October is older than the
    // 35-day late window. `b` is closed; `nobody`
    // was never opened.
    let (a, b, nobody) = ("acct-dlq-a", "acct-dlq-b", "acct-dlq-nobody");
    let plan = |plan_id: &str, fee: &str| per_unit_plan(plan_id, fee, "0.50");
    let opened = |id: &str, account: &str, opened_at: &str| {
        account_opened(id, account, "metered", "0", at(opened_at))
    };
    let command = |id: &str, account: &str, occurred: &str, kind: AccountKind| {
        Input::Account(AccountCommand {
            event_id: id.into(),
            account_id: account.into(),
            occurred_at: at(occurred),
            environment: Some("prod".into()),
            kind,
        })
    };
    let payment = |id: &str, kind: PaymentKind| {
        Input::Payment(PaymentEvent {
            event_id: id.into(),
            account_id: a.into(),
            occurred_at: at(RECENT),
            environment: Some("prod".into()),
            kind,
        })
    };
    // Recent usage in this instance's environment; `..usage(…)` for others.
    let usage = |id: &str, account: &str, metric: &str, qty: &str| UsageRecorded {
        event_id: id.into(),
        account_id: account.into(),
        subject: "app-1".into(),
        metric: metric.into(),
        quantity: d(qty),
        occurred_at: at(RECENT),
        environment: "prod".into(),
        attributes: Default::default(),
    };
    let enc = |input: &Input| catalog.encode_input(input).unwrap();
    let enc_usage = |u: UsageRecorded| enc(&Input::Usage(u));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // One record, acknowledged before the next is sent: (topic, partition, offset).
    let send = |topic: &str, key: &str, payload: &[u8]| {
        let topic = format!("{prefix}{topic}");
        let record = FutureRecord::to(&topic).key(key).payload(payload);
        let delivery = rt
            .block_on(producer.send(record, Duration::from_secs(10)))
            .map_err(|(e, _)| e)
            .unwrap();
        (topic, delivery.partition, delivery.offset)
    };
    let mut bad: BTreeMap<(String, i32, i64), Bad> = BTreeMap::new();
    let mut reject =
        |topic: &str, key: &str, kind: &'static str, origin: Origin, payload: Vec<u8>| {
            let pos = send(topic, key, &payload);
            let other = bad.insert(
                pos,
                Bad {
                    key: key.into(),
                    kind,
                    origin,
                    payload,
                },
            );
            assert!(other.is_none(), "two records at one position");
        };

    // The price book and the accounts, before the processor starts; a plan
    // that does not validate is dead-lettered when the price book is read.
    produce(
        &brokers,
        &prefix,
        &vec![
            (
                "billing.plans.v1".into(),
                "metered".into(),
                catalog.encode_plan(&plan("metered", "0")).unwrap(),
            ),
            (
                "billing.accounts.v1".into(),
                a.into(),
                enc(&opened("open-a", a, "2025-10-01T00:00:00Z")),
            ),
            (
                "billing.accounts.v1".into(),
                b.into(),
                enc(&opened("open-b", b, "2026-03-01T00:00:00Z")),
            ),
            (
                "billing.accounts.v1".into(),
                b.into(),
                enc(&command(
                    "close-b",
                    b,
                    "2026-03-02T00:00:00Z",
                    AccountKind::AccountClosed,
                )),
            ),
        ],
    );
    reject(
        "billing.plans.v1",
        "bad-plan",
        "invalid_plan",
        Origin::Plan,
        catalog.encode_plan(&plan("bad-plan", "-1")).unwrap(),
    );

    let running = Running::start(
        billstream(&prefix, &group, &store, &brokers).env("BILLSTREAM__CLOCK", CLOCK),
    );
    // (account, type, causation id) of every journal entry, read from the
    // start until `want` holds.
    let read_journal = |reader: &str, want: &dyn Fn(&Entries) -> bool| {
        journal_until(&brokers, &format!("{group}-{reader}"), &prefix, want)
    };
    // The bad records below need `a` open and `b` closed first (Kafka
    // orders records only within one topic's partition).
    let set_up = |e: &Entries| {
        has(e, a, "account_opened", "open-a") && has(e, b, "account_closed", "close-b")
    };
    assert!(
        set_up(&read_journal("setup", &set_up)),
        "accounts not set up within 300 s"
    );

    // One record per rejection kind.
    let usage_topic = "billing.usage.v1";
    // Same event id as an applied event, other payload.
    send(usage_topic, a, &enc_usage(usage("u-dup", a, "m", "1")));
    let engine = Origin::Engine;
    reject(
        usage_topic,
        a,
        "conflict",
        engine,
        enc_usage(usage("u-dup", a, "m", "2")),
    );
    reject(
        usage_topic,
        a,
        "from_future",
        engine,
        enc_usage(UsageRecorded {
            occurred_at: at("2026-03-15T13:00:00Z"),
            ..usage("u-future", a, "m", "1")
        }),
    );
    // (Inside the 35-day late window, which is checked first.)
    reject(
        usage_topic,
        b,
        "before_account_opened",
        engine,
        enc_usage(UsageRecorded {
            occurred_at: at("2026-02-20T00:00:00Z"),
            ..usage("u-before", b, "m", "1")
        }),
    );
    reject(
        usage_topic,
        b,
        "account_closed",
        engine,
        enc_usage(UsageRecorded {
            occurred_at: at("2026-03-10T00:00:00Z"),
            ..usage("u-closed", b, "m", "1")
        }),
    );
    reject(
        usage_topic,
        nobody,
        "unknown_account",
        engine,
        enc_usage(usage("u-nobody", nobody, "m", "1")),
    );
    reject(
        "billing.accounts.v1",
        a,
        "account_already_open",
        engine,
        enc(&opened("open-a-again", a, "2025-10-01T00:00:00Z")),
    );
    reject(
        "billing.accounts.v1",
        a,
        "unknown_plan",
        engine,
        enc(&command(
            "to-no-plan",
            a,
            RECENT,
            AccountKind::PlanChanged {
                plan_id: "no-such-plan".into(),
                effective: Default::default(),
                version: None,
            },
        )),
    );
    reject(
        usage_topic,
        a,
        "unknown_metric",
        engine,
        enc_usage(usage("u-metric", a, "gpu.hours", "1")),
    );
    reject(
        usage_topic,
        a,
        "invalid_quantity",
        engine,
        enc_usage(usage("u-negative", a, "m", "-1")),
    );
    let payments = "billing.payments.v1";
    reject(
        payments,
        a,
        "invalid_amount",
        engine,
        enc(&payment(
            "top-up-fraction",
            PaymentKind::CreditToppedUp {
                amount: d("0.001"),
                currency: "EUR".into(),
                grant: Default::default(),
            },
        )),
    );
    reject(
        payments,
        a,
        "currency_mismatch",
        engine,
        enc(&payment(
            "top-up-usd",
            PaymentKind::CreditToppedUp {
                amount: d("10.00"),
                currency: "USD".into(),
                grant: Default::default(),
            },
        )),
    );
    // As CloudEvents JSON: the dead letter keeps the text, digits masked.
    let card = format!(
        r#"{{"specversion":"1.0","type":"billing.usage.v1","source":"/test","id":"u-card","time":"{RECENT}","data":{{"event_id":"u-card","account_id":"{a}","subject":"card 4111 1111 1111 1111","metric":"m","quantity":"1","occurred_at":"{RECENT}","environment":"prod","attributes":{{}}}}}}"#
    );
    reject(usage_topic, a, "card_number", engine, card.into_bytes());
    reject(
        usage_topic,
        a,
        "wrong_environment",
        engine,
        enc_usage(UsageRecorded {
            environment: "staging".into(),
            ..usage("u-staging", a, "m", "1")
        }),
    );
    reject(
        payments,
        a,
        "unknown_charge",
        engine,
        enc(&payment(
            "paid-unknown",
            PaymentKind::PaymentSucceeded {
                charge_id: format!("inv_{a}_00099/attempt-1"),
                invoice_id: format!("inv_{a}_00099"),
                amount: d("10.00"),
                currency: "EUR".into(),
            },
        )),
    );
    reject(
        payments,
        a,
        "invalid_field",
        engine,
        enc(&payment(
            "card-last2",
            PaymentKind::PaymentMethodAttached {
                token_ref: "psp:tok_1".into(),
                brand: "visa".into(),
                last4: "42".into(),
                expires: "2030-01".into(),
            },
        )),
    );
    reject(
        usage_topic,
        a,
        "too_late",
        engine,
        enc_usage(UsageRecorded {
            occurred_at: at("2025-10-15T00:00:00Z"),
            ..usage("u-october", a, "m", "1")
        }),
    );
    reject(
        payments,
        a,
        "refund_exceeds_credit",
        engine,
        enc(&payment(
            "refund",
            PaymentKind::PaymentRefunded {
                amount: d("5.00"),
                currency: "EUR".into(),
                reason: "goodwill".into(),
            },
        )),
    );
    // 32 promotional grants (billing.max_credit_grants), one per priority
    // (promotional credit is never refunded: the refund above stays
    // refused whatever the order); the 33rd priority needs one more.
    let grant_top_up = |priority: i32| {
        enc(&payment(
            &format!("grant-{priority}"),
            PaymentKind::CreditToppedUp {
                amount: d("0.01"),
                currency: "EUR".into(),
                grant: billstream::engine::credit::GrantTerms {
                    kind: billstream::engine::credit::GrantKind::Promotional,
                    expires_at: None,
                    priority,
                },
            },
        ))
    };
    for priority in 0..32 {
        send(payments, a, &grant_top_up(priority));
    }
    reject(payments, a, "too_many_grants", engine, grant_top_up(32));
    reject(
        payments,
        a,
        "unknown_payment_method",
        engine,
        enc(&payment(
            "detach",
            PaymentKind::PaymentMethodDetached {
                token_ref: "psp:tok_unknown".into(),
            },
        )),
    );

    // `a`'s usage under `nobody`'s key: on `nobody`'s partition, perhaps
    // another owner's; refused before it reaches any account.
    reject(
        usage_topic,
        nobody,
        "key_mismatch",
        engine,
        enc_usage(usage("u-mis-keyed", a, "m", "1")),
    );

    // One record per decode error kind, on every input topic.
    let decode = Origin::Decode;
    reject("billing.accounts.v1", a, "too_short", decode, vec![0, 0, 0]);
    reject(payments, a, "bad_magic", decode, b"\x07garbage".to_vec());
    reject(
        usage_topic,
        a,
        "unknown_schema_id",
        decode,
        vec![0, 0, 0, 3, 232, 1],
    );
    let whole = enc_usage(usage("u-truncated", a, "m", "1.5"));
    reject(
        usage_topic,
        a,
        "body_mismatch",
        decode,
        whole[..whole.len() - 1].to_vec(),
    );
    // "1.5" patched into "1x5" in place: the same length, not a decimal.
    let mut patched = whole;
    let dot = patched.windows(3).position(|w| w == b"1.5").unwrap() + 1;
    patched[dot] = b'x';
    reject(usage_topic, a, "invalid_field", decode, patched);
    reject(usage_topic, a, "bad_json", decode, b"{oops".to_vec());
    reject(
        usage_topic,
        a,
        "not_cloud_event",
        decode,
        br#"{"specversion":"0.3"}"#.to_vec(),
    );

    // The good record, after every bad one, on the account most of them named.
    send(usage_topic, a, &enc_usage(usage("u-good", a, "m", "3")));

    // The table covers every kind, each exactly once.
    let kinds_of = |origin: Origin| -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = bad
            .values()
            .filter(|x| x.origin == origin)
            .map(|x| x.kind)
            .collect();
        kinds.sort();
        kinds
    };
    let sorted = |mut kinds: Vec<&'static str>| {
        kinds.sort();
        kinds
    };
    assert_eq!(kinds_of(Origin::Engine), sorted(REJECTION_KINDS.to_vec()));
    assert_eq!(kinds_of(Origin::Decode), sorted(DECODE_KINDS.to_vec()));

    let dlq = format!("{prefix}billing.dlq.v1");
    // Outputs are published at least once under stable ids: count ids.
    let dead = read_until(
        &brokers,
        &format!("{group}-dlq"),
        &dlq,
        Duration::from_secs(120),
        |r| r.iter().map(|(id, _)| id).collect::<BTreeSet<_>>().len() >= bad.len(),
    );
    let entries = read_journal("after", &|e: &Entries| has(e, a, "usage_applied", "u-good"));
    let status = running.stop();
    assert!(status.success(), "billstream run exited with {status}");

    // Processing went on past every bad record: the good one was applied,
    // as was the first of the conflicting pair.
    assert!(
        has(&entries, a, "usage_applied", "u-good"),
        "the good usage after the bad records was not applied"
    );
    assert!(has(&entries, a, "usage_applied", "u-dup"));

    let mut letters: BTreeMap<(String, i32, i64), BTreeMap<String, Value>> = BTreeMap::new();
    for (_, payload) in &dead {
        let r = decode_output(catalog, payload);
        let pos = (
            text(&r["source_topic"]),
            match r["partition"] {
                Value::Int(p) => p,
                ref other => panic!("partition {other:?}"),
            },
            match r["offset"] {
                Value::Long(o) => o,
                ref other => panic!("offset {other:?}"),
            },
        );
        if let Some(other) = letters.insert(pos.clone(), r.clone()) {
            assert_eq!(other, r, "two different dead letters for {pos:?}");
        }
    }
    // Exactly one dead letter per bad record, at its position, of its kind.
    let want: BTreeMap<_, _> = bad
        .iter()
        .map(|(pos, x)| (pos.clone(), x.kind.to_string()))
        .collect();
    let got: BTreeMap<_, _> = letters
        .iter()
        .map(|(pos, r)| (pos.clone(), text(&r["error_kind"])))
        .collect();
    assert_eq!(
        got, want,
        "dead letters by (source topic, partition, offset)"
    );
    for (pos, sent) in &bad {
        let r = &letters[pos];
        let what = format!("{} dead letter", sent.kind);
        assert_eq!(text(&r["key"]), sent.key, "key of the {what}");
        assert_eq!(
            text(&r["causation_id"]),
            format!("{}/{}/{}", pos.0, pos.1, pos.2),
            "causation of the {what}"
        );
        assert!(!text(&r["reason"]).is_empty(), "reason of the {what}");
        let payload = if sent.kind == "card_number" {
            let original = std::str::from_utf8(&sent.payload).unwrap();
            let masked = mask_card_numbers(original);
            assert!(masked.contains("card **** **** **** 1111") && masked != original);
            masked.into_bytes()
        } else {
            sent.payload.clone()
        };
        assert_eq!(r["payload"], Value::Bytes(payload), "payload of the {what}");
    }
}
