//! `billstream dlq list|show|replay`: the dead letters of the DLQ topic
//! (or of the embedded mode's `billing.dlq.v1.jsonl`), selected by kind,
//! source topic, account, time and id; `replay` republishes the chosen
//! ones' payloads to their source topics once their cause is fixed,
//! never a card-number rejection, and records each in a replay log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::Settings;
use crate::contracts::Catalog;
use crate::dlq::kafka::{read_topic, Republisher};
use crate::dlq::record::read_file;
use crate::dlq::replay::{append_log, log_entry, read_log};
use crate::dlq::select::topic_names;
use crate::dlq::{plan, Decision, DlqRecord, Filter};
use crate::engine::time::Timestamp;

#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters, oldest first: when, kind, source record
    /// (topic/partition/offset), key, id, whether it can be replayed, and
    /// the reason; then a count by kind.
    List {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line (as `show` prints them) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full: its fields, the payload (text, or
    /// base64 for binary) and, when the payload is Avro of a known schema,
    /// the payload decoded.
    Show {
        /// The dead letter's id (`event_id`, as `list` shows it).
        id: String,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Republish the selected dead letters' (masked) payloads to their
    /// source topics under their original keys, after their cause is
    /// fixed (an account opened late, a plan published). A card-number
    /// rejection, or a dead letter whose payload was cut to fit
    /// kafka.max_record_bytes, is never replayed. Each record replayed is
    /// appended to the replay log (--log); a dead letter the log names is
    /// skipped unless --again. Exit 1 if any selected dead letter was
    /// refused. Reads the DLQ topic (not a file).
    Replay {
        /// billstream's configuration (brokers, topic prefix and names), as for `run`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Select every dead letter (replay needs a filter otherwise).
        #[arg(long)]
        all: bool,
        /// Say what would be replayed; publish and log nothing.
        #[arg(long)]
        dry_run: bool,
        /// The replay log: one JSON line per dead letter replayed.
        #[arg(long, value_name = "FILE", default_value = "dlq-replays.jsonl")]
        log: PathBuf,
        /// Replay dead letters the log says were replayed already.
        #[arg(long)]
        again: bool,
    },
}

#[derive(Args, Debug)]
pub struct SourceArgs {
    /// billstream's configuration (brokers, topic prefix and names), as for
    /// `run`; the DLQ topic is read from its start to its end.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read this JSON-lines file instead (the embedded mode's output, e.g.
    /// out/demo/billing.dlq.v1.jsonl).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug, Default)]
pub struct FilterArgs {
    /// Only this error kind (repeatable), e.g. unknown_account.
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Only dead letters of this source topic (with or without the prefix).
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Only this account (the record key).
    #[arg(long, value_name = "ACCOUNT")]
    pub account: Option<String>,
    /// Only those received at or after this RFC 3339 instant.
    #[arg(long, value_name = "INSTANT", value_parser = instant)]
    pub since: Option<Timestamp>,
    /// Only those received before this RFC 3339 instant.
    #[arg(long, value_name = "INSTANT", value_parser = instant)]
    pub until: Option<Timestamp>,
    /// Only this dead letter id (repeatable).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
}

fn instant(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(text)
        .ok_or_else(|| format!("{text:?} is not an RFC 3339 instant (e.g. 2026-03-01T00:00:00Z)"))
}

impl FilterArgs {
    /// The filter; a `--topic` given by its default name also matches the
    /// topic as `settings` name it (prefixed or renamed).
    fn filter(&self, settings: Option<&Settings>) -> Filter {
        Filter {
            kinds: self.kinds.clone(),
            topics: match (&self.topic, settings) {
                (Some(t), Some(s)) => topic_names(s, t),
                (Some(t), None) => vec![t.clone()],
                (None, _) => Vec::new(),
            },
            account: self.account.clone(),
            since: self.since,
            until: self.until,
            ids: self.ids.clone(),
        }
    }
}

const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The dead letters of the source, and the settings when they came from
/// the DLQ topic.
fn load(source: &SourceArgs) -> anyhow::Result<(Vec<DlqRecord>, Option<Settings>)> {
    if let Some(file) = &source.file {
        return Ok((read_file(file)?, None));
    }
    let settings = Settings::load(source.config.as_deref())?;
    let read = read_topic(&settings, READ_TIMEOUT)?;
    for (at, why) in &read.unreadable {
        eprintln!("warning: {at} is not a dead letter: {why}");
    }
    Ok((read.records, Some(settings)))
}

pub fn run(args: DlqArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::List {
            source,
            filter,
            json,
        } => list(&source, &filter, json),
        DlqCommand::Show { id, source } => show(&source, &id),
        DlqCommand::Replay {
            config,
            filter,
            all,
            dry_run,
            log,
            again,
        } => {
            let settings = Settings::load(config.as_deref())?;
            let filter = filter.filter(Some(&settings));
            if filter.is_empty() && !all {
                anyhow::bail!(
                    "replay: choose the dead letters (--kind, --topic, --account, --since, --until, --id) or pass --all"
                );
            }
            replay(&settings, &filter, dry_run, &log, again)
        }
    }
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn list(source: &SourceArgs, filter: &FilterArgs, json: bool) -> anyhow::Result<ExitCode> {
    let catalog = Catalog::shared()?;
    let (records, settings) = load(source)?;
    let filter = filter.filter(settings.as_ref());
    let selected: Vec<&DlqRecord> = records.iter().filter(|r| filter.matches(r)).collect();
    if json {
        for r in &selected {
            println!("{}", r.to_json(catalog));
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20}  {:<22}  {:<36}  {:<16}  {:<36}  {:<6}  reason",
        "received_at", "kind", "source", "key", "id", "replay"
    );
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &selected {
        *by_kind.entry(r.error_kind.as_str()).or_default() += 1;
        println!(
            "{:<20}  {:<22}  {:<36}  {:<16}  {:<36}  {:<6}  {}",
            r.received_at.to_rfc3339(),
            r.error_kind,
            one_line(&r.source(), 200),
            one_line(r.key.as_deref().unwrap_or("-"), 16),
            r.event_id,
            if crate::dlq::refusal(r).is_some() {
                "never"
            } else {
                "yes"
            },
            one_line(&r.reason, 100)
        );
    }
    let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "{} of {} dead letters{}",
        selected.len(),
        records.len(),
        if counts.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts.join(", "))
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn show(source: &SourceArgs, id: &str) -> anyhow::Result<ExitCode> {
    let catalog = Catalog::shared()?;
    let (records, _) = load(source)?;
    match records.iter().find(|r| r.event_id == id) {
        Some(r) => {
            println!("{}", serde_json::to_string_pretty(&r.to_json(catalog))?);
            if let Some(why) = crate::dlq::refusal(r) {
                println!("not replayable: {why}");
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("no dead letter with id {id}");
            Ok(ExitCode::from(1))
        }
    }
}

fn replay(
    settings: &Settings,
    filter: &Filter,
    dry_run: bool,
    log: &Path,
    again: bool,
) -> anyhow::Result<ExitCode> {
    if settings.run.is_shadow() {
        // The source topics are the live inputs, which the live instance
        // reads too: a shadow's dead letters must not reach it.
        anyhow::bail!(
            "run.mode = \"shadow\": dlq replay would republish to the live input topics, which the live billstream reads as well; replay with the live instance's configuration (list and show work in shadow mode)"
        );
    }
    let read = read_topic(settings, READ_TIMEOUT)?;
    let selected: Vec<DlqRecord> = read
        .records
        .into_iter()
        .filter(|r| filter.matches(r))
        .collect();
    let replayed = read_log(log).map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
    let decisions = plan(&selected, &replayed, again);
    let republisher = if dry_run {
        None
    } else {
        Some(Republisher::connect(settings)?)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut done, mut refused, mut skipped) = (0, 0, 0);
    for (r, decision) in selected.iter().zip(&decisions) {
        let key = r.key.as_deref().unwrap_or("-");
        match decision {
            Decision::Refused(why) => {
                refused += 1;
                println!(
                    "refused  {} ({}, {}): {why}",
                    r.event_id,
                    r.error_kind,
                    r.source()
                );
            }
            Decision::AlreadyReplayed(at) => {
                skipped += 1;
                println!(
                    "skipped  {} ({}): replayed at {at} (the log {}; --again to replay)",
                    r.event_id,
                    r.error_kind,
                    log.display()
                );
            }
            Decision::Replay => match &republisher {
                None => {
                    done += 1;
                    println!(
                        "would replay  {} ({}, {}) → {} key {key}, {} bytes",
                        r.event_id,
                        r.error_kind,
                        r.source(),
                        r.source_topic,
                        r.payload.len()
                    );
                }
                Some(p) => {
                    let to = runtime.block_on(p.republish(r))?;
                    let at = Timestamp::from_datetime(chrono::Utc::now());
                    append_log(log, &log_entry(r, at, &r.source_topic, to))
                        .map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
                    done += 1;
                    println!(
                        "replayed  {} ({}, {}) → {}/{}/{} key {key}",
                        r.event_id,
                        r.error_kind,
                        r.source(),
                        r.source_topic,
                        to.0,
                        to.1
                    );
                }
            },
        }
    }
    println!(
        "{} {done}, refused {refused}, skipped {skipped} (of {} selected)",
        if dry_run { "would replay" } else { "replayed" },
        selected.len()
    );
    Ok(if refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
