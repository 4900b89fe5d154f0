//! Issue 14 item 1: shadow mode. A shadow instance fed the same input as a
//! live one publishes the same invoices (byte for byte, on its shadow
//! topics), the same journal, and no charge request and no notification:
//! with the file sink (`simulate --mode shadow`) and on a real broker
//! (`run` with `run.mode = "shadow"`); `billstream reconcile` against the
//! shadow's invoices topic.
//!
//! The Kafka test needs `BILLSTREAM_TEST_BROKERS` (see tests/kafka_e2e.rs);
//! without it, it says so and does nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use billstream::contracts::Catalog;
use billstream::engine::events::*;
use billstream::engine::time::Timestamp;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;

use super::kafka_e2e::{
    account_opened, billstream, decode_output, output_ok, per_unit_plan, produce, setup, text,
    Records, Running, Setup,
};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/simulate")
}

/// The fixture events, and acct-a's card attached first (so its invoices
/// are charged).
fn events_with_a_card(dir: &Path) -> std::path::PathBuf {
    let card = r#"{"event_id":"pm-a","account_id":"acct-a","kind":"payment_method_attached","token_ref":"psp:tok_a","brand":"visa","last4":"4242","expires":"2030-01","occurred_at":"2026-03-22T00:05:00Z","environment":"prod"}"#;
    let events = std::fs::read_to_string(fixtures().join("events.jsonl")).unwrap();
    let path = dir.join("events.jsonl");
    std::fs::write(&path, format!("{card}\n{events}")).unwrap();
    path
}

/// `simulate` on the fixtures (acct-a with a card) into `out`, with
/// `extra` arguments.
fn simulate(out: &Path, extra: &[&str]) -> std::process::Output {
    let f = fixtures();
    let dir = out.parent().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .arg("simulate")
        .arg("--plans")
        .arg(f.join("plans.jsonl"))
        .arg("--accounts")
        .arg(f.join("accounts.jsonl"))
        .arg("--events")
        .arg(events_with_a_card(dir))
        .args(["--until", "2026-05-01T02:00:00Z", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "simulate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn issue_14_simulate_in_shadow_mode_writes_the_live_invoices_to_shadow_files_and_no_charge() {
    let dir = tempfile::tempdir().unwrap();
    let (live, shadow) = (dir.path().join("live"), dir.path().join("shadow"));
    simulate(&live, &[]);
    let said = simulate(&shadow, &["--mode", "shadow"]);
    let stdout = String::from_utf8_lossy(&said.stdout);
    assert!(stdout.contains("SHADOW MODE"), "{stdout}");
    // The live run charges and notifies: otherwise this proves nothing.
    assert!(lines_of(&live.join("billing.charges.v1.jsonl")) > 0);
    assert!(lines_of(&live.join("billing.notifications.v1.jsonl")) > 0);
    // The same invoices, journal, rollups and dead letters, byte for byte,
    // under the shadow names.
    for topic in [
        "billing.invoices.v1",
        "billing.journal.v1",
        "billing.usage-rollups.v1",
        "billing.dlq.v1",
    ] {
        let a = std::fs::read(live.join(format!("{topic}.jsonl"))).unwrap();
        let b = std::fs::read(shadow.join(format!("shadow.{topic}.jsonl"))).unwrap();
        assert_eq!(a, b, "{topic}");
        assert!(!shadow.join(format!("{topic}.jsonl")).exists(), "{topic}");
    }
    assert!(lines_of(&shadow.join("shadow.billing.invoices.v1.jsonl")) > 0);
    // No charge and no notification, under any name.
    let names: Vec<String> = std::fs::read_dir(&shadow)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("charges") || n.contains("notifications")),
        "{names:?}"
    );
    // A prefix of one's own.
    let custom = dir.path().join("custom");
    simulate(&custom, &["--mode", "shadow", "--shadow-prefix", "trial-"]);
    assert_eq!(
        std::fs::read(custom.join("trial-billing.invoices.v1.jsonl")).unwrap(),
        std::fs::read(live.join("billing.invoices.v1.jsonl")).unwrap()
    );
}

/// Every record of partition 0 of `topic` (payloads, in order); empty when
/// the topic does not exist.
fn all_of(brokers: &str, topic: &str) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "shadow-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let Ok((low, high)) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)) else {
        return Vec::new();
    };
    if high <= low {
        return Vec::new();
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(low))
        .unwrap();
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < high - low {
        assert!(std::time::Instant::now() < deadline, "{topic} not read");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.unwrap().payload().unwrap_or_default().to_vec());
        }
    }
    out
}

