//! Plan validation, and everything a plan that passes it is used for: the
//! input's text is a plan in its pinned JSON shape (usually mutated from
//! the seeds in corpus/plan_validate). A plan the book refuses is fine; a
//! plan it accepts must bill an account for three months, with usage at
//! the per-event maximum on every metric, without panicking and without a
//! negative invoice total.
#![no_main]

use billstream::contracts::{parse_line, Decoded};
use billstream::engine::events::Input;
use billstream::engine::time::Timestamp;
use billstream::engine::{Engine, EngineConfig};
use libfuzzer_sys::fuzz_target;

fn input(line: &str) -> Option<Input> {
    match parse_line(line) {
        Ok(Decoded::Input(i)) => Some(i),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(Decoded::Plan(plan)) = parse_line(text) else {
        return;
    };
    let mut engine = Engine::new(EngineConfig::new("prod"), Default::default());
    let metrics: Vec<String> = plan.charges.iter().map(|c| c.metric.clone()).collect();
    let (plan_id, currency) = (plan.plan_id.clone(), plan.currency);
    if engine.plans.upsert(plan).is_err() {
        return;
    }
    let open = serde_json::json!({
        "event_id": "open", "account_id": "a", "plan_id": plan_id,
        "currency": currency.code(), "timezone": "UTC", "tax_rate": "0.25",
        "opened_at": "2026-01-15T00:00:00Z", "environment": "prod"
    });
    let Some(open) = input(&open.to_string()) else {
        return;
    };
    let mut slot = None;
    let mut out = Vec::new();
    let at = |s: &str| Timestamp::parse_rfc3339(s).expect("time");
    let _ = engine.apply(&mut slot, &open, at("2026-01-15T00:00:00Z"), &mut out);
    let quantities = ["1000000000000", "0.0000000001", "999999999999.999999", "1"];
    for (i, metric) in metrics.iter().enumerate().take(8) {
        for (j, q) in quantities.iter().enumerate() {
            let usage = serde_json::json!({
                "event_id": format!("u{i}-{j}"), "account_id": "a", "subject": "s",
                "metric": metric, "quantity": q, "occurred_at": "2026-02-10T00:00:00Z",
                "environment": "prod", "attributes": {}
            });
            if let Some(u) = input(&usage.to_string()) {
                let _ = engine.apply(&mut slot, &u, at("2026-02-10T00:00:00Z"), &mut out);
            }
        }
    }
    if let Some(st) = slot.as_mut() {
        engine.advance(st, at("2026-04-20T00:00:00Z"), &mut out);
        assert!(engine.draft(st).total.0 >= 0, "a negative draft total");
    }
});
