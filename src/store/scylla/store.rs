//! `ScyllaStore`: the `StateStore` on ScyllaDB, for production.
//!
//! Per commit: one read of the ownership epoch per partition touched (a
//! stale writer gets `Fenced` before it writes anything), then per account
//! its journal rows, dedup ids, invoice documents and new index rows, then
//! its row of `accounts` alone, the commit point, then the deletes of index
//! rows it superseded — every batch of one partition and bounded
//! (`plan::split`), all stamped so that a newer epoch always wins
//! (`stamp.rs`). Accounts go in parallel,
//! the writes of one account in order. What the store knows of each
//! account's row is cached, so the hot path reads nothing but
//! the epochs. ARCHITECTURE.md, "ScyllaDB store: fencing and guarantees",
//! explains why this holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::frame::types::{Consistency, SerialConsistency};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

use super::plan::{
    self, cql_bigint, cql_int, journal_block, plan_write, timer_bucket, AccountMeta, WritePlan,
    JOURNAL_BLOCK,
};
use super::rows::{self, AccountRow, DedupRow, JournalRow};
use super::schema::{self, Backend};
use super::stamp::{FencedRange, MAX_EPOCH};
use super::statements::Statements;
use crate::config::ScyllaSettings;
use crate::store::{
    AccountWrite, DedupRecord, InvoiceRecord, JournalRecord, LoadedAccount, Micros,
    SnapshotVersion, StateStore, StoreError, StoreOp, StoreStats, StoredAccount,
};

/// Account writes of one commit in flight at once.
const CONCURRENCY: usize = 64;
/// Timeout of one request (the driver retries idempotent ones).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a claim that keeps losing to concurrent claims.
const CLAIM_ATTEMPTS: u32 = 10;

/// What the store remembers between calls (never held across an await).
#[derive(Debug, Default)]
struct Known {
    /// Each account's row as last read or written by this store.
    accounts: HashMap<String, AccountMeta>,
    /// Stamps of writes whose outcome is unknown, per account: the next
    /// write must stamp above them and fence them off.
    floors: HashMap<String, i64>,
    /// (partition, bucket) rows known to exist in `timer_buckets`.
    buckets: HashSet<(u32, i64)>,
    /// Per partition, the lowest timer bucket that may hold a timer (the
    /// ones below were found empty by `due_timers`).
    timer_floor: HashMap<u32, i64>,
}

/// A `StateStore` on a ScyllaDB cluster.
pub struct ScyllaStore {
    session: Session,
    keyspace: String,
    statements: Statements,
    dedup_ttl_secs: i32,
    known: Mutex<Known>,
    stats: StoreStats,
    /// Fault injection for tests (`pause_after_fence_check`), in ms: 0 in
    /// production.
    pause_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

fn backend<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Backend(format!("scylla store: {context}: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A session with billstream's request settings: LOCAL_QUORUM, LWT at
/// SERIAL, token-aware routing within `local_datacenter` if set.
pub async fn connect_session(settings: &ScyllaSettings) -> Result<Session, StoreError> {
    let profile = request_profile(settings);
    let mut builder = SessionBuilder::new()
        .known_nodes(&settings.nodes)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(auth) = &settings.auth {
        builder = builder.user(auth.username.clone(), auth.password.clone());
    }
    if let Some(ca) = &settings.tls_ca_file {
        builder = builder.tls_context(Some(tls_context(ca)?));
    }
    builder.build().await.map_err(|e| {
        let text = e.to_string();
        let hint = if !text.to_ascii_lowercase().contains("authenticat") {
            ""
        } else if settings.auth.is_some() {
            "; the server refused store.username / store.password"
        } else {
            "; the server requires authentication: set store.username and store.password"
        };
        StoreError::Backend(format!(
            "scylla store: cannot connect to {} ({text}){hint}",
            settings.nodes.join(", ")
        ))
    })
}

/// TLS that verifies the nodes' certificate chains against the CA in `ca`
/// (PEM). (The driver connects to node addresses, not names, so the chain
/// is what is checked.)
#[cfg(feature = "tls")]
fn tls_context(
    ca: &std::path::Path,
) -> Result<scylla::client::session::OpenSsl010Config, StoreError> {
    use openssl::ssl::{SslConnector, SslMethod};
    let refused = |e: openssl::error::ErrorStack| {
        StoreError::Backend(format!(
            "scylla store: store.tls_ca_file {}: {e}",
            ca.display()
        ))
    };
    let mut connector = SslConnector::builder(SslMethod::tls_client()).map_err(refused)?;
    connector.set_ca_file(ca).map_err(refused)?;
    Ok(scylla::client::session::OpenSsl010Config::new(connector))
}

/// Without the `tls` feature the configuration refuses `store.tls_ca_file`.
#[cfg(not(feature = "tls"))]
fn tls_context(ca: &std::path::Path) -> Result<scylla::client::session::TlsContext, StoreError> {
    Err(StoreError::Backend(format!(
        "scylla store: store.tls_ca_file {} needs a build with the `tls` feature",
        ca.display()
    )))
}

/// The default execution profile of the store's session.
fn request_profile(settings: &ScyllaSettings) -> ExecutionProfile {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &settings.local_datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        // SERIAL, not LOCAL_SERIAL: LOCAL_SERIAL runs Paxos among one
        // datacenter's replicas only, so two instances coordinating in two
        // datacenters could each be granted the same epoch.
        .serial_consistency(Some(SerialConsistency::Serial))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .load_balancing_policy(policy.build())
        .build()
}

/// What `migrate` found and did.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The server, as it answered.
    pub backend: Backend,
    /// The statements run, in order.
    pub statements: Vec<String>,
}

/// Which server this is: ScyllaDB has `system.versions`, Cassandra does not
/// (it answers Invalid, "table does not exist").
pub async fn detect_backend(session: &Session) -> Result<Backend, StoreError> {
    let context = "detect the CQL server (system.versions, system.local)";
    match session
        .query_unpaged(
            "SELECT version FROM system.versions WHERE key = 'local'",
            (),
        )
        .await
    {
        Ok(result) => {
            let version = result
                .into_rows_result()
                .map_err(backend(context))?
                .maybe_first_row::<(Option<String>,)>()
                .map_err(backend(context))?
                .and_then(|(v,)| v)
                .unwrap_or_default();
            Ok(Backend::Scylla { version })
        }
        Err(ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid,
            _,
        ))) => {
            let release = session
                .query_unpaged(
                    "SELECT release_version FROM system.local WHERE key = 'local'",
                    (),
                )
                .await
                .map_err(backend(context))?
                .into_rows_result()
                .map_err(backend(context))?
                .maybe_first_row::<(Option<String>,)>()
                .map_err(backend(context))?
                .and_then(|(v,)| v)
                .unwrap_or_default();
            Ok(Backend::Cassandra { release })
        }
        Err(e) => Err(backend(context)(e)),
    }
}

