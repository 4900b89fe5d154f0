//! `billstream topics create`: create every topic of the configuration
//! with a partition count (idempotent: existing topics are left alone).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Settings;

#[derive(Args, Debug)]
pub struct TopicsArgs {
    #[command(subcommand)]
    pub command: TopicsCommand,
}

#[derive(Subcommand, Debug)]
pub enum TopicsCommand {
    /// Create the input and output topics (existing ones are kept as they are).
    Create {
        /// TOML configuration file (see `billstream config`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Partitions per topic; give every input topic the same count.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

pub fn run(args: TopicsArgs) -> anyhow::Result<ExitCode> {
    let TopicsCommand::Create {
        config,
        partitions,
        replication,
    } = args.command;
    if partitions < 1 || replication < 1 {
        anyhow::bail!("--partitions and --replication must be at least 1");
    }
    let settings = Settings::load(config.as_deref())?;
    Ok(if create_all(&settings, partitions, replication)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Create every configured topic (idempotent: existing ones are left as
/// they are). Prints one line per topic; false if any creation failed.
pub fn create_all(settings: &Settings, partitions: i32, replication: i32) -> anyhow::Result<bool> {
    super::block_on(create_all_async(settings, partitions, replication))
}

/// `create_all` for callers already inside a tokio runtime.
pub async fn create_all_async(
    settings: &Settings,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<bool> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.kafka.brokers);
    let admin: AdminClient<DefaultClientContext> =
        crate::source::kafka::with_properties(&mut config, settings).create()?;
    let t = &settings.topics;
    let names = [
        &t.usage,
        &t.payments,
        &t.accounts,
        &t.plans,
        &t.invoices,
        &t.charges,
        &t.notifications,
        &t.usage_rollups,
        &t.journal,
        &t.dlq,
        &t.progress,
    ];
    // A shadow never publishes charge requests or notifications: their
    // (shadow) topics are not made.
    let names: Vec<&String> = names
        .into_iter()
        .filter(|n| {
            !settings.run.is_shadow() || (n.as_str() != t.charges && n.as_str() != t.notifications)
        })
        .collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            let topic = NewTopic::new(n, partitions, TopicReplication::Fixed(replication));
            // The price book is a compacted global table; the rest are
            // billing records kept for ten years (SPEC §3).
            // So is the transactional progress (only each account's latest
            // record matters).
            if n.as_str() == t.plans || n.as_str() == t.progress {
                topic.set("cleanup.policy", "compact")
            } else {
                topic.set("retention.ms", "315576000000")
            }
        })
        .collect();
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .with_context(|| {
            format!(
                "creating the topics on kafka.brokers = {:?} (a broker that does not answer times out after librdkafka's socket.timeout.ms, 60 s by default; is the address right, and for a TLS listener does kafka.properties set security.protocol and ssl.ca.location?)",
                settings.kafka.brokers
            )
        })?;
    let mut failed = false;
    for r in results {
        match r {
            Ok(name) => println!("created {name}"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => println!("exists  {name}"),
            Err((name, e)) => {
                eprintln!("error: topic {name}: {e}");
                failed = true;
            }
        }
    }
    Ok(!failed)
}
