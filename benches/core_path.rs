//! Core-path throughput: Confluent-framed Avro usage records → decode →
//! dedup → fold (exact per-metric/subject totals, hourly rollups, journal
//! entries) on one thread, with 10,000 open accounts and a plan of 3
//! metrics. Requirement: at least 1,000,000 usage events per second on one
//! core.
//!
//! `core_path` runs a batch the way the runtime does
//! (`Processor::process_batch`): group the batch on the record key (the
//! account id; `runtime::batch::group_by_account`, arrival order kept per
//! account), gather the payloads in that order, then decode each record
//! into one reused buffer (`Decoder::decode_into`) right before
//! `Engine::apply` folds it, so an account's state stays in cache for all
//! its records of the batch. The accounts are in steady state: they have
//! already folded a warm-up stream of the same shape (their subjects,
//! totals, dedup ids and rollup buckets exist), and the measured 200,000
//! records continue it over two hours of event time, so every account's
//! hourly rollup closes during the run. Rating happens on period totals
//! (when the draft is read or issued), never per event.
//!
//! For comparison: `decode_only` (the decoder alone, same-run baseline),
//! `core_path_arrival_order` (same steady state, records folded in arrival
//! order without grouping), `core_path_sparse_month` (freshly opened
//! accounts, about 20 records each spread over a month, arrival order),
//! `core_path_with_draft_rating` (arrival order, plus reading the
//! running invoice every 1,000th record), and `core_path_mixed_aggregations`
//! (as `core_path`, on a plan rating `max`, `unique_count` and the 95th
//! `percentile` instead of sums; issue 13).
//!
//! Every timed iteration starts from a fresh clone of the account map,
//! made and dropped outside the timed region, so each run sees every event
//! id for the first time. The benchmark uses the binary's allocator
//! (mimalloc).
//!
//! Run: `cargo bench --bench core_path`.

use std::hint::black_box;
use std::str::FromStr;
use std::time::Duration;

use billstream::contracts::{Catalog, Decoded, Decoder};
use billstream::engine::aggregation::{Aggregation, AggregationSpec};
use billstream::engine::events::{AccountCommand, AccountKind, Input, JournalEntry, UsageRecorded};
use billstream::engine::fold::Outcome;
use billstream::engine::money::Currency;
use billstream::engine::plan::{Charge, Model, Plan, PlanBook, Tier};
use billstream::engine::time::{Anchor, Timestamp, MICROS_PER_HOUR, MICROS_PER_SECOND};
use billstream::engine::{AccountState, Engine, EngineConfig};
use billstream::runtime::batch::group_by_account;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;

/// Open accounts (the requirement's figure; `CORE_PATH_ACCOUNTS` overrides
/// it for diagnosis only, e.g. a cache-resident 100).
const ACCOUNTS: usize = 10_000;
/// Usage records processed per benchmark iteration.
const RECORDS: usize = 200_000;
/// Hours the records' `occurred_at` span (30 days; `CORE_PATH_SPAN_HOURS`
/// overrides it for diagnosis only: a 1-hour span fires no rollup timer).
const SPAN_HOURS: i64 = 30 * 24;
/// Event-time span of the warm-up and of the measured steady-state stream:
/// 2 hours each, so every account's hourly rollup closes during the run.
const STEADY_SPAN: i64 = 2 * MICROS_PER_HOUR;
/// Subjects per account (e.g. containers, buckets).
const SUBJECTS: usize = 4;
/// `core_path_with_draft_rating`: rate the running invoice of the account
/// hit by every `DRAFT_EVERY`-th event.
const DRAFT_EVERY: usize = 1_000;
/// A usage record as it sits on the topic: Kafka key (the account id),
/// Confluent-framed Avro value, processing instant.
type Rec = (String, Vec<u8>, Timestamp);
const PLAN_ID: &str = "usage-3";
const METRICS: [&str; 3] = ["container.hours", "disk.gb_hours", "api.calls"];

