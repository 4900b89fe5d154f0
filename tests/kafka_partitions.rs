//! Co-partitioning (issue 15, item 4): one account's records must sit in
//! partition p of every input topic, which one member owns. Input topics
//! with different partition counts, or partitions added while a member
//! runs (keys then hash elsewhere, away from their accounts' state), would
//! give an account two owners; `billstream run` refuses to start on the
//! first and stops on the second, with an error that says why. Needs a
//! broker (`BILLSTREAM_TEST_BROKERS`, see tests/kafka_e2e.rs).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::kafka_e2e::{billstream, setup_with, Setup};

const INPUTS: [&str; 3] = [
    "billing.usage.v1",
    "billing.payments.v1",
    "billing.accounts.v1",
];

fn grow(brokers: &str, topics: &[String], to: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let growth: Vec<NewPartitions<'_>> = topics.iter().map(|t| NewPartitions::new(t, to)).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for result in rt
        .block_on(admin.create_partitions(&growth, &AdminOptions::new()))
        .unwrap()
    {
        result.unwrap();
    }
}

/// `billstream run`, its stderr lines sent to the returned channel.
fn run(setup: &Setup) -> (Child, mpsc::Receiver<String>) {
    let mut child = billstream(&setup.prefix, &setup.group, &setup.store, &setup.brokers)
        // Notice added partitions within seconds (librdkafka's default
        // metadata refresh is 5 minutes).
        .env(
            "BILLSTREAM__KAFKA__PROPERTIES__TOPIC.METADATA.REFRESH.INTERVAL.MS",
            "1000",
        )
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Wait for `child` to exit (at most `within`); its exit status and every
/// stderr line it wrote.
fn exit_of(
    child: &mut Child,
    lines: &mpsc::Receiver<String>,
    within: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(200));
    (status, lines.try_iter().collect::<Vec<_>>().join("\n"))
}

#[test]
fn run_refuses_input_topics_that_are_not_co_partitioned() {
    let Some(setup) = setup_with("copart", 2) else {
        return;
    };
    let topic = |name: &str| format!("{}{name}", setup.prefix);

    // One topic with a partition more than the others: refused at start.
    grow(&setup.brokers, &[topic(INPUTS[0])], 3);
    let (mut child, lines) = run(&setup);
    let (status, stderr) = exit_of(&mut child, &lines, Duration::from_secs(90));
    let status = status.expect("run kept running on topics that are not co-partitioned");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("different partition counts")
            && stderr.contains(&format!("{}: 3", topic(INPUTS[0])))
            && stderr.contains(&format!("{}: 2", topic(INPUTS[2]))),
        "the error names each topic's count: {stderr}"
    );

    // All three alike: it runs; partitions added to all three while it
    // runs move keys away from their state: it stops.
    grow(&setup.brokers, &[topic(INPUTS[1]), topic(INPUTS[2])], 3);
    let (mut child, lines) = run(&setup);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    while !seen.contains("assigned") {
        assert!(Instant::now() < deadline, "no partition assigned: {seen}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "run stopped on co-partitioned topics: {seen}"
        );
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            seen.push_str(&line);
            seen.push('\n');
        }
    }
    let inputs: Vec<String> = INPUTS.iter().map(|n| topic(n)).collect();
    grow(&setup.brokers, &inputs, 4);
    let (status, stderr) = exit_of(&mut child, &lines, Duration::from_secs(120));
    let status = status.expect("run kept running after partitions were added");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("partitions were added") && stderr.contains("3 then"),
        "the error says partitions were added: {stderr}"
    );
}
