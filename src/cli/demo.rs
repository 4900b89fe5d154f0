//! `billstream demo`: a realistic workload through the real engine,
//! contracts and embedded store, on a simulated clock.
//!
//! Every input is encoded as it would be on Kafka (Confluent-framed Avro)
//! and decoded by the production decoder; outputs are published only after
//! the batch that produced them is durable, and the simulated gateway and
//! customers answer them (charges succeed or fail, transfers arrive,
//! prepaid accounts top up). Charge requests are answered by the
//! `billstream gateway` emulator's outcome function (`sim::gateway`), with
//! the configuration of `config/demo-gateway.toml` or `--gateway FILE`.
//! The output folder also gets what `billstream api` needs to show the run
//! in the support console without Kafka (`demo_console`), and the demo
//! prints the command.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::summary::Summary;
use crate::contracts::{Catalog, Decoded, Decoder};
use crate::engine::events::Input;
use crate::engine::time::{Timestamp, MICROS_PER_DAY};
use crate::engine::{Engine, EngineConfig};
use crate::gateway::GatewayConfig;
use crate::runtime::{Processor, SourcePos};
use crate::sim::{demo_plans, DemoGateway, Reaction, World, WorldEvent, DEMO_GATEWAY};
use crate::sink::{FileSink, Sink};
use crate::store::{EmbeddedStore, StateStore};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of accounts.
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    /// Simulated days (from 2026-01-01).
    #[arg(long, default_value_t = 92)]
    pub days: u32,
    /// Random seed: the same seed gives the same run, record for record.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output folder: one <topic>.jsonl per output topic, the store in
    /// state/, and for the support console plans.jsonl and console.toml
    /// (`billstream api --config <out>/console.toml`, printed at the end).
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// The payment-gateway emulator's configuration answering the demo's
    /// charge requests (as `billstream gateway --config`); default: the
    /// demo's own, config/demo-gateway.toml (providers acme and riskpay).
    #[arg(long, value_name = "FILE")]
    pub gateway: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// An input waiting in the simulated world, ordered by delivery time.
struct Scheduled {
    at: Timestamp,
    seq: u64,
    event: WorldEvent,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

fn topic_of(input: &Input) -> &'static str {
    match input {
        Input::Usage(_) => "billing.usage.v1",
        Input::Payment(_) => "billing.payments.v1",
        Input::Account(_) => "billing.accounts.v1",
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let gateway = match &args.gateway {
        Some(path) => GatewayConfig::load(path)
            .map_err(|e| anyhow::anyhow!("--gateway {}: {e}", path.display()))?,
        None => GatewayConfig::parse(DEMO_GATEWAY)?,
    };
    let catalog = Catalog::shared()?;
    let decoder = Decoder::new(catalog)?;
    let mut engine = Engine::new(EngineConfig::new("prod"), Default::default());
    for plan in demo_plans() {
        engine.plans.upsert(plan)?;
    }
    let state_dir = args.out.join("state");
    super::scratch::fresh_state_dir(&state_dir)?;
    let store = Arc::new(EmbeddedStore::open(&state_dir)?);
    let mut sink = FileSink::create(&args.out)?;
    let start = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").expect("literal");
    let end = start.plus(i64::from(args.days) * MICROS_PER_DAY);
    let mut world = World::new(
        args.seed,
        args.accounts,
        start,
        args.days,
        "prod",
        DemoGateway::new(gateway, "prod")?,
    );
    let mut queue: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut schedule = |queue: &mut BinaryHeap<Reverse<Scheduled>>, rs: Vec<Reaction>| {
        for r in rs {
            seq += 1;
            queue.push(Reverse(Scheduled {
                at: r.at,
                seq,
                event: r.event,
            }));
        }
    };
    schedule(&mut queue, world.initial_events());

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(args.days))
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} simulated day {pos}/{len} {wide_bar} {msg}")
            .expect("template"),
    );
    let mut summary = Summary::default();
    for plan in demo_plans() {
        summary.learn_plan(&plan);
    }
    let mut offsets = std::collections::HashMap::<&'static str, i64>::new();
    let (stats, store_writes) = super::block_on(async {
        let epoch = store.claim_partition(0, "demo").await?;
        let mut p = Processor::new(engine, store.clone());
        p.assign_partition(0, epoch).await?;
        let mut inputs = 0u64;
        while let Some(Reverse(item)) = queue.pop() {
            if item.at >= end {
                break;
            }
            p.advance_timers(item.at);
            let (topic, bytes, decoded, key) = match item.event {
                WorldEvent::Day(day) => {
                    // A day's batch ends here: persist, publish, let the world react.
                    let outputs = p.flush().await?;
                    summary.add(&outputs, |a| world.plan_of(a).map(str::to_string));
                    sink.publish(&outputs)?;
                    let reactions = world.react(&outputs, item.at);
                    schedule(&mut queue, reactions);
                    schedule(&mut queue, world.day(day));
                    bar.set_position(u64::from(day));
                    bar.set_message(format!("{inputs} inputs"));
                    continue;
                }
                WorldEvent::Input(input) => {
                    let bytes = catalog.encode_input(&input)?;
                    let decoded = decoder.decode(&bytes);
                    (
                        topic_of(&input),
                        bytes,
                        decoded,
                        Some(input.account_id().to_string()),
                    )
                }
                WorldEvent::Garbage(bytes) => {
                    let decoded: Result<Decoded, _> = decoder.decode(&bytes);
                    ("billing.usage.v1", bytes, decoded, None)
                }
            };
            let offset = offsets.entry(topic).or_default();
            let pos = SourcePos {
                topic: topic.to_string(),
                partition: 0,
                offset: *offset,
            };
            *offset += 1;
            p.process(&pos, key.as_deref(), &bytes, decoded, item.at)
                .await?;
            inputs += 1;
        }
        p.advance_timers(end);
        let outputs = p.flush().await?;
        summary.add(&outputs, |a| world.plan_of(a).map(str::to_string));
        sink.publish(&outputs)?;
        let writes = store.stats().get(crate::store::StoreOp::AccountWrite);
        anyhow::Ok((p.stats.clone(), (inputs, writes)))
    })?;
    sink.flush()?;
    let console_config = super::demo_console::write_files(&args.out, &demo_plans())?;
    summary.gateway = Some(world.gateway_report().clone());
    bar.finish_and_clear();
    println!(
        "billstream demo: {} accounts, {} simulated days from {}, seed {}",
        args.accounts, args.days, start, args.seed
    );
    summary.print(&stats);
    println!();
    println!(
        "{} inputs in {:.1} s; {} account state writes ({:.4} per input); outputs in {}",
        store_writes.0,
        started.elapsed().as_secs_f64(),
        store_writes.1,
        store_writes.1 as f64 / store_writes.0.max(1) as f64,
        args.out.display()
    );
    println!();
    println!("{}", super::demo_console::instructions(&console_config)?);
    Ok(ExitCode::SUCCESS)
}
