//! `billstream migrate`: create the ScyllaDB keyspace and tables of
//! `schemas/cql/billstream.cql` if they do not exist and add the columns
//! an existing table lacks (idempotent; run it before the first
//! `billstream run` and after upgrades).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use crate::config::{Settings, StoreSettings};
use crate::store::scylla::{migrate, render_schema};

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// TOML file layered over the built-in defaults; BILLSTREAM__<SECTION>__<KEY>
    /// environment variables override both.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the CQL for the configured keyspace and replication instead of
    /// running it (for a DBA, or cqlsh -f).
    #[arg(long)]
    pub print: bool,
}

pub fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    let StoreSettings::Scylla(scylla) = &settings.store else {
        bail!("config field `store.kind`: `billstream migrate` creates the ScyllaDB schema; set it to \"scylla\" (the embedded store creates its tables when it opens)");
    };
    if args.print {
        print!(
            "{}",
            render_schema(&scylla.keyspace, &scylla.replication, None)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let migration = super::block_on(migrate(scylla))?;
    let statements = &migration.statements;
    eprintln!(
        "billstream migrate: keyspace {} ready on {} ({}{}; {} statements: each CREATE IF NOT EXISTS, {} columns added)",
        scylla.keyspace,
        scylla.nodes.join(", "),
        migration.backend,
        if migration.backend.tablets_by_default(&scylla.replication) {
            ", tablets disabled"
        } else {
            ""
        },
        statements.len(),
        statements.iter().filter(|s| s.starts_with("ALTER TABLE")).count()
    );
    Ok(ExitCode::SUCCESS)
}
