//! `billstream reconcile`: the legacy biller's invoices against billstream's
//! (an output folder, or the configured invoices topic); exit 0 only when
//! every account and period matches within the tolerance.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use rust_decimal::Decimal;

use crate::config::Settings;
use crate::reconcile::{billstream, legacy, reconcile, table};

#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// The legacy biller's invoices: CSV (header account_id,period,currency,total[,metric,amount])
    /// or JSON lines ({"account_id","period","currency","total","lines":{name: amount}}).
    #[arg(long, value_name = "FILE")]
    pub legacy: PathBuf,
    /// billstream's invoices: an output folder of `simulate` or `demo`
    /// (its billing.invoices.v1.jsonl, or the shadow's
    /// shadow.billing.invoices.v1.jsonl), or `topic`: the invoices topic of
    /// the configuration (--config, BILLSTREAM__… variables; in shadow mode
    /// the shadow topic), read from start to end.
    #[arg(long, value_name = "DIR|topic")]
    pub against: String,
    /// Only this month (YYYY-MM: the month a billing period starts in).
    #[arg(long, value_name = "YYYY-MM")]
    pub period: Option<String>,
    /// Largest difference per invoice total and per line that still
    /// matches, in major units of the invoice's currency (e.g. 0.01).
    #[arg(long, value_name = "AMOUNT", default_value = "0")]
    pub tolerance: String,
    /// The report as one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Do not read the journal (no input events behind differing lines).
    #[arg(long)]
    pub no_lineage: bool,
    /// billstream's configuration (brokers, topic names, run mode), for
    /// --against topic.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let tolerance = Decimal::from_str(args.tolerance.trim())
        .ok()
        .filter(|t| !t.is_sign_negative())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--tolerance {:?}: give a decimal amount of 0 or more (e.g. 0.01)",
                args.tolerance
            )
        })?;
    if let Some(p) = &args.period {
        let ok = p.len() == 7
            && p.as_bytes()[4] == b'-'
            && p[..4].bytes().all(|b| b.is_ascii_digit())
            && p[5..].parse::<u32>().is_ok_and(|m| (1..=12).contains(&m));
        if !ok {
            anyhow::bail!("--period {p:?} is not a month written YYYY-MM");
        }
    }
    let legacy_invoices = legacy::read(&args.legacy)?;
    let ours = if args.against == "topic" {
        let settings = Settings::load(args.config.as_deref())?;
        billstream::read_topics(&settings, !args.no_lineage, Duration::from_secs(120))?
    } else {
        let dir = PathBuf::from(&args.against);
        if !dir.is_dir() {
            anyhow::bail!(
                "--against {:?} is neither a folder nor `topic`",
                args.against
            );
        }
        billstream::read_dir(&dir, !args.no_lineage)?
    };
    let report = reconcile(
        &legacy_invoices,
        &args.legacy.display().to_string(),
        &ours,
        args.period.as_deref(),
        tolerance,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(if report.all_match() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
