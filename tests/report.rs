//! Issue 14 item 3: `billstream report providers|settlement` on the output
//! folder of `simulate` (tests/fixtures/report), compared with checked-in
//! golden CSV and tables; and on a real broker's journal topic (that test
//! needs `BILLSTREAM_TEST_BROKERS`, see tests/kafka_e2e.rs; without it, it
//! says so and does nothing).
//!
//! The fixture, worked out by hand (days and months are UTC, of the
//! journal entry; the plan's fee is 31.00 a month in advance, tax 0):
//! - acct-a (card tok_acme_a1): March's fee 31.00 charged on 1 March,
//!   failed insufficient_funds (retryable); the retry on 2 March succeeds.
//!   5.00 promotional credit given on 10 March expires unused on 20 March.
//!   800 container-hours (10.00) in March: April's invoice is 41.00,
//!   charged on 1 April and paid the same day.
//! - acct-b (card tok_globex_b1): March's 31.00 charged on 1 March, failed
//!   card_expired (not retryable: dunning stops). 10.00 promotional credit
//!   on 5 March pays 10.00 (21.00 due), overdue on 15 March; a bank transfer
//!   of 15.00 on 20 March leaves 6.00. April's 31.00 is charged on 1 April;
//!   a 50.00 top-up on 10 April pays the 6.00 and the 31.00 from credit
//!   (13.00 left); the charge's failure (do_not_honor) arrives after; 5.00
//!   is refunded on 20 April (8.00 left).
//!
//! Providers: acme requested 31.00 (1 Mar, failed), 31.00 (2 Mar,
//! succeeded), 41.00 (1 Apr, succeeded); globex requested 31.00 (1 Mar,
//! failed card_expired) and 31.00 (1 Apr, failed do_not_honor on 10 Apr),
//! refunded 5.00 (20 Apr).
//! Settlement, March: invoiced 31 + 31 = 62.00; credit applied 10.00
//! promotional; collected 31.00 card + 15.00 transfer = 46.00; outstanding
//! 62 − 10 − 46 = 6.00, all overdue; promotional granted 15.00, 10.00
//! applied, 5.00 expired: none held. April: invoiced 41 + 31 = 72.00; paid
//! credit applied 6 + 31 = 37.00; collected 41.00; outstanding 6 + 72 − 37
//! − 41 = 0; paid credit 50 − 37 − 5 refunded = 8.00 held.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;

use billstream::contracts::Catalog;
use billstream::engine::events::*;
use billstream::engine::time::Timestamp;
use rust_decimal::Decimal;

use super::kafka_e2e::{
    account_opened, billstream, per_unit_plan, produce, setup, Records, Running, Setup,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report")
}

