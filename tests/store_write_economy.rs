//! Write economy (issue 4): state writes per usage event at steady state
//! with 10,000 active accounts, measured on the embedded store through the
//! real `Processor` (fold → one write per changed account per flush), with
//! the store's own op counters (`StoreOp::AccountWrite`), which the
//! ScyllaDB store fills the same way.
//!
//! Each flush writes every account it changed once, so writes per event =
//! accounts changed per batch ÷ events per batch. The test runs two batch
//! sizes of the default batching (`batch.max_records = 200000`,
//! `batch.max_wait = 500ms`): full batches of 200,000 events, and batches of
//! 20,000 (a 40,000 events/s stream cut by the 500 ms wait), prints the
//! figures (`--nocapture`), and checks the counters against that formula.
//! Counts, not times: the figures do not depend on the machine.

use std::collections::HashSet;
use std::sync::Arc;

use billstream::contracts::{parse_line, Decoded};
use billstream::engine::time::Timestamp;
use billstream::engine::{Engine, EngineConfig};
use billstream::runtime::{Processor, SourcePos};
use billstream::store::{EmbeddedStore, StateStore, StoreOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ACCOUNTS: usize = 10_000;
const PLAN: &str = r#"{"plan_id":"p","currency":"EUR","recurring_fee":"0","minimum_spend":"0","charges":[{"metric":"api.calls","model":"per_unit","unit_price":"0.001"},{"metric":"disk.gb_hours","model":"per_unit","unit_price":"0.0002"}]}"#;

fn decoded(line: &str) -> Decoded {
    parse_line(line).expect("test input parses")
}

/// Runs `batches` batches of `per_batch` usage events over the accounts
/// (random account, metric and subject; event time advancing by 10 ms per
/// event, processing clock = event time) after a warm-up batch; returns
/// (events, account writes, distinct accounts changed summed over batches).
async fn measure(per_batch: usize, batches: usize) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let epoch = store.claim_partition(0, "economy").await.unwrap();
    let mut engine = Engine::new(EngineConfig::new("prod"), Default::default());
    let Decoded::Plan(plan) = decoded(PLAN) else {
        panic!("plan")
    };
    engine.plans.upsert(plan).unwrap();
    let start = Timestamp::parse_rfc3339("2026-03-01T00:00:00Z").unwrap();
    let mut processor = Processor::new(engine, store.clone());
    processor.assign_partition(0, epoch, start).await.unwrap();

    let mut offset = 0i64;
    let mut next_pos = || {
        offset += 1;
        SourcePos {
            topic: "billing.usage.v1".into(),
            partition: 0,
            offset,
        }
    };
    for a in 0..ACCOUNTS {
        let line = format!(
            r#"{{"event_id":"open-{a}","account_id":"acc-{a}","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}}"#
        );
        let Decoded::Input(input) = decoded(&line) else {
            panic!("account")
        };
        processor
            .apply(&next_pos(), Some(&format!("acc-{a}")), b"", &input, start)
            .await
            .unwrap();
    }
    processor.flush().await.unwrap();
    processor.published();

    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut at = start.0;
    let mut event = 0u64;
    let (mut events, mut writes, mut changed) = (0, 0, 0);
    // Batch 0 is the warm-up (first usage of every account), not counted.
    for batch in 0..=batches {
        let before = store.stats().get(StoreOp::AccountWrite);
        let mut touched = HashSet::new();
        for _ in 0..per_batch {
            let a = rng.random_range(0..ACCOUNTS);
            let metric = ["api.calls", "disk.gb_hours"][rng.random_range(0..2)];
            let subject = rng.random_range(0..4);
            at += 10_000;
            event += 1;
            let when = Timestamp(at).to_rfc3339();
            let line = format!(
                r#"{{"event_id":"u{event}","account_id":"acc-{a}","subject":"s{subject}","metric":"{metric}","quantity":"1","occurred_at":"{when}","environment":"prod","attributes":{{}}}}"#
            );
            let Decoded::Input(input) = decoded(&line) else {
                panic!("usage")
            };
            processor
                .apply(
                    &next_pos(),
                    Some(&format!("acc-{a}")),
                    b"",
                    &input,
                    Timestamp(at),
                )
                .await
                .unwrap();
            touched.insert(a);
        }
        processor.advance_timers(Timestamp(at));
        processor.flush().await.unwrap();
        processor.published();
        if batch > 0 {
            events += per_batch as u64;
            writes += store.stats().get(StoreOp::AccountWrite) - before;
            changed += touched.len() as u64;
        }
    }
    (events, writes, changed)
}

#[tokio::test(flavor = "current_thread")]
async fn state_writes_per_usage_event_with_ten_thousand_accounts() {
    for (per_batch, batches) in [(200_000, 1), (20_000, 3)] {
        let (events, writes, changed) = measure(per_batch, batches).await;
        let ratio = writes as f64 / events as f64;
        println!(
            "write economy: {ACCOUNTS} accounts, {per_batch} events per batch, {batches} batches: {writes} account writes for {events} usage events = {ratio:.4} writes per event ({changed} accounts touched by usage)"
        );
        // One write per changed account per batch: the accounts the usage
        // touched, plus any whose timer alone fired (none, or few).
        assert!(
            writes >= changed,
            "{writes} writes < {changed} accounts changed"
        );
        assert!(
            writes <= changed + (ACCOUNTS * batches) as u64 / 100,
            "{writes} writes for {changed} accounts changed: more than one write per account per batch"
        );
    }
}