/// Creates the keyspace and tables of `schemas/cql/billstream.cql` if
/// missing (with the keyspace option the server needs, `schema::Backend`),
/// and adds the columns an existing table lacks (a keyspace made by an
/// older billstream) (`billstream migrate`). A column whose type differs
/// from the schema's is refused before anything is altered.
pub async fn migrate(settings: &ScyllaSettings) -> Result<Migration, StoreError> {
    let session = connect_session(settings).await?;
    let server = detect_backend(&session).await?;
    tracing::info!(server = %server, tablets_disabled = server.tablets_by_default(&settings.replication), "migrate");
    let cql = schema::render(&settings.keyspace, &settings.replication, Some(&server));
    let mut run = Vec::new();
    for statement in schema::statements(&cql) {
        run_schema_statement(&session, &statement).await?;
        run.push(statement);
    }
    session
        .await_schema_agreement()
        .await
        .map_err(backend("migrate: schema agreement"))?;
    // CREATE TABLE IF NOT EXISTS leaves an existing table as it is.
    let mut alters = Vec::new();
    for table in schema::table_columns(&cql) {
        let existing = server_columns(&session, &settings.keyspace, &table.table).await?;
        let missing = schema::missing_columns(&settings.keyspace, &table, &existing)
            .map_err(|e| StoreError::Backend(format!("scylla store: migrate: {e}")))?;
        alters.extend(missing);
    }
    for alter in alters {
        run_schema_statement(&session, &alter).await?;
        run.push(alter);
    }
    session
        .await_schema_agreement()
        .await
        .map_err(backend("migrate: schema agreement"))?;
    Ok(Migration {
        backend: server,
        statements: run,
    })
}

async fn run_schema_statement(session: &Session, statement: &str) -> Result<(), StoreError> {
    let first_line = statement.lines().next().unwrap_or_default();
    tracing::info!(statement = first_line, "migrate");
    session
        .query_unpaged(statement, ())
        .await
        .map_err(|e| StoreError::Backend(format!("scylla store: migrate: {first_line}: {e}")))?;
    Ok(())
}

/// (name, type) of each column of `keyspace.table` as the server lists it.
async fn server_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    // Unquoted CQL identifiers are stored in lower case.
    session
        .query_iter(
            "SELECT column_name, type FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace.to_ascii_lowercase(), table.to_ascii_lowercase()),
        )
        .await
        .map_err(backend("migrate: read system_schema.columns"))?
        .rows_stream::<(String, String)>()
        .map_err(backend("migrate: read system_schema.columns"))?
        .try_collect()
        .await
        .map_err(backend("migrate: read system_schema.columns"))
}

