//! Issue 14 item 4: `billstream dlq list|show|replay`. On a real broker,
//! usage of an account opened late is dead-lettered `unknown_account`,
//! listed, replayed once the account is open (dry run first, recorded in
//! the replay log, not twice) and billed; a card-number rejection is
//! listed as never replayable and refused. The embedded mode's DLQ file is
//! listed and shown without a broker.
//!
//! The Kafka test needs `BILLSTREAM_TEST_BROKERS` (see tests/kafka_e2e.rs);
//! without it, it says so and does nothing.

use std::process::{Command, Output};
use std::str::FromStr;
use std::time::Duration;

use billstream::contracts::{Catalog, DeadLetter};
use billstream::engine::events::*;
use billstream::engine::time::Timestamp;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rust_decimal::Decimal;

use super::kafka_e2e::{
    account_opened, billstream, journal_until, per_unit_plan, produce, read_until, setup, Records,
    Running, Setup,
};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The end offset of partition 0 of `topic`.
fn end_of(brokers: &str, topic: &str) -> i64 {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    probe
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .1
}

#[test]
fn issue_14_dlq_replay_applies_a_fixed_dead_letter_and_never_a_card_number() {
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
    let catalog = Catalog::shared().unwrap();
    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let (late, open) = ("acct-late", "acct-open");
    let usage = |id: &str, account: &str, subject: &str| {
        Input::Usage(UsageRecorded {
            event_id: id.into(),
            account_id: account.into(),
            subject: subject.into(),
            metric: "m".into(),
            quantity: Decimal::from_str("10").unwrap(),
            occurred_at: at("2026-03-15T10:00:00Z"),
            environment: "prod".into(),
            attributes: Default::default(),
        })
    };
    let opening = |account: &str| {
        (
            "billing.accounts.v1".to_string(),
            account.to_string(),
            catalog
                .encode_input(&account_opened(
                    &format!("open-{account}"),
                    account,
                    "flat",
                    "0",
                    at("2026-03-01T00:00:00Z"),
                ))
                .unwrap(),
        )
    };
    let records: Records = vec![
        (
            "billing.plans.v1".into(),
            "flat".into(),
            catalog
                .encode_plan(&per_unit_plan("flat", "30.00", "0.50"))
                .unwrap(),
        ),
        opening(open),
    ];
    // Usage of an account whose opening is not produced yet, and a card
    // number where a subject belongs (produced once `open` is open).
    let bad: Records = vec![
        (
            "billing.usage.v1".into(),
            late.into(),
            catalog
                .encode_input(&usage("u-early", late, "app-1"))
                .unwrap(),
        ),
        // A card number where a subject belongs.
        (
            "billing.usage.v1".into(),
            open.into(),
            catalog
                .encode_input(&usage("u-card", open, "4111 1111 1111 1111"))
                .unwrap(),
        ),
    ];
    produce(&brokers, &prefix, &records);
    let running = Running::start(
        billstream(&prefix, &group, &store, &brokers)
            .env("BILLSTREAM__CLOCK", "2026-03-15T12:00:00Z")
            .env("BILLSTREAM__KAFKA__UNKNOWN_ACCOUNT_WAIT", "0s")
            // Usage is written (and its journal published) every batch,
            // not at the 120 s checkpoint.
            .env("BILLSTREAM__BATCH__CHECKPOINT_EVENTS", "1"),
    );
    journal_until(&brokers, &format!("{group}-opened"), &prefix, &|j| {
        j.keys()
            .any(|(a, kind, _)| a == open && kind == "account_opened")
    });
    produce(&brokers, &prefix, &bad);
    let dlq_topic = format!("{prefix}billing.dlq.v1");
    let letters = read_until(
        &brokers,
        &format!("{group}-dlq"),
        &dlq_topic,
        Duration::from_secs(90),
        |r| r.len() >= 2,
    );
    let kinds: std::collections::BTreeSet<String> = letters
        .iter()
        .map(|(_, p)| {
            super::kafka_e2e::text(&super::kafka_e2e::decode_output(catalog, p)["error_kind"])
        })
        .collect();
    assert_eq!(
        kinds,
        ["card_number".to_string(), "unknown_account".to_string()].into(),
        "two dead letters"
    );
    assert_eq!(letters.len(), 2);
    let dlq = |args: &[&str]| -> Output {
        billstream(&prefix, &group, &store, &brokers)
            .arg("dlq")
            .args(args)
            .output()
            .unwrap()
    };

    // list: the table, filtered by kind, with the count.
    let out = dlq(&["list", "--kind", "unknown_account"]);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert!(
        table.contains("unknown_account") && table.contains(late),
        "{table}"
    );
    assert!(!table.contains("card_number"), "{table}");
    assert!(
        table.contains("1 of 2 dead letters (unknown_account 1)"),
        "{table}"
    );
    // list --json, by account and by topic (its default name, without the
    // test's prefix); the card number is listed as never replayable.
    let out = dlq(&[
        "list",
        "--json",
        "--account",
        open,
        "--topic",
        "billing.usage.v1",
    ]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["error_kind"], "card_number");
    let card_id = lines[0]["event_id"].as_str().unwrap().to_string();
    assert!(stdout(&dlq(&["list", "--account", open])).contains("never"));
    let shown = stdout(&dlq(&["show", &card_id]));
    assert!(shown.contains("not replayable"), "{shown}");
    assert!(!shown.contains("4111 1111 1111 1111"), "masked: {shown}");
    assert!(
        dlq(&["list", "--json", "--since", "2999-01-01T00:00:00Z"])
            .stdout
            .is_empty(),
        "--since filters by receipt"
    );

    // The card-number rejection is refused, by kind or by id, dry run or
    // not: nothing is published and nothing logged.
    let log = _dir.path().join("replays.jsonl");
    let log_arg = log.to_str().unwrap();
    let usage_topic = format!("{prefix}billing.usage.v1");
    let usage_end = end_of(&brokers, &usage_topic);
    for args in [
        vec!["replay", "--kind", "card_number", "--log", log_arg],
        vec!["replay", "--id", &card_id, "--log", log_arg],
        vec!["replay", "--id", &card_id, "--again", "--log", log_arg],
    ] {
        let out = dlq(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(stdout(&out).contains("refused"), "{}", stdout(&out));
    }
    let out = dlq(&["replay", "--all", "--dry-run", "--log", log_arg]);
    assert_eq!(out.status.code(), Some(1), "the card number is refused");
    let said = stdout(&out);
    assert!(said.contains("would replay 1, refused 1"), "{said}");
    assert!(!log.exists(), "neither refusals nor a dry run are logged");
    assert_eq!(
        end_of(&brokers, &usage_topic),
        usage_end,
        "nothing published"
    );
    assert!(
        !dlq(&["replay"]).status.success(),
        "replay without a selection is refused"
    );

    // The cause is fixed: the account is opened. Replay the dead letter.
    produce(&brokers, &prefix, &vec![opening(late)]);
    let out = dlq(&["replay", "--kind", "unknown_account", "--log", log_arg]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("replayed 1, refused 0"),
        "{}",
        stdout(&out)
    );
    assert_eq!(end_of(&brokers, &usage_topic), usage_end + 1);
    let logged: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["error_kind"], "unknown_account");
    assert_eq!(logged[0]["to_topic"], usage_topic.as_str());
    assert_eq!(logged[0]["to_offset"], usage_end);
    // The replayed usage is billed to the account.
    let journal = journal_until(&brokers, &format!("{group}-journal"), &prefix, &|j| {
        j.contains_key(&(late.into(), "usage_applied".into(), "u-early".into()))
    });
    assert!(
        journal.contains_key(&(late.into(), "usage_applied".into(), "u-early".into())),
        "{journal:?}"
    );
    // Replayed once: a second replay skips it.
    let out = dlq(&["replay", "--kind", "unknown_account", "--log", log_arg]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("skipped"), "{}", stdout(&out));
    assert_eq!(end_of(&brokers, &usage_topic), usage_end + 1);
    assert!(running.stop().success());
}

