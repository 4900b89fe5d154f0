//! `billstream schemas`: list and validate the contracts.

use std::process::ExitCode;

use crate::contracts::Catalog;

pub fn run() -> anyhow::Result<ExitCode> {
    let catalog = Catalog::load()?;
    let summaries = catalog.validate_all()?;
    println!(
        "{:>4}  {:<40} {:<28} {:>6}",
        "id", "record", "topic", "fields"
    );
    for s in &summaries {
        println!(
            "{:>4}  {:<40} {:<28} {:>6}",
            s.id, s.name, s.topic, s.fields
        );
    }
    println!("{} schemas, manifest consistent", summaries.len());
    Ok(ExitCode::SUCCESS)
}
