//! Golden tests of `billstream simulate` on small hand-checked inputs
//! (tests/fixtures/simulate): every total below is worked out in a comment.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/simulate")
}

fn run_simulate(out: &Path) -> std::process::Output {
    simulate_with(
        out,
        &fixtures().join("accounts.jsonl"),
        &fixtures().join("events.jsonl"),
    )
}

/// `simulate` on the fixture plans with these accounts and events, until
/// 2026-05-01T02:00:00Z.
fn simulate_with(out: &Path, accounts: &Path, events: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_billstream"))
        .arg("simulate")
        .arg("--plans")
        .arg(fixtures().join("plans.jsonl"))
        .arg("--accounts")
        .arg(accounts)
        .arg("--events")
        .arg(events)
        .args(["--until", UNTIL, "--out"])
        .arg(out)
        .output()
        .expect("billstream simulate runs")
}

const UNTIL: &str = "2026-05-01T02:00:00Z";

/// `simulate` on the plans file `plans` with the fixture accounts and
/// events, until 2026-05-01T00:00:00Z.
pub(crate) fn simulate_plans(plans: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args(["simulate", "--plans"])
        .arg(plans)
        .arg("--accounts")
        .arg(fixtures().join("accounts.jsonl"))
        .arg("--events")
        .arg(fixtures().join("events.jsonl"))
        .args(["--until", "2026-05-01T00:00:00Z", "--out"])
        .arg(out)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    ok(&out);
    assert_eq!(issued(dir.path()), golden());
}