#[test]
fn issue_14_dlq_lists_and_shows_the_embedded_modes_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("billing.dlq.v1.jsonl");
    let letter = |offset: i64, kind: &str, key: &str, payload: &[u8]| DeadLetter {
        source_topic: "events.jsonl".into(),
        partition: 0,
        offset,
        key: Some(key.into()),
        error_kind: kind.into(),
        reason: format!("{kind} at line {offset}"),
        payload: payload.to_vec(),
        received_at: Timestamp::parse_rfc3339("2026-03-15T12:00:00Z").unwrap(),
    };
    let letters = [
        letter(3, "unknown_account", "acct-a", b"{\"event_id\":\"u-3\"}"),
        letter(
            7,
            "card_number",
            "acct-b",
            b"{\"subject\":\"4111 1111 1111 1111\"}",
        ),
    ];
    let text: String = letters
        .iter()
        .map(|l| format!("{}\n", l.to_output().json))
        .collect();
    std::fs::write(&file, text).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_billstream"))
            .arg("dlq")
            .args(args)
            .arg("--file")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = run(&["list", "--kind", "card_number"]);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert!(
        table.contains("1 of 2 dead letters (card_number 1)"),
        "{table}"
    );
    assert!(table.contains("never"), "{table}");
    let id = letters[0].to_output().event_id;
    let shown = stdout(&run(&["show", &id]));
    assert!(
        shown.contains("u-3") && shown.contains("events.jsonl"),
        "{shown}"
    );
    let shown = stdout(&run(&["show", &letters[1].to_output().event_id]));
    assert!(!shown.contains("4111 1111 1111 1111"), "masked: {shown}");
    assert!(shown.contains("not replayable"), "{shown}");
    assert_eq!(run(&["show", "no-such-id"]).status.code(), Some(1));
}

/// A shadow's dead letters name the live input topics as their sources; a
/// replay with the shadow's configuration would feed the live instance.
/// Refused before anything is read (no broker needed).
#[test]
fn issue_14_dlq_replay_is_refused_in_shadow_mode() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_billstream"))
        .env("BILLSTREAM__RUN__MODE", "shadow")
        .env("BILLSTREAM__KAFKA__BROKERS", "127.0.0.1:1")
        .args(["dlq", "replay", "--all", "--dry-run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains("run.mode = \"shadow\"") && stderr.contains("live input topics"),
        "stderr: {stderr}"
    );
}
