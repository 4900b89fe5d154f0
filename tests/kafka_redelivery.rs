//! Issue 12, item 1, against a Kafka-protocol broker: a stream is
//! processed, then a slice of its old records is produced again 41
//! (simulated) days later, with `billstream run`'s frozen processing clock
//! (`clock`) moved on by as much; the invoices and charge requests are
//! those of the stream alone, and each old record is dead-lettered as
//! `too_late` instead of being billed again as late usage or becoming
//! credit.
//!
//! Needs a broker (`BILLSTREAM_TEST_BROKERS`, see tests/kafka_e2e.rs);
//! without one it says so and does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use billstream::contracts::Catalog;
use billstream::engine::events::*;
use billstream::engine::time::Timestamp;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rust_decimal::Decimal;

use super::kafka_e2e::{
    account_opened, billstream, decode_output, journal_until, per_unit_plan, produce, read_until,
    setup, text, Journal, Records, Running, Setup,
};

/// Every record of `topic` (one partition) up to its end now, as
/// (event id, decoded record), one per event id (outputs are published at
/// least once).
fn read_all(
    brokers: &str,
    group: &str,
    topic: &str,
) -> BTreeMap<String, BTreeMap<String, apache_avro::types::Value>> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let (_, end) = probe
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let records = read_until(brokers, group, topic, Duration::from_secs(300), |r| {
        r.len() as i64 >= end
    });
    assert!(
        records.len() as i64 >= end,
        "{topic}: read {} of {end} records",
        records.len()
    );
    let catalog = Catalog::shared().unwrap();
    records
        .into_iter()
        .map(|(id, payload)| (id, decode_output(catalog, &payload)))
        .collect()
}