/// Accounts by id, as the processor keeps them (fast hasher).
type States = rustc_hash::FxHashMap<String, Option<AccountState>>;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("decimal literal")
}

/// One plan with the three rating models of the requirement, each on the
/// `sum` of its metric; with `mixed`, the same models on `max`,
/// `unique_count` (of the attribute `user`) and the 95th `percentile` of
/// 5-minute window maxima (issue 13's mixed-plan line).
fn plan_book(mixed: bool) -> PlanBook {
    let aggregation = |i: usize| {
        if !mixed {
            return AggregationSpec::default();
        }
        match i {
            0 => AggregationSpec {
                kind: Aggregation::Max,
                ..Default::default()
            },
            1 => AggregationSpec {
                kind: Aggregation::UniqueCount,
                field: Some("user".into()),
                ..Default::default()
            },
            _ => AggregationSpec {
                kind: Aggregation::Percentile,
                percentile: Some(d("95")),
                window: Some("5m".into()),
                ..Default::default()
            },
        }
    };
    let mut book = PlanBook::new();
    book.upsert(Plan {
        plan_id: PLAN_ID.into(),
        currency: Currency::from_code("EUR").expect("EUR"),
        // No recurring fee, so no fee invoice (and its due-date timers)
        // runs inside the month: the loop measures the usage path only.
        recurring_fee: Decimal::ZERO,
        minimum_spend: d("10.00"),
        version: 1,
        charges: vec![
            Charge {
                metric: METRICS[0].into(),
                model: Model::PerUnit,
                unit_price: d("0.0125"),
                package_size: None,
                free_units: Decimal::ZERO,
                tiers: vec![],
                aggregation: aggregation(0),
            },
            Charge {
                metric: METRICS[1].into(),
                model: Model::Graduated,
                unit_price: Decimal::ZERO,
                package_size: None,
                free_units: Decimal::ZERO,
                tiers: vec![
                    Tier {
                        up_to: Some(d("100")),
                        unit_price: d("0.10"),
                        flat_fee: Decimal::ZERO,
                    },
                    Tier {
                        up_to: Some(d("10000")),
                        unit_price: d("0.05"),
                        flat_fee: d("1.00"),
                    },
                    Tier {
                        up_to: None,
                        unit_price: d("0.01"),
                        flat_fee: Decimal::ZERO,
                    },
                ],
                aggregation: aggregation(1),
            },
            Charge {
                metric: METRICS[2].into(),
                model: Model::Package,
                unit_price: d("0.50"),
                package_size: Some(d("1000")),
                free_units: d("1000"),
                tiers: vec![],
                aggregation: aggregation(2),
            },
        ],
    })
    .expect("valid plan");
    book
}

/// A diagnostic override of a default from the environment.
fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => {
            let parsed = v
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"));
            eprintln!("core_path: {name}={v} (diagnostic override, not the requirement's setup)");
            parsed
        }
        Err(_) => default,
    }
}

fn account_id(i: usize) -> String {
    format!("acct-{i:05}")
}

fn decode(decoder: &Decoder, bytes: &[u8]) -> Input {
    match decoder.decode(bytes) {
        Ok(Decoded::Input(input)) => input,
        other => panic!("not an input: {other:?}"),
    }
}

/// Everything the benchmarks share, built once.
struct Fixture {
    accounts: usize,
    engine: Engine,
    decoder: Decoder,
    /// The 10,000 accounts right after `AccountOpened`.
    opened: States,
    /// Confluent-framed Avro usage records with their processing instant,
    /// over one month (sparse: about 20 per account).
    records: Vec<Rec>,
    /// The accounts after a warm-up stream of `RECORDS` records.
    warm: States,
    /// `RECORDS` records continuing the warm-up stream.
    steady: Vec<Rec>,
}

