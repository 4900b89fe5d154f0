//! Issue 14 item 1: `billstream reconcile` against the output folder of
//! `simulate` on the hand-checked fixtures (tests/simulate_golden.rs works
//! out every total). The legacy exports in tests/fixtures/reconcile are
//! those invoices per account and month (the opening invoice and March's
//! closing invoice summed), with one line of one invoice a cent higher:
//! acct-b's March disk.gb_hours (13.51 where billstream bills 13.50 for
//! the 150 GB-h of usage event u3), and its total with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A folder holding `out/`: simulate's outputs on the fixtures.
fn simulated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures().join("simulate");
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .arg("simulate")
        .arg("--plans")
        .arg(f.join("plans.jsonl"))
        .arg("--accounts")
        .arg(f.join("accounts.jsonl"))
        .arg("--events")
        .arg(f.join("events.jsonl"))
        .args(["--until", "2026-05-01T02:00:00Z", "--out", "out"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    dir
}

/// `reconcile --legacy <legacy> --against out` in `dir`, the legacy file
/// copied there (so the report names it by its file name).
fn reconcile(dir: &Path, legacy: &str, text: &str, extra: &[&str]) -> Output {
    std::fs::write(dir.join(legacy), text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args(["reconcile", "--legacy", legacy, "--against", "out"])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("reconcile").join(name)).unwrap()
}

#[test]
fn issue_14_reconcile_reports_exactly_the_one_line_that_differs() {
    let dir = simulated();
    let out = reconcile(
        dir.path(),
        "legacy.csv",
        &fixture("legacy-one-line-differs.csv"),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stdout(&out), fixture("one-line-differs.txt"));
    // The same export as JSON lines says the same.
    let json = reconcile(
        dir.path(),
        "legacy.jsonl",
        &fixture("legacy-one-line-differs.jsonl"),
        &["--json"],
    );
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let s = &report["summary"];
    assert_eq!(
        (s["matched"].as_u64(), s["mismatched"].as_u64()),
        (Some(3), Some(1)),
        "{report}"
    );
    assert_eq!(
        (s["only_legacy"].as_u64(), s["only_billstream"].as_u64()),
        (Some(0), Some(0))
    );
    let m = &report["mismatches"][0];
    assert_eq!(
        (m["account"].as_str(), m["period"].as_str()),
        (Some("acct-b"), Some("2026-03"))
    );
    assert_eq!(m["difference"], "-0.01");
    assert_eq!(
        m["invoices"],
        serde_json::json!(["inv_acct-b_00001", "inv_acct-b_00002"])
    );
    let lines = m["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{m}");
    assert_eq!(lines[0]["line"], "disk.gb_hours");
    assert_eq!(
        (lines[0]["legacy"].as_str(), lines[0]["billstream"].as_str()),
        (Some("13.51"), Some("13.50"))
    );
    assert_eq!(lines[0]["inputs"][0]["event_id"], "u3");
    assert_eq!(lines[0]["inputs"][0]["quantity"], "150");
    assert_eq!(lines[0]["inputs"].as_array().unwrap().len(), 1);
    assert_eq!(report["totals"][0]["difference"], "-0.01");
    // The one account and period alone.
    let march_b = reconcile(
        dir.path(),
        "legacy.csv",
        &fixture("legacy-one-line-differs.csv"),
        &["--period", "2026-04"],
    );
    assert_eq!(
        march_b.status.code(),
        Some(0),
        "April matches: {}",
        stdout(&march_b)
    );
}

#[test]
fn issue_14_reconcile_reports_invoices_only_one_side_has() {
    let dir = simulated();
    // acct-a's April is not in the legacy export; acct-c is only there.
    let text = "account_id,period,currency,total\n\
                acct-a,2026-03,EUR,61.20\n\
                acct-b,2026-03,EUR,89.85\n\
                acct-b,2026-04,EUR,44.03\n\
                acct-c,2026-03,EUR,15.00\n";
    let out = reconcile(dir.path(), "legacy.csv", text, &[]);
    assert_eq!(out.status.code(), Some(1));
    let table = stdout(&out);
    let row = |account: &str, period: &str| {
        table
            .lines()
            .find(|l| l.starts_with(account) && l.contains(period))
            .unwrap_or_else(|| panic!("{account} {period} not in\n{table}"))
            .to_string()
    };
    assert!(
        row("acct-c", "2026-03").ends_with("only in legacy (legacy.csv:5)"),
        "{table}"
    );
    assert!(
        row("acct-a", "2026-04").ends_with("only in billstream (inv_acct-a_00003)"),
        "{table}"
    );
    assert!(row("acct-b", "2026-03").ends_with("match"), "{table}");
    assert!(
        table.contains("Totals EUR: legacy 210.08, billstream 232.28, difference 22.20"),
        "{table}"
    );
    assert!(
        table.contains(
            "5 account-periods: 3 match, 0 mismatch, 1 only in legacy, 1 only in billstream"
        ),
        "{table}"
    );
}

#[test]
fn issue_14_reconcile_tolerance_decides_what_matches() {
    let dir = simulated();
    let text = "account_id,period,currency,total\n\
                acct-a,2026-03,EUR,61.21\n\
                acct-a,2026-04,EUR,37.20\n\
                acct-b,2026-03,EUR,89.84\n\
                acct-b,2026-04,EUR,44.03\n";
    assert_eq!(
        reconcile(dir.path(), "l.csv", text, &[]).status.code(),
        Some(1)
    );
    assert_eq!(
        reconcile(dir.path(), "l.csv", text, &["--tolerance", "0.009"])
            .status
            .code(),
        Some(1)
    );
    let within = reconcile(dir.path(), "l.csv", text, &["--tolerance", "0.01"]);
    assert_eq!(within.status.code(), Some(0), "{}", stdout(&within));
    assert!(stdout(&within).contains("4 account-periods: 4 match"));
}

#[test]
fn issue_14_reconcile_bad_legacy_input_names_the_line_and_field() {
    let dir = simulated();
    let csv = reconcile(
        dir.path(),
        "bad.csv",
        "account_id,period,currency,total\nacct-a,2026-03,EUR,61.20\nacct-b,March,EUR,1.00\n",
        &[],
    );
    assert_eq!(csv.status.code(), Some(2));
    let err = String::from_utf8_lossy(&csv.stderr);
    assert!(err.contains("bad.csv:3: field `period`"), "{err}");
    let jsonl = reconcile(
        dir.path(),
        "bad.jsonl",
        "{\"account_id\":\"acct-a\",\"period\":\"2026-03\",\"currency\":\"EUR\",\"total\":\"61.20\",\"lines\":{\"tax\":10.2}}\n",
        &[],
    );
    assert_eq!(jsonl.status.code(), Some(2));
    let err = String::from_utf8_lossy(&jsonl.stderr);
    assert!(err.contains("bad.jsonl:1: field `lines.tax`"), "{err}");
    assert!(err.contains("decimal strings"), "{err}");
}
