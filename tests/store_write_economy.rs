//! Write economy (issue 4): state writes per usage event at steady state
//! with 10,000 active accounts, measured on the embedded store through the
//! real `Processor` with the shipped batching and checkpoint defaults
//! (`config/default.toml`), counted by the store's own op counters
//! (`StoreOp::AccountWrite`), which the ScyllaDB store fills the same way.
//!
//! A stream of usage at a steady rate over 10,000 accounts (random account,
//! metric and subject) is cut into batches by `batch.max_wait` (500 ms) and
//! flushed as `billstream run` flushes them (`flush_due`, with the wall
//! clock simulated: the test runs faster than real time). An account whose
//! only changes are usage is written once it holds `checkpoint_events`
//! records or after `checkpoint_interval`, so at steady state writes per
//! event = max(1 / checkpoint_events, accounts / (rate × interval)). After
//! a warm-up (so accounts are at random points of their checkpoint), the
//! writes of a window are counted. For contrast, the same stream with
//! `checkpoint_events = 1` (write every batch) is measured too. Counts,
//! not times: the figures do not depend on the machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use billstream::config::Settings;
use billstream::contracts::{parse_line, Decoded};
use billstream::engine::events::{Input, UsageRecorded};
use billstream::engine::time::Timestamp;
use billstream::engine::{Engine, EngineConfig};
use billstream::runtime::{Checkpoint, Processor, SourcePos};
use billstream::store::{EmbeddedStore, StateStore, StoreOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ACCOUNTS: usize = 10_000;
const PLAN: &str = r#"{"plan_id":"p","currency":"EUR","recurring_fee":"0","minimum_spend":"0","charges":[{"metric":"api.calls","model":"per_unit","unit_price":"0.001"},{"metric":"disk.gb_hours","model":"per_unit","unit_price":"0.0002"}]}"#;

fn decoded(line: &str) -> Decoded {
    parse_line(line).expect("test input parses")
}

struct Figures {
    events: u64,
    writes: u64,
    max_held: u64,
    /// Resident memory (KiB) grown from the start of the stream to where
    /// the most records were held (process-wide: meaningful when the test
    /// runs alone, e.g. with `--test-threads=1`; printed, not asserted).
    rss_growth_kib: i64,
}

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Streams usage at `rate` events/s in batches of `batch.max_wait`,
/// flushing each with `policy`: `warm_up` seconds uncounted, then `window`
/// seconds counted.
async fn measure(
    policy: Checkpoint,
    max_wait: Duration,
    rate: u64,
    warm_up: u64,
    window: u64,
) -> Figures {
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
    processor.assign_partition(0, epoch).await.unwrap();

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
    let wall = Instant::now();
    let per_batch = rate * max_wait.as_millis() as u64 / 1000;
    let step = max_wait.as_micros() as i64 / per_batch as i64;
    let batches = (warm_up + window) * 1000 / max_wait.as_millis() as u64;
    let counted_from = warm_up * 1000 / max_wait.as_millis() as u64;
    let mut at = start.0;
    let mut event = 0u64;
    let mut figures = Figures {
        events: 0,
        writes: 0,
        max_held: 0,
        rss_growth_kib: 0,
    };
    let rss_start = rss_kib();
    let mut usage = UsageRecorded {
        quantity: 1.into(),
        environment: "prod".into(),
        ..UsageRecorded::default()
    };
    for batch in 0..batches {
        let before = store.stats().get(StoreOp::AccountWrite);
        for _ in 0..per_batch {
            let a = rng.random_range(0..ACCOUNTS);
            at += step;
            event += 1;
            usage.event_id = format!("u{event}");
            usage.account_id = format!("acc-{a}");
            usage.metric = ["api.calls", "disk.gb_hours"][rng.random_range(0..2)].into();
            usage.subject = format!("s{}", rng.random_range(0..4));
            usage.occurred_at = Timestamp(at);
            let input = Input::Usage(usage.clone());
            processor
                .apply(
                    &next_pos(),
                    Some(&usage.account_id),
                    b"",
                    &input,
                    Timestamp(at),
                )
                .await
                .unwrap();
        }
        processor.advance_timers(Timestamp(at));
        let now = wall + max_wait * (batch as u32 + 1);
        processor.flush_due(&policy, now).await.unwrap();
        processor.published();
        let held = processor.held_records();
        if held > figures.max_held {
            figures.max_held = held;
            figures.rss_growth_kib = rss_kib() - rss_start;
        }
        if batch >= counted_from {
            figures.events += per_batch;
            figures.writes += store.stats().get(StoreOp::AccountWrite) - before;
        }
    }
    figures
}

#[tokio::test(flavor = "current_thread")]
async fn state_writes_per_usage_event_with_ten_thousand_accounts() {
    let defaults = Settings::from_layers(None, std::iter::empty()).unwrap();
    let policy = Checkpoint::from(&defaults.batch);
    let max_wait = defaults.batch.max_wait;
    // 20,000 events/s: each account gets 2 a second and reaches
    // checkpoint_events (100) in 50 s, before checkpoint_interval (120 s).
    let (rate, warm_up, window) = (20_000, 100, 50);
    let f = measure(policy, max_wait, rate, warm_up, window).await;
    let ratio = f.writes as f64 / f.events as f64;
    println!(
        "write economy: {ACCOUNTS} accounts, {rate} events/s, defaults ({} events / {:?} checkpoint, {:?} batches): {} account writes for {} usage events = {ratio:.4} writes per event; at most {} records held unwritten (resident memory +{} MiB then, {} bytes per held record)",
        policy.events, policy.interval, max_wait, f.writes, f.events, f.max_held,
        f.rss_growth_kib / 1024,
        f.rss_growth_kib * 1024 / f.max_held.max(1) as i64
    );
    assert!(
        ratio <= 0.0105,
        "{ratio:.4} writes per usage event; target 0.01"
    );
    assert!(
        ratio >= 0.009,
        "{ratio:.4}: fewer writes than one per {} events means records were lost",
        policy.events
    );
    assert!(f.max_held <= policy.max_unwritten);

    // The same stream with every batch written, for contrast: one write
    // per account touched per batch.
    let every = Checkpoint {
        events: 1,
        ..policy
    };
    let f = measure(every, max_wait, rate, 1, 2).await;
    let ratio = f.writes as f64 / f.events as f64;
    println!(
        "write economy: {ACCOUNTS} accounts, {rate} events/s, checkpoint_events = 1: {} account writes for {} usage events = {ratio:.4} writes per event",
        f.writes, f.events
    );
    // 10,000 events over 10,000 accounts: 1 - 1/e of them are touched.
    assert!((0.6..0.66).contains(&ratio), "{ratio:.4}");
}