/// A folder holding `out/`: simulate's outputs on the report fixtures.
fn simulated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .arg("simulate")
        .arg("--plans")
        .arg(f.join("plans.jsonl"))
        .arg("--accounts")
        .arg(f.join("accounts.jsonl"))
        .arg("--events")
        .arg(f.join("events.jsonl"))
        .args([
            "--until",
            "2026-04-30T00:00:00Z",
            "--out",
            "out",
            "--strict",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    dir
}

fn report(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_billstream"))
        .arg("report")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap()
}

#[test]
fn issue_14_report_on_simulate_output_matches_the_golden_csv_and_tables() {
    let dir = simulated();
    for (which, format, file) in [
        ("providers", "csv", "providers.csv"),
        ("providers", "table", "providers.txt"),
        ("settlement", "csv", "settlement.csv"),
        ("settlement", "table", "settlement.txt"),
    ] {
        let out = report(dir.path(), &[which, "--from", "out", "--format", format]);
        assert_eq!(out.status.code(), Some(0), "{which} {format}: {out:?}");
        assert_eq!(stdout(&out), golden(file), "{which} {format}");
    }
}

#[test]
fn issue_14_report_month_and_day_cut_the_rows_and_keep_the_opening_balances() {
    let dir = simulated();
    let april = report(
        dir.path(),
        &[
            "settlement",
            "--from",
            "out",
            "--month",
            "2026-04",
            "--format",
            "csv",
        ],
    );
    assert_eq!(april.status.code(), Some(0), "{april:?}");
    let lines: Vec<String> = stdout(&april).lines().map(String::from).collect();
    let golden = golden("settlement.csv");
    let golden: Vec<&str> = golden.lines().collect();
    // The header and April's row of the whole report, as they were: April
    // opens with March's 6.00 outstanding.
    assert_eq!(lines, [golden[0], golden[2]]);
    assert!(lines[1].starts_with("2026-04,EUR,2,72.00,37.00,0.00,41.00,6.00,0.00,"));
    let day = report(
        dir.path(),
        &[
            "providers",
            "--from",
            "out",
            "--day",
            "2026-03-01",
            "--format",
            "json",
        ],
    );
    assert_eq!(day.status.code(), Some(0), "{day:?}");
    let v: serde_json::Value = serde_json::from_slice(&day.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["provider"], "acme");
    assert_eq!(rows[0]["failed_by_reason"], "insufficient_funds=1");
    assert_eq!(rows[1]["provider"], "globex");
    assert_eq!(rows[1]["failed_amount"], "31.00");
    assert_eq!(rows[1]["failed"], 1);
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["ok"] == true));
    let bad = report(
        dir.path(),
        &["providers", "--from", "out", "--month", "2026-13"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--month \"2026-13\""));
}