/// The hand-checked invoices of the fixtures: invoice_id → (subtotal, tax,
/// total, credit_applied, amount_due).
fn golden() -> BTreeMap<String, [String; 5]> {
    [
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
    .map(|(k, v): (&str, [&str; 5])| (k.to_string(), v.map(str::to_string)))
    .collect()
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
    let out = simulate_plans(&plans, &dir.path().join("out"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plans.jsonl:1") && stderr.contains("recurring_fee"),
        "{stderr}"
    );
}

/// Writes `lines` as a JSON-lines file `name` in `dir`.
fn write_lines(dir: &Path, name: &str, lines: &[String]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn fixture_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(fixtures().join(name))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn issue_12_simulate_far_future_line_is_from_future_and_bills_nothing_after_until() {
    let dir = tempfile::tempdir().unwrap();
    // One usage line and one opening dated decades ahead, in the middle of
    // otherwise ordinary files.
    let mut events = fixture_lines("events.jsonl");
    events.insert(
        2,
        r#"{"event_id":"u-future","account_id":"acct-a","subject":"app-1","metric":"container.hours","quantity":"1","occurred_at":"2061-01-01T00:00:00Z","environment":"prod","attributes":{}}"#.into(),
    );
    let mut accounts = fixture_lines("accounts.jsonl");
    accounts.insert(
        1,
        r#"{"event_id":"open-z","account_id":"acct-z","plan_id":"hosting","currency":"EUR","timezone":"UTC","tax_rate":"0.20","opened_at":"2070-01-01T00:00:00Z","environment":"prod"}"#.into(),
    );
    let out = dir.path().join("out");
    let run = simulate_with(
        &out,
        &write_lines(dir.path(), "accounts.jsonl", &accounts),
        &write_lines(dir.path(), "events.jsonl", &events),
    );
    ok(&run);
    let dlq = records(&out, "billing.dlq.v1");
    for id in ["u-future", "open-z"] {
        assert!(
            dlq.iter()
                .any(|r| r["error_kind"] == "from_future"
                    && r["payload"].as_str().unwrap().contains(id)),
            "{id} is not dead-lettered as from_future: {dlq:?}"
        );
    }
    let until = chrono::DateTime::parse_from_rfc3339(UNTIL).unwrap();
    for r in records(&out, "billing.invoices.v1") {
        if let Some(at) = r["issued_at"].as_str() {
            let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
            assert!(at <= until, "an invoice issued after --until: {r}");
        }
    }
    // Nothing else moved: the same invoices as without the two lines.
    assert_eq!(issued(&out), golden());
}

#[test]
fn issue_12_simulate_bills_the_same_whatever_the_order_of_the_accounts_file() {
    let open = |id: &str, tz: &str, at: &str| {
        format!(
            r#"{{"event_id":"open-{id}","account_id":"{id}","plan_id":"hosting","currency":"EUR","timezone":"{tz}","tax_rate":"0.20","opened_at":"{at}","environment":"prod"}}"#
        )
    };
    let usage = |n: u32, id: &str, qty: &str, at: &str| {
        format!(
            r#"{{"event_id":"u{n}","account_id":"{id}","subject":"app-1","metric":"container.hours","quantity":"{qty}","occurred_at":"{at}","environment":"prod","attributes":{{}}}}"#
        )
    };
    // Sorted by account id, as an export would be; the openings are not in
    // time order, and c and d open at the same instant.
    let by_id = vec![
        open("acct-a", "UTC", "2026-03-20T00:00:00Z"),
        open("acct-b", "Europe/Berlin", "2026-03-01T00:00:00+01:00"),
        open("acct-c", "UTC", "2026-03-10T00:00:00Z"),
        open("acct-d", "UTC", "2026-03-10T00:00:00Z"),
    ];
    let events = vec![
        usage(1, "acct-b", "10", "2026-03-05T10:00:00Z"),
        usage(2, "acct-d", "20", "2026-03-11T10:00:00Z"),
        usage(3, "acct-c", "30", "2026-03-12T10:00:00Z"),
        usage(4, "acct-a", "40", "2026-03-21T10:00:00Z"),
        usage(5, "acct-b", "50", "2026-04-03T10:00:00Z"),
        usage(6, "acct-c", "60", "2026-04-04T10:00:00Z"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let events = write_lines(dir.path(), "events.jsonl", &events);
    let mut reversed = by_id.clone();
    reversed.reverse();
    let shuffled = vec![
        by_id[2].clone(),
        by_id[0].clone(),
        by_id[3].clone(),
        by_id[1].clone(),
    ];
    let mut outputs = Vec::new();
    for (name, accounts) in [
        ("by_id", by_id),
        ("reversed", reversed),
        ("shuffled", shuffled),
    ] {
        let out = dir.path().join(name);
        let accounts = write_lines(dir.path(), &format!("{name}.jsonl"), &accounts);
        ok(&simulate_with(&out, &accounts, &events));
        let dlq = std::fs::read_to_string(out.join("billing.dlq.v1.jsonl")).unwrap();
        assert_eq!(dlq, "", "{name}: lines were rejected");
        let read = |topic: &str| std::fs::read(out.join(format!("{topic}.jsonl"))).unwrap();
        outputs.push((
            name,
            [
                read("billing.invoices.v1"),
                read("billing.charges.v1"),
                read("billing.notifications.v1"),
                read("billing.usage-rollups.v1"),
            ],
        ));
    }
    // Every account is billed: an invoice per opening at least.
    let invoices = String::from_utf8(outputs[0].1[0].clone()).unwrap();
    for id in ["acct-a", "acct-b", "acct-c", "acct-d"] {
        assert!(
            invoices.contains(&format!("inv_{id}_00002")),
            "{id}: {invoices}"
        );
    }
    for (name, o) in &outputs[1..] {
        assert!(o == &outputs[0].1, "{name} bills differently from by_id");
    }
}

#[test]
fn issue_12_simulate_refuses_to_delete_a_state_folder_it_did_not_create() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("thesis.tex"), "years of work").unwrap();
    let out = run_simulate(dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&state.display().to_string())
            && stderr.contains("not created by billstream"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("thesis.tex")).unwrap(),
        "years of work"
    );
}

#[test]
fn issue_12_simulate_reruns_into_its_own_out_folder() {
    let dir = tempfile::tempdir().unwrap();
    ok(&run_simulate(dir.path()));
    // The second run replaces the state folder the first one created.
    ok(&run_simulate(dir.path()));
    assert_eq!(issued(dir.path()), golden());
}

#[test]
fn issue_13_simulate_an_immediate_upgrade_on_the_17th_in_asia_tokyo() {
    // tests/fixtures/simulate_plan_change: acct-tokyo opens on "basic"
    // (¥3,000 a month; api.calls ¥1 up to 1,000, then ¥0.5) on April 1st
    // in Asia/Tokyo, tax 10%, and moves to "pro" version 1 (¥9,000;
    // ¥0.8 up to 5,000, then ¥0.4) immediately at 2026-04-17T00:00+09:00
    // (the command is delivered twice: applied once). A version 2 of "pro"
    // exists (¥12,000) but the change names version 1.
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/simulate_plan_change");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args(["simulate", "--plans"])
        .arg(fx.join("plans.jsonl"))
        .arg("--accounts")
        .arg(fx.join("accounts.jsonl"))
        .arg("--events")
        .arg(fx.join("events.jsonl"))
        .args(["--until", UNTIL, "--strict", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    ok(&out);
    let invoices: Vec<Value> = records(dir.path(), "billing.invoices.v1")
        .into_iter()
        .filter(|r| r.get("lines").is_some())
        .collect();
    let summary = |r: &Value| {
        let lines: Vec<(String, String)> = r["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["kind"].as_str().unwrap().to_string(),
                    l["amount"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        (lines, [s("subtotal"), s("tax"), s("total")])
    };
    let owned = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let strs = |v: [&str; 3]| v.map(str::to_string);
    assert_eq!(invoices.len(), 2);
    // Opening: April's basic fee in advance, ¥3,000 + 10% = ¥3,300.
    assert_eq!(
        summary(&invoices[0]),
        (
            owned(&[("recurring_fee", "3000")]),
            strs(["3000", "300", "3300"])
        )
    );
    // April (Tokyo: 2026-03-31T15:00Z to 2026-04-30T15:00Z, 720 hours),
    // issued at its end + 1h grace:
    // - usage before the change on basic, 1,500 + 100 (23:30 on the 16th
    //   in Tokyo) = 1,600: 1,000 × 1 + 600 × 0.5 = ¥1,300;
    // - usage after it on pro, 100 (00:30 on the 17th in Tokyo, still the
    //   16th in UTC) + 6,000 = 6,100: 5,000 × 0.8 + 1,100 × 0.4 = ¥4,440;
    // - 336 of 720 hours unused (14 days): basic credited −3,000 × 14/30 =
    //   −¥1,400, pro charged 9,000 × 14/30 = ¥4,200;
    // - May's fee on pro version 1, in advance: ¥9,000.
    // Subtotal 1,300 + 4,440 − 1,400 + 4,200 + 9,000 = ¥17,540; tax 10%
    // ¥1,754; total ¥19,294.
    assert_eq!(
        summary(&invoices[1]),
        (
            owned(&[
                ("usage", "1300"),
                ("usage", "4440"),
                ("recurring_fee", "-1400"),
                ("recurring_fee", "4200"),
                ("recurring_fee", "9000"),
            ]),
            strs(["17540", "1754", "19294"])
        )
    );
    let dlq = std::fs::read_to_string(dir.path().join("billing.dlq.v1.jsonl")).unwrap();
    assert_eq!(dlq, "");
}

/// `simulate --strict` on the plans and accounts of `tests/fixtures/<fixture>`
/// with `events`, until `until`; the issued invoices as (lines as (kind,
/// metric, quantity, amount), [subtotal, tax, total]).
type Issued = Vec<(Vec<[String; 4]>, [String; 3])>;

fn simulate_fixture(fixture: &str, events: &Path, until: &str) -> Issued {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args(["simulate", "--plans"])
        .arg(fx.join("plans.jsonl"))
        .arg("--accounts")
        .arg(fx.join("accounts.jsonl"))
        .arg("--events")
        .arg(events)
        .args(["--until", until, "--strict", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    ok(&out);
    let dlq = std::fs::read_to_string(dir.path().join("billing.dlq.v1.jsonl")).unwrap();
    assert_eq!(dlq, "", "nothing is dead-lettered");
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    records(dir.path(), "billing.invoices.v1")
        .into_iter()
        .filter(|r| r.get("lines").is_some())
        .map(|r| {
            let lines = r["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| ["kind", "metric", "quantity", "amount"].map(|k| text(&l[k])))
                .collect();
            (lines, ["subtotal", "tax", "total"].map(|k| text(&r[k])))
        })
        .collect()
}

fn invoice(lines: &[[&str; 4]], totals: [&str; 3]) -> (Vec<[String; 4]>, [String; 3]) {
    (
        lines.iter().map(|l| l.map(str::to_string)).collect(),
        totals.map(str::to_string),
    )
}

#[test]
fn issue_13_simulate_a_month_of_seats_billed_on_latest() {
    // tests/fixtures/simulate_seats: acct-seats opens on "team" (5.00 a
    // month in advance; seats 10.00 per unit on `latest`) on 2026-03-01
    // in UTC, tax 19%. March's seat readings, in file order: 10 (2nd),
    // 14 (10th), 12 (20th), then 20 dated the 5th (late: older than the
    // 20th's), then the 20th's reading again (a duplicate: ignored), then
    // 3 dated 2026-04-01T00:30Z (April's period, not March's).
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/simulate_seats");
    let issued = simulate_fixture(
        "simulate_seats",
        &fx.join("events.jsonl"),
        "2026-04-01T02:00:00Z",
    );
    assert_eq!(
        issued,
        vec![
            // Opening: March's fee in advance, 5.00 + 19% 0.95 = 5.95.
            invoice(
                &[["recurring_fee", "-", "1", "5.00"]],
                ["5.00", "0.95", "5.95"]
            ),
            // March, issued at 2026-04-01T01:00Z (end + 1h grace): the
            // latest reading by occurred_at is the 20th's, 12 seats (the
            // late 20 is older; the peak 14 and April's 3 do not count):
            // 12 × 10.00 = 120.00; April's fee 5.00 in advance; subtotal
            // 125.00, tax 19% 23.75, total 148.75.
            invoice(
                &[
                    ["usage", "seats", "12", "120.00"],
                    ["recurring_fee", "-", "1", "5.00"],
                ],
                ["125.00", "23.75", "148.75"]
            ),
        ]
    );
}

#[test]
fn issue_13_simulate_a_month_of_95th_percentile_bandwidth() {
    // tests/fixtures/simulate_bandwidth: acct-bw opens on "hosting-95"
    // (20.00 a month in advance; bandwidth.mbps 0.50 per unit on the 95th
    // percentile of 5-minute window maxima) on 2026-04-01 in UTC, tax 19%.
    // The events (written below): April has 30 × 288 = 8,640 windows; in
    // window k (from 00:00Z on the 1st) one sample at k × 5 min + 1 min:
    // 900 Mbps when k mod 20 = 7 (432 bursts, exactly 5%), 150 when
    // k mod 20 = 3 (432 windows; these also get a lower sample, 10, at
    // + 3 min: the window's maximum stays 150), else 60 (7,776 windows).
    // Last, the first burst's line again: a duplicate, ignored.
    let dir = tempfile::tempdir().unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2026-04-01T00:00:00Z").unwrap();
    let line = |id: &str, at: chrono::DateTime<chrono::FixedOffset>, q: u32| {
        format!(
            r#"{{"event_id":"{id}","account_id":"acct-bw","subject":"edge-1","metric":"bandwidth.mbps","quantity":"{q}","occurred_at":"{}","environment":"prod","attributes":{{}}}}"#,
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    };
    let mut lines = Vec::new();
    for k in 0..8640i64 {
        let window = start + chrono::Duration::minutes(5 * k);
        let q = match k % 20 {
            7 => 900,
            3 => 150,
            _ => 60,
        };
        lines.push(line(
            &format!("bw-{k}"),
            window + chrono::Duration::minutes(1),
            q,
        ));
        if k % 20 == 3 {
            lines.push(line(
                &format!("bw-{k}-low"),
                window + chrono::Duration::minutes(3),
                10,
            ));
        }
    }
    lines.push(line("bw-7", start + chrono::Duration::minutes(36), 900));
    let events = write_lines(dir.path(), "events.jsonl", &lines);
    let issued = simulate_fixture("simulate_bandwidth", &events, "2026-05-01T02:00:00Z");
    assert_eq!(
        issued,
        vec![
            // Opening: April's fee in advance, 20.00 + 19% 3.80 = 23.80.
            invoice(
                &[["recurring_fee", "-", "1", "20.00"]],
                ["20.00", "3.80", "23.80"]
            ),
            // April, issued at 2026-05-01T01:00Z: the 8,640 window maxima
            // sorted ascending are 60 (ranks 1–7,776), 150 (7,777–8,208),
            // 900 (8,209–8,640); the nearest rank of the 95th percentile is
            // ⌈0.95 × 8,640⌉ = 8,208: 150 Mbps (the bursts, 5% of the
            // windows, are not billed). 150 × 0.50 = 75.00; May's fee
            // 20.00; subtotal 95.00, tax 19% 18.05, total 113.05.
            invoice(
                &[
                    ["usage", "bandwidth.mbps", "150", "75.00"],
                    ["recurring_fee", "-", "1", "20.00"],
                ],
                ["95.00", "18.05", "113.05"]
            ),
        ]
    );
}
