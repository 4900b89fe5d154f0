//! `billstream run`: the Kafka-driven processor (the loop itself is
//! `runtime::service`). SIGINT/SIGTERM: finish the batch in hand, persist,
//! publish, commit, then exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::config::{RunMode, Settings, StoreSettings};
use crate::runtime::service::{serve, Progress};
use crate::store::{EmbeddedStore, ScyllaStore, StateStore};
use crate::telemetry::{serve_http, Metrics, StoreStatsSource};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML file layered over the built-in defaults; BILLSTREAM__<SECTION>__<KEY>
    /// environment variables override both (see `billstream config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also serve the read-only HTTP API ([api] settings) from this
    /// process, on the same store (the way to have it with the embedded
    /// store, which one process opens at a time).
    #[arg(long)]
    pub api: bool,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    if settings.run.is_shadow() {
        eprintln!("{}", shadow_banner(&settings));
        tracing::warn!(
            invoices = %settings.topics.invoices,
            journal = %settings.topics.journal,
            "shadow mode: no charge request and no notification is published"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stats = match &settings.store {
        StoreSettings::Embedded { path } => {
            let store = EmbeddedStore::open(path)
                .with_context(|| format!("store at {}", path.display()))?;
            runtime.block_on(serve_on(&settings, Arc::new(store), args.api))?
        }
        StoreSettings::Scylla(scylla) => runtime.block_on(async {
            let store = ScyllaStore::connect(scylla).await.with_context(|| {
                format!(
                    "ScyllaDB store, keyspace {} on {}",
                    scylla.keyspace,
                    scylla.nodes.join(", ")
                )
            })?;
            serve_on(&settings, Arc::new(store), args.api).await
        })?,
    };
    eprintln!(
        "billstream run: stopped ({} applied, {} duplicates, {} replays skipped, {} batches)",
        stats.applied, stats.duplicates, stats.replays_skipped, stats.batches
    );
    Ok(ExitCode::SUCCESS)
}

/// What `run` says first in shadow mode, so nobody takes a shadow for the
/// biller of record (or the other way round).
pub fn shadow_banner(settings: &Settings) -> String {
    let RunMode::Shadow { prefix } = &settings.run else {
        return String::new();
    };
    let t = &settings.topics;
    let rule = "=".repeat(72);
    format!(
        "{rule}\n\
         billstream run: SHADOW MODE (run.mode = \"shadow\", run.shadow_prefix = {prefix:?})\n\
         \x20 NO charge request and NO notification is published: nothing moves\n\
         \x20 money and nothing reaches a customer.\n\
         \x20 Published to shadow topics: {}, {}, {}, {}.\n\
         \x20 Reads the live inputs: {}, {}, {}, {}\n\
         \x20 in its own consumer group {:?} and store (never a live instance's).\n\
         \x20 Compare with the biller of record: billstream reconcile.\n\
         {rule}",
        t.invoices,
        t.journal,
        t.usage_rollups,
        t.dlq,
        t.usage,
        t.payments,
        t.accounts,
        t.plans,
        settings.kafka.group_id
    )
}

/// The processing loop on `store`, until SIGINT/SIGTERM.
async fn serve_on<S: StateStore>(
    settings: &Settings,
    store: Arc<S>,
    api: bool,
) -> anyhow::Result<crate::runtime::ProcessorStats> {
    if api {
        crate::api::spawn_with_processor(settings, store.clone())?;
    }
    let owner = format!("{}/pid-{}", settings.kafka.group_id, std::process::id());
    let mut progress = Progress::default();
    if let Some(listen) = settings.metrics_listen {
        let metrics = Arc::new(Metrics::new(Some(
            store.clone() as Arc<dyn StoreStatsSource>
        )));
        progress.metrics = Some(metrics.clone());
        let progress = Arc::new(progress);
        let bound = serve_http(listen, metrics, progress.clone()).await?;
        eprintln!("billstream run: metrics on http://{bound}/metrics (/healthz, /readyz)");
        return serve(settings, store, &owner, progress, shutdown_signal()).await;
    }
    let progress = Arc::new(progress);
    serve(settings, store, &owner, progress, shutdown_signal()).await
}

pub(super) async fn shutdown_signal() {
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
