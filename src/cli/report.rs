//! `billstream report providers|settlement`: the reports of `report` on
//! the journal of an output folder or of the journal topic; exit 0 when
//! every figure reconciles with the journal, 1 when one does not (the
//! report is printed anyway, the differences said), 2 on bad input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::Settings;
use crate::report::{journal, providers, render, settlement, Window};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Per payment provider, UTC day and currency: charges requested,
    /// succeeded, failed by reason, refunds, and their amounts.
    Providers,
    /// Per UTC month and currency: invoiced, credit applied, collected,
    /// outstanding, overdue, and credit held (paid and promotional).
    Settlement,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Which report.
    #[arg(value_enum)]
    pub which: Which,
    /// The journal: an output folder of `simulate` or `demo` (its
    /// billing.journal.v1.jsonl, or a shadow's), or `topic`: the journal
    /// topic of the configuration (--config, BILLSTREAM__… variables),
    /// read from start to end.
    #[arg(long, value_name = "DIR|topic")]
    pub from: String,
    /// Only this UTC month (YYYY-MM); the settlement report still opens it
    /// with the balances the months before left.
    #[arg(long, value_name = "YYYY-MM", conflicts_with = "day")]
    pub month: Option<String>,
    /// Only this UTC day (YYYY-MM-DD); the settlement report shows its month.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub day: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// billstream's configuration (brokers, topic names), for --from topic.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let window = Window::parse(args.month.as_deref(), args.day.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    let (journal, source) = if args.from == "topic" {
        let settings = Settings::load(args.config.as_deref())?;
        journal::read_topic_journal(&settings, Duration::from_secs(120))?
    } else {
        let dir = PathBuf::from(&args.from);
        if !dir.is_dir() {
            anyhow::bail!("--from {:?} is neither a folder nor `topic`", args.from);
        }
        journal::read_dir(&dir)?
    };
    let (text, checks) = match args.which {
        Which::Providers => {
            let r = providers(&journal, &window)?;
            let text = match args.format {
                Format::Table => render::providers_table(&r, &source),
                Format::Csv => render::providers_csv(&r),
                Format::Json => format!(
                    "{}\n",
                    serde_json::to_string_pretty(&render::providers_json(&r, &source))?
                ),
            };
            (text, r.checks)
        }
        Which::Settlement => {
            let r = settlement(&journal, &window)?;
            let text = match args.format {
                Format::Table => render::settlement_table(&r, &source),
                Format::Csv => render::settlement_csv(&r),
                Format::Json => format!(
                    "{}\n",
                    serde_json::to_string_pretty(&render::settlement_json(&r, &source))?
                ),
            };
            (text, r.checks)
        }
    };
    print!("{text}");
    let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for c in failed {
        eprintln!(
            "does not reconcile: {}: report {}, journal {}",
            c.what, c.report, c.journal
        );
    }
    Ok(ExitCode::from(1))
}
