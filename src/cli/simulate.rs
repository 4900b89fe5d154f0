//! `billstream simulate`: the engine on user-supplied JSON-lines files.
//!
//! An events file is read in order; a line's arrival time is the latest
//! `occurred_at` seen so far in its file (so a line older than the ones
//! before it arrives late, as late usage does). Only lines dated at or
//! before `--until` move that clock: a line dated later arrives at the
//! clock as it stands and, more than the allowed skew ahead of it, is
//! rejected `from_future` as in `run`. So the processing clock never passes
//! `--until`, and one far-future line cannot bill decades ahead.
//!
//! The accounts file is not a stream: each line arrives at its own
//! `occurred_at` (an opening at its `opened_at`; after `--until`, at
//! `--until`), and lines of the same instant are taken in the order of
//! their content, so the file's order does not change a single output.
//!
//! Files are merged by arrival time and driven through the real processor
//! and embedded store; timers fire on that clock and finally up to
//! `--until`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::summary::Summary;
use crate::config::RunMode;
use crate::contracts::redact::redact_text;
use crate::contracts::{parse_line, Decoded, OutputTopic};
use crate::engine::time::Timestamp;
use crate::engine::{Engine, EngineConfig};
use crate::runtime::{Processor, SourcePos};
use crate::sink::{FileSink, Sink};
use crate::store::{EmbeddedStore, StateStore};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// JSON-lines file of plans (plan_id, currency, recurring_fee, minimum_spend, charges).
    #[arg(long)]
    pub plans: PathBuf,
    /// JSON-lines file of account commands (account opened: event_id, account_id, plan_id,
    /// currency, timezone, tax_rate, opened_at, environment), in any order: each line is
    /// applied at its own time (an opening at its opened_at).
    #[arg(long)]
    pub accounts: PathBuf,
    /// JSON-lines files of usage, payment and account events, each in arrival order.
    #[arg(long, num_args = 1.., required = true)]
    pub events: Vec<PathBuf>,
    /// Run the clock up to this instant (RFC 3339), firing every timer on the way
    /// (period closes, due dates, retries). The clock never passes it: lines dated
    /// later are rejected as from_future.
    #[arg(long)]
    pub until: String,
    /// Folder for the outputs: one <topic>.jsonl per output topic, and the store.
    #[arg(long)]
    pub out: PathBuf,
    /// The environment this run serves; events of others are rejected.
    #[arg(long, default_value = "prod")]
    pub environment: String,
    /// Exit with status 1 if any line was rejected.
    #[arg(long)]
    pub strict: bool,
    /// "shadow": write invoices, journal, rollups and dead letters to
    /// <shadow-prefix><topic>.jsonl and no charge request or notification
    /// at all, as `billstream run` does with run.mode = "shadow".
    #[arg(long, value_enum, default_value_t = Mode::Live)]
    pub mode: Mode,
    /// Prefix of the shadow output files (with --mode shadow).
    #[arg(long, default_value = "shadow.", value_name = "PREFIX")]
    pub shadow_prefix: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    Shadow,
}

/// One input line with where it came from.
struct Line {
    arrival: Timestamp,
    file: usize,
    line: usize,
    raw: String,
    decoded: Result<Decoded, crate::contracts::DecodeError>,
}

impl Line {
    /// Processing order: by arrival, then file; within the accounts file
    /// (`file` 0) by content, so its order does not matter; within an
    /// events file by line.
    fn order_key(&self) -> (Timestamp, usize, &str, usize) {
        let content = if self.file == 0 {
            self.raw.as_str()
        } else {
            ""
        };
        (self.arrival, self.file, content, self.line)
    }
}

/// How a file's lines get their arrival time.
#[derive(Clone, Copy)]
enum Arrival {
    /// A stream in arrival order: the latest `occurred_at` so far.
    InFileOrder,
    /// Each line at its own `occurred_at` (the accounts file).
    AtOwnTime,
}

fn read_lines(
    path: &Path,
    file: usize,
    arrival: Arrival,
    until: Timestamp,
) -> anyhow::Result<Vec<Line>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut clock = Timestamp(i64::MIN);
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() || raw.trim_start().starts_with("//") {
            continue;
        }
        let decoded = parse_line(raw);
        let occurred_at = match &decoded {
            Ok(Decoded::Input(input)) => Some(input.occurred_at()),
            _ => None,
        };
        let at = match arrival {
            // Lines dated after --until do not move the clock: they arrive
            // at it and the engine's skew check rejects them.
            Arrival::InFileOrder => {
                if let Some(t) = occurred_at.filter(|t| *t <= until) {
                    clock = clock.max(t);
                }
                clock
            }
            Arrival::AtOwnTime => occurred_at.map_or(Timestamp(i64::MIN), |t| t.min(until)),
        };
        out.push(Line {
            arrival: at,
            file,
            line: i + 1,
            raw: raw.to_string(),
            decoded,
        });
    }
    Ok(out)
}

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    run_then(args, true, |_, _| Ok(()))
}

