//! `billstream schemas`: list and validate the contracts;
//! `billstream schemas register`: put them in the configured Schema Registry.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::Settings;
use crate::contracts::registry::{register_all, RegistryClient};
use crate::contracts::Catalog;

#[derive(Args, Debug)]
pub struct SchemasArgs {
    #[command(subcommand)]
    command: Option<SchemasCommand>,
}

#[derive(Subcommand, Debug)]
enum SchemasCommand {
    /// Register every schema of schemas/ in the Schema Registry of the
    /// configuration (kafka.schema_registry_url), under the subjects
    /// `<topic>-<record full name>` and, for a topic with one record type,
    /// `<topic>-value`, with the configuration's topic names (prefix
    /// applied). Idempotent: a schema already under its subject keeps its
    /// id. Prints each subject and its id. Only the newest version of a
    /// schema is registered (earlier versions, schemas/history/, are for
    /// producers without a registry). `billstream run` with a registry
    /// needs this done first.
    Register(RegisterArgs),
}

#[derive(Args, Debug)]
struct RegisterArgs {
    /// TOML file layered over the built-in defaults; BILLSTREAM__<SECTION>__<KEY>
    /// environment variables override both (e.g.
    /// BILLSTREAM__KAFKA__SCHEMA_REGISTRY_URL, ..._PASSWORD).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: SchemasArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        None => list(),
        Some(SchemasCommand::Register(args)) => register(args),
    }
}

fn list() -> anyhow::Result<ExitCode> {
    let catalog = Catalog::load()?;
    let summaries = catalog.validate_all()?;
    println!(
        "{:>5}  {:>3}  {:<36} {:<26} {:>6}  written",
        "id", "ver", "record", "topic", "fields"
    );
    for s in &summaries {
        let written = match s.read_as {
            None => "yes".to_string(),
            Some(id) => format!("no: read as id {id}"),
        };
        println!(
            "{:>5}  {:>3}  {:<36} {:<26} {:>6}  {written}",
            s.id, s.version, s.name, s.topic, s.fields
        );
    }
    let earlier = summaries.iter().filter(|s| s.read_as.is_some()).count();
    println!(
        "{} schemas and {earlier} earlier version{} (read, never written), manifest consistent",
        summaries.len() - earlier,
        if earlier == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}

fn register(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    let Some(registry) = &settings.kafka.schema_registry else {
        anyhow::bail!("config field `kafka.schema_registry_url` is empty: set it to the Schema Registry's URL (e.g. BILLSTREAM__KAFKA__SCHEMA_REGISTRY_URL=http://schema-registry:8081)");
    };
    let catalog = Catalog::shared()?;
    catalog.validate_all()?;
    let client = RegistryClient::new(registry)?;
    let done = super::block_on(register_all(&client, catalog, &settings.topics))
        .with_context(|| format!("registering the schemas at {}", registry.url))?;
    let width = done.iter().map(|r| r.subject.len()).max().unwrap_or(0);
    for r in &done {
        println!(
            "{:<width$}  id {:>6}  {}",
            r.subject,
            r.id,
            if r.already {
                "already registered"
            } else {
                "registered"
            }
        );
    }
    // Only the newest version of each schema is registered: it is what
    // billstream writes and looks up. Producers still on an earlier version
    // register it themselves (the registry then gives its own id), and
    // without a registry the manifest's ids of earlier versions are read.
    for e in catalog.history() {
        let current = catalog.current_of(e);
        println!(
            "{} version {} (manifest id {}) not registered: the newest is version {} (manifest id {})",
            e.name, e.version, e.id, current.version, current.id
        );
    }
    let new = done.iter().filter(|r| !r.already).count();
    println!(
        "{} subjects at {}: {new} registered, {} already there",
        done.len(),
        registry.url,
        done.len() - new
    );
    Ok(ExitCode::SUCCESS)
}