#[test]
fn issue_14_report_says_when_the_journal_does_not_reconcile_and_exits_1() {
    let dir = simulated();
    // Tamper with the journal: acct-b's bank transfer of 15.00 now says
    // 14.00, while its invoice entry still says 6.00 is left.
    let path = dir.path().join("out/billing.journal.v1.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let transfer = r#"\"type\":\"bank_transfer_applied\",\"reference\":\"inv_acct-b_00001\",\"invoice_id\":\"inv_acct-b_00001\",\"amount\":1500"#;
    assert!(text.contains(transfer), "the fixture's transfer entry");
    std::fs::write(
        &path,
        text.replace(transfer, &transfer.replace("1500", "1400")),
    )
    .unwrap();
    let out = report(dir.path(), &["settlement", "--from", "out"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // By the flows 62 − 10 − 45 = 7.00; the invoice entries leave 6.00.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not reconcile: outstanding 2026-03 EUR")
            && err.contains("report 7.00, journal 6.00"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("DOES NOT RECONCILE"),
        "{}",
        stdout(&out)
    );
}

/// `billstream report <which> --from topic --format <format>` on the
/// test's topics.
fn report_topic(s: &Setup, which: &str, format: &str) -> Output {
    billstream(&s.prefix, &s.group, &s.store, &s.brokers)
        .args(["report", which, "--from", "topic", "--format", format])
        .output()
        .unwrap()
}

#[test]
fn issue_14_report_reads_the_journal_topic_of_a_real_broker() {
    let Some(s) = setup("report") else {
        return;
    };
    let catalog = Catalog::shared().unwrap();
    let at = |t: &str| Timestamp::parse_rfc3339(t).unwrap();
    let payment = |id: &str, acct: &str, kind: PaymentKind| {
        (
            "billing.payments.v1".to_string(),
            acct.to_string(),
            catalog
                .encode_input(&Input::Payment(PaymentEvent {
                    event_id: id.into(),
                    account_id: acct.into(),
                    occurred_at: at("2026-03-10T11:00:00Z"),
                    environment: Some("prod".into()),
                    kind,
                }))
                .unwrap(),
        )
    };
    let card = |token: &str| PaymentKind::PaymentMethodAttached {
        token_ref: token.into(),
        brand: "visa".into(),
        last4: "4242".into(),
        expires: "2030-01".into(),
    };
    let mut records: Records = vec![(
        "billing.plans.v1".into(),
        "metered".into(),
        catalog
            .encode_plan(&per_unit_plan("metered", "30.00", "0.50"))
            .unwrap(),
    )];
    for (acct, token) in [("acct-k1", "tok_acme_k1"), ("acct-k2", "tok_globex_k2")] {
        records.push((
            "billing.accounts.v1".into(),
            acct.into(),
            catalog
                .encode_input(&account_opened(
                    &format!("open-{acct}"),
                    acct,
                    "metered",
                    "0.10",
                    at("2026-03-01T00:00:00Z"),
                ))
                .unwrap(),
        ));
        records.push(payment(&format!("card-{acct}"), acct, card(token)));
    }
    produce(&s.brokers, &s.prefix, &records);
    // Every entry is made at the frozen clock: one UTC day, one month.
    let mut run = billstream(&s.prefix, &s.group, &s.store, &s.brokers);
    run.env("BILLSTREAM__CLOCK", "2026-03-10T12:00:00Z");
    let running = Running::start(&mut run);
    let rows_until = |which: &str, done: &dyn Fn(&[serde_json::Value]) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let out = report_topic(&s, which, "json");
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if done(v["rows"].as_array().unwrap()) {
                    return v;
                }
            }
            assert!(std::time::Instant::now() < deadline, "{out:?}");
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    };
    // Both opening invoices (March's fee, 30.00 + 10% tax) are charged.
    let requested = |rows: &[serde_json::Value]| {
        rows.iter()
            .map(|r| r["requested"].as_u64().unwrap())
            .sum::<u64>()
            == 2
    };
    rows_until("providers", &requested);
    produce(
        &s.brokers,
        &s.prefix,
        &vec![
            payment(
                "fail-k1",
                "acct-k1",
                PaymentKind::PaymentFailed {
                    charge_id: "inv_acct-k1_00001/attempt-1".into(),
                    invoice_id: "inv_acct-k1_00001".into(),
                    retryable: true,
                    reason: "insufficient_funds".into(),
                },
            ),
            payment(
                "ok-k2",
                "acct-k2",
                PaymentKind::PaymentSucceeded {
                    charge_id: "inv_acct-k2_00001/attempt-1".into(),
                    invoice_id: "inv_acct-k2_00001".into(),
                    amount: Decimal::from_str("33.00").unwrap(),
                    currency: "EUR".into(),
                },
            ),
        ],
    );
    let answered = |rows: &[serde_json::Value]| {
        rows.iter()
            .map(|r| r["succeeded"].as_u64().unwrap() + r["failed"].as_u64().unwrap())
            .sum::<u64>()
            == 2
    };
    rows_until("providers", &answered);
    assert!(running.stop().success());

    let providers = report_topic(&s, "providers", "csv");
    assert_eq!(providers.status.code(), Some(0), "{providers:?}");
    assert_eq!(
        stdout(&providers),
        "day,provider,currency,requested,requested_amount,succeeded,succeeded_amount,failed,failed_amount,failed_by_reason,refunded,refunded_amount\n\
         2026-03-10,acme,EUR,1,33.00,0,0.00,1,33.00,insufficient_funds=1,0,0.00\n\
         2026-03-10,globex,EUR,1,33.00,1,33.00,0,0.00,,0,0.00\n"
    );
    // 33.00 + 33.00 invoiced, 33.00 collected: 33.00 outstanding, not yet
    // due (14 days' terms), no credit.
    let settlement = report_topic(&s, "settlement", "csv");
    assert_eq!(settlement.status.code(), Some(0), "{settlement:?}");
    assert_eq!(
        stdout(&settlement).lines().nth(1),
        Some("2026-03,EUR,2,66.00,0.00,0.00,33.00,0.00,33.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00")
    );
    let table = report_topic(&s, "settlement", "table");
    assert!(
        stdout(&table).starts_with(&format!(
            "Settlement report from topic {}billing.journal.v1\n",
            s.prefix
        )),
        "{}",
        stdout(&table)
    );
    assert!(stdout(&table).contains("Reconciles with the journal: 2 checks, all equal."));
}