/// `run`, then `then` on the processor as it stands at `--until` (every
/// output published; `billstream preview` reads the accounts there).
/// `print_summary`: print the run's summary.
pub fn run_then(
    args: SimulateArgs,
    print_summary: bool,
    then: impl FnOnce(&Processor<EmbeddedStore>, Timestamp) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let until = Timestamp::parse_rfc3339(&args.until).with_context(|| {
        format!(
            "--until {:?} is not an RFC 3339 instant (e.g. 2026-04-01T00:00:00Z)",
            args.until
        )
    })?;
    let mut engine = Engine::new(EngineConfig::new(&args.environment), Default::default());
    let mut summary = Summary::default();
    let plan_text = std::fs::read_to_string(&args.plans)
        .with_context(|| format!("cannot read {}", args.plans.display()))?;
    for (i, raw) in plan_text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", args.plans.display(), i + 1);
        match parse_line(raw) {
            Ok(Decoded::Plan(plan)) => {
                summary.learn_plan(&plan);
                engine
                    .plans
                    .upsert(plan)
                    .map_err(|e| anyhow::anyhow!("{}: {}", at(), redact_text(&e.to_string())))?
            }
            Ok(Decoded::Input(_)) => anyhow::bail!("{}: expected a plan, found an event", at()),
            Err(e) => anyhow::bail!("{}: {}", at(), redact_text(&e.to_string())),
        }
    }
    let files: Vec<PathBuf> = std::iter::once(args.accounts.clone())
        .chain(args.events.iter().cloned())
        .collect();
    let mut lines = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let arrival = if i == 0 {
            Arrival::AtOwnTime
        } else {
            Arrival::InFileOrder
        };
        lines.extend(read_lines(f, i, arrival, until)?);
    }
    lines.sort_by(|a, b| a.order_key().cmp(&b.order_key()));

    let state_dir = args.out.join("state");
    super::scratch::fresh_state_dir(&state_dir)?;
    let store = Arc::new(EmbeddedStore::open(&state_dir)?);
    let mode = match args.mode {
        Mode::Live => RunMode::Live,
        Mode::Shadow => {
            let prefix = args.shadow_prefix.trim();
            if prefix.is_empty() || prefix.contains(['/', '\\']) {
                anyhow::bail!(
                    "--shadow-prefix {:?}: give a non-empty file name prefix (e.g. \"shadow.\")",
                    args.shadow_prefix
                );
            }
            println!(
                "billstream simulate: SHADOW MODE: outputs to {prefix}<topic>.jsonl; NO charge request and NO notification is written"
            );
            RunMode::Shadow {
                prefix: prefix.to_string(),
            }
        }
    };
    let mut sink = FileSink::create_in(&args.out, mode)?;
    let mut rejected = 0usize;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();

    let stats = super::block_on(async {
        let epoch = store.claim_partition(0, "simulate").await?;
        let mut p = Processor::new(engine, store.clone());
        p.assign_partition(0, epoch).await?;
        for (n, l) in lines.iter().enumerate() {
            p.advance_timers(l.arrival.max(Timestamp(0)));
            let pos = SourcePos {
                topic: names[l.file].clone(),
                partition: 0,
                offset: l.line as i64,
            };
            if let Err(e) = &l.decoded {
                // The reason can quote the input: masked like a dead letter's.
                let reason = e.to_string();
                eprintln!(
                    "{}:{}: {}: {}",
                    names[l.file],
                    l.line,
                    e.kind(),
                    redact_text(&reason)
                );
            }
            let now = l.arrival.max(Timestamp(0));
            let key = match &l.decoded {
                Ok(Decoded::Input(i)) => Some(i.account_id().to_string()),
                _ => None,
            };
            p.process(
                &pos,
                key.as_deref(),
                l.raw.as_bytes(),
                l.decoded.clone(),
                now,
            )
            .await?;
            if n % 10_000 == 9_999 {
                publish(&mut p, &mut sink, &mut summary, &names, &mut rejected).await?;
            }
        }
        p.advance_timers(until);
        publish(&mut p, &mut sink, &mut summary, &names, &mut rejected).await?;
        then(&p, until)?;
        anyhow::Ok(p.stats.clone())
    })?;
    sink.flush()?;
    if print_summary {
        summary.print(&stats);
        println!();
        println!("Outputs written to {}", args.out.display());
        let withheld: u64 = sink.withheld.values().sum();
        if withheld > 0 {
            println!(
                "Shadow mode: {withheld} charge requests and notifications withheld (not written)"
            );
        }
    }
    Ok(if args.strict && rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn publish(
    p: &mut Processor<EmbeddedStore>,
    sink: &mut FileSink,
    summary: &mut Summary,
    names: &[String],
    rejected: &mut usize,
) -> anyhow::Result<()> {
    let outputs = p.flush().await?;
    for r in outputs.iter().filter(|r| r.topic == OutputTopic::Dlq) {
        *rejected += 1;
        let j = &r.json;
        // Decode errors were reported as they were read. The reason is the
        // dead letter's, already masked.
        if crate::engine::Rejection::KINDS.contains(&j["error_kind"].as_str().unwrap_or("")) {
            let file = j["source_topic"].as_str().unwrap_or("?");
            debug_assert!(names.iter().any(|n| n == file));
            eprintln!(
                "{file}:{}: {}: {}",
                j["offset"],
                j["error_kind"].as_str().unwrap_or("?"),
                j["reason"].as_str().unwrap_or("?")
            );
        }
    }
    summary.add(&outputs, |a| p.account(a).map(|s| s.plan_id.clone()));
    sink.publish(&outputs)?;
    Ok(())
}
