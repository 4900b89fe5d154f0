//! `billstream preview` (issue 13, item 6): the upcoming invoice on
//! `simulate` inputs equals the invoice `simulate` then issues, and the
//! command's help explains what it does.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn plans() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/simulate/plans.jsonl")
}

fn billstream(cmd: &str, dir: &Path, until: &str, out: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_billstream"))
        .arg(cmd)
        .arg("--plans")
        .arg(plans())
        .arg("--accounts")
        .arg(dir.join("accounts.jsonl"))
        .arg("--events")
        .arg(dir.join("events.jsonl"))
        .args(["--until", until, "--out"])
        .arg(dir.join(out))
        .output()
        .expect("billstream runs")
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn issue_13_preview_equals_the_invoice_simulate_issues_when_the_period_closes() {
    let dir = tempfile::tempdir().unwrap();
    // acct-a opens on 22 March (hosting: 31.00 fee, container-hours at
    // 0.0125, tax 20%) and gets a 10% coupon; a promotional top-up of
    // 20.00 pays the opening invoice (10/31 of 31.00 = 10.00 + 2.00 tax =
    // 12.00), leaving 8.00.
    std::fs::write(
        dir.path().join("accounts.jsonl"),
        concat!(
            r#"{"event_id":"open-a","account_id":"acct-a","plan_id":"hosting","currency":"EUR","timezone":"UTC","tax_rate":"0.20","opened_at":"2026-03-22T00:00:00Z","environment":"prod"}"#,
            "\n",
            r#"{"event_id":"coupon-a","account_id":"acct-a","kind":"coupon_applied","occurred_at":"2026-03-22T01:00:00Z","coupon_id":"TEN","percent_off":"10","environment":"prod"}"#,
            "\n",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("events.jsonl"),
        concat!(
            r#"{"event_id":"top-a","account_id":"acct-a","kind":"credit_topped_up","occurred_at":"2026-03-23T00:00:00Z","amount":"20.00","currency":"EUR","environment":"prod","grant":{"kind":"promotional"}}"#,
            "\n",
            r#"{"event_id":"u1","account_id":"acct-a","subject":"app-1","metric":"container.hours","quantity":"800","occurred_at":"2026-03-24T10:00:00Z","environment":"prod","attributes":{}}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = billstream("preview", dir.path(), "2026-03-28T00:00:00Z", "preview");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("acct-a"), "{stdout}");
    let upcoming = lines(&dir.path().join("preview/upcoming-invoices.jsonl"));
    assert_eq!(upcoming.len(), 1);
    let up = &upcoming[0];
    // 800 × 0.0125 = 10.00 + April's fee 31.00 = 41.00; 10% = 4.10 off;
    // subtotal 36.90; tax 7.38; total 44.28; the 8.00 promotional credit
    // applied; 36.28 due.
    assert_eq!(up["status"], "upcoming");
    for (k, v) in [
        ("subtotal", "36.90"),
        ("discount", "4.10"),
        ("tax", "7.38"),
        ("total", "44.28"),
        ("credit_applied_promotional", "8.00"),
        ("credit_applied_paid", "0.00"),
        ("amount_due", "36.28"),
    ] {
        assert_eq!(up[k], v, "{k}: {up}");
    }
    // The period then closes with no further input: simulate issues the
    // same invoice.
    let out = billstream("simulate", dir.path(), "2026-04-01T02:00:00Z", "sim");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issued: Vec<Value> = lines(&dir.path().join("sim/billing.invoices.v1.jsonl"))
        .into_iter()
        .filter(|r| r.get("lines").is_some() && r["invoice_id"] == up["invoice_id"])
        .collect();
    assert_eq!(issued.len(), 1);
    let inv = &issued[0];
    for k in [
        "invoice_id",
        "number",
        "currency",
        "subtotal",
        "tax",
        "total",
        "credit_applied",
        "credit_applied_paid",
        "credit_applied_promotional",
        "amount_due",
    ] {
        assert_eq!(inv[k], up[k], "{k}");
    }
    let kinds_and_amounts = |v: &Value| -> Vec<(String, String)> {
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["kind"].to_string(), l["amount"].to_string()))
            .collect()
    };
    assert_eq!(kinds_and_amounts(inv), kinds_and_amounts(up));
}

#[test]
fn issue_13_preview_help_explains_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args(["preview", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for phrase in [
        "if its period closed now with no further input",
        "discounts",
        "credit to be applied",
        "engine's own close",
        "Nothing of the preview is stored or published",
        "upcoming-invoices.jsonl",
        "--account",
        "--until",
    ] {
        assert!(help.contains(phrase), "help lacks {phrase:?}:\n{help}");
    }
}
