//! TLS to Kafka (the `tls` feature): `topics create` and `run` against a
//! broker listener that accepts only TLS, trusting the test CA through
//! `kafka.properties` (`security.protocol = SSL`, `ssl.ca.location`). The
//! listener is the TLS one of the Apache Kafka the test command starts
//! (`scripts/services.sh`), serving the test certificate of
//! `tests/fixtures/tls` (made for 127.0.0.1 and localhost by the test CA;
//! test-only keys, valid until 2126); the test command sets
//! `BILLSTREAM_TEST_TLS_BROKERS` to it. Without it the test is not run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use billstream::contracts::Catalog;

use crate::kafka_e2e::{
    billstream, decode_output, metered_plan_and_accounts, month_start_and_used_at, output_ok,
    produce_with, read_until_with, text, Running,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

#[test]
fn run_reaches_a_tls_only_broker_with_the_ca_from_kafka_properties() {
    if !cfg!(feature = "tls") {
        eprintln!(
            "kafka_tls: built without the `tls` feature (the test command builds with it); not run"
        );
        return;
    }
    let Ok(brokers) = std::env::var("BILLSTREAM_TEST_TLS_BROKERS") else {
        eprintln!("kafka_tls: BILLSTREAM_TEST_TLS_BROKERS is not set (scripts/test.sh starts Kafka with a TLS listener and sets it); not run");
        return;
    };
    let ca = fixture("ca.pem").display().to_string();
    let tls: [(&str, &str); 2] = [("security.protocol", "SSL"), ("ssl.ca.location", &ca)];
    let prefix = format!("tls{}.", std::process::id());
    let group = format!("billstream-tls{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state");
    let with_tls = |c: &mut Command| {
        for (k, v) in tls {
            c.env(
                format!("BILLSTREAM__KAFKA__PROPERTIES__{}", k.to_ascii_uppercase()),
                v,
            );
        }
    };

    // Without the CA the broker's certificate is not trusted: the command
    // fails (after the shortened socket timeout) and says what to check.
    let mut untrusted = billstream(&prefix, &group, &store, &brokers);
    untrusted
        .env("BILLSTREAM__KAFKA__PROPERTIES__SECURITY.PROTOCOL", "SSL")
        .env("BILLSTREAM__KAFKA__PROPERTIES__SOCKET.TIMEOUT.MS", "3000")
        .args(["topics", "create", "--partitions", "1"]);
    let out = untrusted.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an untrusted broker was accepted");
    assert!(
        stderr.contains("ssl.ca.location") && stderr.contains(&brokers),
        "the error names the brokers and the TLS settings: {stderr}"
    );

    // With it: topics, then the loop, over TLS only.
    let mut create = billstream(&prefix, &group, &store, &brokers);
    with_tls(&mut create);
    let out = output_ok(
        create.args(["topics", "create", "--partitions", "1"]),
        "topics create over TLS",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created"));

    let catalog = Catalog::shared().unwrap();
    let (month_start, _) = month_start_and_used_at();
    produce_with(
        &brokers,
        &prefix,
        &metered_plan_and_accounts(catalog, 2, month_start),
        &tls,
    );
    let mut run = billstream(&prefix, &group, &store, &brokers);
    with_tls(&mut run);
    let running = Running(
        run.arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut opened = std::collections::BTreeSet::new();
    read_until_with(
        &brokers,
        &format!("{group}-reader"),
        &format!("{prefix}billing.journal.v1"),
        Duration::from_secs(90),
        &tls,
        |records| {
            for (_, payload) in records {
                let entry = decode_output(catalog, payload);
                if text(&entry["type"]) == "account_opened" {
                    opened.insert(text(&entry["account_id"]));
                }
            }
            opened.len() == 2
        },
    );
    let status = running.stop();
    assert!(status.success(), "billstream run exited with {status}");
    assert_eq!(
        opened.into_iter().collect::<Vec<_>>(),
        vec!["acct-0", "acct-1"],
        "both accounts were opened by the loop over TLS"
    );
}
