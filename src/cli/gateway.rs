//! `billstream gateway`: the payment-gateway emulator (`crate::gateway`),
//! for the demo, the end-to-end tests and staging clusters.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::Settings;
use crate::gateway::service::Gateway;
use crate::gateway::GatewayConfig;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// The emulator's configuration: seed, consumer group and providers
    /// (success rate, decline codes, latency, duplicates, out-of-order
    /// results, expired-token code). Documented example:
    /// config/gateway.toml.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// billstream's own configuration, as for `billstream run` (Kafka
    /// brokers and properties, topic prefix and names, environment);
    /// BILLSTREAM__<SECTION>__<KEY> variables override it.
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// Validate both configurations, print the providers and exit.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let config = GatewayConfig::load(&args.config)?;
    let settings = Settings::load(args.settings.as_deref())?;
    if args.check {
        println!(
            "seed {}, group {}, default provider {}",
            config.seed,
            config.group_id,
            config.default_provider.as_deref().unwrap_or("(none)")
        );
        for (name, p) in &config.providers {
            let declines: Vec<String> = p
                .declines
                .iter()
                .map(|d| {
                    let how = if d.retryable { "retryable" } else { "final" };
                    format!("{} ({how}, weight {})", d.code, d.weight)
                })
                .collect();
            println!(
                "provider {name}: success {}, latency {:?}+{:?}, duplicates {}, out of order {}, declines: {}",
                p.success_rate,
                p.latency,
                p.latency_jitter,
                p.duplicate_rate,
                p.out_of_order_rate,
                declines.join(", ")
            );
        }
        println!("configuration is valid");
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stats = runtime.block_on(async {
        let gateway = Gateway::connect(&settings, &config)?;
        eprintln!(
            "billstream gateway: answering {} into {} ({} providers)",
            settings.topics.charges,
            settings.topics.payments,
            config.providers.len()
        );
        gateway.serve(super::run::shutdown_signal()).await
    })?;
    eprintln!(
        "billstream gateway: stopped ({} requests: {} succeeded, {} declined, {} dead-lettered; {} duplicated, {} held back)",
        stats.requests,
        stats.succeeded,
        stats.declined,
        stats.dead_lettered,
        stats.duplicated,
        stats.held_back
    );
    Ok(ExitCode::SUCCESS)
}
