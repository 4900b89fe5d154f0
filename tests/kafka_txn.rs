//! `kafka.transactional = true` against a broker with Kafka transactions.
//!
//! Runs with `BILLSTREAM_TEST_BROKERS` (Apache Kafka 2.5 or later, for
//! transactional offset commits with group metadata: the test command's
//! Kafka 4.4).
//!
//! Transactional members are killed (`kill -9`) mid-stream and restarted
//! with the same `transactional.id` (which fences the killed producer and
//! aborts its open transaction), a second member joins and leaves (two
//! rebalances, with hand-overs), and the last member stops cleanly. A
//! `read_committed` reader then sees every journal entry exactly once: no
//! output of a committed transaction is published again by a restart, a
//! takeover or a hand-over (issue 15), every usage event is applied once,
//! and the group's committed offsets reach the end of the usage topic.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use billstream::contracts::Catalog;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka_e2e::{
    billstream, decode_output, event_id_of, metered_plan_and_accounts, metered_usage,
    month_start_and_used_at, produce, setup_cql, text, Running,
};

const ACCOUNTS: usize = 20;
const USAGE: usize = 3000;
const PARTITIONS: u32 = 2;
/// The smallest session timeout Kafka allows by default (the broker's
/// `group.min.session.timeout.ms`), so a killed member's partitions move
/// on quickly; `SESSION_EXPIRY` waits it out.
const SESSION_TIMEOUT: &str = "6s";
const SESSION_EXPIRY: Duration = Duration::from_secs(7);

#[test]
fn transactional_members_killed_restarted_and_rebalanced_publish_each_output_exactly_once() {
    let Some(setup) = setup_cql("txn", PARTITIONS) else {
        return;
    };
    let catalog = Catalog::shared().unwrap();
    let (month_start, used_at) = month_start_and_used_at();
    produce(
        &setup.brokers,
        &setup.prefix,
        &metered_plan_and_accounts(catalog, ACCOUNTS, month_start),
    );
    let usage = metered_usage(catalog, ACCOUNTS, USAGE, used_at);

    let spawn = |member: usize| {
        Running(
            billstream(&setup.prefix, &setup.group, &setup.store, &setup.brokers)
                .env("BILLSTREAM__KAFKA__TRANSACTIONAL", "true")
                .env(
                    "BILLSTREAM__KAFKA__TRANSACTIONAL_ID",
                    format!("{}-{member}", setup.group),
                )
                .env("BILLSTREAM__BATCH__MAX_RECORDS", "200")
                .env("BILLSTREAM__KAFKA__SESSION_TIMEOUT", SESSION_TIMEOUT)
                .arg("run")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };
    let kill = |mut running: Running| {
        running.0.kill().unwrap();
        running.0.wait().unwrap();
    };
    // Read committed (librdkafka's default isolation level): outputs of
    // aborted transactions never show.
    let journal = format!("{}billing.journal.v1", setup.prefix);
    let applied = || {
        read_all(&setup.brokers, &journal)
            .iter()
            .filter_map(|(_, payload)| {
                let record = decode_output(catalog, payload);
                (record.get("type").map(text).as_deref() == Some("usage_applied"))
                    .then(|| text(&record["causation_id"]))
            })
            .collect::<BTreeSet<_>>()
            .len()
    };
    let wait_applied = |at_least: usize| {
        let deadline = Instant::now() + Duration::from_secs(600);
        while applied() < at_least {
            assert!(
                Instant::now() < deadline,
                "fewer than {at_least} usage events applied within 600 s"
            );
        }
    };
    // Killed twice mid-stream: each restart loads state whose outputs were
    // committed in transactions the store's watermark does not know of yet.
    let first = spawn(0);
    produce(&setup.brokers, &setup.prefix, &usage[..USAGE / 2].to_vec());
    wait_applied(USAGE / 10);
    kill(first);
    std::thread::sleep(SESSION_EXPIRY);
    let second = spawn(0);
    produce(&setup.brokers, &setup.prefix, &usage[USAGE / 2..].to_vec());
    wait_applied(USAGE / 2 + USAGE / 10);
    kill(second);
    std::thread::sleep(SESSION_EXPIRY);
    // A second member joins (a rebalance: partitions handed over), and
    // leaves cleanly (another: handed back).
    let third = spawn(0);
    let other = spawn(1);
    std::thread::sleep(Duration::from_secs(8));
    let status = other.stop();
    assert!(status.success(), "second member exited with {status}");
    wait_applied(USAGE);
    let status = third.stop();
    assert!(status.success(), "last member exited with {status}");

    // Everything committed, read once more from the start.
    let records = read_all(&setup.brokers, &journal);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    for (event_id, payload) in &records {
        *seen.entry(event_id.as_str()).or_default() += 1;
        let record = decode_output(catalog, payload);
        if record.get("type").map(text).as_deref() == Some("usage_applied") {
            *applied.entry(text(&record["causation_id"])).or_default() += 1;
        }
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} of {} journal entries were published more than once (read committed), e.g. {:?}",
        repeated.len(),
        seen.len(),
        repeated.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(applied.len(), USAGE, "usage events applied");
    assert!(applied.values().all(|n| *n == 1));

    // The offsets went with the outputs: the group has committed the end
    // of every usage partition.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .set("group.id", &setup.group)
        .create()
        .unwrap();
    let usage_topic = format!("{}billing.usage.v1", setup.prefix);
    for partition in 0..PARTITIONS as i32 {
        let (_, high) = consumer
            .fetch_watermarks(&usage_topic, partition, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&usage_topic, partition);
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            committed.elements()[0].offset(),
            Offset::Offset(high),
            "committed offset of {usage_topic}[{partition}]"
        );
    }
}

/// Every committed record of `topic` (all partitions), read from the
/// start until nothing new arrives for 3 s: (event id, payload).
static READERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn read_all(brokers: &str, topic: &str) -> Vec<(String, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!(
                "reader-{}-{}",
                std::process::id(),
                READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        )
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = Vec::new();
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            records.push((event_id_of(&m), m.payload().unwrap_or_default().to_vec()));
            idle_since = Instant::now();
        }
    }
    records
}
