//! `kafka.transactional = true` against a broker with Kafka transactions.
//!
//! Runs with `BILLSTREAM_TEST_BROKERS` (Apache Kafka 2.5 or later, for
//! transactional offset commits with group metadata: the test command's
//! Kafka 4.4).
//!
//! A transactional run is killed mid-stream and restarted with the same
//! `transactional.id` (which fences the killed producer and aborts its open
//! transaction). Read committed, every usage event is applied, any
//! repeated output is identical, and the group's committed offsets reach
//! the end of the usage topic.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use billstream::contracts::Catalog;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka_e2e::{
    billstream, decode_output, metered_plan_and_accounts, metered_usage, month_start_and_used_at,
    produce, read_until, setup, text, Running, SESSION_EXPIRY, SESSION_TIMEOUT,
};

const ACCOUNTS: usize = 10;
const USAGE: usize = 3000;

#[test]
fn transactional_run_killed_and_restarted_commits_outputs_with_offsets() {
    let Some(setup) = setup("txn") else {
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

    let spawn = || {
        Running(
            billstream(&setup.prefix, &setup.group, &setup.store, &setup.brokers)
                .env("BILLSTREAM__KAFKA__TRANSACTIONAL", "true")
                .env(
                    "BILLSTREAM__KAFKA__TRANSACTIONAL_ID",
                    format!("{}-0", setup.group),
                )
                .env("BILLSTREAM__BATCH__MAX_RECORDS", "500")
                .env("BILLSTREAM__KAFKA__SESSION_TIMEOUT", SESSION_TIMEOUT)
                .arg("run")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };
    let mut first = spawn();
    produce(&setup.brokers, &setup.prefix, &usage);
    std::thread::sleep(Duration::from_millis(1500));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    std::thread::sleep(SESSION_EXPIRY);
    let second = spawn();

    // Read committed (librdkafka's default isolation level): outputs of
    // the aborted transaction never show.
    let journal = format!("{}billing.journal.v1", setup.prefix);
    let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut applied = BTreeSet::new();
    let mut scanned = 0;
    let records = read_until(
        &setup.brokers,
        &format!("{}-reader", setup.group),
        &journal,
        // Returns as soon as every usage event is seen; each batch is one
        // transaction, which takes long on a loaded two-core machine.
        Duration::from_secs(600),
        |r| {
            for (event_id, payload) in &r[scanned..] {
                let record = decode_output(catalog, payload);
                if record.get("type").map(text).as_deref() == Some("usage_applied") {
                    applied.insert(text(&record["causation_id"]));
                }
                if let Some(earlier) = seen.insert(event_id.clone(), payload.clone()) {
                    assert_eq!(
                        &earlier, payload,
                        "output {event_id} repeated with another payload"
                    );
                }
            }
            scanned = r.len();
            applied.len() >= USAGE
        },
    );
    let status = second.stop();
    assert!(status.success(), "restarted run exited with {status}");
    assert_eq!(
        applied.len(),
        USAGE,
        "usage applied (of {} journal records read)",
        records.len()
    );

    // The offsets went with the outputs: the group has committed the end
    // of every usage partition.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .set("group.id", &setup.group)
        .create()
        .unwrap();
    let usage_topic = format!("{}billing.usage.v1", setup.prefix);
    let (_, high) = consumer
        .fetch_watermarks(&usage_topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&usage_topic, 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let offset = committed.elements()[0].offset();
    assert_eq!(
        offset,
        Offset::Offset(high),
        "committed offset of {usage_topic}[0]"
    );
}
