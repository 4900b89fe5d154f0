//! Issue 14 item 2: the payment-gateway emulator (`billstream gateway`)
//! end to end with `billstream run` on a real broker. One account's first
//! charge is declined retryably, retried on the dunning schedule and paid;
//! another's is declined for good and its invoice goes overdue; every
//! result is published twice (byte for byte) and half are held back, and
//! the engine applies each once; a second emulator in a fresh group
//! answers every request again with the same bytes; malformed requests
//! are dead-lettered with their kind. Time moves by restarting `run` with
//! a later frozen clock (`BILLSTREAM__CLOCK`), as in kafka_redelivery.
//!
//! Needs a broker (`BILLSTREAM_TEST_BROKERS`, see tests/kafka_e2e.rs);
//! without one the end-to-end test says so and does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use billstream::contracts::Catalog;
use billstream::engine::events::*;
use billstream::engine::time::Timestamp;
use billstream::gateway::{decide, ChargeRequest, GatewayConfig, Verdict};
use rust_decimal::Decimal;

use super::kafka_e2e::{
    account_opened, billstream, decode_output, per_unit_plan, produce, read_until, setup, text,
    Records, Running, Setup,
};

/// The emulator of the test: `flaky` declines half its charges
/// retryably, publishes every result twice and holds half back; `strict`
/// declines everything for good.
const GATEWAY_CONFIG: &str = r#"
seed = 7
[providers.flaky]
success_rate = 0.5
latency = "50ms"
latency_jitter = "100ms"
duplicate_rate = 1.0
duplicate_delay = "300ms"
out_of_order_rate = 0.5
out_of_order_delay = "500ms"
[[providers.flaky.declines]]
code = "insufficient_funds"
retryable = true

[providers.strict]
success_rate = 0.0
latency = "50ms"
[[providers.strict.declines]]
code = "card_stolen"
retryable = false
"#;

/// `billstream gateway` on the test's topics, stopped with SIGTERM when
/// dropped.
pub(crate) struct Gateway(Child);

impl Gateway {
    pub(crate) fn start(prefix: &str, brokers: &str, config: &std::path::Path) -> Gateway {
        Gateway::start_with(prefix, brokers, config, &[])
    }

