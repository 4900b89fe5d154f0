//! `billstream run`: the Kafka-driven processor.
//!
//! consume a batch → fold (grouped by account) → persist → publish →
//! commit input offsets, in that order, so that nothing is published before
//! the state behind it is durable and no offset is committed before its
//! effects are published. Timers fire on the wall clock for every account
//! of the store. SIGINT/SIGTERM: finish the batch in hand, persist,
//! publish, commit, then exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::message::Message;

use crate::config::{Settings, StoreSettings};
use crate::contracts::{Catalog, Decoder};
use crate::engine::plan::PlanBook;
use crate::engine::time::Timestamp;
use crate::engine::Engine;
use crate::runtime::{BatchRecord, Processor, SourcePos};
use crate::sink::kafka::KafkaSink;
use crate::source::kafka::{read_plans, KafkaSource};
use crate::store::{EmbeddedStore, StateStore};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML file layered over the built-in defaults; BILLSTREAM__<SECTION>__<KEY>
    /// environment variables override both (see `billstream config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Store partitions whose accounts are loaded at start so their timers
    /// fire without input (the input topics' partition count).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
}

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    if settings.kafka.schema_registry_url.is_some() {
        bail!("config field `kafka.schema_registry_url`: a Schema Registry is not supported yet; leave it empty to use the ids of schemas/manifest.json");
    }
    if settings.kafka.transactional {
        bail!("config field `kafka.transactional`: transactions are not supported yet; set it to false");
    }
    let path = match &settings.store {
        StoreSettings::Embedded { path } => path.clone(),
        StoreSettings::Scylla { .. } => {
            bail!(
                "config field `store.kind`: the ScyllaDB store is not built yet; use \"embedded\""
            )
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(settings, path, args.partitions))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(settings: Settings, path: PathBuf, partitions: u32) -> anyhow::Result<()> {
    let catalog = Catalog::shared()?;
    let decoder = Decoder::new(catalog)?;
    let store = Arc::new(
        EmbeddedStore::open(&path).with_context(|| format!("store at {}", path.display()))?,
    );

    let mut book = PlanBook::new();
    let (plans, errors) = read_plans(&settings, &decoder, Duration::from_secs(60))?;
    for e in errors {
        eprintln!("warning: plans topic: {e}");
    }
    for plan in plans {
        let id = plan.plan_id.clone();
        if let Err(e) = book.upsert(plan) {
            eprintln!("warning: plan {id} refused: {e}");
        }
    }
    eprintln!(
        "billstream run: {} plans loaded from {}",
        book.len(),
        settings.topics.plans
    );

    let mut epoch = 0;
    for p in 0..partitions {
        epoch = epoch.max(store.claim_partition(p, &settings.kafka.group_id).await?);
    }
    let engine = Engine::new(settings.engine.clone(), book);
    let mut processor = Processor::new(engine, store.clone(), epoch);
    let mut loaded = 0;
    for p in 0..partitions {
        loaded += processor.load_partition(p, now()).await?;
    }
    let sink = KafkaSink::connect(&settings, catalog)?;
    // Outputs persisted before a crash but never acknowledged: publish them
    // again, with the same ids, before anything new.
    let recovered = processor.unpublished_outputs().await?;
    if !recovered.is_empty() {
        eprintln!(
            "billstream run: republishing {} outputs not acknowledged before the last stop",
            recovered.len()
        );
        sink.publish(&recovered).await?;
        processor.published();
    }
    eprintln!(
        "billstream run: {loaded} accounts loaded, consuming as group {}",
        settings.kafka.group_id
    );

    let mut source = KafkaSource::connect(&settings)?;
    let mut stop = Box::pin(shutdown_signal());
    loop {
        let batch = tokio::select! {
            _ = &mut stop => break,
            b = source.next_batch(settings.batch.max_records, settings.batch.max_wait, Duration::from_millis(500)) => b?,
        };
        let clock = now();
        let records: Vec<BatchRecord<'_>> = batch
            .iter()
            .map(|m| BatchRecord {
                pos: SourcePos {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                },
                key: m.key().and_then(|k| std::str::from_utf8(k).ok()),
                raw: m.payload().unwrap_or_default(),
                now: clock,
                // Account commands, then payments, then usage (see batch.rs).
                rank: if m.topic() == settings.topics.accounts {
                    0
                } else if m.topic() == settings.topics.payments {
                    1
                } else {
                    2
                },
            })
            .collect();
        processor.process_batch(&decoder, &records).await?;
        processor.advance_timers(clock);
        let outputs = processor.flush().await?;
        sink.publish(&outputs).await?;
        processor.published();
        source.commit()?;
    }
    eprintln!("billstream run: stopping: persisting and committing");
    processor.advance_timers(now());
    let outputs = processor.flush().await?;
    sink.publish(&outputs).await?;
    processor.published();
    processor.persist_published_marks().await?;
    source.commit()?;
    sink.flush(Duration::from_secs(10))?;
    eprintln!(
        "billstream run: stopped ({} applied, {} duplicates, {} replays skipped, {} batches)",
        processor.stats.applied,
        processor.stats.duplicates,
        processor.stats.replays_skipped,
        processor.stats.batches
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
