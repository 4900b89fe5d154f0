//! The in-process rig shared by the test areas that drive the real
//! `Processor` without Kafka: an embedded store, partition 0 claimed and
//! assigned, and the engine's price book.

use std::path::Path;
use std::sync::Arc;

use billstream::contracts::{parse_line, Decoded};
use billstream::engine::time::Timestamp;
use billstream::engine::{Engine, EngineConfig};
use billstream::runtime::Processor;
use billstream::store::{EmbeddedStore, StateStore};

/// Plan `p`: EUR, a fee of 10.00 a month and 0.5 per unit of `m`.
pub(crate) const PLAN: &str = r#"{"plan_id":"p","currency":"EUR","recurring_fee":"10.00","minimum_spend":"0","charges":[{"metric":"m","model":"per_unit","unit_price":"0.5"}]}"#;

/// An engine for the `prod` environment with an empty price book.
pub(crate) fn engine() -> Engine {
    Engine::new(EngineConfig::new("prod"), Default::default())
}

/// An engine for the `prod` environment with plan `p` in its price book.
pub(crate) fn engine_with_plan_p() -> Engine {
    let mut engine = engine();
    match parse_line(PLAN).unwrap() {
        Decoded::Plan(p) => engine.plans.upsert(p).unwrap(),
        _ => unreachable!(),
    }
    engine
}

/// A processor running `engine` on `store`, owning partition 0 (from
/// `_now`: callers say when; taking a partition over reads nothing as of
/// an instant).
pub(crate) async fn processor_on(
    engine: Engine,
    store: Arc<EmbeddedStore>,
    _now: Timestamp,
) -> Processor<EmbeddedStore> {
    let epoch = store.claim_partition(0, "test").await.unwrap();
    let mut p = Processor::new(engine, store);
    p.assign_partition(0, epoch).await.unwrap();
    p
}

/// A processor running `engine` on the embedded store in `dir`, owning
/// partition 0 from `now`.
pub(crate) async fn processor_in(
    dir: &Path,
    engine: Engine,
    now: Timestamp,
) -> Processor<EmbeddedStore> {
    let store = Arc::new(EmbeddedStore::open(dir).unwrap());
    processor_on(engine, store, now).await
}
