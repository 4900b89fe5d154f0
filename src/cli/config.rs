//! `billstream config`: validate the configuration and print what is in effect.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::Settings;

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// TOML file layered over the built-in defaults; BILLSTREAM__<SECTION>__<KEY>
    /// environment variables override both.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match Settings::load(args.config.as_deref()) {
        Ok(settings) => {
            println!("{settings:#?}");
            println!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
