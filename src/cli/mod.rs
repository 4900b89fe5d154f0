//! Command-line entry points; each subcommand wires edges to the runtime.

mod api;
mod config;
mod demo;
mod demo_console;
mod dlq;
mod gateway;
mod migrate;
mod preview;
mod reconcile;
mod report;
mod run;
mod schemas;
mod scratch;
mod simulate;
mod summary;
mod token;
pub mod topics;

use clap::{Parser, Subcommand};

/// billstream — usage-based billing as a stream processor.
///
/// Folds usage and payment events, per account and in order, into billing
/// state; issues invoices at period end, settles them from credit or by
/// charge requests, chases failed payments, and publishes invoice,
/// notification, journal and rollup events. Money is exact (integer minor
/// units, half-to-even rounding once per line).
#[derive(Parser, Debug)]
#[command(name = "billstream", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulate ~1,000 accounts over 3 months through the real engine and
    /// the embedded store, then print a summary and write every output
    /// topic as JSON lines. Needs nothing else running.
    Demo(demo::DemoArgs),
    /// Run the engine on your own JSON-lines files (plans, accounts,
    /// usage and payment events) and write the outputs as JSON lines: a
    /// pricing simulation ("what would these customers pay on this plan").
    Simulate(simulate::SimulateArgs),
    /// The invoice each account would get if its period closed now with no
    /// further input: fees, usage lines, discounts, tax, credit to be
    /// applied (paid and promotional) and the amount due, on `simulate`
    /// inputs; worked out by the engine's own close on a copy of the state.
    Preview(preview::PreviewArgs),
    /// List and validate the Avro schemas in schemas/ and the id manifest;
    /// `schemas register` registers them in the configured Schema Registry.
    Schemas(schemas::SchemasArgs),
    /// Run the processor: consume the input topics in a consumer group, fold,
    /// persist, publish the outputs, commit. Stops cleanly on SIGINT/SIGTERM.
    /// With kafka.schema_registry_url, schema ids come from the registry
    /// (run `billstream schemas register` first).
    Run(run::RunArgs),
    /// Create the ScyllaDB keyspace and tables (store.kind = "scylla") if
    /// missing; idempotent. --print shows the CQL instead.
    Migrate(migrate::MigrateArgs),
    /// Manage the Kafka topics of the configuration.
    Topics(topics::TopicsArgs),
    /// Validate the configuration (defaults, --config file, BILLSTREAM__…
    /// variables) and print the settings in effect.
    Config(config::ConfigArgs),
    /// Serve the read-only HTTP API (accounts, invoices, journal, state as
    /// of an instant, line lineage) on the configured store; bearer JWT
    /// with the billing:read role. With the embedded store, while
    /// `billstream run` holds it, use `billstream run --api` instead.
    ///
    /// The price book comes from the plans topic, or with api.plans_file
    /// (a JSON-lines file of plans) from that file, and then no Kafka or
    /// Schema Registry is needed: `billstream api --config
    /// out/demo/console.toml` serves a demo's output and its support
    /// console (the demo prints the command and a token).
    Api(api::ApiArgs),
    /// Print a development token for `billstream api` and its console:
    /// a JWT signed with the configuration's HS256 secret (api.jwt.secret)
    /// carrying the billing:read role, valid for --hours. For a laptop or
    /// the demo (whose output folder has a console.toml with its own
    /// secret); in production your identity provider issues the tokens.
    Token(token::TokenArgs),
    /// Payment-gateway emulator: answer the charge requests on
    /// billing.charges.v1 with results on billing.payments.v1, as several
    /// payment providers would, from a seeded configuration file.
    ///
    /// The provider is named in the request's token reference:
    /// tok_<provider>_<rest> (provider: a-z, 0-9, '-'); a segment
    /// exp<YYYYMM> of <rest> makes the token expire after that month (UTC),
    /// e.g. tok_acme_exp202604_c42. Per provider the file sets the success
    /// rate, weighted decline codes (retryable or not), latency, a share of
    /// results published twice and a share held back so later ones overtake
    /// them (config/gateway.toml documents every field).
    ///
    /// Idempotent by charge_id without state: a result is a pure function of
    /// the seed, the provider's settings and the charge (charge_id,
    /// attempt), dated request time + latency, with an event id derived from
    /// the charge_id, so a redelivered request, a restart or a deliberate
    /// duplicate publishes the same bytes again, which billstream drops as a
    /// duplicate. Offsets are committed once a request's results are
    /// acknowledged. A request that cannot be answered (undecodable, bad
    /// field, key not its account, unknown provider) goes to the dead-letter
    /// topic with its kind and reason. Bad configuration stops it at start,
    /// naming the field. Stops cleanly on SIGINT/SIGTERM after publishing
    /// what is pending.
    Gateway(gateway::GatewayArgs),
    /// Dead letters: list and show them (from the DLQ topic, or the
    /// embedded mode's billing.dlq.v1.jsonl) filtered by kind, source
    /// topic, account, time and id; replay chosen ones to their source
    /// topics once the cause is fixed (--dry-run first), recorded in a
    /// replay log. A card-number rejection is never replayed.
    Dlq(dlq::DlqArgs),
    /// Compare a legacy biller's invoices (CSV or JSON lines) with
    /// billstream's issued invoices (an output folder, or the invoices
    /// topic; a shadow's, typically), per account and period, to the minor
    /// unit: matches, mismatches with the differing lines and the input
    /// events behind billstream's, invoices only one side has, and totals.
    /// Exit 0 only when everything matches within --tolerance (default 0),
    /// 1 otherwise, 2 on bad input (naming the line and field).
    Reconcile(reconcile::ReconcileArgs),
    /// Reports for accounting, from the journal (an output folder, or the
    /// journal topic): `providers` per payment provider and UTC day
    /// (charges requested, succeeded, failed by reason, refunded, amounts
    /// per currency); `settlement` per UTC month (invoiced, credit applied
    /// paid and promotional, collected, outstanding, overdue, credit held
    /// paid and promotional). As a table, CSV or JSON. Every figure is
    /// checked against the journal; exit 0 when all reconcile, 1 when one
    /// does not, 2 on bad input.
    Report(report::ReportArgs),
}

/// Logs go to stderr: readable in a terminal, JSON lines otherwise (or
/// when BILLSTREAM_LOG_FORMAT=json); the level filter comes from
/// BILLSTREAM_LOG (e.g. `info,rdkafka=debug`), default `warn`.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BILLSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let json = match std::env::var("BILLSTREAM_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second subscriber (never in the binary) is not an error worth a stop.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Preview(args) => preview::run(args),
        Command::Schemas(args) => schemas::run(args),
        Command::Config(args) => config::run(args),
        Command::Run(args) => run::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Topics(args) => topics::run(args),
        Command::Api(args) => api::run(args),
        Command::Token(args) => token::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Dlq(args) => dlq::run(args),
        Command::Reconcile(args) => reconcile::run(args),
        Command::Report(args) => report::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A current-thread tokio runtime for the commands that drive the
/// processor in one thread (demo, simulate).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
