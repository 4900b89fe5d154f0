//! Issue 14 item 2's test requirement: dunning end to end with the
//! payment-gateway emulator answering the charge requests. `billstream
//! run` and `billstream gateway` run as processes on a real broker, the
//! gateway from a seeded configuration naming three providers, one per
//! dunning path:
//!
//! - `flaky` declines retryably at random: the test picks an account whose
//!   first two attempts are declined and whose third succeeds (the outcome
//!   is a pure function of the charge), so its invoice is paid after two
//!   retries;
//! - `strict` declines for good (`card_stolen`): dunning stops at once,
//!   no further charge request, the invoice goes overdue;
//! - `broke` declines every attempt retryably: all four attempts of
//!   `billing.retry_schedule` (1 + ["1d", "3d", "7d"]) are made, dunning
//!   stops as exhausted, the invoice goes overdue with its notification.
//!
//! There is no clock a running member can be told to advance, so time
//! moves by restarting `run` with a later frozen clock
//! (`BILLSTREAM__CLOCK`); the state is durable. The gateway is killed
//! (`kill -9`) between two steps, the next step's charges are requested
//! while it is down, and a restarted gateway in the same group answers
//! them (and, for requests it had not committed, answers again with the
//! same bytes). Everything is asserted from the output topics: charges,
//! payments, invoices, notifications and the journal.
//!
//! Needs a broker (`BILLSTREAM_TEST_BROKERS`, see tests/kafka_e2e.rs);
//! without one the test says so and does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use billstream::contracts::{framing, Catalog};
use billstream::engine::events::*;
use billstream::engine::time::Timestamp;
use billstream::gateway::{decide, GatewayConfig, Verdict};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::gateway::{count, first_invoice_charge, journal, journal_to_end, Gateway, Journals};
use super::kafka_e2e::{
    account_opened, billstream, per_unit_plan, produce, setup, text, Records, Running, Setup,
};

/// The emulator of the test, one provider per dunning path. `flaky` also
/// publishes half its results twice, so the engine's dedup by result id
/// is in play.
const GATEWAY_CONFIG: &str = r#"
seed = 14
[providers.flaky]
success_rate = 0.5
latency = "20ms"
latency_jitter = "80ms"
duplicate_rate = 0.5
duplicate_delay = "200ms"
[[providers.flaky.declines]]
code = "insufficient_funds"
retryable = true

[providers.broke]
success_rate = 0.0
latency = "20ms"
[[providers.broke.declines]]
code = "insufficient_funds"
retryable = true
weight = 3
[[providers.broke.declines]]
code = "do_not_honor"
retryable = true

[providers.strict]
success_rate = 0.0
latency = "20ms"
[[providers.strict.declines]]
code = "card_stolen"
retryable = false
"#;

/// `billing.retry_schedule`'s default: the delays after attempts 1, 2, 3.
const RETRY_DAYS: [i64; 3] = [1, 3, 7];
const DAY: i64 = 86_400_000_000;

/// A record of an output (or input) topic: its schema's record name and
/// its fields.
type Record = (String, BTreeMap<String, Value>);

fn decode_named(catalog: &Catalog, bytes: &[u8]) -> Record {
    let (id, body) = framing::split(bytes).expect("framed");
    let entry = catalog.by_id(id).expect("known schema id");
    match apache_avro::from_avro_datum(&entry.schema, &mut &body[..], None).expect("valid avro") {
        Value::Record(fields) => (entry.record.clone(), fields.into_iter().collect()),
        other => panic!("not a record: {other:?}"),
    }
}

/// A field's value with unions unwrapped (`None` for null).
fn field<'a>(r: &'a BTreeMap<String, Value>, name: &str) -> Option<&'a Value> {
    let mut v = r.get(name)?;
    while let Value::Union(_, inner) = v {
        v = inner;
    }
    (*v != Value::Null).then_some(v)
}

fn symbol(v: &Value) -> String {
    match v {
        Value::Enum(_, s) => s.clone(),
        other => text(other),
    }
}

