//! Issue 12, items 4 and 5 at the edges: a plan that no invoice can carry
//! is dead-lettered from the plans topic in `run` (and stops `simulate`
//! with its file and line) instead of panicking every instance, and an
//! output too large for the broker goes out bounded under the same id.

use billstream::contracts::{parse_line, Catalog, Decoded, Decoder, OutputRecord, OutputTopic};
use billstream::engine::time::Timestamp;
use billstream::runtime::SourcePos;

use super::simulate_golden::simulate_plans;
use super::support::{engine, processor_in};

const POISON: &str = r#"{"plan_id":"poison","currency":"EUR","recurring_fee":"100000000000000000","minimum_spend":"0","charges":[{"metric":"m","model":"per_unit","unit_price":"1"}]}"#;

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

#[tokio::test]
async fn issue_12_a_poison_plan_on_the_plans_topic_is_dead_lettered_and_cannot_crash_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let now = ts("2026-03-10T00:00:00Z");
    let mut p = processor_in(dir.path(), engine(), now).await;
    let catalog = Catalog::shared().unwrap();
    let decoder = Decoder::new(catalog).unwrap();
    let pos = |topic: &str, offset: i64| SourcePos {
        topic: topic.into(),
        partition: 0,
        offset,
    };
    // As `run` reads the plans topic: through the processor.
    let plan = match parse_line(POISON).unwrap() {
        Decoded::Plan(plan) => catalog.encode_plan(&plan).unwrap(),
        _ => unreachable!(),
    };
    p.process(
        &pos("billing.plans.v1", 0),
        Some("poison"),
        &plan,
        decoder.decode(&plan),
        now,
    )
    .await
    .unwrap();
    // Opened at a period start: the whole fee is invoiced at once.
    let open = r#"{"event_id":"o1","account_id":"a1","plan_id":"poison","currency":"EUR","timezone":"UTC","tax_rate":"0.2","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}"#;
    let open = match parse_line(open).unwrap() {
        Decoded::Input(i) => catalog.encode_input(&i).unwrap(),
        _ => unreachable!(),
    };
    p.process(
        &pos("billing.accounts.v1", 0),
        Some("a1"),
        &open,
        decoder.decode(&open),
        now,
    )
    .await
    .unwrap();
    let out = p.flush().await.unwrap();
    let kinds: Vec<&str> = out
        .iter()
        .filter(|o| o.topic == OutputTopic::Dlq)
        .map(|o| o.json["error_kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["invalid_plan", "unknown_plan"], "{out:#?}");
    let reason = out[0].json["reason"].as_str().unwrap();
    assert!(reason.contains("recurring_fee"), "{reason}");
    assert!(p.engine().plans.get("poison").is_none());
}

#[test]
fn issue_12_simulate_stops_on_a_plan_beyond_the_bounds_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans.jsonl");
    std::fs::write(&plans, format!("\n{POISON}\n")).unwrap();
    let out = simulate_plans(&plans, &dir.path().join("out"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plans.jsonl:2") && stderr.contains("recurring_fee"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An issued invoice whose one line names `n` subjects of `len` bytes.
fn big_invoice(n: usize, len: usize) -> OutputRecord {
    let subjects: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (format!("{i:0len$}"), serde_json::json!("1")))
        .collect();
    let json = serde_json::json!({
        "event_id": "11111111-2222-3333-4444-555555555555",
        "causation_id": "timer:close",
        "account_id": "acct",
        "occurred_at": "2026-04-01T01:00:00Z",
        "invoice_id": "inv_acct_00002",
        "number": "acct-00002",
        "period_start": "2026-03-01T00:00:00Z",
        "period_end": "2026-04-01T00:00:00Z",
        "issued_at": "2026-04-01T01:00:00Z",
        "due_at": "2026-04-15T01:00:00Z",
        "currency": "EUR",
        "lines": [{
            "kind": "usage", "metric": "m", "quantity": n.to_string(), "unit_price": "1",
            "amount": format!("{n}.00"),
            "for_period": {"start": "2026-03-01T00:00:00Z", "end": "2026-04-01T00:00:00Z"},
            "subjects": subjects, "description": null,
        }],
        "subtotal": format!("{n}.00"), "tax": "0.00", "total": format!("{n}.00"),
        "credit_applied": "0.00", "amount_due": format!("{n}.00"),
    });
    OutputRecord {
        topic: OutputTopic::Invoices,
        key: "acct".into(),
        event_id: "11111111-2222-3333-4444-555555555555".into(),
        causation_id: "timer:close".into(),
        kind: "InvoiceIssued",
        json,
        traceparent: None,
    }
}

#[test]
fn issue_12_an_output_over_the_record_limit_goes_out_bounded_with_its_id() {
    let catalog = Catalog::shared().unwrap();
    let limit = 64 * 1024;
    let record = big_invoice(5_000, 40);
    assert!(catalog.encode_output(&record).unwrap().len() > limit);
    let (bytes, bounded) = catalog.encode_output_bounded(&record, limit).unwrap();
    assert!(bounded.is_some(), "the record was over the limit");
    assert!(bytes.len() <= limit, "{} bytes", bytes.len());
    let small = bounded.unwrap();
    assert_eq!(small.event_id, record.event_id);
    assert_eq!(small.json["event_id"], record.json["event_id"]);
    assert_eq!(small.json["total"], record.json["total"]);
    let line = &small.json["lines"][0];
    assert_eq!(line["amount"], "5000.00");
    let note = line["description"].as_str().unwrap();
    assert!(
        note.contains("truncated") && note.contains("inv_acct_00002"),
        "{note}"
    );
    // Below the limit nothing changes.
    let fine = big_invoice(3, 5);
    let (bytes, bounded) = catalog.encode_output_bounded(&fine, limit).unwrap();
    assert!(bounded.is_none());
    // (Same length, not the same bytes: map entries are encoded in hash order.)
    assert_eq!(bytes.len(), catalog.encode_output(&fine).unwrap().len());
}

#[test]
fn issue_12_a_dead_letter_and_a_journal_entry_over_the_limit_go_out_bounded() {
    use billstream::contracts::DeadLetter;
    let catalog = Catalog::shared().unwrap();
    let limit = 64 * 1024;
    let dl = DeadLetter {
        source_topic: "billing.usage.v1".into(),
        partition: 3,
        offset: 42,
        key: Some("acct".into()),
        error_kind: "decode".into(),
        reason: "x".repeat(100_000),
        payload: vec![0xff; 200_000],
        received_at: ts("2026-03-10T00:00:00Z"),
    }
    .to_output();
    let (bytes, bounded) = catalog.encode_output_bounded(&dl, limit).unwrap();
    assert!(bytes.len() <= limit, "{} bytes", bytes.len());
    let small = bounded.expect("over the limit");
    assert_eq!(small.event_id, dl.event_id);
    let reason = small.json["reason"].as_str().unwrap();
    assert!(
        reason.contains("truncated") && reason.contains("billing.usage.v1/3/42"),
        "{}",
        &reason[reason.len().saturating_sub(300)..]
    );

    let journal = OutputRecord {
        topic: OutputTopic::Journal,
        key: "acct".into(),
        event_id: "j-1".into(),
        causation_id: "c".into(),
        kind: "JournalEntry",
        json: serde_json::json!({"event_id": "j-1", "causation_id": "c", "account_id": "acct",
            "seq": 7, "at": "2026-03-10T00:00:00Z", "type": "invoice_issued", "payload": "y".repeat(300_000)}),
        traceparent: None,
    };
    let (bytes, bounded) = catalog.encode_output_bounded(&journal, limit).unwrap();
    assert!(bytes.len() <= limit);
    let payload = bounded.unwrap().json["payload"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        payload.contains("truncated") && payload.contains("acct"),
        "{payload}"
    );
}