#[test]
fn issue_12_records_produced_again_41_days_later_change_no_invoice_or_charge() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("redeliver")
    else {
        return;
    };
    let catalog = Catalog::shared().unwrap();
    let d = |s: &str| Decimal::from_str(s).unwrap();
    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let acct = "acct-redeliver";
    // The processing clock of each run: mid-March, 41 days later (March
    // issued on 1 April, the March records older than the 35-day windows),
    // and just after April is issued.
    const MARCH: &str = "2026-03-15T12:00:00Z";
    const LATER: &str = "2026-04-25T12:00:00Z";
    const MAY: &str = "2026-05-01T02:00:00Z";
    let run_at = |clock: &str| {
        Running::start(
            billstream(&prefix, &group, &store, &brokers).env("BILLSTREAM__CLOCK", clock),
        )
    };
    let enc = |topic: &str, input: &Input| -> (String, String, Vec<u8>) {
        (
            topic.to_string(),
            acct.to_string(),
            catalog.encode_input(input).unwrap(),
        )
    };
    let payment = |id: &str, occurred: &str, kind: PaymentKind| {
        Input::Payment(PaymentEvent {
            event_id: id.into(),
            account_id: acct.into(),
            occurred_at: at(occurred),
            environment: Some("prod".into()),
            kind,
        })
    };
    let usage = |id: &str, qty: &str, occurred: &str| {
        Input::Usage(UsageRecorded {
            event_id: id.into(),
            account_id: acct.into(),
            subject: "app-1".into(),
            metric: "m".into(),
            quantity: d(qty),
            occurred_at: at(occurred),
            environment: "prod".into(),
            attributes: Default::default(),
        })
    };
    let (payments, usage_topic) = ("billing.payments.v1", "billing.usage.v1");
    let card = payment(
        "card",
        "2026-03-01T00:01:00Z",
        PaymentKind::PaymentMethodAttached {
            token_ref: "psp:tok_1".into(),
            brand: "visa".into(),
            last4: "4242".into(),
            expires: "2030-01".into(),
        },
    );
    let paid = payment(
        "paid-1",
        "2026-03-01T00:02:00Z",
        PaymentKind::PaymentSucceeded {
            charge_id: format!("inv_{acct}_00001/attempt-1"),
            invoice_id: format!("inv_{acct}_00001"),
            amount: d("30.00"),
            currency: "EUR".into(),
        },
    );
    let top_up = payment(
        "top-up",
        "2026-03-03T00:00:00Z",
        PaymentKind::CreditToppedUp {
            amount: d("5.00"),
            currency: "EUR".into(),
            grant: Default::default(),
        },
    );
    let used: Vec<Input> = (0..10)
        .map(|i| usage(&format!("u-{i}"), "1", "2026-03-15T10:00:00Z"))
        .collect();

    // (account, type, causation id) of every journal entry, one per entry
    // id, read from the start until `want` holds.
    type Entries = Journal;
    let read_journal = |reader: &str, want: &dyn Fn(&Entries) -> bool| -> Entries {
        journal_until(&brokers, &format!("{group}-{reader}"), &prefix, want)
    };
    let has = |e: &Entries, kind: &str, cause: &str| {
        e.contains_key(&(acct.to_string(), kind.to_string(), cause.to_string()))
    };
    let count = |e: &Entries, kind: &str| -> usize {
        e.iter()
            .filter(|((a, k, _), _)| a == acct && k == kind)
            .map(|(_, n)| n)
            .sum()
    };

    // 1. The stream, on a clock frozen in mid-March. Each step waits for the
    //    one before (Kafka orders records only within one topic's partition).
    produce(
        &brokers,
        &prefix,
        &vec![
            (
                "billing.plans.v1".into(),
                "metered".into(),
                catalog
                    .encode_plan(&per_unit_plan("metered", "30.00", "0.50"))
                    .unwrap(),
            ),
            enc(
                "billing.accounts.v1",
                &account_opened("open", acct, "metered", "0", at("2026-03-01T00:00:00Z")),
            ),
        ],
    );
    let running = run_at(MARCH);
    let opened = |e: &Entries| has(e, "account_opened", "open");
    assert!(
        opened(&read_journal("opened", &opened)),
        "not opened in 300 s"
    );
    produce(&brokers, &prefix, &vec![enc(payments, &card)]);
    let charged = |e: &Entries| has(e, "charge_requested", "card");
    assert!(
        charged(&read_journal("card", &charged)),
        "no charge in 300 s"
    );
    let mut stream: Records = vec![enc(payments, &paid), enc(payments, &top_up)];
    stream.extend(used.iter().map(|u| enc(usage_topic, u)));
    produce(&brokers, &prefix, &stream);
    let applied = |e: &Entries| {
        has(e, "payment_succeeded", "paid-1")
            && has(e, "credit_added", "top-up")
            && (0..10).all(|i| has(e, "usage_applied", &format!("u-{i}")))
    };
    assert!(
        applied(&read_journal("march", &applied)),
        "the March stream was not applied in 300 s"
    );
    let status = running.stop();
    assert!(status.success(), "billstream run exited with {status}");

    // 2. 41 days later: March is issued (5.00 of usage, April's 30.00 fee,
    //    the 5.00 credit applied: a charge of 30.00). Then the old records
    //    come again: every usage event, one of them with another quantity,
    //    the card, its success for the paid opening invoice, the top-up.
    let running = run_at(LATER);
    let march_issued = |e: &Entries| count(e, "invoice_issued") >= 2;
    assert!(
        march_issued(&read_journal("issued", &march_issued)),
        "March was not issued in 300 s"
    );
    let mut again: Records = used.iter().map(|u| enc(usage_topic, u)).collect();
    again.push(enc(usage_topic, &usage("u-3", "7", "2026-03-15T10:00:00Z")));
    again.push(enc(payments, &card));
    again.push(enc(payments, &paid));
    again.push(enc(payments, &top_up));
    let redelivered = again.len();
    produce(&brokers, &prefix, &again);
    // A new event after them, on the same account and partition.
    produce(
        &brokers,
        &prefix,
        &vec![enc(
            usage_topic,
            &usage("u-after", "2", "2026-04-25T10:00:00Z"),
        )],
    );
    let after = |e: &Entries| has(e, "usage_applied", "u-after");
    assert!(
        after(&read_journal("after", &after)),
        "u-after not applied in 300 s"
    );
    let status = running.stop();
    assert!(status.success(), "billstream run exited with {status}");

    // 3. April is issued: u-after's 1.00 and May's fee, nothing else.
    let running = run_at(MAY);
    let april_issued = |e: &Entries| count(e, "invoice_issued") >= 3;
    let entries = read_journal("april", &april_issued);
    assert!(april_issued(&entries), "April was not issued in 300 s");
    let status = running.stop();
    assert!(status.success(), "billstream run exited with {status}");

    // No input was applied twice.
    for i in 0..10 {
        let key = (
            acct.to_string(),
            "usage_applied".to_string(),
            format!("u-{i}"),
        );
        assert_eq!(entries.get(&key), Some(&1), "u-{i} applied once");
    }
    for (kind, cause) in [
        ("payment_succeeded", "paid-1"),
        ("credit_added", "top-up"),
        ("payment_method_attached", "card"),
    ] {
        let key = (acct.to_string(), kind.to_string(), cause.to_string());
        assert_eq!(entries.get(&key), Some(&1), "{kind} of {cause} once");
    }

    // The invoices and charges of the stream alone.
    let invoices = read_all(
        &brokers,
        &format!("{group}-invoices"),
        &format!("{prefix}billing.invoices.v1"),
    );
    let issued: BTreeMap<String, String> = invoices
        .values()
        .filter(|r| r.contains_key("lines"))
        .map(|r| (text(&r["invoice_id"]), text(&r["total"])))
        .collect();
    let inv = |n: u32| format!("inv_{acct}_{n:05}");
    assert_eq!(
        issued,
        BTreeMap::from([
            (inv(1), "30.00".to_string()),
            (inv(2), "35.00".to_string()),
            (inv(3), "31.00".to_string()),
        ]),
        "issued invoices and their totals"
    );
    let charges: BTreeSet<(String, String)> = read_all(
        &brokers,
        &format!("{group}-charges"),
        &format!("{prefix}billing.charges.v1"),
    )
    .values()
    .map(|r| (text(&r["charge_id"]), text(&r["amount"])))
    .collect();
    assert_eq!(
        charges,
        BTreeSet::from([
            (format!("{}/attempt-1", inv(1)), "30.00".to_string()),
            (format!("{}/attempt-1", inv(2)), "30.00".to_string()),
            (format!("{}/attempt-1", inv(3)), "31.00".to_string()),
        ]),
        "charge requests"
    );

    // Each record produced again was dead-lettered as too late.
    let dead = read_all(
        &brokers,
        &format!("{group}-dlq"),
        &format!("{prefix}billing.dlq.v1"),
    );
    let kinds: Vec<String> = dead.values().map(|r| text(&r["error_kind"])).collect();
    assert_eq!(kinds.len(), redelivered, "dead letters: {kinds:?}");
    assert!(kinds.iter().all(|k| k == "too_late"), "{kinds:?}");
}