    /// `start` with more BILLSTREAM__… variables (other topic names…).
    pub(crate) fn start_with(
        prefix: &str,
        brokers: &str,
        config: &std::path::Path,
        vars: &[(String, String)],
    ) -> Gateway {
        let child = Command::new(env!("CARGO_BIN_EXE_billstream"))
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .env("BILLSTREAM__KAFKA__BROKERS", brokers)
            .env("BILLSTREAM__KAFKA__TOPIC_PREFIX", prefix)
            .env("BILLSTREAM_LOG", "warn")
            // A restart after kill -9 waits for the dead member's session.
            .env("BILLSTREAM__KAFKA__SESSION_TIMEOUT", "6s")
            .args(["gateway", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Gateway(child)
    }

    /// `kill -9`: no draining, no last commit.
    pub(crate) fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "billstream gateway did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
    }
}

/// One journal entry: (type, causation id, payload JSON, processing instant).
pub(crate) type Entry = (String, String, serde_json::Value, i64);

/// Journal entries by account.
pub(crate) type Journals = BTreeMap<String, Vec<Entry>>;

/// Each account's journal entries (one per entry id) read from the start
/// by a fresh group, until `want` holds or 120 s have passed.
pub(crate) fn journal(
    brokers: &str,
    group: &str,
    prefix: &str,
    want: &dyn Fn(&Journals) -> bool,
) -> Journals {
    let catalog = Catalog::shared().unwrap();
    let mut ids = BTreeSet::new();
    let mut by_account = Journals::new();
    let mut scanned = 0;
    read_until(
        brokers,
        group,
        &format!("{prefix}billing.journal.v1"),
        Duration::from_secs(120),
        |r| {
            for (id, payload) in &r[scanned..] {
                if ids.insert(id.clone()) {
                    let e = decode_output(catalog, payload);
                    by_account.entry(text(&e["account_id"])).or_default().push((
                        text(&e["type"]),
                        text(&e["causation_id"]),
                        serde_json::from_str(&text(&e["payload"])).unwrap(),
                        match e["at"] {
                            apache_avro::types::Value::TimestampMicros(t) => t,
                            ref other => panic!("journal at: {other:?}"),
                        },
                    ));
                }
            }
            scanned = r.len();
            want(&by_account)
        },
    );
    by_account
}

/// The whole journal as it stands, by account.
pub(crate) fn journal_to_end(brokers: &str, group: &str, prefix: &str) -> Journals {
    let topic = format!("{prefix}billing.journal.v1");
    let probe: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let (_, end) =
        rdkafka::consumer::Consumer::fetch_watermarks(&probe, &topic, 0, Duration::from_secs(10))
            .unwrap();
    let records = read_until(brokers, group, &topic, Duration::from_secs(120), |r| {
        r.len() as i64 >= end
    });
    assert!(
        records.len() as i64 >= end,
        "read {} of {end} journal records",
        records.len()
    );
    journal(brokers, &format!("{group}-fold"), prefix, &|j| {
        j.values().map(Vec::len).sum::<usize>()
            >= records.iter().map(|r| &r.0).collect::<BTreeSet<_>>().len()
    })
}

pub(crate) fn count(j: &Journals, account: &str, kind: &str) -> usize {
    j.get(account)
        .map_or(0, |es| es.iter().filter(|e| e.0 == kind).count())
}

/// A charge of the first invoice of `account`, as the engine names it.
pub(crate) fn first_invoice_charge(account: &str, attempt: u32, token: &str) -> ChargeRequest {
    let invoice_id = format!("inv_{account}_00001");
    ChargeRequest {
        event_id: String::new(),
        account_id: account.into(),
        occurred_at: Timestamp(0),
        charge_id: format!("{invoice_id}/attempt-{attempt}"),
        invoice_id,
        amount: Decimal::ZERO,
        currency: "EUR".into(),
        token_ref: token.into(),
        attempt,
    }
}

#[test]
fn issue_14_gateway_refuses_bad_configuration_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        GATEWAY_CONFIG.replace("success_rate = 0.0", "success_rate = \"never\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args(["gateway", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("success_rate"), "{stderr}");
    std::fs::write(
        &path,
        GATEWAY_CONFIG.replace("out_of_order_rate = 0.5", "out_of_order_rate = 2"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args(["gateway", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("providers.flaky.out_of_order_rate"),
        "{stderr}"
    );
}

#[test]
fn issue_14_gateway_drives_retries_on_schedule_and_a_final_decline_to_overdue() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("gw")
    else {
        return;
    };
    let catalog = Catalog::shared().unwrap();
    // The emulator's own consumer group per test run.
    let gateway_config = |group_id: &str| {
        GATEWAY_CONFIG.replace("seed = 7", &format!("seed = 7\ngroup_id = \"{group_id}\""))
    };
    let config_path = _dir.path().join("gateway.toml");
    std::fs::write(&config_path, gateway_config(&format!("{group}-gateway"))).unwrap();
    let config = GatewayConfig::parse(GATEWAY_CONFIG).unwrap();
    let flaky = &config.providers["flaky"];
    // The outcome is a pure function of the charge, so the test can pick
    // an account whose first attempt is declined and whose second (the
    // retry) succeeds.
    let retried = (0..1000)
        .map(|n| format!("acct-gw-retry-{n}"))
        .find(|a| {
            let first = decide(
                config.seed,
                "flaky",
                flaky,
                &first_invoice_charge(a, 1, "tok_flaky_a"),
            );
            let second = decide(
                config.seed,
                "flaky",
                flaky,
                &first_invoice_charge(a, 2, "tok_flaky_a"),
            );
            matches!(
                first.verdict,
                Verdict::Declined {
                    retryable: true,
                    ..
                }
            ) && second.verdict == Verdict::Succeeded
        })
        .expect("an account whose first attempt fails and second succeeds");
    let retried = retried.as_str();
    let (final_decline, no_provider) = ("acct-gw-final", "acct-gw-nowhere");
    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let opened = at("2026-03-01T00:00:00Z");
    let card = |account: &str, token: &str| {
        Input::Payment(PaymentEvent {
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
        })
    };
    let mut records: Records = vec![(
        "billing.plans.v1".into(),
        "flat".into(),
        catalog
            .encode_plan(&per_unit_plan("flat", "30.00", "0.50"))
            .unwrap(),
    )];
    for (account, token) in [
        (retried, "tok_flaky_a"),
        (final_decline, "tok_strict_b"),
        (no_provider, "tok_nowhere_c"),
    ] {
        let open = account_opened(&format!("open-{account}"), account, "flat", "0.10", opened);
        records.push((
            "billing.accounts.v1".into(),
            account.into(),
            catalog.encode_input(&open).unwrap(),
        ));
        records.push((
            "billing.payments.v1".into(),
            account.into(),
            catalog.encode_input(&card(account, token)).unwrap(),
        ));
    }
    // A record on the charges topic that is no charge request at all.
    records.push((
        "billing.charges.v1".into(),
        "acct-junk".into(),
        b"\x07not avro".to_vec(),
    ));
    produce(&brokers, &prefix, &records);

    let gateway = Gateway::start(&prefix, &brokers, &config_path);
    let run_at = |clock: &str| {
        Running::start(
            billstream(&prefix, &group, &store, &brokers).env("BILLSTREAM__CLOCK", clock),
        )
    };
    let read = |reader: &str, want: &dyn Fn(&Journals) -> bool| {
        journal(&brokers, &format!("{group}-{reader}"), &prefix, want)
    };

    // 1 March, 01:00: both first attempts are answered with declines.
    let running = run_at("2026-03-01T01:00:00Z");
    let j = read("march-1", &|j| {
        count(j, retried, "payment_failed") == 1 && count(j, final_decline, "dunning_stopped") == 1
    });
    assert_eq!(count(&j, retried, "payment_failed"), 1, "{j:#?}");
    assert_eq!(count(&j, final_decline, "dunning_stopped"), 1, "{j:#?}");
    // Give the deliberate duplicates time to arrive, then stop.
    std::thread::sleep(Duration::from_secs(2));
    assert!(running.stop().success());

    // 2 March, 02:00: past the first retry (1 day after the decline).
    let running = run_at("2026-03-02T02:00:00Z");
    let j = read("march-2", &|j| count(j, retried, "invoice_paid") == 1);
    std::thread::sleep(Duration::from_secs(2));
    assert!(running.stop().success());
    assert_eq!(count(&j, retried, "invoice_paid"), 1, "{j:#?}");

    // 16 March: past the due date (14 days after issue) of the invoice
    // declined for good.
    let running = run_at("2026-03-16T00:00:00Z");
    let j = read("march-16", &|j| {
        count(j, final_decline, "invoice_overdue") == 1
    });
    assert!(running.stop().success());
    assert!(gateway.stop().success());

    // The retried account: charged, declined (retryable) once although the
    // result came twice, charged again by the retry timer one day after the
    // decline, paid; never overdue.
    let kinds = |account: &str| -> Vec<&str> {
        j[account]
            .iter()
            .map(|e| e.0.as_str())
            .filter(|k| {
                [
                    "charge_requested",
                    "payment_failed",
                    "payment_succeeded",
                    "dunning_stopped",
                    "invoice_paid",
                    "invoice_overdue",
                ]
                .contains(k)
            })
            .collect()
    };
    assert_eq!(
        kinds(retried),
        [
            "charge_requested",
            "payment_failed",
            "charge_requested",
            "payment_succeeded",
            "invoice_paid"
        ],
        "{:#?}",
        j[retried]
    );
    let failed = j[retried].iter().find(|e| e.0 == "payment_failed").unwrap();
    assert_eq!(failed.2["retryable"], true, "{failed:?}");
    assert_eq!(failed.2["reason"], "insufficient_funds", "{failed:?}");
    let retry = j[retried]
        .iter()
        .filter(|e| e.0 == "charge_requested")
        .nth(1)
        .unwrap();
    let due: i64 = retry
        .1
        .strip_prefix("timer:")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("the retry is fired by a timer: {retry:?}"));
    assert_eq!(
        Timestamp(due),
        Timestamp(failed.3 + 86_400_000_000),
        "retried one day (the first step of billing.retry_schedule) after the decline"
    );
    // The account declined for good: one charge, no retry, overdue.
    assert_eq!(
        kinds(final_decline),
        [
            "charge_requested",
            "payment_failed",
            "dunning_stopped",
            "invoice_overdue"
        ],
        "{:#?}",
        j[final_decline]
    );
    let failed = j[final_decline]
        .iter()
        .find(|e| e.0 == "payment_failed")
        .unwrap();
    assert_eq!(failed.2["retryable"], false, "{failed:?}");
    assert_eq!(failed.2["reason"], "card_stolen", "{failed:?}");

    // A second emulator in a fresh group answers every request again
    // (as after a restart that lost its offsets): with the same bytes.
    let config_again = _dir.path().join("gateway-again.toml");
    std::fs::write(
        &config_again,
        gateway_config(&format!("{group}-gateway-again")),
    )
    .unwrap();
    let payments_topic = format!("{prefix}billing.payments.v1");
    // Copies of each record of the payments topic, by event id, and
    // whether every copy of each is byte-identical.
    let tally = |records: &[(String, Vec<u8>)]| {
        let mut copies: BTreeMap<String, usize> = BTreeMap::new();
        let mut forms: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for (id, payload) in records {
            *copies.entry(id.clone()).or_default() += 1;
            forms.entry(id.clone()).or_default().insert(payload.clone());
        }
        copies.retain(|id, _| !id.starts_with("card-"));
        (copies, forms.values().all(|f| f.len() == 1))
    };
    // The results of the charges of both accounts: the retried account's
    // two (each published twice, duplicate_rate 1) and the other's one.
    let first = read_until(
        &brokers,
        &format!("{group}-payments-1"),
        &payments_topic,
        Duration::from_secs(60),
        |r| {
            let (copies, _) = tally(r);
            copies.len() == 3 && copies.values().sum::<usize>() >= 5
        },
    );
    let (first_copies, identical) = tally(&first);
    assert!(
        identical,
        "a result published twice differs: {first_copies:?}"
    );
    assert_eq!(
        first_copies.len(),
        3,
        "one result id per charge: {first_copies:?}"
    );
    assert!(
        first_copies.values().filter(|&&n| n >= 2).count() >= 2,
        "the flaky provider's results are published twice: {first_copies:?}"
    );
    let again = Gateway::start(&prefix, &brokers, &config_again);
    let all = read_until(
        &brokers,
        &format!("{group}-payments-2"),
        &payments_topic,
        Duration::from_secs(60),
        |r| {
            let (copies, _) = tally(r);
            first_copies
                .iter()
                .all(|(id, &n)| copies.get(id).is_some_and(|&m| m >= 2 * n))
        },
    );
    assert!(again.stop().success());
    let (copies, identical) = tally(&all);
    assert!(identical, "a result answered again differs: {copies:?}");
    assert_eq!(
        copies.len(),
        3,
        "still one result id per charge: {copies:?}"
    );
    for (id, n) in &first_copies {
        assert!(copies[id] >= 2 * n, "{id} answered again: {copies:?}");
    }

    // The requests that could not be answered are dead letters naming the
    // charges topic, their position and why.
    let dlq = read_until(
        &brokers,
        &format!("{group}-dlq"),
        &format!("{prefix}billing.dlq.v1"),
        Duration::from_secs(60),
        |r| r.len() >= 2,
    );
    let letters: BTreeMap<String, (String, String)> = dlq
        .iter()
        .map(|(_, payload)| {
            let d = decode_output(catalog, payload);
            (
                text(&d["error_kind"]),
                (text(&d["source_topic"]), text(&d["reason"])),
            )
        })
        .collect();
    let charges_topic = format!("{prefix}billing.charges.v1");
    assert_eq!(letters["bad_magic"].0, charges_topic, "{letters:?}");
    assert_eq!(letters["unknown_provider"].0, charges_topic, "{letters:?}");
    assert!(
        letters["unknown_provider"].1.contains("\"nowhere\""),
        "{letters:?}"
    );
    // No result for the charge of the unknown provider.
    assert_eq!(count(&j, no_provider, "charge_requested"), 1);
    assert_eq!(count(&j, no_provider, "payment_failed"), 0);
    assert_eq!(count(&j, no_provider, "payment_succeeded"), 0);
}

/// The emulator killed (`kill -9`) while most of its results are still
/// waiting out their latency, then restarted in the same group: every
/// charge still gets its result, applied once, and the result is the one
/// the pure outcome function gives; no result id ever has two forms.
#[test]
fn issue_14_gateway_killed_mid_stream_answers_every_charge_once_after_restart() {
    let Some(Setup {
        brokers,
        prefix,
        group,
        _dir,
        store,
    }) = setup("gwkill")
    else {
        return;
    };
    const ACCOUNTS: usize = 40;
    let catalog = Catalog::shared().unwrap();
    let text_config = format!(
        r#"
seed = 11
group_id = "{group}-gateway"
[providers.slow]
success_rate = 0.5
latency = "1s"
latency_jitter = "3s"
duplicate_rate = 0.3
duplicate_delay = "500ms"
out_of_order_rate = 0.3
out_of_order_delay = "1s"
[[providers.slow.declines]]
code = "insufficient_funds"
retryable = true
[[providers.slow.declines]]
code = "card_stolen"
retryable = false
"#
    );
    let config_path = _dir.path().join("gateway.toml");
    std::fs::write(&config_path, &text_config).unwrap();
    let config = GatewayConfig::parse(&text_config).unwrap();
    let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let accounts: Vec<String> = (0..ACCOUNTS).map(|n| format!("acct-k{n}")).collect();
    let mut records: Records = vec![(
        "billing.plans.v1".into(),
        "flat".into(),
        catalog
            .encode_plan(&per_unit_plan("flat", "30.00", "0.50"))
            .unwrap(),
    )];
    for account in &accounts {
        let open = account_opened(
            &format!("open-{account}"),
            account,
            "flat",
            "0",
            at("2026-03-01T00:00:00Z"),
        );
        records.push((
            "billing.accounts.v1".into(),
            account.clone(),
            catalog.encode_input(&open).unwrap(),
        ));
        let card = Input::Payment(PaymentEvent {
            event_id: format!("card-{account}"),
            account_id: account.clone(),
            occurred_at: at("2026-03-01T00:01:00Z"),
            environment: Some("prod".into()),
            kind: PaymentKind::PaymentMethodAttached {
                token_ref: format!("tok_slow_{account}"),
                brand: "visa".into(),
                last4: "4242".into(),
                expires: "2030-01".into(),
            },
        });
        records.push((
            "billing.payments.v1".into(),
            account.clone(),
            catalog.encode_input(&card).unwrap(),
        ));
    }
    produce(&brokers, &prefix, &records);
    let running = Running::start(
        billstream(&prefix, &group, &store, &brokers)
            .env("BILLSTREAM__CLOCK", "2026-03-01T01:00:00Z"),
    );
    // Every charge requested before the emulator starts, so that all are
    // in flight at once.
    let read = |reader: &str, want: &dyn Fn(&Journals) -> bool| {
        journal(&brokers, &format!("{group}-{reader}"), &prefix, want)
    };
    let j = read("requested", &|j| {
        accounts
            .iter()
            .all(|a| count(j, a, "charge_requested") == 1)
    });
    assert!(accounts
        .iter()
        .all(|a| count(&j, a, "charge_requested") == 1));
    let payments_topic = format!("{prefix}billing.payments.v1");
    let results =
        |r: &[(String, Vec<u8>)]| r.iter().filter(|(id, _)| !id.starts_with("card-")).count();
    let gateway = Gateway::start(&prefix, &brokers, &config_path);
    // The first result is out (after at least 1 s of latency); most are
    // still waiting (up to 4 s + hold-back + duplicate delay).
    let first = read_until(
        &brokers,
        &format!("{group}-first"),
        &payments_topic,
        Duration::from_secs(60),
        |r| results(r) >= 1,
    );
    gateway.kill();
    // What the killed emulator published: the topic as it stands.
    let answered_before_kill = results(&read_until(
        &brokers,
        &format!("{group}-at-kill"),
        &payments_topic,
        Duration::from_secs(5),
        |_| false,
    ));
    assert!(answered_before_kill >= results(&first));
    eprintln!("gateway killed after {answered_before_kill} results of {ACCOUNTS} charges");
    assert!(
        answered_before_kill < ACCOUNTS,
        "the kill came while requests were in flight ({answered_before_kill} results of {ACCOUNTS})"
    );
    let gateway = Gateway::start(&prefix, &brokers, &config_path);
    let answered =
        |j: &Journals, a: &str| count(j, a, "payment_failed") + count(j, a, "payment_succeeded");
    read("answered", &|j| {
        accounts.iter().all(|a| answered(j, a) >= 1)
    });
    // Late duplicates and held-back results arrive and are processed.
    assert!(gateway.stop().success());
    std::thread::sleep(Duration::from_secs(2));
    assert!(running.stop().success());
    let j = journal_to_end(&brokers, &format!("{group}-final"), &prefix);
    let provider = &config.providers["slow"];
    for a in &accounts {
        assert_eq!(answered(&j, a), 1, "{a}: one result applied: {:#?}", j[a]);
        let want = decide(
            config.seed,
            "slow",
            provider,
            &first_invoice_charge(a, 1, &format!("tok_slow_{a}")),
        );
        let got = if count(&j, a, "payment_succeeded") == 1 {
            Verdict::Succeeded
        } else {
            let failed = j[a].iter().find(|e| e.0 == "payment_failed").unwrap();
            Verdict::Declined {
                code: failed.2["reason"].as_str().unwrap().to_string(),
                retryable: failed.2["retryable"].as_bool().unwrap(),
            }
        };
        assert_eq!(got, want.verdict, "{a}");
    }
    let all = read_until(
        &brokers,
        &format!("{group}-all"),
        &payments_topic,
        Duration::from_secs(10),
        |_| false,
    );
    let mut forms: BTreeMap<&str, BTreeSet<&[u8]>> = BTreeMap::new();
    for (id, payload) in &all {
        forms.entry(id).or_default().insert(payload);
    }
    assert!(
        forms.values().all(|f| f.len() == 1),
        "a result with two forms"
    );
    assert_eq!(forms.len(), 2 * ACCOUNTS, "a card and a result per account");
}
