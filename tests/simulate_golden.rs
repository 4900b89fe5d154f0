//! Golden tests of `billstream simulate` on small hand-checked inputs
//! (tests/fixtures/simulate): every total below is worked out in a comment.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run_simulate(out: &Path) -> std::process::Output {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/simulate");
    Command::new(env!("CARGO_BIN_EXE_billstream"))
        .arg("simulate")
        .arg("--plans")
        .arg(fixtures.join("plans.jsonl"))
        .arg("--accounts")
        .arg(fixtures.join("accounts.jsonl"))
        .arg("--events")
        .arg(fixtures.join("events.jsonl"))
        .args(["--until", "2026-05-01T02:00:00Z", "--out"])
        .arg(out)
        .output()
        .expect("billstream simulate runs")
}

fn records(out: &Path, topic: &str) -> Vec<Value> {
    std::fs::read_to_string(out.join(format!("{topic}.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// invoice_id → (subtotal, tax, total, credit_applied, amount_due)
fn issued(out: &Path) -> BTreeMap<String, [String; 5]> {
    records(out, "billing.invoices.v1")
        .into_iter()
        .filter(|r| r.get("lines").is_some())
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (
                s("invoice_id"),
                [
                    s("subtotal"),
                    s("tax"),
                    s("total"),
                    s("credit_applied"),
                    s("amount_due"),
                ],
            )
        })
        .collect()
}

#[test]
fn simulate_hosting_plan_golden_totals() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_simulate(dir.path());
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = issued(dir.path());
    let want: BTreeMap<String, [&str; 5]> = [
        // acct-a opens 2026-03-22 (UTC): 10 of 31 days of the 31.00 fee = 10.00; tax 20% = 2.00.
        (
            "inv_acct-a_00001",
            ["10.00", "2.00", "12.00", "0.00", "12.00"],
        ),
        // March: 400.5 + 399.5 (u2 sent twice, counted once) = 800 h × 0.0125 = 10.00,
        // plus April's fee 31.00 in advance = 41.00; tax 8.20.
        (
            "inv_acct-a_00002",
            ["41.00", "8.20", "49.20", "0.00", "49.20"],
        ),
        // April: no usage (u4 was rejected: card number); May's fee 31.00 + 6.20 tax.
        (
            "inv_acct-a_00003",
            ["31.00", "6.20", "37.20", "0.00", "37.20"],
        ),
        // acct-b opens at the very start of March in Berlin: full fee 31.00; tax 19% = 5.89.
        (
            "inv_acct-b_00001",
            ["31.00", "5.89", "36.89", "0.00", "36.89"],
        ),
        // March: 150 GB-h graduated = 100 × 0.10 + 50 × 0.05 + 1.00 flat = 13.50, + April fee 31.00
        // = 44.50; tax 8.455 → 8.46 (half-to-even: 5 after an odd digit rounds up).
        // The 100.00 top-up paid 36.89 of invoice 1, leaving 63.11 credit, which pays it all.
        (
            "inv_acct-b_00002",
            ["44.50", "8.46", "52.96", "52.96", "0.00"],
        ),
        // April: 50 GB-h × 0.10 = 5.00; u6 (20 GB-h of March) arrived after March closed:
        // March now 170 → 10.00 + 3.50 + 1.00 = 14.50, billed 13.50 → late line 1.00;
        // May fee 31.00 → 37.00; tax 7.03; credit 63.11 − 52.96 = 10.15 applied → 33.88 due.
        (
            "inv_acct-b_00003",
            ["37.00", "7.03", "44.03", "10.15", "33.88"],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let got_str: BTreeMap<String, [&str; 5]> = got
        .iter()
        .map(|(k, v)| (k.clone(), [&*v[0], &*v[1], &*v[2], &*v[3], &*v[4]]))
        .collect();
    assert_eq!(got_str, want);
}

#[test]
fn simulate_reports_bad_lines_with_file_and_line_and_dead_letters_them_masked() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_simulate(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("events.jsonl:9: bad_json"), "{stderr}");
    assert!(stderr.contains("events.jsonl:5: card_number"), "{stderr}");
    let dlq = records(dir.path(), "billing.dlq.v1");
    let kinds: Vec<&str> = dlq
        .iter()
        .map(|r| r["error_kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2);
    assert!(kinds.contains(&"bad_json") && kinds.contains(&"card_number"));
    let all = std::fs::read_to_string(dir.path().join("billing.dlq.v1.jsonl")).unwrap();
    assert!(
        !all.contains("4111 1111 1111 1111"),
        "a card number reached the DLQ: {all}"
    );
    assert!(all.contains("**** **** **** 1111"));
}

#[test]
fn simulate_is_deterministic() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_simulate(a.path());
    run_simulate(b.path());
    for topic in [
        "billing.invoices.v1",
        "billing.journal.v1",
        "billing.notifications.v1",
        "billing.usage-rollups.v1",
    ] {
        assert_eq!(
            records(a.path(), topic),
            records(b.path(), topic),
            "{topic} differs between runs"
        );
    }
}

#[test]
fn simulate_plan_errors_stop_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans.jsonl");
    std::fs::write(&plans, "{\"plan_id\":\"p\",\"currency\":\"EUR\",\"recurring_fee\":\"-1\",\"minimum_spend\":\"0\",\"charges\":[]}\n").unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/simulate");
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args(["simulate", "--plans"])
        .arg(&plans)
        .arg("--accounts")
        .arg(fixtures.join("accounts.jsonl"))
        .arg("--events")
        .arg(fixtures.join("events.jsonl"))
        .args(["--until", "2026-05-01T00:00:00Z", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plans.jsonl:1") && stderr.contains("recurring_fee"),
        "{stderr}"
    );
}