/// Every record of `topic` (one partition) up to its end now, as (event
/// id, payload bytes) in log order, duplicates included.
fn read_raw(brokers: &str, group: &str, topic: &str) -> Vec<(String, Vec<u8>)> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let (_, end) = probe
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let records = read_until(brokers, group, topic, Duration::from_secs(120), |r| {
        r.len() as i64 >= end
    });
    assert_eq!(records.len() as i64, end, "{topic}: records read");
    records
}

/// Issue 15: outputs are a pure function of their cause. A second,
/// independent derivation of the same input log (another group and an
/// empty store: what a new owner does with inputs whose state never
/// landed) seconds later publishes the same outputs under the same ids
/// with the same bytes. Before, a journal entry and a notification carried
/// the instant they were *processed* at, so the second derivation
/// published every id again with a different payload.
#[test]
fn issue_15_a_second_derivation_of_the_same_log_later_publishes_byte_identical_outputs() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("pure")
    else {
        return;
    };
    let catalog = Catalog::shared().unwrap();
    let acct = "acct-pure";
    // Usage one minute ago: its hourly rollup comes due no sooner than
    // four minutes from now, so no timer fires while either runs (a timer
    // fired by the processing clock is ordered against the records around
    // it by when they are read, which this test does not vary).
    let now = Timestamp::from_datetime(chrono::Utc::now());
    let used_at = Timestamp(now.0 - 60_000_000);
    let (month_start, _) = super::kafka_e2e::month_start_and_used_at();
    let accounts: Records = vec![
        (
            "billing.accounts.v1".into(),
            acct.into(),
            catalog
                .encode_input(&account_opened(
                    "open",
                    acct,
                    "metered",
                    "0.19",
                    month_start,
                ))
                .unwrap(),
        ),
        (
            "billing.accounts.v1".into(),
            acct.into(),
            catalog
                .encode_input(&Input::Account(AccountCommand {
                    event_id: "thresholds".into(),
                    account_id: acct.into(),
                    occurred_at: month_start,
                    environment: Some("prod".into()),
                    kind: AccountKind::ThresholdsSet {
                        thresholds: vec![Decimal::new(3_100, 2)],
                        currency: "EUR".into(),
                        invoice_at: None,
                        keeps_invoice_at: false,
                    },
                }))
                .unwrap(),
        ),
    ];
    let usage: Records = (0..6)
        .map(|i| {
            let u = Input::Usage(UsageRecorded {
                event_id: format!("u-{i}"),
                account_id: acct.into(),
                subject: "app-1".into(),
                metric: "m".into(),
                quantity: Decimal::ONE,
                occurred_at: used_at,
                environment: "prod".into(),
                attributes: Default::default(),
            });
            (
                "billing.usage.v1".to_string(),
                acct.to_string(),
                catalog.encode_input(&u).unwrap(),
            )
        })
        .collect();
    produce(
        &brokers,
        &prefix,
        &vec![(
            "billing.plans.v1".into(),
            "metered".into(),
            catalog
                .encode_plan(&per_unit_plan("metered", "30.00", "0.50"))
                .unwrap(),
        )],
    );
    let has = |e: &Journal, kind: &str, cause: &str| {
        e.contains_key(&(acct.to_string(), kind.to_string(), cause.to_string()))
    };

    // 1. The first derivation, on the wall clock (production's).
    let first = Running::start(&mut billstream(&prefix, &group, &store, &brokers));
    produce(&brokers, &prefix, &accounts);
    journal_until(&brokers, &format!("{group}-r1"), &prefix, &|e| {
        has(e, "thresholds_set", "thresholds")
    });
    produce(&brokers, &prefix, &usage);
    journal_until(&brokers, &format!("{group}-r2"), &prefix, &|e| {
        has(e, "usage_applied", "u-5")
            && e.keys()
                .any(|(_, kind, _)| kind == "spend_threshold_reached")
    });
    assert!(first.stop().success());
    let topics = ["billing.journal.v1", "billing.notifications.v1"];
    let once: Vec<Vec<(String, Vec<u8>)>> = topics
        .iter()
        .map(|t| read_raw(&brokers, &format!("{group}-a"), &format!("{prefix}{t}")))
        .collect();

    // 2. Two seconds later, a second derivation from the same log by a
    //    member with another group and an empty store.
    std::thread::sleep(Duration::from_secs(2));
    let other_store = _dir.path().join("state-b");
    let second = Running::start(&mut billstream(
        &prefix,
        &format!("{group}-b"),
        &other_store,
        &brokers,
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for (t, first_run) in topics.iter().zip(&once) {
        let topic = format!("{prefix}{t}");
        while probe
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .unwrap()
            .1
            < 2 * first_run.len() as i64
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{topic}: the second derivation did not publish {} records",
                first_run.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(second.stop().success());

    for (t, first_run) in topics.iter().zip(&once) {
        assert!(!first_run.is_empty(), "{t}: nothing published");
        let all = read_raw(&brokers, &format!("{group}-c"), &format!("{prefix}{t}"));
        let (a, b) = all.split_at(first_run.len());
        assert_eq!(a, first_run.as_slice(), "{t}: the first run's records");
        let ids = |r: &[(String, Vec<u8>)]| r.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(b), ids(a), "{t}: the same ids, in the same order");
        for ((id, x), (_, y)) in a.iter().zip(b) {
            assert!(
                x == y,
                "{t}: {id} published with two payloads:\n{:?}\n{:?}",
                decode_output(catalog, x),
                decode_output(catalog, y)
            );
        }
    }
}

/// Issue 15: a timer is ordered against the records around it by the log,
/// not by when the member happens to read them. A member catching up on a
/// backlog (the clock says January closed an hour ago, the log still holds
/// 300 usage records appended on 31 January) closes January only once it
/// has read them, so January's invoice bills all 300. Before, the first
/// batch's timers fired on the processing clock: January was issued with
/// the first batch's usage and the rest became late usage on February's
/// draft (an invoice that depended on the batch size and the lag). One
/// record stamped months ahead of the clock changes nothing.
#[test]
fn issue_15_a_member_catching_up_closes_a_period_after_the_records_appended_before_its_close() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("backlog")
    else {
        return;
    };
    let catalog = Catalog::shared().unwrap();
    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let acct = "acct-backlog";
    let opened = at("2026-01-01T00:00:00Z");
    let used = at("2026-01-31T23:00:00Z");
    // (topic, payload, record timestamp in ms)
    let mut records: Vec<(&str, Vec<u8>, i64)> = Vec::new();
    for i in 0..300 {
        let u = Input::Usage(UsageRecorded {
            event_id: format!("u-{i}"),
            account_id: acct.into(),
            subject: "app-1".into(),
            metric: "m".into(),
            quantity: Decimal::ONE,
            occurred_at: used,
            environment: "prod".into(),
            attributes: Default::default(),
        });
        // The sixth is stamped ahead of the member's clock (by months; the
        // broker accepts up to an hour past its own): it must neither
        // close January itself nor make its partition look read to the end.
        let stamp = if i == 5 {
            chrono::Utc::now().timestamp_millis() + 30 * 60_000
        } else {
            used.0 / 1000 + i
        };
        records.push(("billing.usage.v1", catalog.encode_input(&u).unwrap(), stamp));
    }
    // 1. The plan and the opening, processed in mid-January.
    produce(
        &brokers,
        &prefix,
        &vec![
            (
                "billing.plans.v1".into(),
                "metered".into(),
                catalog
                    .encode_plan(&per_unit_plan("metered", "0", "0.50"))
                    .unwrap(),
            ),
            (
                "billing.accounts.v1".into(),
                acct.into(),
                catalog
                    .encode_input(&account_opened("open", acct, "metered", "0", opened))
                    .unwrap(),
            ),
        ],
    );
    let january = Running::start(
        billstream(&prefix, &group, &store, &brokers)
            .env("BILLSTREAM__CLOCK", "2026-01-15T00:00:00Z"),
    );
    journal_until(&brokers, &format!("{group}-o"), &prefix, &|e| {
        e.contains_key(&(acct.into(), "account_opened".into(), "open".into()))
    });
    assert!(january.stop().success());

    // 2. 300 usage records appended on 31 January, while no member runs.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            for (topic, payload, ms) in &records {
                let topic = format!("{prefix}{topic}");
                producer
                    .send(
                        FutureRecord::to(&topic)
                            .key(acct)
                            .payload(payload)
                            .timestamp(*ms),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        });

    // 3. The member starts again an hour after January's close came due (1 February
    // 01:00, after the hour of grace) and reads 10 records a batch.
    let member = Running::start(
        billstream(&prefix, &group, &store, &brokers)
            .env("BILLSTREAM__CLOCK", "2026-02-01T02:00:00Z")
            .env("BILLSTREAM__BATCH__MAX_RECORDS", "10"),
    );
    journal_until(&brokers, &format!("{group}-j"), &prefix, &|e| {
        e.keys().any(|(_, kind, _)| kind == "invoice_issued")
            && e.contains_key(&(acct.into(), "usage_applied".into(), "u-299".into()))
    });
    assert!(member.stop().success());
    let issued: Vec<(String, String)> = read_all(
        &brokers,
        &format!("{group}-invoices"),
        &format!("{prefix}billing.invoices.v1"),
    )
    .values()
    .filter(|r| r.contains_key("lines"))
    .map(|r| (text(&r["invoice_id"]), text(&r["total"])))
    .collect();
    assert_eq!(
        issued,
        vec![(format!("inv_{acct}_00001"), "150.00".to_string())],
        "January's invoice bills the 300 units appended before its close"
    );
}
