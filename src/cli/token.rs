//! `billstream token`: a development token for the read API and the
//! support console, signed with the configuration's HS256 secret.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::Settings;

/// The longest a development token may live: 30 days.
const MAX_HOURS: u32 = 720;

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The configuration `billstream api` is started with (e.g. the
    /// demo's <out>/console.toml); BILLSTREAM__<SECTION>__<KEY> variables
    /// override it, as for `api`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Hours until the token expires (1 to 720).
    #[arg(long, default_value_t = 12)]
    pub hours: u32,
    /// The token's subject (`sub`): who it is for.
    #[arg(long, default_value = "support")]
    pub subject: String,
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    if !(1..=MAX_HOURS).contains(&args.hours) {
        anyhow::bail!("--hours {} is not between 1 and {MAX_HOURS}", args.hours);
    }
    let settings = Settings::load(args.config.as_deref())?;
    let token =
        crate::api::auth::dev_token(&settings.api, &args.subject, u64::from(args.hours) * 3600)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