fn fixture(mixed: bool) -> Fixture {
    let catalog = Catalog::shared().expect("schema catalog");
    let decoder = Decoder::new(catalog).expect("decoder");
    let engine = Engine::new(EngineConfig::new("prod"), plan_book(mixed));
    let month_start = Timestamp::parse_rfc3339("2026-03-01T00:00:00Z").expect("timestamp");
    let accounts = env_or("CORE_PATH_ACCOUNTS", ACCOUNTS);
    let span_hours = env_or("CORE_PATH_SPAN_HOURS", SPAN_HOURS);
    assert!(
        (1..=30 * 24).contains(&span_hours),
        "the span must stay in one month"
    );

    // Open the accounts through the same decode + apply path.
    let mut opened = States::default();
    let mut journal = Vec::new();
    for i in 0..accounts {
        let open = Input::Account(AccountCommand {
            event_id: format!("open-{i:05}"),
            account_id: account_id(i),
            occurred_at: month_start,
            environment: Some("prod".into()),
            kind: AccountKind::AccountOpened {
                plan_id: PLAN_ID.into(),
                currency: "EUR".into(),
                timezone: "UTC".into(),
                tax_rate: d("0.20"),
                billing_anchor: Anchor::Calendar,
                thresholds: Vec::new(),
                invoice_at: None,
            },
        });
        let bytes = catalog.encode_input(&open).expect("encode AccountOpened");
        let input = decode(&decoder, &bytes);
        assert_eq!(input, open, "AccountOpened round trip");
        let mut slot = None;
        let outcome = engine.apply(&mut slot, &input, month_start, &mut journal);
        assert_eq!(outcome, Ok(Outcome::Applied), "open {}", account_id(i));
        opened.insert(account_id(i), slot);
        journal.clear();
    }

    // Usage: one calendar month (UTC), evenly spaced, monotonic clock.
    // Sparse month: fresh accounts, records over one calendar month.
    let mut rng = ChaCha8Rng::seed_from_u64(0x0b11_57ea);
    let records = usage_records(
        mixed,
        catalog,
        &decoder,
        &mut rng,
        accounts,
        month_start,
        span_hours * MICROS_PER_HOUR - MICROS_PER_SECOND,
    );
    // Steady state: the accounts have already seen a warm-up stream (their
    // subjects, metric totals, dedup ids and rollup buckets exist), and
    // the measured stream continues it, as a running processor sees.
    let steady_start = month_start.plus(10 * 24 * MICROS_PER_HOUR);
    let warm_up = usage_records(
        mixed,
        catalog,
        &decoder,
        &mut rng,
        accounts,
        steady_start,
        STEADY_SPAN,
    );
    let steady = usage_records(
        mixed,
        catalog,
        &decoder,
        &mut rng,
        accounts,
        steady_start.plus(STEADY_SPAN),
        STEADY_SPAN,
    );
    let mut warm = opened.clone();
    let fx = Fixture {
        accounts,
        engine,
        decoder,
        opened,
        records,
        warm: States::default(),
        steady,
    };
    run(&fx, &warm_up, &mut warm, None);
    Fixture { warm, ..fx }
}

