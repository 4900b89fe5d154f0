//! `billstream preview`: the upcoming invoice of accounts driven by
//! `simulate` inputs.
//!
//! The same files and clock as `simulate` (the same code runs them), then,
//! at `--until`, `Engine::preview` for each account: the invoice its
//! current period will be issued as if nothing more arrives, worked out by
//! the engine's own close on a copy of the account's state (nothing is
//! written or published for it). The invoices go to
//! `<out>/upcoming-invoices.jsonl` in the read API's JSON shape (`GET
//! /v1/accounts/{id}/upcoming-invoice`) and are summed up on stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::simulate::{self, SimulateArgs};
use crate::api::routes::upcoming_json;

/// What the account's current period would be invoiced as if it closed
/// with no further input: fees, usage lines, discounts, tax, credit to be
/// applied (paid and promotional) and the amount due.
#[derive(Args, Debug)]
#[command(after_long_help = "\
How it works: the inputs are run exactly as `billstream simulate` runs them \
(same files, same processing clock, every timer up to --until fired, the \
same outputs written to --out). Then, at --until (\"now\"), each account's \
open period is closed on a copy of its state by the engine's own close: \
the lines are those the real invoice will have (usage of the period, late \
usage and debit adjustments waiting, the next period's recurring fee in \
advance, the coupon's discount line), tax on the subtotal after the \
discount, and credit drawn grant by grant as it will be at the period's \
close (a grant that expires before then is not counted). If no further \
input arrives, the invoice issued at the close equals this preview. \
Nothing of the preview is stored or published. An account that has issued \
its final invoice has no upcoming invoice and is left out.

Output: one JSON line per account in <out>/upcoming-invoices.jsonl (the \
shape of GET /v1/accounts/{id}/upcoming-invoice), and a table on stdout.

Example:
  billstream preview --plans plans.jsonl --accounts accounts.jsonl \\
    --events usage.jsonl --until 2026-03-20T00:00:00Z --out preview-out")]
pub struct PreviewArgs {
    #[command(flatten)]
    pub simulate: SimulateArgs,
    /// Only these accounts (repeatable; default: every account).
    #[arg(long = "account", value_name = "ACCOUNT_ID")]
    pub only: Vec<String>,
}

pub fn run(args: PreviewArgs) -> anyhow::Result<ExitCode> {
    let out = args.simulate.out.clone();
    let only = args.only;
    let path: PathBuf = out.join("upcoming-invoices.jsonl");
    simulate::run_then(args.simulate, false, |p, now| {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        );
        let mut accounts: Vec<_> = p
            .accounts()
            .filter(|st| only.is_empty() || only.iter().any(|a| **a == *st.account_id))
            .collect();
        accounts.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        for name in &only {
            if !accounts.iter().any(|st| *st.account_id == **name) {
                eprintln!("{name}: no such account in the inputs");
            }
        }
        println!(
            "{:<20} {:<18} {:>12} {:>12} {:>10} {:>12} {:>12} {:>12}",
            "account",
            "invoice",
            "subtotal",
            "discount",
            "tax",
            "credit paid",
            "credit promo",
            "amount due"
        );
        for st in accounts {
            let Some(inv) = p.engine().preview(st, now) else {
                continue;
            };
            let json = upcoming_json(st, &inv, now);
            writeln!(file, "{json}")?;
            let field = |k: &str| json[k].as_str().unwrap_or("").to_string();
            println!(
                "{:<20} {:<18} {:>12} {:>12} {:>10} {:>12} {:>12} {:>12} {}",
                st.account_id.as_ref(),
                inv.invoice_id,
                field("subtotal"),
                field("discount"),
                field("tax"),
                field("credit_applied_paid"),
                field("credit_applied_promotional"),
                field("amount_due"),
                inv.currency
            );
        }
        file.flush()?;
        println!();
        println!("Upcoming invoices written to {}", path.display());
        Ok(())
    })
}
