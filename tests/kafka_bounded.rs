//! Issue 12, item 5, against a Kafka-protocol broker: an invoice whose
//! subject breakdown is larger than `kafka.max_record_bytes` (a producer
//! that puts request ids in `subject`) goes out bounded, under its own id
//! and with its money intact, and the loop keeps going: a record produced
//! after it is still processed.
//!
//! Needs a broker (`BILLSTREAM_TEST_BROKERS`, see tests/kafka_e2e.rs);
//! without one it says so and does nothing.

use std::time::Duration;

use billstream::contracts::Catalog;
use billstream::engine::events::*;
use billstream::engine::time::Timestamp;
use rust_decimal::Decimal;

use super::kafka_e2e::{
    account_opened, billstream, decode_output, per_unit_plan, produce, read_until, setup, text,
    Records, Running, Setup,
};

/// The limit the test sets: the smallest `kafka.max_record_bytes` allows.
const LIMIT: usize = 64 * 1024;

#[test]
fn issue_12_an_invoice_over_the_record_limit_goes_out_bounded_and_the_loop_keeps_going() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("bounded")
    else {
        return;
    };
    let catalog = Catalog::shared().unwrap();
    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let acct = "acct-flood";
    let run_at = |clock: &str| {
        Running::start(
            billstream(&prefix, &group, &store, &brokers)
                .env("BILLSTREAM__CLOCK", clock)
                .env("BILLSTREAM__BILLING__MAX_SUBJECTS", "10000")
                .env("BILLSTREAM__KAFKA__MAX_RECORD_BYTES", LIMIT.to_string())
                .env("BILLSTREAM__BATCH__CHECKPOINT_EVENTS", "500"),
        )
    };
    let journal = format!("{prefix}billing.journal.v1");
    let journalled = |tag: &str, kind: &str, n: usize| {
        let seen = |r: &[(String, Vec<u8>)]| {
            r.iter()
                .filter(|(_, p)| text(&decode_output(catalog, p)["type"]) == kind)
                .map(|(id, _)| id)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        let read = read_until(
            &brokers,
            &format!("{group}-{tag}"),
            &journal,
            Duration::from_secs(300),
            |r| seen(r) >= n,
        );
        assert!(
            seen(&read) >= n,
            "{n} {kind} journalled, saw {}",
            seen(&read)
        );
    };

    // March: the plan (before the run starts, so it is read with the
    // plans table at start: the plans topic is followed beside the inputs
    // in no order with them, and on a freshly started Kafka the opening
    // was read before the plan and dead-lettered unknown_plan), the
    // opening, then (once the account is open: input topics have no order
    // between them) 2,000 usage events, each on a subject of its own, 64
    // characters long (~150 KB of breakdown).
    let plan: Records = vec![(
        "billing.plans.v1".into(),
        "p".into(),
        catalog
            .encode_plan(&per_unit_plan("p", "10.00", "0.01"))
            .unwrap(),
    )];
    produce(&brokers, &prefix, &plan);
    let running = run_at("2026-03-20T00:00:00Z");
    let open = account_opened("open", acct, "p", "0", at("2026-03-01T00:00:00Z"));
    let opening: Records = vec![(
        "billing.accounts.v1".into(),
        acct.into(),
        catalog.encode_input(&open).unwrap(),
    )];
    produce(&brokers, &prefix, &opening);
    journalled("open", "account_opened", 1);
    let usage: Records = (0..2_000)
        .map(|i| {
            let u = Input::Usage(UsageRecorded {
                event_id: format!("u-{i}"),
                account_id: acct.into(),
                subject: format!("request-{i:056}"),
                metric: "m".into(),
                quantity: Decimal::ONE,
                occurred_at: at("2026-03-10T10:00:00Z"),
                environment: "prod".into(),
                attributes: Default::default(),
            });
            (
                "billing.usage.v1".into(),
                acct.into(),
                catalog.encode_input(&u).unwrap(),
            )
        })
        .collect();
    produce(&brokers, &prefix, &usage);
    journalled("usage", "usage_applied", 2_000);
    running.stop();

    // March is issued at 1 April 01:00 (grace); the clock is past it.
    let mut running = run_at("2026-04-01T02:00:00Z");
    let invoices = format!("{prefix}billing.invoices.v1");
    // Invoice 1 is the opening's (March's fee); invoice 2 is March's usage.
    let march = |p: &Vec<u8>| {
        let r = decode_output(catalog, p);
        r.contains_key("lines") && text(&r["invoice_id"]) == format!("inv_{acct}_00002")
    };
    let issued = |r: &[(String, Vec<u8>)]| r.iter().any(|(_, p)| march(p));
    let read = read_until(
        &brokers,
        &format!("{group}-inv"),
        &invoices,
        Duration::from_secs(300),
        issued,
    );
    let (_, payload) = read
        .iter()
        .find(|(_, p)| march(p))
        .expect("March's invoice was published");
    assert!(
        payload.len() <= LIMIT,
        "the issued invoice is {} bytes, over the {LIMIT}-byte limit",
        payload.len()
    );
    let invoice = decode_output(catalog, payload);
    // 2,000 units at 0.01 (20.00) plus April's fee in advance (10.00).
    assert_eq!(text(&invoice["total"]), "30.00", "{invoice:?}");
    let lines = format!("{:?}", invoice["lines"]);
    assert!(
        lines.contains("truncated"),
        "a line says its breakdown was cut: {lines}"
    );

    // The loop kept going: an account opened afterwards is journalled.
    let later = account_opened(
        "open-later",
        "acct-later",
        "p",
        "0",
        at("2026-04-01T01:30:00Z"),
    );
    produce(
        &brokers,
        &prefix,
        &vec![(
            "billing.accounts.v1".into(),
            "acct-later".into(),
            catalog.encode_input(&later).unwrap(),
        )],
    );
    let opened_later = read_until(
        &brokers,
        &format!("{group}-journal"),
        &journal,
        Duration::from_secs(300),
        |r| {
            r.iter()
                .any(|(_, p)| text(&decode_output(catalog, p)["account_id"]) == "acct-later")
        },
    );
    assert!(
        opened_later
            .iter()
            .any(|(_, p)| text(&decode_output(catalog, p)["account_id"]) == "acct-later"),
        "the account opened after the oversized invoice was processed"
    );
    assert!(
        running.0.try_wait().unwrap().is_none(),
        "billstream run is still running"
    );
    running.stop();
}
