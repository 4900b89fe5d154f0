//! Serving the API: bind, load the price book (the draft's running total
//! needs it) from the plans topic and follow it, or from `api.plans_file`
//! once (no Kafka then), answer until stopped.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rdkafka::message::Message;

use super::auth::Verifier;
use super::routes::{router, ApiState};
use crate::config::Settings;
use crate::contracts::redact::redact_text;
use crate::contracts::registry::WriterSchemas;
use crate::contracts::{parse_line, Catalog, Decoded, Decoder};
use crate::engine::plan::PlanBook;
use crate::engine::Engine;
use crate::source::kafka::PlanFollower;
use crate::store::StateStore;

/// How often new plan records are picked up.
const PLAN_POLL: Duration = Duration::from_secs(5);

fn apply_plans(
    engine: &RwLock<Engine>,
    decoder: &Decoder,
    records: &[rdkafka::message::OwnedMessage],
) {
    let mut engine = engine.write().unwrap_or_else(|e| e.into_inner());
    for m in records {
        let Some(raw) = m.payload() else { continue };
        match decoder.decode(raw) {
            Ok(Decoded::Plan(plan)) => {
                let id = plan.plan_id.clone();
                if let Err(e) = engine.plans.upsert(plan) {
                    tracing::warn!(
                        plan_id = %redact_text(&id),
                        error = %redact_text(&e.to_string()),
                        "API: plan refused"
                    );
                }
            }
            Ok(Decoded::Input(_)) => {}
            Err(e) => {
                tracing::warn!(
                    offset = m.offset(),
                    error = %redact_text(&e.to_string()),
                    "API: plan record does not decode"
                )
            }
        }
    }
}

/// Read the plans topic to its end into a shared engine, then keep
/// following it on a thread of its own (the Kafka client blocks).
async fn load_price_book(settings: &Settings) -> anyhow::Result<Arc<RwLock<Engine>>> {
    let engine = Arc::new(RwLock::new(Engine::new(
        settings.engine.clone(),
        PlanBook::new(),
    )));
    // Plan records framed with a Schema Registry's ids are read as `run`
    // reads them: this build's ids looked up, writer schemas learnt.
    let catalog = Catalog::shared()?;
    let (ids, mut writers) = WriterSchemas::for_settings(
        settings.kafka.schema_registry.as_ref(),
        catalog,
        &settings.topics,
    )
    .await
    .context("API: schema ids")?;
    let mut decoder = Decoder::with_ids(catalog, &ids)?;
    let s = settings.clone();
    let (follower, initial) =
        tokio::task::spawn_blocking(move || PlanFollower::read_to_end(&s, Duration::from_secs(60)))
            .await?
            .with_context(|| format!("API: reading the plans topic {}", settings.topics.plans))?;
    writers
        .learn(&mut decoder, initial.iter().filter_map(|m| m.payload()))
        .await
        .context("API: reading the plans topic")?;
    apply_plans(&engine, &decoder, &initial);
    tracing::info!(
        plans = engine.read().map(|e| e.plans.len()).unwrap_or(0),
        "API: price book loaded"
    );
    let shared = engine.clone();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("api-plans".into())
        .spawn(move || {
            // Records kept while the registry cannot be asked about their
            // schema ids, tried again on the next poll.
            let mut waiting = Vec::new();
            loop {
                std::thread::sleep(PLAN_POLL);
                match follower.poll_new() {
                    Ok(records) => waiting.extend(records),
                    Err(e) => tracing::warn!(error = %e, "API: following the plans topic"),
                }
                let payloads = waiting.iter().filter_map(|m| m.payload());
                if let Err(e) = runtime.block_on(writers.learn(&mut decoder, payloads)) {
                    tracing::warn!(error = %e, "API: plan records wait for the Schema Registry");
                    continue;
                }
                apply_plans(&shared, &decoder, &waiting);
                waiting.clear();
            }
        })?;
    Ok(engine)
}

/// The price book of `api.plans_file`, a JSON-lines file of plans (the
/// demo's `plans.jsonl`, `simulate --plans`'s format), read once: no Kafka,
/// no Schema Registry. A line that is not a plan, a plan the book refuses
/// or a file with no plan stops the start, naming the field and the line.
fn price_book_from_file(settings: &Settings, path: &Path) -> anyhow::Result<Engine> {
    let field = "config field `api.plans_file`";
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{field}: cannot read {}", path.display()))?;
    let mut engine = Engine::new(settings.engine.clone(), PlanBook::new());
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let at = || format!("{field}: {}:{}", path.display(), i + 1);
        match parse_line(raw) {
            Ok(Decoded::Plan(plan)) => engine
                .plans
                .upsert(plan)
                .map_err(|e| anyhow::anyhow!("{}: {}", at(), redact_text(&e.to_string())))?,
            Ok(Decoded::Input(_)) => anyhow::bail!("{}: expected a plan, found an event", at()),
            Err(e) => anyhow::bail!("{}: {}", at(), redact_text(&e.to_string())),
        }
    }
    if engine.plans.is_empty() {
        anyhow::bail!("{field}: {} holds no plan", path.display());
    }
    tracing::info!(
        plans = engine.plans.len(),
        file = %path.display(),
        "API: price book loaded from the plans file"
    );
    Ok(engine)
}

/// Serve the API of `settings.api` on `store` until `stop` resolves.
/// Fails before binding when the token key is missing (naming the field).
pub async fn serve<S: StateStore>(
    settings: &Settings,
    store: Arc<S>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let verifier = Arc::new(Verifier::from_settings(&settings.api)?);
    let listener = tokio::net::TcpListener::bind(settings.api.listen)
        .await
        .with_context(|| {
            format!(
                "config field `api.listen`: cannot bind {}",
                settings.api.listen
            )
        })?;
    let listening = listener
        .local_addr()
        .context("the API's listening address")?;
    let (engine, price_book) = match &settings.api.plans_file {
        Some(path) => (
            Arc::new(RwLock::new(price_book_from_file(settings, path)?)),
            format!("plans from {}", path.display()),
        ),
        None => (
            load_price_book(settings).await?,
            format!("plans from the topic {}", settings.topics.plans),
        ),
    };
    let api = router(
        Arc::new(ApiState {
            store: store.clone(),
            engine,
            report_max_accounts: settings.api.report_max_accounts,
        }),
        verifier.clone(),
    );
    let dead_letters = match &settings.api.dead_letter_file {
        Some(file) => super::console::DeadLetterSource::File(file.clone()),
        None => super::console::DeadLetterSource::Topic(Box::new(settings.clone())),
    };
    let console = super::console::Console::new(
        api.clone(),
        verifier,
        store,
        dead_letters,
        settings.api.report_max_accounts,
    );
    let app = api.merge(super::console::router(Arc::new(console)));
    tracing::info!(listen = %listening, "API: serving");
    eprintln!(
        "billstream api: listening on http://{listening} (support console: http://{listening}/console; {price_book})"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("API server")
}

/// For `billstream run --api`: check the API's settings now (so a bad
/// key stops the start), then serve next to the processor on the same
/// store until the process ends.
pub fn spawn_with_processor<S: StateStore>(
    settings: &Settings,
    store: Arc<S>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    Verifier::from_settings(&settings.api)?;
    let settings = settings.clone();
    Ok(tokio::spawn(async move {
        if let Err(e) = serve(&settings, store, std::future::pending()).await {
            tracing::error!(error = %format!("{e:#}"), "API stopped");
            eprintln!("billstream run: API stopped: {e:#}");
        }
    }))
}