/// `RECORDS` usage records from `start` over `span` micros, pseudo-randomly
/// over the accounts, metrics and subjects, with unique event ids.
fn usage_records(
    mixed: bool,
    catalog: &Catalog,
    decoder: &Decoder,
    rng: &mut ChaCha8Rng,
    accounts: usize,
    start: Timestamp,
    span: i64,
) -> Vec<Rec> {
    let step = span / RECORDS as i64;
    let mut records = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let at = start.plus(MICROS_PER_SECOND + i as i64 * step);
        let metric = rng.random_range(0..METRICS.len());
        let quantity = match metric {
            // Container hours with two decimals, GB-hours with three,
            // API calls whole.
            0 => Decimal::new(rng.random_range(1..100_000), 2),
            1 => Decimal::new(rng.random_range(1..1_000_000), 3),
            _ => Decimal::from(rng.random_range(1..5_000u32)),
        };
        let key = account_id(rng.random_range(0..accounts));
        let usage = Input::Usage(UsageRecorded {
            event_id: uuid::Uuid::from_u128(rng.random()).to_string(),
            account_id: key.clone(),
            subject: format!("res-{}", rng.random_range(0..SUBJECTS)),
            metric: METRICS[metric].into(),
            quantity,
            occurred_at: at,
            environment: "prod".into(),
            // The mixed plan counts distinct users of `disk.gb_hours`.
            attributes: if mixed {
                [("user".to_string(), format!("u-{}", rng.random_range(0..50)))]
                    .into_iter()
                    .collect()
            } else {
                Default::default()
            },
        });
        let bytes = catalog.encode_input(&usage).expect("encode UsageRecorded");
        assert_eq!(decode(decoder, &bytes), usage, "UsageRecorded round trip");
        records.push((key, bytes, at));
    }
    records
}

/// The core path over every record: decode → look up the account → fold
/// (dedup + accumulate exact totals + rollups + journal) → drop the journal.
/// With `draft_every`, the running invoice of the account hit by every
/// `n`-th record is also rated. Returns the number of journal entries.
fn run(f: &Fixture, records: &[Rec], states: &mut States, draft_every: Option<usize>) -> usize {
    let mut journal: Vec<JournalEntry> = Vec::with_capacity(16);
    let mut entries = 0;
    for (i, (_, bytes, now)) in records.iter().enumerate() {
        let input = decode(&f.decoder, bytes);
        let slot = states
            .get_mut(input.account_id())
            .expect("usage for an opened account");
        match f.engine.apply(slot, &input, *now, &mut journal) {
            Ok(Outcome::Applied) => {}
            other => panic!("record {i}: {other:?}"),
        }
        if draft_every.is_some_and(|n| i % n == 0) {
            let st = slot.as_ref().expect("open account");
            black_box(f.engine.draft(st));
        }
        entries += journal.len();
        journal.clear();
    }
    entries
}

/// The core path as the runtime runs it: decode the batch, group it by
/// account (`runtime::batch::group_by_account`, arrival order kept within
/// an account), then fold each account's records in a row.
fn run_grouped(f: &Fixture, records: &[Rec], states: &mut States) -> usize {
    // Kafka records are keyed by account id: group on the key, then decode
    // each record right before it is folded (decoded data stays in cache).
    let order = group_by_account(records.iter().map(|(key, _, _)| key.as_str()));
    let mut journal: Vec<JournalEntry> = Vec::with_capacity(16);
    let mut entries = 0;
    let mut current: Option<&mut Option<AccountState>> = None;
    // One decoded record reused for the whole batch (no allocation per record).
    let mut scratch = Decoded::Input(Input::Usage(UsageRecorded::default()));
    // Gather the batch's payloads into one buffer in grouped order: a loop
    // of independent copies (the CPU overlaps their cache misses), after
    // which decode and fold read memory front to back.
    let mut arena: Vec<u8> = Vec::with_capacity(records.iter().map(|(_, b, _)| b.len()).sum());
    let mut spans: Vec<(usize, usize, Timestamp)> = Vec::with_capacity(records.len());
    for &i in &order {
        let (_, bytes, now) = &records[i as usize];
        spans.push((arena.len(), bytes.len(), *now));
        arena.extend_from_slice(bytes);
    }
    let mut previous = String::new();
    for (i, &(start, len, at)) in spans.iter().enumerate() {
        let (bytes, now) = (&arena[start..start + len], &at);
        f.decoder.decode_into(bytes, &mut scratch).expect("decodes");
        let Decoded::Input(input) = &scratch else {
            panic!("not an input")
        };
        // Compare decoded ids (just written, in cache) rather than keys.
        let slot = match current.take() {
            Some(slot) if previous == input.account_id() => slot,
            _ => {
                previous.clear();
                previous.push_str(input.account_id());
                states
                    .get_mut(input.account_id())
                    .expect("usage for an opened account")
            }
        };
        match f.engine.apply(slot, input, *now, &mut journal) {
            Ok(Outcome::Applied) => {}
            other => panic!("record {i}: {other:?}"),
        }
        entries += journal.len();
        journal.clear();
        current = Some(slot);
    }
    entries
}

