//! `billstream api`: serve the read-only HTTP API on the configured store.
//!
//! With the ScyllaDB store any number of API processes can run beside the
//! processors. The embedded store (redb) is opened by one process at a
//! time: while `billstream run` holds it, serve the API from that process
//! with `billstream run --api` instead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::config::{Settings, StoreSettings};
use crate::store::{EmbeddedStore, ScyllaStore};

#[derive(Args, Debug)]
pub struct ApiArgs {
    /// TOML file layered over the built-in defaults; BILLSTREAM__<SECTION>__<KEY>
    /// environment variables override both (see `billstream config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: ApiArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    // Check the token key before anything connects.
    crate::api::Verifier::from_settings(&settings.api)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = super::run::shutdown_signal();
        match &settings.store {
            StoreSettings::Embedded { path } => {
                let store = EmbeddedStore::open(path).with_context(|| {
                    format!(
                        "store at {} (the embedded store is one process's: if `billstream run` has it open, serve the API with `billstream run --api`)",
                        path.display()
                    )
                })?;
                crate::api::serve(&settings, Arc::new(store), stop).await
            }
            StoreSettings::Scylla(scylla) => {
                let store = ScyllaStore::connect(scylla).await.with_context(|| {
                    format!(
                        "ScyllaDB store, keyspace {} on {}",
                        scylla.keyspace,
                        scylla.nodes.join(", ")
                    )
                })?;
                crate::api::serve(&settings, Arc::new(store), stop).await
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