impl ScyllaStore {
    /// Connects and prepares every statement; the keyspace and tables must
    /// exist (`billstream migrate`).
    pub async fn connect(settings: &ScyllaSettings) -> Result<ScyllaStore, StoreError> {
        let session = connect_session(settings).await?;
        let statements = Statements::prepare(&session, &settings.keyspace).await?;
        let dedup_ttl_secs = i32::try_from(settings.dedup_ttl.as_secs()).map_err(|_| {
            StoreError::Backend("scylla store: dedup TTL does not fit a CQL int".into())
        })?;
        tracing::info!(keyspace = %settings.keyspace, nodes = ?settings.nodes, "scylla store connected");
        Ok(ScyllaStore {
            session,
            keyspace: settings.keyspace.clone(),
            statements,
            dedup_ttl_secs,
            known: Mutex::new(Known::default()),
            stats: StoreStats::new(),
            pause_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        // The data is a cache: after a panic elsewhere it is still usable.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one call of `op`, and its failure if it failed.
    fn counted<T>(&self, op: StoreOp, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.stats.record(op);
        if result.is_err() {
            self.stats.record_error(op);
        }
        result
    }

    /// All rows of a paged read.
    async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        context: &'static str,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(backend(context))?
            .rows_stream::<R>()
            .map_err(backend(context))?
            .try_collect()
            .await
            .map_err(backend(context))
    }

    /// The current ownership epoch of `partition` (0 if never claimed).
    async fn owner_epoch(&self, partition: u32, serial: bool) -> Result<u64, StoreError> {
        let statement = if serial {
            &self.statements.select_owner_serial
        } else {
            &self.statements.select_owner
        };
        let epochs: Vec<(Option<i64>,)> = self
            .rows(
                statement,
                (cql_int(partition, "partition")?,),
                "read partition owner",
            )
            .await?;
        let epoch = epochs.first().and_then(|(e,)| *e).unwrap_or(0);
        u64::try_from(epoch).map_err(|_| {
            StoreError::Backend(format!(
                "scylla store: partition {partition} has a negative epoch"
            ))
        })
    }

    /// `Fenced` if `epoch` is older than the partition's latest claim.
    async fn check_epoch(&self, partition: u32, epoch: u64) -> Result<(), StoreError> {
        let current = self.owner_epoch(partition, false).await?;
        if epoch < current {
            return Err(StoreError::Fenced {
                partition,
                current,
                attempted: epoch,
            });
        }
        Ok(())
    }

    /// Reads an account's row (and refreshes the cache).
    async fn read_account(
        &self,
        account_id: &str,
    ) -> Result<Option<(AccountMeta, Vec<u8>)>, StoreError> {
        let found: Vec<AccountRow> = self
            .rows(
                &self.statements.select_account,
                (account_id,),
                "read account",
            )
            .await?;
        let account = match found.into_iter().next() {
            Some(row) => rows::account_from_row(row).map_err(|e| {
                StoreError::Backend(format!("scylla store: account {account_id}: {e}"))
            })?,
            None => None,
        };
        let mut meta = account
            .as_ref()
            .map_or_else(AccountMeta::default, |(m, _)| m.clone());
        let mut known = self.known();
        if let Some(&floor) = known.floors.get(account_id) {
            if floor > meta.snapshot_stamp {
                meta.last_stamp = meta.last_stamp.max(floor);
                meta.unsure = true;
            }
        }
        if meta.exists || meta.unsure {
            known.accounts.insert(account_id.to_owned(), meta.clone());
        } else {
            // An account never written is not remembered (its meta is the
            // default, read again by a commit): a flood of records for ids
            // that were never opened leaves nothing behind.
            known.accounts.remove(account_id);
        }
        drop(known);
        Ok(account.map(|(_, snapshot)| (meta, snapshot)))
    }

    /// What the store knows of an account, read if not cached.
    async fn meta(&self, account_id: &str) -> Result<AccountMeta, StoreError> {
        if let Some(meta) = self.known().accounts.get(account_id) {
            return Ok(meta.clone());
        }
        self.read_account(account_id).await?;
        Ok(self
            .known()
            .accounts
            .get(account_id)
            .cloned()
            .unwrap_or_default())
    }

    /// `(partition, epoch)`, for commits reading several at once.
    async fn owner_epoch_of(&self, partition: u32) -> Result<(u32, u64), StoreError> {
        Ok((partition, self.owner_epoch(partition, false).await?))
    }

    /// Sends one account's plans, in order, each as its batches; returns
    /// the account id with the outcome.
    async fn send_account<'s>(
        &self,
        account_id: &'s str,
        plans: &[&WritePlan<'_>],
    ) -> (&'s str, Result<(), StoreError>) {
        for plan in plans {
            if let Err(e) = self.send_plan(plan).await {
                return (account_id, Err(e));
            }
        }
        (account_id, Ok(()))
    }

    /// One plan's batches (`plan::split`): the ones ahead of the commit
    /// point together (nothing of them counts until it lands), then the
    /// account's row, then the deletes it superseded.
    async fn send_plan(&self, plan: &WritePlan<'_>) -> Result<(), StoreError> {
        let batches = plan::split(plan, plan::BATCH_BYTES);
        let ahead: Vec<_> = batches
            .ahead
            .iter()
            .map(|b| self.send_batch(plan, b))
            .collect();
        futures::future::try_join_all(ahead).await?;
        self.send_batch(plan, &batches.commit).await?;
        let after: Vec<_> = batches
            .after
            .iter()
            .map(|b| self.send_batch(plan, b))
            .collect();
        futures::future::try_join_all(after).await?;
        Ok(())
    }

    /// One UNLOGGED batch, all of one partition (so atomic and isolated,
    /// and under no batch size limit of the database).
    async fn send_batch(
        &self,
        plan: &WritePlan<'_>,
        batch: &plan::BatchPlan,
    ) -> Result<(), StoreError> {
        let mut cql = Batch::new(BatchType::Unlogged);
        cql.set_is_idempotent(true);
        let mut values = Vec::with_capacity(batch.mutations.len());
        for &i in &batch.mutations {
            let m = &plan.mutations[i];
            cql.append_statement(self.statements.for_mutation(m).clone());
            values.push(m);
        }
        self.session
            .batch(&cql, values)
            .await
            .map_err(backend("write account batch"))?;
        Ok(())
    }

    async fn commit_inner(&self, writes: &[AccountWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        // 1. Fencing: every partition's current epoch, before any write.
        let epochs = self.check_fences(writes).await?;
        let pause = self.pause_ms.load(std::sync::atomic::Ordering::Relaxed);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }

        // 2. What is known of each account (read the ones not cached).
        let ids: BTreeSet<&str> = writes.iter().map(|w| w.account_id.as_str()).collect();
        let missing: Vec<&str> = {
            let known = self.known();
            ids.iter()
                .copied()
                .filter(|id| !known.accounts.contains_key(*id))
                .collect()
        };
        let reads: Vec<_> = missing
            .into_iter()
            .map(|id| self.read_account(id))
            .collect();
        stream::iter(reads)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;

        // 3. Plan every write (all checks pass before anything is sent).
        let now = now_ms();
        let mut metas: HashMap<&str, AccountMeta> = {
            let known = self.known();
            ids.iter()
                .map(|id| (*id, known.accounts.get(*id).cloned().unwrap_or_default()))
                .collect()
        };
        let known_buckets = self.known().buckets.clone();
        let mut planned_buckets = HashSet::new();
        let mut plans = Vec::with_capacity(writes.len());
        for w in writes {
            let prev = &metas[w.account_id.as_str()];
            let plan = plan_write(prev, w, self.dedup_ttl_secs, now, |p, b| {
                known_buckets.contains(&(p, b)) || planned_buckets.contains(&(p, b))
            })?;
            if let Some(bucket) = plan.timer_bucket {
                planned_buckets.insert(bucket);
            }
            metas.insert(w.account_id.as_str(), plan.after.clone());
            plans.push(plan);
        }

        // 4. Send: accounts in parallel, one account's plans in order.
        let started = std::time::Instant::now();
        let mut per_account: BTreeMap<&str, Vec<&WritePlan<'_>>> = BTreeMap::new();
        for (w, plan) in writes.iter().zip(&plans) {
            per_account
                .entry(w.account_id.as_str())
                .or_default()
                .push(plan);
        }
        let sends: Vec<_> = per_account
            .iter()
            .map(|(id, account_plans)| self.send_account(id, account_plans))
            .collect();
        let outcomes: Vec<(&str, Result<(), StoreError>)> = stream::iter(sends)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;

        // 5. Remember what landed; forget what may or may not have.
        let mut first_error = None;
        {
            let mut known = self.known();
            for (id, outcome) in outcomes {
                let account_plans = &per_account[id];
                match outcome {
                    Ok(()) => {
                        let after = account_plans
                            .last()
                            .expect("one plan at least")
                            .after
                            .clone();
                        known.floors.remove(id);
                        known.accounts.insert(id.to_owned(), after);
                        for plan in account_plans {
                            if let Some((p, bucket)) = plan.timer_bucket {
                                known.buckets.insert((p, bucket));
                                let floor = known.timer_floor.entry(p).or_insert(bucket);
                                *floor = (*floor).min(bucket);
                            }
                        }
                    }
                    Err(e) => {
                        let attempted = account_plans.last().map_or(0, |p| p.after.last_stamp);
                        known.accounts.remove(id);
                        let floor = known.floors.entry(id.to_owned()).or_insert(attempted);
                        *floor = (*floor).max(attempted);
                        tracing::warn!(account_id = id, error = %e, "account write failed; its outcome is unknown until reread");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        tracing::debug!(
            accounts = per_account.len(),
            writes = writes.len(),
            partitions = epochs.len(),
            failed = first_error.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scylla commit"
        );
        if let Some(e) = first_error {
            return Err(e);
        }
        // 6. Fencing again, after the last write: a claim that came between
        // step 1 and the writes landing may have let the new owner load
        // the accounts before them. Their outputs must then not be
        // published nor their offsets committed (the new owner re-derives
        // from the state it loaded), so the caller gets `Fenced`.
        self.check_fences(writes).await?;
        Ok(())
    }

    /// The current epoch of every partition `writes` touch; `Fenced` if
    /// one of them carries an older one.
    async fn check_fences(
        &self,
        writes: &[AccountWrite],
    ) -> Result<BTreeMap<u32, u64>, StoreError> {
        let partitions: BTreeSet<u32> = writes.iter().map(|w| w.partition).collect();
        let reads: Vec<_> = partitions
            .into_iter()
            .map(|p| self.owner_epoch_of(p))
            .collect();
        let epochs: BTreeMap<u32, u64> = stream::iter(reads)
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for w in writes {
            let current = epochs[&w.partition];
            if w.epoch < current {
                return Err(StoreError::Fenced {
                    partition: w.partition,
                    current,
                    attempted: w.epoch,
                });
            }
        }
        Ok(epochs)
    }

    /// Tests only: every later commit waits `pause` between its first
    /// fence check and its writes, so a test can claim the partition from
    /// another client in that window (a writer delayed by GC, the network
    /// or the scheduler).
    #[doc(hidden)]
    pub fn pause_after_fence_check(&self, pause: Duration) {
        self.pause_ms.store(
            u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    async fn load_account_inner(
        &self,
        account_id: &str,
    ) -> Result<Option<StoredAccount>, StoreError> {
        Ok(self
            .read_account(account_id)
            .await?
            .map(|(meta, snapshot)| rows::stored_account(&meta, snapshot)))
    }

    async fn load_dedup_inner(
        &self,
        account_id: &str,
        since: Micros,
    ) -> Result<Vec<DedupRecord>, StoreError> {
        let meta = self.meta(account_id).await?;
        if !meta.exists {
            return Ok(Vec::new());
        }
        self.dedup_of(account_id, since, &meta).await
    }

    /// The dedup records of the account's snapshot `version`: filtered by
    /// that snapshot's stamp and fenced ranges, not by the row as it is
    /// now (a fenced writer's row may have landed since; its dedup ids are
    /// not the snapshot's history). One read.
    async fn load_dedup_of_inner(
        &self,
        account_id: &str,
        since: Micros,
        version: &SnapshotVersion,
    ) -> Result<Vec<DedupRecord>, StoreError> {
        let meta = AccountMeta {
            exists: true,
            snapshot_stamp: version.stamp,
            fenced: version
                .fenced
                .iter()
                .map(|r| FencedRange::from_tuple(*r))
                .collect(),
            ..AccountMeta::default()
        };
        self.dedup_of(account_id, since, &meta).await
    }

    /// The dedup records of an account whose row `meta` was read.
    async fn dedup_of(
        &self,
        account_id: &str,
        since: Micros,
        meta: &AccountMeta,
    ) -> Result<Vec<DedupRecord>, StoreError> {
        let found: Vec<DedupRow> = self
            .rows(
                &self.statements.select_dedup,
                (account_id, since),
                "read dedup ids",
            )
            .await?;
        let mut records = Vec::with_capacity(found.len());
        for row in found {
            let record = rows::dedup_record(row, meta).map_err(|e| {
                StoreError::Backend(format!("scylla store: dedup of {account_id}: {e}"))
            })?;
            records.extend(record);
        }
        Ok(records)
    }

    async fn read_journal_inner(
        &self,
        account_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<JournalRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The head as stored now (rows past it are not part of the journal).
        let heads: Vec<(Option<i64>,)> = self
            .rows(
                &self.statements.select_head,
                (account_id,),
                "read journal head",
            )
            .await?;
        let head = heads
            .first()
            .and_then(|(h,)| *h)
            .and_then(|h| u64::try_from(h).ok())
            .unwrap_or(0);
        let mut records = Vec::new();
        let mut from = from_seq;
        while from <= head && records.len() < limit {
            let block = journal_block(from);
            let block_last = ((from / JOURNAL_BLOCK + 1) * JOURNAL_BLOCK - 1).min(head);
            let wanted = i32::try_from(limit - records.len()).unwrap_or(i32::MAX);
            let found: Vec<JournalRow> = self
                .rows(
                    &self.statements.select_journal,
                    (
                        account_id,
                        block,
                        cql_bigint(from, "journal seq")?,
                        cql_bigint(block_last, "journal seq")?,
                        wanted,
                    ),
                    "read journal",
                )
                .await?;
            for row in found {
                records.push(rows::journal_record(row).map_err(|e| {
                    StoreError::Backend(format!("scylla store: journal of {account_id}: {e}"))
                })?);
            }
            from = block_last + 1;
        }
        records.truncate(limit);
        Ok(records)
    }

    async fn mark_published_inner(
        &self,
        account_id: &str,
        partition: u32,
        epoch: u64,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.check_epoch(partition, epoch).await?;
        let meta = self.meta(account_id).await?;
        if seq > meta.journal_head {
            return Err(StoreError::JournalSequence {
                account_id: account_id.to_owned(),
                expected: meta.journal_head,
                got: seq,
            });
        }
        if !meta.exists || seq <= meta.published_upto {
            return Ok(());
        }
        let stamp = plan::publish_stamp(&meta, partition, epoch, account_id)?;
        let sent = self
            .session
            .execute_unpaged(
                &self.statements.update_published,
                (stamp, cql_bigint(seq, "published watermark")?, account_id),
            )
            .await
            .map_err(backend("write published watermark"));
        let mut known = self.known();
        match sent {
            Ok(_) => {
                let mut after = meta;
                after.published_upto = seq;
                after.last_stamp = stamp;
                known.accounts.insert(account_id.to_owned(), after);
                Ok(())
            }
            Err(e) => {
                known.accounts.remove(account_id);
                let floor = known.floors.entry(account_id.to_owned()).or_insert(stamp);
                *floor = (*floor).max(stamp);
                Err(e)
            }
        }
    }

    async fn invoice_inner(
        &self,
        account_id: &str,
        invoice_id: &str,
    ) -> Result<Option<InvoiceRecord>, StoreError> {
        let found: Vec<(Option<Vec<u8>>,)> = self
            .rows(
                &self.statements.select_invoice,
                (account_id, invoice_id),
                "read invoice",
            )
            .await?;
        Ok(found.into_iter().next().map(|(document,)| InvoiceRecord {
            invoice_id: invoice_id.to_owned(),
            bytes: document.unwrap_or_default(),
        }))
    }

    async fn invoices_inner(&self, account_id: &str) -> Result<Vec<InvoiceRecord>, StoreError> {
        let found: Vec<(String, Option<Vec<u8>>)> = self
            .rows(
                &self.statements.select_invoices,
                (account_id,),
                "read invoices",
            )
            .await?;
        Ok(found
            .into_iter()
            .map(|(invoice_id, document)| InvoiceRecord {
                invoice_id,
                bytes: document.unwrap_or_default(),
            })
            .collect())
    }

    /// Whether the account's snapshot still has its timer at `at` in
    /// `partition` (an index row left by a fenced writer does not).
    async fn timer_is_current(
        &self,
        account_id: &str,
        partition: u32,
        at: Micros,
    ) -> Result<bool, StoreError> {
        let found: Vec<(Option<i32>, Option<i64>)> = self
            .rows(
                &self.statements.select_timer_of,
                (account_id,),
                "verify timer",
            )
            .await?;
        Ok(found.first().is_some_and(|(p, t)| {
            p.and_then(|p| u32::try_from(p).ok()) == Some(partition) && *t == Some(at)
        }))
    }

    async fn due_timers_inner(
        &self,
        partition: u32,
        up_to: Micros,
        limit: usize,
    ) -> Result<Vec<(Micros, String)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let p = cql_int(partition, "partition")?;
        let floor = self.known().timer_floor.get(&partition).copied();
        let last_bucket = timer_bucket(up_to);
        let buckets: Vec<(i64,)> = self
            .rows(
                &self.statements.select_buckets,
                (p, floor.unwrap_or(i64::MIN), last_bucket),
                "read timer buckets",
            )
            .await?;
        let mut due = Vec::new();
        let mut empty_below = None;
        let mut all_empty_so_far = true;
        for (bucket,) in buckets {
            let rows: Vec<(i64, String)> = self
                .rows(
                    &self.statements.select_timers,
                    (p, bucket, up_to),
                    "read timers",
                )
                .await?;
            if rows.is_empty() && all_empty_so_far && bucket < last_bucket {
                empty_below = Some(bucket + 1);
            } else {
                all_empty_so_far = false;
            }
            let verifications: Vec<_> = rows
                .iter()
                .map(|(at, id)| self.timer_is_current(id, partition, *at))
                .collect();
            let checks: Vec<bool> = stream::iter(verifications)
                .buffered(CONCURRENCY)
                .try_collect()
                .await?;
            for ((at, id), current) in rows.into_iter().zip(checks) {
                if current {
                    due.push((at, id));
                    if due.len() == limit {
                        return Ok(due);
                    }
                }
            }
        }
        if let Some(new_floor) = empty_below {
            let mut known = self.known();
            // Only if no commit lowered the floor meanwhile.
            if known.timer_floor.get(&partition).copied() == floor {
                known.timer_floor.insert(partition, new_floor);
            }
        }
        Ok(due)
    }

    /// `load_partition`: the partition's accounts read `LOAD_CONCURRENCY`
    /// at a time (two reads each: the row, then its dedup records), not one
    /// after the other: a new owner of a partition with 100,000 accounts
    /// would otherwise spend minutes in round trips while the consumer
    /// group waits for it.
    async fn load_partition_inner(
        &self,
        partition: u32,
        since: Option<Micros>,
    ) -> Result<Vec<LoadedAccount>, StoreError> {
        use futures::{StreamExt, TryStreamExt};
        let ids = self.accounts_inner(partition).await?;
        let loaded: Vec<Option<LoadedAccount>> = futures::stream::iter(ids)
            .map(|account_id| async move {
                let Some((meta, snapshot)) = self.read_account(&account_id).await? else {
                    return Ok::<_, StoreError>(None);
                };
                let dedup = match since {
                    Some(since) => self.dedup_of(&account_id, since, &meta).await?,
                    None => Vec::new(),
                };
                Ok(Some(LoadedAccount {
                    stored: rows::stored_account(&meta, snapshot),
                    account_id,
                    dedup,
                }))
            })
            .buffer_unordered(LOAD_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(loaded.into_iter().flatten().collect())
    }

    async fn accounts_inner(&self, partition: u32) -> Result<Vec<String>, StoreError> {
        let found: Vec<(String,)> = self
            .rows(
                &self.statements.select_partition_accounts,
                (cql_int(partition, "partition")?,),
                "read accounts of partition",
            )
            .await?;
        Ok(found.into_iter().map(|(id,)| id).collect())
    }

    /// Up to `limit` account ids, read page by page until the limit.
    async fn all_accounts_inner(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let context = "read all accounts";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut rows = self
            .session
            .execute_iter(self.statements.select_all_accounts.clone(), ())
            .await
            .map_err(backend(context))?
            .rows_stream::<(String,)>()
            .map_err(backend(context))?;
        let mut ids = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(backend(context))? {
            ids.push(row.0);
            if ids.len() == limit {
                break;
            }
        }
        Ok(ids)
    }

    async fn claim_partition_inner(&self, partition: u32, owner: &str) -> Result<u64, StoreError> {
        let p = cql_int(partition, "partition")?;
        for attempt in 0..CLAIM_ATTEMPTS {
            let current = self.owner_epoch(partition, true).await?;
            let next = current + 1;
            if next > MAX_EPOCH {
                return Err(StoreError::Backend(format!(
                    "scylla store: partition {partition} has used every epoch a write timestamp can carry ({MAX_EPOCH})"
                )));
            }
            let next_cql = cql_bigint(next, "epoch")?;
            let now = CqlTimestamp(now_ms());
            let result = if current == 0 {
                self.session
                    .execute_unpaged(&self.statements.claim_first, (p, next_cql, owner, now))
                    .await
            } else {
                let current_cql = cql_bigint(current, "epoch")?;
                self.session
                    .execute_unpaged(
                        &self.statements.claim_next,
                        (next_cql, owner, now, p, current_cql),
                    )
                    .await
            }
            .map_err(backend("claim partition"))?;
            let applied = result
                .into_rows_result()
                .map_err(backend("claim partition: result"))?
                .maybe_first_row::<Row>()
                .map_err(backend("claim partition: result"))?
                .and_then(|row| row.columns.into_iter().next().flatten())
                .is_some_and(|v| matches!(v, CqlValue::Boolean(true)));
            if applied {
                let mut known = self.known();
                known
                    .accounts
                    .retain(|_, meta| meta.exists && meta.partition != partition);
                known.timer_floor.remove(&partition);
                drop(known);
                tracing::info!(partition, epoch = next, owner, "partition claimed");
                return Ok(next);
            }
            tracing::debug!(
                partition,
                attempt,
                "claim lost to a concurrent claim; retrying"
            );
            tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt + 1))).await;
        }
        Err(StoreError::Backend(format!(
            "scylla store: claim of partition {partition} lost {CLAIM_ATTEMPTS} times to concurrent claims"
        )))
    }
}

/// Accounts read at once when a partition is loaded (`load_partition`).
const LOAD_CONCURRENCY: usize = 64;

impl StateStore for ScyllaStore {
    async fn commit(&self, writes: &[AccountWrite]) -> Result<(), StoreError> {
        self.stats
            .record_n(StoreOp::AccountWrite, writes.len() as u64);
        self.counted(StoreOp::Commit, self.commit_inner(writes).await)
    }

    async fn load_account(&self, account_id: &str) -> Result<Option<StoredAccount>, StoreError> {
        self.counted(
            StoreOp::LoadAccount,
            self.load_account_inner(account_id).await,
        )
    }

    async fn load_dedup(
        &self,
        account_id: &str,
        since: Micros,
    ) -> Result<Vec<DedupRecord>, StoreError> {
        self.counted(
            StoreOp::LoadDedup,
            self.load_dedup_inner(account_id, since).await,
        )
    }

    async fn load_dedup_of(
        &self,
        account_id: &str,
        since: Micros,
        version: &SnapshotVersion,
    ) -> Result<Vec<DedupRecord>, StoreError> {
        self.counted(
            StoreOp::LoadDedup,
            self.load_dedup_of_inner(account_id, since, version).await,
        )
    }

    async fn read_journal(
        &self,
        account_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<JournalRecord>, StoreError> {
        self.counted(
            StoreOp::ReadJournal,
            self.read_journal_inner(account_id, from_seq, limit).await,
        )
    }

    async fn mark_published(
        &self,
        account_id: &str,
        partition: u32,
        epoch: u64,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.counted(
            StoreOp::MarkPublished,
            self.mark_published_inner(account_id, partition, epoch, seq)
                .await,
        )
    }

    async fn invoice(
        &self,
        account_id: &str,
        invoice_id: &str,
    ) -> Result<Option<InvoiceRecord>, StoreError> {
        self.counted(
            StoreOp::ReadInvoice,
            self.invoice_inner(account_id, invoice_id).await,
        )
    }

    async fn invoices(&self, account_id: &str) -> Result<Vec<InvoiceRecord>, StoreError> {
        self.counted(StoreOp::ListInvoices, self.invoices_inner(account_id).await)
    }

    async fn due_timers(
        &self,
        partition: u32,
        up_to: Micros,
        limit: usize,
    ) -> Result<Vec<(Micros, String)>, StoreError> {
        self.counted(
            StoreOp::DueTimers,
            self.due_timers_inner(partition, up_to, limit).await,
        )
    }

    async fn accounts(&self, partition: u32) -> Result<Vec<String>, StoreError> {
        self.counted(StoreOp::ListAccounts, self.accounts_inner(partition).await)
    }

    async fn all_accounts(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.counted(StoreOp::ListAccounts, self.all_accounts_inner(limit).await)
    }

    async fn load_partition(
        &self,
        partition: u32,
        dedup_since: Option<Micros>,
    ) -> Result<Vec<LoadedAccount>, StoreError> {
        self.counted(
            StoreOp::LoadPartition,
            self.load_partition_inner(partition, dedup_since).await,
        )
    }

    async fn claim_partition(&self, partition: u32, owner: &str) -> Result<u64, StoreError> {
        self.counted(
            StoreOp::ClaimPartition,
            self.claim_partition_inner(partition, owner).await,
        )
    }

    fn stats(&self) -> &StoreStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Replication;

    fn settings(local_datacenter: Option<&str>) -> ScyllaSettings {
        ScyllaSettings {
            nodes: vec!["db1:9042".into()],
            keyspace: "ks".into(),
            replication: Replication::NetworkTopology { factor: 3 },
            local_datacenter: local_datacenter.map(str::to_string),
            dedup_ttl: Duration::from_secs(86_400),
            auth: None,
            tls_ca_file: None,
        }
    }

    /// Issue 15: LOCAL_SERIAL orders claims only among coordinators of one
    /// datacenter; two instances coordinating in two datacenters could both
    /// be granted the same epoch. Claims run at SERIAL whatever is set.
    #[test]
    fn issue_15_claims_are_serial_in_every_datacenter_setting() {
        for dc in [None, Some("eu")] {
            let profile = request_profile(&settings(dc));
            assert_eq!(
                profile.get_serial_consistency(),
                Some(SerialConsistency::Serial),
                "local_datacenter {dc:?}"
            );
            assert_eq!(profile.get_consistency(), Consistency::LocalQuorum);
        }
        assert_eq!(
            super::super::statements::consistency_of("select_owner_serial"),
            Some(Consistency::Serial)
        );
        assert_eq!(
            super::super::statements::consistency_of("select_owner"),
            None
        );
    }
}