/// Wait until `topic` holds `n` `InvoiceIssued` records (with lines).
fn wait_for_issued(brokers: &str, topic: &str, n: usize) -> Vec<Vec<u8>> {
    let catalog = Catalog::shared().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let records = all_of(brokers, topic);
        let issued = records
            .iter()
            .filter(|p| decode_output(catalog, p).contains_key("lines"))
            .count();
        if issued >= n {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{issued} of {n} invoices issued on {topic} within 120 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How many `usage_applied` entries the journal topic holds.
fn usage_applied(brokers: &str, topic: &str) -> usize {
    let catalog = Catalog::shared().unwrap();
    all_of(brokers, topic)
        .iter()
        .filter(|p| text(&decode_output(catalog, p)["type"]) == "usage_applied")
        .count()
}

#[test]
fn issue_14_shadow_on_kafka_publishes_the_live_invoices_and_no_charge_and_reconciles() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("shadow")
    else {
        return;
    };
    let catalog = Catalog::shared().unwrap();
    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let acct = "acct-shadow";
    let usage = |id: &str, qty: &str| {
        Input::Usage(UsageRecorded {
            event_id: id.into(),
            account_id: acct.into(),
            subject: "app-1".into(),
            metric: "m".into(),
            quantity: Decimal::from_str(qty).unwrap(),
            occurred_at: at("2026-03-15T10:00:00Z"),
            environment: "prod".into(),
            attributes: Default::default(),
        })
    };
    let card = Input::Payment(PaymentEvent {
        event_id: "card-1".into(),
        account_id: acct.into(),
        occurred_at: at("2026-03-01T00:01:00Z"),
        environment: Some("prod".into()),
        kind: PaymentKind::PaymentMethodAttached {
            token_ref: "psp:tok_1".into(),
            brand: "visa".into(),
            last4: "4242".into(),
            expires: "2030-01".into(),
        },
    });
    let records: Records = vec![
        (
            "billing.plans.v1".into(),
            "metered".into(),
            catalog
                .encode_plan(&per_unit_plan("metered", "30.00", "0.50"))
                .unwrap(),
        ),
        (
            "billing.accounts.v1".into(),
            acct.into(),
            catalog
                .encode_input(&account_opened(
                    "open-1",
                    acct,
                    "metered",
                    "0.10",
                    at("2026-03-01T00:00:00Z"),
                ))
                .unwrap(),
        ),
        (
            "billing.payments.v1".into(),
            acct.into(),
            catalog.encode_input(&card).unwrap(),
        ),
        (
            "billing.usage.v1".into(),
            acct.into(),
            catalog.encode_input(&usage("u-1", "10")).unwrap(),
        ),
        (
            "billing.usage.v1".into(),
            acct.into(),
            catalog.encode_input(&usage("u-2", "4")).unwrap(),
        ),
        // Garbage: a dead letter, to the shadow's DLQ topic.
        (
            "billing.usage.v1".into(),
            acct.into(),
            b"\x07garbage".to_vec(),
        ),
    ];
    produce(&brokers, &prefix, &records);
    // Two phases per instance: first in March (the usage is applied to
    // March's draft), then after March is due to be issued (period end +
    // grace). A clock past March from the start would close March as the
    // account opens, before its usage is read.
    const MARCH: &str = "2026-03-20T00:00:00Z";
    const CLOCK: &str = "2026-04-02T12:00:00Z";
    let shadow_cmd = |group: &str, store: &Path, clock: &str| {
        let mut c = billstream(&prefix, group, store, &brokers);
        c.env("BILLSTREAM__RUN__MODE", "shadow")
            .env("BILLSTREAM__CLOCK", clock)
            .env("BILLSTREAM__BATCH__CHECKPOINT_EVENTS", "1");
        c
    };
    // The shadow's topics (no charges or notifications topic is made).
    let created = output_ok(
        shadow_cmd(&group, &store, CLOCK).args(["topics", "create", "--partitions", "1"]),
        "topics create (shadow)",
    );
    let created = String::from_utf8_lossy(&created.stdout).into_owned();
    assert!(
        created.contains(&format!("shadow.{prefix}billing.invoices.v1")),
        "{created}"
    );
    assert!(!created.contains("charges"), "{created}");
    let out = |t: &str| format!("{prefix}{t}");
    let shadow_out = |t: &str| format!("shadow.{prefix}{t}");
    // Phase one: until both usage events are in the journal (of `prefix`).
    let march = |command: &mut Command, journal: &str| {
        let running = Running::start(command);
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while usage_applied(&brokers, journal) < 2 {
            assert!(std::time::Instant::now() < deadline, "usage not applied");
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(running.stop().success());
    };

    // The shadow alone first: it says so loudly, issues the invoice on its
    // shadow topic, and publishes nothing to the charges and notifications
    // topics (live or shadow).
    let shadow_store = _dir.path().join("shadow-state");
    let shadow_group = format!("{group}-shadow");
    march(
        &mut shadow_cmd(&shadow_group, &shadow_store, MARCH),
        &shadow_out("billing.journal.v1"),
    );
    let mut shadow = shadow_cmd(&shadow_group, &shadow_store, CLOCK);
    let shadow_run = shadow
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut shadow_run = Running(shadow_run);
    // The opening's invoice (March's fee) and March's closing one.
    wait_for_issued(&brokers, &shadow_out("billing.invoices.v1"), 2);
    // Its dead letter is on the shadow DLQ topic.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while all_of(&brokers, &shadow_out("billing.dlq.v1")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no shadow dead letter"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let child = &mut shadow_run.0;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let shadow_log = {
        use std::io::Read;
        let mut s = String::new();
        child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    assert!(child.wait().unwrap().success(), "{shadow_log}");
    assert!(shadow_log.contains("SHADOW MODE"), "{shadow_log}");
    assert!(
        shadow_log.contains("charge requests and notifications withheld"),
        "{shadow_log}"
    );
    for topic in ["billing.charges.v1", "billing.notifications.v1"] {
        assert!(all_of(&brokers, &out(topic)).is_empty(), "{topic}");
        assert!(all_of(&brokers, &shadow_out(topic)).is_empty(), "{topic}");
    }
    assert!(all_of(&brokers, &out("billing.invoices.v1")).is_empty());
    assert!(all_of(&brokers, &out("billing.dlq.v1")).is_empty());

    // The live instance on the same input.
    let live_cmd = |clock: &str| {
        let mut c = billstream(&prefix, &group, &store, &brokers);
        c.env("BILLSTREAM__CLOCK", clock)
            .env("BILLSTREAM__BATCH__CHECKPOINT_EVENTS", "1");
        c
    };
    march(&mut live_cmd(MARCH), &out("billing.journal.v1"));
    let live = Running::start(&mut live_cmd(CLOCK));
    wait_for_issued(&brokers, &out("billing.invoices.v1"), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while all_of(&brokers, &out("billing.charges.v1")).is_empty()
        || all_of(&brokers, &out("billing.notifications.v1")).is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "live: no charge");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(live.stop().success());

    // The same invoices and journal, byte for byte.
    for topic in ["billing.invoices.v1", "billing.journal.v1"] {
        let (a, b) = (
            all_of(&brokers, &out(topic)),
            all_of(&brokers, &shadow_out(topic)),
        );
        assert!(!a.is_empty(), "{topic}");
        assert_eq!(a, b, "{topic}: live and shadow differ");
    }

    // reconcile against the shadow's invoices topic: a legacy file made of
    // the invoices as issued matches (exit 0); one line a cent off is a
    // mismatch (exit 1) naming the line and the usage events behind it,
    // within --tolerance 0.01 a match.
    let issued: Vec<BTreeMap<String, apache_avro::types::Value>> =
        all_of(&brokers, &shadow_out("billing.invoices.v1"))
            .iter()
            .map(|p| decode_output(catalog, p))
            .filter(|r| r.contains_key("lines"))
            .collect();
    // Two: the opening's (March's fee) and March's closing invoice, both
    // of period 2026-03, which reconcile sums; so does the legacy export.
    assert_eq!(issued.len(), 2);
    let dec = |v: &apache_avro::types::Value| Decimal::from_str(&text(v)).unwrap();
    let mut total = Decimal::ZERO;
    let mut lines: BTreeMap<String, Decimal> = BTreeMap::new();
    for inv in &issued {
        total += dec(&inv["total"]);
        *lines.entry("tax".into()).or_default() += dec(&inv["tax"]);
        let apache_avro::types::Value::Array(items) = &inv["lines"] else {
            panic!("lines")
        };
        for l in items {
            let apache_avro::types::Value::Record(f) = l else {
                panic!("line")
            };
            let f: BTreeMap<_, _> = f.iter().cloned().collect();
            let kind = match &f["kind"] {
                apache_avro::types::Value::Enum(_, k) => k.clone(),
                other => panic!("kind {other:?}"),
            };
            let name = if kind == "usage" {
                text(&f["metric"])
            } else {
                kind
            };
            *lines.entry(name).or_default() += dec(&f["amount"]);
        }
    }
    assert!(lines.contains_key("m"), "{lines:?}");
    let legacy = |cent: Decimal| {
        let mut csv = "account_id,period,currency,total,metric,amount\n".to_string();
        for (name, amount) in &lines {
            let amount = if name == "m" { *amount + cent } else { *amount };
            csv.push_str(&format!(
                "{acct},2026-03,EUR,{},{name},{amount}\n",
                total + cent
            ));
        }
        csv
    };
    let off = Decimal::from_str("0.01").unwrap();
    let (same, differs) = (_dir.path().join("same.csv"), _dir.path().join("off.csv"));
    std::fs::write(&same, legacy(Decimal::ZERO)).unwrap();
    std::fs::write(&differs, legacy(off)).unwrap();
    let reconcile = |file: &Path, extra: &[&str]| {
        shadow_cmd(&group, &store, CLOCK)
            .args(["reconcile", "--legacy"])
            .arg(file)
            .args(["--against", "topic", "--period", "2026-03"])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = reconcile(&same, &[]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = reconcile(&differs, &["--json"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let report: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(report["summary"]["mismatched"], 1, "{report}");
    let diff = &report["mismatches"][0]["lines"][0];
    assert_eq!(diff["line"], "m", "{report}");
    assert_eq!(diff["difference"], "-0.01", "{report}");
    let inputs: Vec<&str> = diff["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["u-1", "u-2"], "{report}");
    assert_eq!(
        reconcile(&differs, &["--tolerance", "0.01"]).status.code(),
        Some(0)
    );
}