/// Every record of the one-partition `topic`, read to its end: (key,
/// payload) in offset order.
fn read_to_end(brokers: &str, topic: &str) -> Vec<(String, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{topic}"))
        .create()
        .unwrap();
    let (_, end) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 0;
    while next < end {
        assert!(Instant::now() < deadline, "{topic} not read to its end");
        let Some(m) = consumer.poll(Duration::from_millis(300)) else {
            continue;
        };
        let m = m.unwrap();
        next = m.offset() + 1;
        records.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
    records
}

/// Each account's records of `topic` (decoded, one per event id, in
/// order), keeping those `keep` accepts.
fn by_account(
    catalog: &Catalog,
    brokers: &str,
    topic: &str,
    keep: impl Fn(&Record) -> bool,
) -> BTreeMap<String, Vec<Record>> {
    let mut seen = BTreeSet::new();
    let mut out: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for (key, payload) in read_to_end(brokers, topic) {
        let r = decode_named(catalog, &payload);
        assert_eq!(text(&r.1["account_id"]), key, "{topic}: keyed by account");
        if seen.insert(text(&r.1["event_id"])) && keep(&r) {
            out.entry(key).or_default().push(r);
        }
    }
    out
}

fn names(records: Option<&Vec<Record>>) -> Vec<String> {
    records
        .into_iter()
        .flatten()
        .map(|(name, r)| match name.as_str() {
            "Notification" => symbol(&r["kind"]),
            _ => name.clone(),
        })
        .collect()
}

#[test]
fn issue_14_gateway_dunning_retries_to_paid_stops_on_a_final_decline_and_exhausts_to_overdue() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("dun")
    else {
        return;
    };
    let catalog = Catalog::shared().unwrap();
    let config_path = _dir.path().join("gateway.toml");
    std::fs::write(
        &config_path,
        GATEWAY_CONFIG.replace(
            "seed = 14",
            &format!("seed = 14\ngroup_id = \"{group}-gateway\""),
        ),
    )
    .unwrap();
    let config = GatewayConfig::parse(GATEWAY_CONFIG).unwrap();
    let verdict = |account: &str, attempt: u32, token: &str| {
        let provider = token.split('_').nth(1).unwrap();
        decide(
            config.seed,
            provider,
            &config.providers[provider],
            &first_invoice_charge(account, attempt, token),
        )
        .verdict
    };
    let declined_retryably = |v: &Verdict| {
        matches!(
            v,
            Verdict::Declined {
                retryable: true,
                ..
            }
        )
    };
    // An account whose first two attempts are declined (retryably) and
    // whose third succeeds.
    let retried = (0..2000)
        .map(|n| format!("acct-dun-retry-{n}"))
        .find(|a| {
            declined_retryably(&verdict(a, 1, "tok_flaky_r"))
                && declined_retryably(&verdict(a, 2, "tok_flaky_r"))
                && verdict(a, 3, "tok_flaky_r") == Verdict::Succeeded
        })
        .expect("an account paid on its third attempt");
    let retried = retried.as_str();
    let (stopped, exhausted) = ("acct-dun-stolen", "acct-dun-broke");
    let tokens = [
        (retried, "tok_flaky_r"),
        (stopped, "tok_strict_s"),
        (exhausted, "tok_broke_x"),
    ];

    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let mut records: Records = vec![(
        "billing.plans.v1".into(),
        "flat".into(),
        catalog
            .encode_plan(&per_unit_plan("flat", "30.00", "0.50"))
            .unwrap(),
    )];
    for (account, token) in tokens {
        let open = account_opened(
            &format!("open-{account}"),
            account,
            "flat",
            "0.10",
            at("2026-03-01T00:00:00Z"),
        );
        let card = Input::Payment(PaymentEvent {
            event_id: format!("card-{account}"),
            account_id: account.into(),
            occurred_at: at("2026-03-01T00:01:00Z"),
            environment: Some("prod".into()),
            kind: PaymentKind::PaymentMethodAttached {
                token_ref: token.into(),
                brand: "visa".into(),
                last4: "4242".into(),
                expires: "2030-01".into(),
            },
        });
        records.push((
            "billing.accounts.v1".into(),
            account.into(),
            catalog.encode_input(&open).unwrap(),
        ));
        records.push((
            "billing.payments.v1".into(),
            account.into(),
            catalog.encode_input(&card).unwrap(),
        ));
    }
    produce(&brokers, &prefix, &records);

    let run_at = |clock: &str| {
        Running::start(
            billstream(&prefix, &group, &store, &brokers).env("BILLSTREAM__CLOCK", clock),
        )
    };
    let read = |reader: &str, want: &dyn Fn(&Journals) -> bool| {
        journal(&brokers, &format!("{group}-{reader}"), &prefix, want)
    };
    let failed = |j: &Journals, a: &str| count(j, a, "payment_failed");
    // One step of time: `run` at `clock` until `want` holds in the journal,
    // a moment for late duplicates, then stopped.
    let step = |clock: &str, want: &dyn Fn(&Journals) -> bool| -> Journals {
        let running = run_at(clock);
        let j = read(&clock.replace(':', ""), want);
        assert!(want(&j), "at {clock}: {j:#?}");
        std::thread::sleep(Duration::from_secs(1));
        assert!(running.stop().success(), "run at {clock}");
        j
    };

    let mut gateway = Gateway::start(&prefix, &brokers, &config_path);
    // 1 March, 01:00: the opening invoices are issued and charged; all
    // three first attempts are declined, the strict one for good.
    step("2026-03-01T01:00:00Z", &|j| {
        failed(j, retried) == 1
            && failed(j, exhausted) == 1
            && count(j, stopped, "dunning_stopped") == 1
    });
    // 2 March, 02:00: past the first retry (1 day after the declines).
    step("2026-03-02T02:00:00Z", &|j| {
        failed(j, retried) == 2 && failed(j, exhausted) == 2
    });
    // The gateway dies; the third attempts are requested while it is down
    // and answered by a new one in the same group.
    gateway.kill();
    let running = run_at("2026-03-05T03:00:00Z");
    let j = read("down", &|j| {
        count(j, retried, "charge_requested") == 3 && count(j, exhausted, "charge_requested") == 3
    });
    assert_eq!(count(&j, exhausted, "charge_requested"), 3, "{j:#?}");
    assert_eq!(failed(&j, exhausted), 2, "no gateway, no result");
    gateway = Gateway::start(&prefix, &brokers, &config_path);
    read("back", &|j| {
        count(j, retried, "invoice_paid") == 1 && failed(j, exhausted) == 3
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(running.stop().success());
    // 12 March, 04:00: past the last retry (7 days after the third
    // decline); the fourth decline exhausts the schedule.
    step("2026-03-12T04:00:00Z", &|j| {
        failed(j, exhausted) == 4 && count(j, exhausted, "dunning_stopped") == 1
    });
    // 16 March: past the due date (issue + payment_terms, 14 days).
    step("2026-03-16T00:00:00Z", &|j| {
        count(j, exhausted, "invoice_overdue") == 1 && count(j, stopped, "invoice_overdue") == 1
    });
    assert!(gateway.stop().success());

    let topic = |name: &str| format!("{prefix}billing.{name}.v1");
    let invoice_of = |a: &str| format!("inv_{a}_00001");

    // Charges: exactly the attempts of each dunning path, each named by
    // its invoice and attempt, for the invoice's total on the account's
    // token.
    let issued = by_account(catalog, &brokers, &topic("invoices"), |r| {
        r.0 == "InvoiceIssued"
    });
    let charges = by_account(catalog, &brokers, &topic("charges"), |_| true);
    for (account, token, attempts) in [
        (retried, "tok_flaky_r", 3),
        (stopped, "tok_strict_s", 1),
        (exhausted, "tok_broke_x", 4),
    ] {
        let total = text(&issued[account][0].1["total"]);
        let got: Vec<(String, String, String, String)> = charges[account]
            .iter()
            .map(|(_, r)| {
                (
                    text(&r["charge_id"]),
                    format!("{:?}", r["attempt"]),
                    text(&r["amount"]),
                    text(&r["token_ref"]),
                )
            })
            .collect();
        let want: Vec<(String, String, String, String)> = (1..=attempts)
            .map(|n| {
                (
                    format!("{}/attempt-{n}", invoice_of(account)),
                    format!("{:?}", Value::Int(n)),
                    total.clone(),
                    token.to_string(),
                )
            })
            .collect();
        assert_eq!(got, want, "{account}'s charge requests");
    }
    assert_eq!(
        charges.len(),
        3,
        "only these accounts are charged: {charges:?}"
    );

    // Payments: every charge answered; no charge id ever has two
    // different results (a duplicate, or a request answered again after
    // the kill, is the same bytes); each result is the one the pure
    // outcome function gives.
    let mut results: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (_, payload) in read_to_end(&brokers, &topic("payments")) {
        let (name, r) = decode_named(catalog, &payload);
        if name != "PaymentMethodAttached" {
            results
                .entry(text(&r["charge_id"]))
                .or_default()
                .insert(payload);
        }
    }
    let requested: BTreeSet<String> = charges
        .values()
        .flatten()
        .map(|(_, r)| text(&r["charge_id"]))
        .collect();
    assert_eq!(
        results.keys().cloned().collect::<BTreeSet<_>>(),
        requested,
        "one result per charge request"
    );
    for (charge_id, forms) in &results {
        assert_eq!(forms.len(), 1, "{charge_id} has two different results");
        let (name, r) = decode_named(catalog, forms.first().unwrap());
        let (account, token) = tokens
            .iter()
            .find(|(a, _)| charge_id.starts_with(&invoice_of(a)))
            .unwrap();
        let attempt: u32 = charge_id.rsplit('-').next().unwrap().parse().unwrap();
        let got = match name.as_str() {
            "PaymentSucceeded" => Verdict::Succeeded,
            "PaymentFailed" => Verdict::Declined {
                code: text(&r["reason"]),
                retryable: r["retryable"] == Value::Boolean(true),
            },
            other => panic!("{charge_id}: a {other} on the payments topic"),
        };
        assert_eq!(got, verdict(account, attempt, token), "{charge_id}");
    }

    // Invoices: paid after the retries; overdue, unpaid, for the other two.
    let invoices = by_account(catalog, &brokers, &topic("invoices"), |r| {
        text(&r.1["invoice_id"]).ends_with("_00001")
    });
    assert_eq!(
        names(invoices.get(retried)),
        ["InvoiceIssued", "InvoicePaid"],
        "{retried}"
    );
    for account in [stopped, exhausted] {
        assert_eq!(
            names(invoices.get(account)),
            ["InvoiceIssued", "InvoiceOverdue"],
            "{account}"
        );
        let overdue = &invoices[account][1].1;
        assert_eq!(
            text(&overdue["amount_due"]),
            text(&issued[account][0].1["total"]),
            "{account}: nothing was paid"
        );
    }

    // Notifications: one per decline, a retry date on each but the last
    // of a path that stops; then the overdue notice.
    let notes = by_account(catalog, &brokers, &topic("notifications"), |r| {
        field(&r.1, "invoice_id").is_some_and(|i| text(i).ends_with("_00001"))
    });
    let kinds = |a: &str| names(notes.get(a));
    assert_eq!(
        kinds(retried),
        [
            "invoice_issued",
            "payment_failed",
            "payment_failed",
            "payment_succeeded"
        ]
    );
    assert_eq!(
        kinds(stopped),
        ["invoice_issued", "payment_failed", "invoice_overdue"]
    );
    assert_eq!(
        kinds(exhausted),
        [
            "invoice_issued",
            "payment_failed",
            "payment_failed",
            "payment_failed",
            "payment_failed",
            "invoice_overdue"
        ]
    );
    let failures = |a: &str| -> Vec<(bool, Option<String>)> {
        notes[a]
            .iter()
            .filter(|(_, r)| symbol(&r["kind"]) == "payment_failed")
            .map(|(_, r)| {
                (
                    field(r, "next_retry_at").is_some(),
                    field(r, "action_required").map(text),
                )
            })
            .collect()
    };
    let retry = (true, None);
    let update_card = (false, Some("update_payment_method".to_string()));
    assert_eq!(failures(retried), vec![retry.clone(); 2]);
    assert_eq!(failures(stopped), vec![update_card.clone()]);
    assert_eq!(
        failures(exhausted),
        [vec![retry; 3], vec![update_card]].concat()
    );
    let overdue_note = notes[exhausted].last().unwrap();
    assert_eq!(
        field(&overdue_note.1, "action_required")
            .map(text)
            .as_deref(),
        Some("pay_invoice")
    );

    // Journal: dunning stopped for the reason of each path, and each
    // retry fired by its timer exactly its schedule's delay after the
    // decline before it.
    let j = journal_to_end(&brokers, &format!("{group}-final"), &prefix);
    let stops = |a: &str| -> Vec<String> {
        j.get(a)
            .into_iter()
            .flatten()
            .filter(|e| e.0 == "dunning_stopped")
            .map(|e| e.2["reason"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(stops(retried), Vec::<String>::new());
    assert_eq!(stops(stopped), ["non_retryable"]);
    assert_eq!(stops(exhausted), ["exhausted"]);
    assert_eq!(count(&j, retried, "invoice_overdue"), 0);
    for (account, attempts) in [(retried, 3), (exhausted, 4)] {
        let entries = &j[account];
        let declines: Vec<i64> = entries
            .iter()
            .filter(|e| e.0 == "payment_failed")
            .map(|e| e.3)
            .collect();
        let retries: Vec<i64> = entries
            .iter()
            .filter(|e| e.0 == "charge_requested")
            .skip(1)
            .map(|e| {
                e.1.strip_prefix("timer:")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("{account}: a retry is fired by a timer: {e:?}"))
            })
            .collect();
        assert_eq!(retries.len(), attempts - 1, "{account}");
        for (n, due) in retries.iter().enumerate() {
            assert_eq!(
                *due,
                declines[n] + RETRY_DAYS[n] * DAY,
                "{account}: attempt {} is retry_schedule[{n}] after decline {}",
                n + 2,
                n + 1
            );
        }
    }
}