fn report_state(f: &Fixture) {
    let mut states = f.opened.clone();
    let entries = run(f, &f.records, &mut states, None);
    let open: Vec<&AccountState> = states.values().flatten().collect();
    let accounts = f.accounts;
    assert_eq!(open.len(), accounts);
    let resident: usize = open.iter().map(|s| s.resident_bytes()).sum();
    let dedup: usize = open.iter().map(|s| s.dedup.len()).sum();
    let rollups: usize = open.iter().map(|s| s.rollups.len()).sum();
    let bytes: usize = f.records.iter().map(|(_, b, _)| b.len()).sum();
    let opened_resident: usize = f
        .opened
        .values()
        .flatten()
        .map(AccountState::resident_bytes)
        .sum();
    eprintln!(
        "core_path setup: {accounts} accounts, {} usage records ({:.1} B/record framed Avro), \
         {} metrics, {SUBJECTS} subjects/account",
        f.records.len(),
        bytes as f64 / f.records.len() as f64,
        METRICS.len(),
    );
    eprintln!(
        "core_path state: avg AccountState::resident_bytes() = {:.0} B after one pass \
         ({:.0} B just opened); avg dedup entries {:.1}, avg open rollup buckets {:.1}, \
         journal entries/record {:.2}",
        resident as f64 / accounts as f64,
        opened_resident as f64 / accounts as f64,
        dedup as f64 / accounts as f64,
        rollups as f64 / accounts as f64,
        entries as f64 / f.records.len() as f64,
    );
}

fn benches(c: &mut Criterion) {
    let f = fixture(false);
    report_state(&f);

    let mut group = c.benchmark_group("billstream");
    group
        .throughput(Throughput::Elements(f.records.len() as u64))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(10));

    group.bench_function("decode_only", |b| {
        b.iter(|| {
            for (_, bytes, _) in &f.records {
                black_box(decode(&f.decoder, black_box(bytes)));
            }
        })
    });

    group.bench_function("core_path", |b| {
        b.iter_batched_ref(
            || f.warm.clone(),
            |states| run_grouped(&f, &f.steady, states),
            BatchSize::PerIteration,
        )
    });

    // Issue 13: the same steady state on a plan that rates its metrics on
    // `max`, `unique_count` and the 95th `percentile` (records carry a
    // `user` attribute, so decoding costs a little more too).
    let mixed = fixture(true);
    group.bench_function("core_path_mixed_aggregations", |b| {
        b.iter_batched_ref(
            || mixed.warm.clone(),
            |states| run_grouped(&mixed, &mixed.steady, states),
            BatchSize::PerIteration,
        )
    });
    drop(mixed);

    group.bench_function("core_path_arrival_order", |b| {
        b.iter_batched_ref(
            || f.warm.clone(),
            |states| run(&f, &f.steady, states, None),
            BatchSize::PerIteration,
        )
    });

    group.bench_function("core_path_with_draft_rating", |b| {
        b.iter_batched_ref(
            || f.warm.clone(),
            |states| run(&f, &f.steady, states, Some(DRAFT_EVERY)),
            BatchSize::PerIteration,
        )
    });

    group.bench_function("core_path_sparse_month", |b| {
        b.iter_batched_ref(
            || f.opened.clone(),
            |states| run(&f, &f.records, states, None),
            BatchSize::PerIteration,
        )
    });

    group.finish();
}

criterion_group!(core_path, benches);
criterion_main!(core_path);

// The same allocator as the `billstream` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
