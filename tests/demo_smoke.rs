//! The demo runs end to end on a small world, is deterministic for a seed,
//! and exercises every output topic and the dead-letter path.

use std::path::Path;
use std::process::Command;

fn demo(out: &Path, seed: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .args([
            "demo",
            "--accounts",
            "60",
            "--days",
            "70",
            "--quiet",
            "--seed",
            seed,
            "--out",
        ])
        .arg(out)
        .output()
        .expect("demo runs");
    assert!(
        o.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn read(out: &Path, topic: &str) -> String {
    std::fs::read_to_string(out.join(format!("{topic}.jsonl"))).unwrap()
}

#[test]
fn demo_is_deterministic_for_a_seed_and_fills_every_topic() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let summary = demo(a.path(), "7");
    demo(b.path(), "7");
    demo(c.path(), "8");
    assert!(summary.contains("Invoices issued:"), "{summary}");
    assert!(summary.contains("Dead letters by reason:"), "{summary}");
    issue_13_and_14_sections_show_non_zero_figures(&summary);
    for topic in [
        "billing.invoices.v1",
        "billing.charges.v1",
        "billing.notifications.v1",
        "billing.usage-rollups.v1",
        "billing.journal.v1",
        "billing.dlq.v1",
    ] {
        let (x, y) = (read(a.path(), topic), read(b.path(), topic));
        assert!(!x.is_empty(), "{topic} is empty");
        assert_eq!(x, y, "{topic} differs for the same seed");
    }
    // The processing clock never passes the simulated days (70 from
    // 2026-01-01): nothing is journalled after 2026-03-12.
    let end = chrono::DateTime::parse_from_rfc3339("2026-03-12T00:00:00Z").unwrap();
    for line in read(a.path(), "billing.journal.v1").lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(entry["at"].as_str().unwrap()).unwrap();
        assert!(at <= end, "journalled after the end: {line}");
    }
    assert_ne!(
        read(a.path(), "billing.journal.v1"),
        read(c.path(), "billing.journal.v1"),
        "another seed gives another run"
    );
}

#[test]
fn issue_12_demo_refuses_to_delete_a_state_folder_it_did_not_create() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("notes.txt"), "keep me").unwrap();
    let run = |out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_billstream"))
            .args(["demo", "--accounts", "3", "--days", "2", "--quiet", "--out"])
            .arg(out)
            .output()
            .expect("demo runs")
    };
    let o = run(dir.path());
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&state.display().to_string())
            && stderr.contains("not created by billstream"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("notes.txt")).unwrap(),
        "keep me"
    );
    // A folder the demo made itself is replaced on the next run.
    let own = dir.path().join("own");
    for _ in 0..2 {
        let o = run(&own);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// The numbers in `line` (decimal figures, signs and separators stripped).
fn figures(line: &str) -> Vec<f64> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.trim_matches('.').parse::<f64>().ok())
        .collect()
}

/// Issue 13 item 7 and issue 14 item 2: the summary has a line per pricing
/// feature and one for the gateway emulator, each starting with a count
/// and giving an example with a money amount, none of them zero.
fn issue_13_and_14_sections_show_non_zero_figures(summary: &str) {
    for label in [
        "seats billed on latest:",
        "95th percentile bandwidth:",
        "promotional credit expired:",
        "upgrade effective immediately:",
        "spend alerts:",
        "interim invoices:",
        "discounts:",
        "Gateway emulator:",
    ] {
        let line = summary
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in the summary:\n{summary}"));
        let rest = &line[line.find(label).unwrap() + label.len()..];
        let count = figures(rest).first().copied().unwrap_or(0.0);
        assert!(count > 0.0, "{label} counts nothing: {line}");
        let example = rest
            .split_once("e.g.")
            .unwrap_or_else(|| panic!("{label} gives no example: {line}"))
            .1;
        assert!(
            example
                .split_whitespace()
                .any(|w| w.contains('.') && figures(w).iter().any(|f| *f > 0.0)),
            "{label} example has no non-zero amount: {line}"
        );
    }
    // Dunning visibly happens with the emulator's answers.
    let dunning = summary.lines().find(|l| l.starts_with("Dunning:")).unwrap();
    let f = figures(dunning);
    assert!(
        f[0] > 0.0 && f[1] > 0.0 && f[3] > 0.0,
        "requests, retries, failures: {dunning}"
    );
}
