//! The embedded state store: one `redb` file on local disk.
//!
//! It serves the demo, simulations, tests and single-machine deployments
//! with the same `StateStore` contract as the ScyllaDB store. Every commit is
//! one redb write transaction committed with `Durability::Immediate` (an
//! fsync before `commit` returns), so an acknowledged commit survives a
//! kill -9, and a power loss as far as the disk honours fsync; a commit is
//! all-or-nothing across every account it carries (stronger than the trait
//! asks). The work runs inline in the async methods: a commit blocks its
//! runtime thread for the fsync. Billing records (journal, invoices, dedup ids) are
//! only ever inserted; the rows ever removed are an account's entry in the
//! timer index when its timer moves, and a kept dead letter once the sink
//! acknowledged it (the DLQ topic is its record).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

use super::{
    AccountWrite, DeadLetterRecord, DedupRecord, InputOffset, InvoiceRecord, JournalRecord,
    LoadedAccount, Micros, SnapshotVersion, StateStore, StoreError, StoreOp, StoreStats,
    StoredAccount,
};

/// Name of the database file inside the store directory.
/// Page cache of the embedded store.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
const FILE_NAME: &str = "billstream.redb";

/// Value of `ACCOUNTS`: (partition, journal_head, published_upto,
/// next_timer, snapshot).
type AccountRow = (u32, u64, u64, Option<i64>, &'static [u8]);

/// account_id → `AccountRow`.
const ACCOUNTS: TableDefinition<&str, AccountRow> = TableDefinition::new("accounts");
/// (partition, account_id) → (): the accounts of a partition.
const PARTITION_ACCOUNTS: TableDefinition<(u32, &str), ()> =
    TableDefinition::new("partition_accounts");
/// (account_id, seq) → (at, bytes). Insert-only.
const JOURNAL: TableDefinition<(&str, u64), (i64, &[u8])> = TableDefinition::new("journal");
/// (account_id, invoice_id) → document. Upserted, never removed.
const INVOICES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("invoices");
/// (account_id, seen_at, key) → fingerprint. Insert-only; keyed by time so
/// `load_dedup(since)` reads only the window, however long the history.
const DEDUP: TableDefinition<(&str, i64, u128), u64> = TableDefinition::new("dedup");
/// (partition, due_at, account_id) → (): the timer index, one row per
/// account with a timer, replaced when the account's timer moves.
const TIMERS: TableDefinition<(u32, i64, &str), ()> = TableDefinition::new("timers");
/// (account_id, topic, partition) → next input offset to apply.
const OFFSETS: TableDefinition<(&str, &str, i32), i64> = TableDefinition::new("offsets");
/// partition → (epoch, owner): the latest ownership claim.
const OWNERSHIP: TableDefinition<u32, (u64, &str)> = TableDefinition::new("ownership");
/// (account_id, dead letter id) → the dead letter: kept from the write
/// that recorded its input position until a write says it was acknowledged.
const DEAD_LETTERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("dead_letters");

/// The account row without its snapshot, copied out of the table.
#[derive(Debug, Clone, Copy)]
struct AccountMeta {
    partition: u32,
    journal_head: u64,
    published_upto: u64,
    next_timer: Option<Micros>,
}

/// A `StateStore` in one redb file, durable on every commit.
pub struct EmbeddedStore {
    db: Database,
    file: PathBuf,
    stats: StoreStats,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Maps a redb error to `StoreError::Backend`, saying what was being done.
fn backend<E: Display>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Backend(format!("embedded store: {context}: {e}"))
}

impl EmbeddedStore {
    /// Opens the store kept in directory `dir` (file `billstream.redb`),
    /// creating the directory and an empty store if missing. Only one
    /// process may have a store open at a time. After a crash, opening
    /// repairs redb's internal allocator state; committed data is intact.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!(
                "embedded store: cannot create directory {}: {e}",
                dir.display()
            ))
        })?;
        let file = dir.join(FILE_NAME);
        // redb's default page cache is 1 GiB; the working set of the hot
        // path is in the processor's memory, so a small cache is enough.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&file)
            .map_err(|e| {
                StoreError::Backend(format!(
                    "embedded store: cannot open {}: {e}",
                    file.display()
                ))
            })?;
        let store = EmbeddedStore {
            db,
            file,
            stats: StoreStats::new(),
        };
        store.create_tables()?;
        Ok(store)
    }

    /// The database file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Creates every table once, so read transactions never meet a missing one.
    fn create_tables(&self) -> Result<(), StoreError> {
        let txn = self
            .db
            .begin_write()
            .map_err(backend("open: begin write transaction"))?;
        {
            let ctx = "open: create tables";
            txn.open_table(ACCOUNTS).map_err(backend(ctx))?;
            txn.open_table(PARTITION_ACCOUNTS).map_err(backend(ctx))?;
            txn.open_table(JOURNAL).map_err(backend(ctx))?;
            txn.open_table(INVOICES).map_err(backend(ctx))?;
            txn.open_table(DEDUP).map_err(backend(ctx))?;
            txn.open_table(TIMERS).map_err(backend(ctx))?;
            txn.open_table(OFFSETS).map_err(backend(ctx))?;
            txn.open_table(OWNERSHIP).map_err(backend(ctx))?;
            txn.open_table(DEAD_LETTERS).map_err(backend(ctx))?;
        }
        txn.commit().map_err(backend("open: commit table creation"))
    }

    /// Counts one call of `op`, and its failure if it failed.
    fn counted<T>(&self, op: StoreOp, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.stats.record(op);
        if result.is_err() {
            self.stats.record_error(op);
        }
        result
    }

    fn begin_write(&self, context: &'static str) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(backend(context))?;
        // The default, stated because acknowledged commits depend on it.
        txn.set_durability(Durability::Immediate)
            .map_err(backend(context))?;
        Ok(txn)
    }

    fn begin_read(&self, context: &'static str) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(backend(context))
    }

    /// Runs `apply` in one write transaction: commits durably if it
    /// succeeds, aborts (writing nothing) if it fails or returns `false`.
    fn write_txn(
        &self,
        context: &'static str,
        apply: impl FnOnce(&WriteTransaction) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.begin_write(context)?;
        match apply(&txn) {
            Ok(true) => txn.commit().map_err(backend(context)),
            Ok(false) => txn.abort().map_err(backend(context)),
            Err(e) => {
                // The validation error is what the caller needs; a failed
                // abort leaves nothing behind either (nothing was committed).
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    fn commit_sync(&self, writes: &[AccountWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.write_txn("commit", |txn| {
            let mut tables = CommitTables::open(txn)?;
            for write in writes {
                tables.apply(write)?;
            }
            Ok(true)
        })
    }

    fn load_account_sync(&self, account_id: &str) -> Result<Option<StoredAccount>, StoreError> {
        let ctx = "load_account";
        let txn = self.begin_read(ctx)?;
        let accounts = txn.open_table(ACCOUNTS).map_err(backend(ctx))?;
        let offsets = txn.open_table(OFFSETS).map_err(backend(ctx))?;
        let letters = txn.open_table(DEAD_LETTERS).map_err(backend(ctx))?;
        read_account(ctx, &accounts, &offsets, &letters, account_id)
    }

    fn load_dedup_sync(
        &self,
        account_id: &str,
        since: Micros,
    ) -> Result<Vec<DedupRecord>, StoreError> {
        let ctx = "load_dedup";
        let txn = self.begin_read(ctx)?;
        let dedup = txn.open_table(DEDUP).map_err(backend(ctx))?;
        read_dedup(ctx, &dedup, account_id, since)
    }

    /// Every account of a partition in one read transaction.
    fn load_partition_sync(
        &self,
        partition: u32,
        dedup_since: Option<Micros>,
    ) -> Result<Vec<LoadedAccount>, StoreError> {
        let ctx = "load_partition";
        let txn = self.begin_read(ctx)?;
        let index = txn.open_table(PARTITION_ACCOUNTS).map_err(backend(ctx))?;
        let accounts = txn.open_table(ACCOUNTS).map_err(backend(ctx))?;
        let offsets = txn.open_table(OFFSETS).map_err(backend(ctx))?;
        let dedup = txn.open_table(DEDUP).map_err(backend(ctx))?;
        let letters = txn.open_table(DEAD_LETTERS).map_err(backend(ctx))?;
        let mut loaded = Vec::new();
        for item in index.range((partition, "")..).map_err(backend(ctx))? {
            let (key, _) = item.map_err(backend(ctx))?;
            let (p, account_id) = key.value();
            if p != partition {
                break;
            }
            let Some(stored) = read_account(ctx, &accounts, &offsets, &letters, account_id)? else {
                continue;
            };
            loaded.push(LoadedAccount {
                account_id: account_id.to_owned(),
                stored,
                dedup: match dedup_since {
                    Some(since) => read_dedup(ctx, &dedup, account_id, since)?,
                    None => Vec::new(),
                },
            });
        }
        Ok(loaded)
    }

    fn read_journal_sync(
        &self,
        account_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<JournalRecord>, StoreError> {
        let ctx = "read_journal";
        let txn = self.begin_read(ctx)?;
        let journal = txn.open_table(JOURNAL).map_err(backend(ctx))?;
        let mut records = Vec::new();
        if limit == 0 {
            return Ok(records);
        }
        for item in journal
            .range((account_id, from_seq)..=(account_id, u64::MAX))
            .map_err(backend(ctx))?
        {
            let (key, value) = item.map_err(backend(ctx))?;
            let (_, seq) = key.value();
            let (at, bytes) = value.value();
            records.push(JournalRecord {
                seq,
                at,
                bytes: bytes.to_vec(),
            });
            if records.len() == limit {
                break;
            }
        }
        Ok(records)
    }

    fn mark_published_sync(
        &self,
        account_id: &str,
        partition: u32,
        epoch: u64,
        seq: u64,
    ) -> Result<(), StoreError> {
        let ctx = "mark_published";
        self.write_txn(ctx, |txn| {
            let ownership = txn.open_table(OWNERSHIP).map_err(backend(ctx))?;
            check_epoch(&ownership, partition, epoch)?;
            let mut accounts = txn.open_table(ACCOUNTS).map_err(backend(ctx))?;
            let row = accounts.get(account_id).map_err(backend(ctx))?.map(|row| {
                let (partition, head, published, next_timer, snapshot) = row.value();
                (partition, head, published, next_timer, snapshot.to_vec())
            });
            let head = row.as_ref().map_or(0, |r| r.1);
            if seq > head {
                // Outputs are emitted only for persisted journal entries.
                return Err(StoreError::JournalSequence {
                    account_id: account_id.to_owned(),
                    expected: head,
                    got: seq,
                });
            }
            let Some((stored_partition, head, published_upto, next_timer, snapshot)) = row else {
                return Ok(false);
            };
            if seq <= published_upto {
                return Ok(false);
            }
            accounts
                .insert(
                    account_id,
                    (stored_partition, head, seq, next_timer, snapshot.as_slice()),
                )
                .map_err(backend(ctx))?;
            Ok(true)
        })
    }

    fn invoice_sync(
        &self,
        account_id: &str,
        invoice_id: &str,
    ) -> Result<Option<InvoiceRecord>, StoreError> {
        let ctx = "invoice";
        let txn = self.begin_read(ctx)?;
        let invoices = txn.open_table(INVOICES).map_err(backend(ctx))?;
        let found = invoices
            .get((account_id, invoice_id))
            .map_err(backend(ctx))?;
        Ok(found.map(|bytes| InvoiceRecord {
            invoice_id: invoice_id.to_owned(),
            bytes: bytes.value().to_vec(),
        }))
    }

    fn invoices_sync(&self, account_id: &str) -> Result<Vec<InvoiceRecord>, StoreError> {
        let ctx = "invoices";
        let txn = self.begin_read(ctx)?;
        let invoices = txn.open_table(INVOICES).map_err(backend(ctx))?;
        let mut records = Vec::new();
        for item in invoices.range((account_id, "")..).map_err(backend(ctx))? {
            let (key, bytes) = item.map_err(backend(ctx))?;
            let (account, invoice_id) = key.value();
            if account != account_id {
                break;
            }
            records.push(InvoiceRecord {
                invoice_id: invoice_id.to_owned(),
                bytes: bytes.value().to_vec(),
            });
        }
        Ok(records)
    }

    fn due_timers_sync(
        &self,
        partition: u32,
        up_to: Micros,
        limit: usize,
    ) -> Result<Vec<(Micros, String)>, StoreError> {
        let ctx = "due_timers";
        let txn = self.begin_read(ctx)?;
        let timers = txn.open_table(TIMERS).map_err(backend(ctx))?;
        let mut due = Vec::new();
        if limit == 0 {
            return Ok(due);
        }
        for item in timers
            .range((partition, i64::MIN, "")..)
            .map_err(backend(ctx))?
        {
            let (key, _) = item.map_err(backend(ctx))?;
            let (p, at, account_id) = key.value();
            if p != partition || at > up_to {
                break;
            }
            due.push((at, account_id.to_owned()));
            if due.len() == limit {
                break;
            }
        }
        Ok(due)
    }

    fn accounts_sync(&self, partition: u32) -> Result<Vec<String>, StoreError> {
        let ctx = "accounts";
        let txn = self.begin_read(ctx)?;
        let index = txn.open_table(PARTITION_ACCOUNTS).map_err(backend(ctx))?;
        let mut ids = Vec::new();
        for item in index.range((partition, "")..).map_err(backend(ctx))? {
            let (key, _) = item.map_err(backend(ctx))?;
            let (p, account_id) = key.value();
            if p != partition {
                break;
            }
            ids.push(account_id.to_owned());
        }
        Ok(ids)
    }

    fn all_accounts_sync(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let ctx = "all_accounts";
        let txn = self.begin_read(ctx)?;
        let accounts = txn.open_table(ACCOUNTS).map_err(backend(ctx))?;
        let mut ids = Vec::new();
        for item in accounts.iter().map_err(backend(ctx))?.take(limit) {
            let (key, _) = item.map_err(backend(ctx))?;
            ids.push(key.value().to_owned());
        }
        Ok(ids)
    }

    fn claim_partition_sync(&self, partition: u32, owner: &str) -> Result<u64, StoreError> {
        let ctx = "claim_partition";
        let mut granted = 0;
        self.write_txn(ctx, |txn| {
            let mut ownership = txn.open_table(OWNERSHIP).map_err(backend(ctx))?;
            let current = current_epoch(&ownership, partition)?;
            granted = current.checked_add(1).ok_or_else(|| {
                StoreError::Backend(format!(
                    "embedded store: claim_partition: epoch of partition {partition} overflowed"
                ))
            })?;
            ownership
                .insert(partition, (granted, owner))
                .map_err(backend(ctx))?;
            Ok(true)
        })?;
        Ok(granted)
    }
}

/// The epoch of the latest claim on `partition`, 0 if never claimed.
fn current_epoch(
    ownership: &impl ReadableTable<u32, (u64, &'static str)>,
    partition: u32,
) -> Result<u64, StoreError> {
    Ok(ownership
        .get(partition)
        .map_err(backend("read partition ownership"))?
        .map_or(0, |row| row.value().0))
}

/// `Fenced` if `epoch` is older than the partition's latest claim.
fn check_epoch(
    ownership: &impl ReadableTable<u32, (u64, &'static str)>,
    partition: u32,
    epoch: u64,
) -> Result<(), StoreError> {
    let current = current_epoch(ownership, partition)?;
    if epoch < current {
        return Err(StoreError::Fenced {
            partition,
            current,
            attempted: epoch,
        });
    }
    Ok(())
}

fn read_meta(
    accounts: &impl ReadableTable<&'static str, AccountRow>,
    account_id: &str,
) -> Result<Option<AccountMeta>, StoreError> {
    let row = accounts
        .get(account_id)
        .map_err(backend("read account row"))?;
    Ok(row.map(|row| {
        let (partition, journal_head, published_upto, next_timer, _) = row.value();
        AccountMeta {
            partition,
            journal_head,
            published_upto,
            next_timer,
        }
    }))
}

/// The tables one commit writes, open in its write transaction.
struct CommitTables<'txn> {
    ownership: Table<'txn, u32, (u64, &'static str)>,
    accounts: Table<'txn, &'static str, AccountRow>,
    partition_accounts: Table<'txn, (u32, &'static str), ()>,
    journal: Table<'txn, (&'static str, u64), (i64, &'static [u8])>,
    invoices: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    dedup: Table<'txn, (&'static str, i64, u128), u64>,
    timers: Table<'txn, (u32, i64, &'static str), ()>,
    offsets: Table<'txn, (&'static str, &'static str, i32), i64>,
    dead_letters: Table<'txn, (&'static str, &'static str), &'static [u8]>,
}

impl<'txn> CommitTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        let ctx = "commit: open tables";
        Ok(CommitTables {
            ownership: txn.open_table(OWNERSHIP).map_err(backend(ctx))?,
            accounts: txn.open_table(ACCOUNTS).map_err(backend(ctx))?,
            partition_accounts: txn.open_table(PARTITION_ACCOUNTS).map_err(backend(ctx))?,
            journal: txn.open_table(JOURNAL).map_err(backend(ctx))?,
            invoices: txn.open_table(INVOICES).map_err(backend(ctx))?,
            dedup: txn.open_table(DEDUP).map_err(backend(ctx))?,
            timers: txn.open_table(TIMERS).map_err(backend(ctx))?,
            offsets: txn.open_table(OFFSETS).map_err(backend(ctx))?,
            dead_letters: txn.open_table(DEAD_LETTERS).map_err(backend(ctx))?,
        })
    }

    /// Validates one account's write against the state so far in this
    /// transaction (so two writes of one account in a call chain up), then
    /// stages it. The caller aborts the transaction on any error.
    fn apply(&mut self, w: &AccountWrite) -> Result<(), StoreError> {
        let ctx = "commit: write account";
        let id = w.account_id.as_str();
        check_epoch(&self.ownership, w.partition, w.epoch)?;
        let previous = read_meta(&self.accounts, id)?;
        let head = previous.map_or(0, |m| m.journal_head);
        let mut expected = head + 1;
        for record in &w.journal {
            if record.seq != expected {
                return Err(StoreError::JournalSequence {
                    account_id: w.account_id.clone(),
                    expected,
                    got: record.seq,
                });
            }
            expected += 1;
        }
        let journal_head = expected - 1;

        for record in &w.journal {
            self.journal
                .insert((id, record.seq), (record.at, record.bytes.as_slice()))
                .map_err(backend(ctx))?;
        }
        for invoice in &w.invoices {
            self.invoices
                .insert((id, invoice.invoice_id.as_str()), invoice.bytes.as_slice())
                .map_err(backend(ctx))?;
        }
        for record in &w.dedup {
            self.dedup
                .insert((id, record.seen_at, record.key), record.fingerprint)
                .map_err(backend(ctx))?;
        }
        for offset in &w.offsets {
            self.offsets
                .insert((id, offset.topic.as_str(), offset.partition), offset.next)
                .map_err(backend(ctx))?;
        }
        for published in &w.dead_letters_published {
            self.dead_letters
                .remove((id, published.as_str()))
                .map_err(backend(ctx))?;
        }
        for letter in &w.dead_letters {
            self.dead_letters
                .insert((id, letter.id.as_str()), letter.bytes.as_slice())
                .map_err(backend(ctx))?;
        }

        // Index rows: the only rows ever removed, and only to be replaced.
        if let Some(prev) = previous {
            if let Some(at) = prev.next_timer {
                self.timers
                    .remove((prev.partition, at, id))
                    .map_err(backend(ctx))?;
            }
            if prev.partition != w.partition {
                self.partition_accounts
                    .remove((prev.partition, id))
                    .map_err(backend(ctx))?;
            }
        }
        if let Some(at) = w.next_timer {
            self.timers
                .insert((w.partition, at, id), ())
                .map_err(backend(ctx))?;
        }
        self.partition_accounts
            .insert((w.partition, id), ())
            .map_err(backend(ctx))?;

        let published_upto = previous
            .map_or(0, |m| m.published_upto)
            .max(w.published_upto.unwrap_or(0).min(journal_head));
        self.accounts
            .insert(
                id,
                (
                    w.partition,
                    journal_head,
                    published_upto,
                    w.next_timer,
                    w.snapshot.as_slice(),
                ),
            )
            .map_err(backend(ctx))?;
        Ok(())
    }
}

impl StateStore for EmbeddedStore {
    async fn commit(&self, writes: &[AccountWrite]) -> Result<(), StoreError> {
        self.stats
            .record_n(StoreOp::AccountWrite, writes.len() as u64);
        self.counted(StoreOp::Commit, self.commit_sync(writes))
    }

    async fn load_account(&self, account_id: &str) -> Result<Option<StoredAccount>, StoreError> {
        self.counted(StoreOp::LoadAccount, self.load_account_sync(account_id))
    }

    async fn load_dedup(
        &self,
        account_id: &str,
        since: Micros,
    ) -> Result<Vec<DedupRecord>, StoreError> {
        self.counted(StoreOp::LoadDedup, self.load_dedup_sync(account_id, since))
    }

    async fn read_journal(
        &self,
        account_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<JournalRecord>, StoreError> {
        self.counted(
            StoreOp::ReadJournal,
            self.read_journal_sync(account_id, from_seq, limit),
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
            self.mark_published_sync(account_id, partition, epoch, seq),
        )
    }

    async fn invoice(
        &self,
        account_id: &str,
        invoice_id: &str,
    ) -> Result<Option<InvoiceRecord>, StoreError> {
        self.counted(
            StoreOp::ReadInvoice,
            self.invoice_sync(account_id, invoice_id),
        )
    }

    async fn invoices(&self, account_id: &str) -> Result<Vec<InvoiceRecord>, StoreError> {
        self.counted(StoreOp::ListInvoices, self.invoices_sync(account_id))
    }

    async fn due_timers(
        &self,
        partition: u32,
        up_to: Micros,
        limit: usize,
    ) -> Result<Vec<(Micros, String)>, StoreError> {
        self.counted(
            StoreOp::DueTimers,
            self.due_timers_sync(partition, up_to, limit),
        )
    }

    async fn accounts(&self, partition: u32) -> Result<Vec<String>, StoreError> {
        self.counted(StoreOp::ListAccounts, self.accounts_sync(partition))
    }

    async fn all_accounts(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.counted(StoreOp::ListAccounts, self.all_accounts_sync(limit))
    }

    async fn load_partition(
        &self,
        partition: u32,
        dedup_since: Option<Micros>,
    ) -> Result<Vec<LoadedAccount>, StoreError> {
        self.counted(
            StoreOp::LoadPartition,
            self.load_partition_sync(partition, dedup_since),
        )
    }

    async fn claim_partition(&self, partition: u32, owner: &str) -> Result<u64, StoreError> {
        self.counted(
            StoreOp::ClaimPartition,
            self.claim_partition_sync(partition, owner),
        )
    }

    fn stats(&self) -> &StoreStats {
        &self.stats
    }
}

/// One account row with its input offsets and kept dead letters, from
/// tables of one transaction.
fn read_account(
    ctx: &'static str,
    accounts: &impl ReadableTable<&'static str, AccountRow>,
    offsets_table: &impl ReadableTable<(&'static str, &'static str, i32), i64>,
    letters_table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    account_id: &str,
) -> Result<Option<StoredAccount>, StoreError> {
    let Some(row) = accounts.get(account_id).map_err(backend(ctx))? else {
        return Ok(None);
    };
    let (_, journal_head, published_upto, next_timer, snapshot) = row.value();
    let snapshot = snapshot.to_vec();
    let mut offsets = Vec::new();
    for item in offsets_table
        .range((account_id, "", i32::MIN)..)
        .map_err(backend(ctx))?
    {
        let (key, next) = item.map_err(backend(ctx))?;
        let (account, topic, partition) = key.value();
        if account != account_id {
            break;
        }
        offsets.push(InputOffset {
            topic: topic.to_owned(),
            partition,
            next: next.value(),
        });
    }
    let mut dead_letters = Vec::new();
    for item in letters_table
        .range((account_id, "")..)
        .map_err(backend(ctx))?
    {
        let (key, bytes) = item.map_err(backend(ctx))?;
        let (account, id) = key.value();
        if account != account_id {
            break;
        }
        dead_letters.push(DeadLetterRecord {
            id: id.to_owned(),
            bytes: bytes.value().to_vec(),
        });
    }
    Ok(Some(StoredAccount {
        snapshot,
        journal_head,
        published_upto,
        offsets,
        next_timer,
        dead_letters,
        version: SnapshotVersion::default(),
    }))
}

/// The dedup records of an account seen at or after `since`.
fn read_dedup(
    ctx: &'static str,
    dedup: &impl ReadableTable<(&'static str, i64, u128), u64>,
    account_id: &str,
    since: Micros,
) -> Result<Vec<DedupRecord>, StoreError> {
    let mut records = Vec::new();
    for item in dedup
        .range((account_id, since, 0u128)..=(account_id, i64::MAX, u128::MAX))
        .map_err(backend(ctx))?
    {
        let (key, fingerprint) = item.map_err(backend(ctx))?;
        let (_, seen_at, key) = key.value();
        records.push(DedupRecord {
            key,
            fingerprint: fingerprint.value(),
            seen_at,
        });
    }
    Ok(records)
}

// --- crash-test writer -------------------------------------------------------

/// Accounts the torture writer spreads its commits over.
const TORTURE_ACCOUNTS: u64 = 6;
/// Partitions of those accounts (account `i` is in partition `i % 2`).
const TORTURE_PARTITIONS: u64 = 2;

impl EmbeddedStore {
    /// Crash-test writer, run in a child process that a test kills with
    /// SIGKILL at a random moment. Not part of the API.
    ///
    /// Opens the store in `dir`, claims its partitions, resumes after the
    /// last commit found in the store and loops forever. Commit `k` writes
    /// three accounts (`torture-{k%6}`, `torture-{(k+1)%6}`,
    /// `torture-{(k+3)%6}`), each appending `1 + k%3` journal entries, and
    /// only after `commit` returns prints one line to stdout and flushes it:
    ///
    /// `acked <k> <account>:<partition>:<journal_head> ...`
    ///
    /// Record formats, for the checker: snapshot `commit=<k> seq=<head>`;
    /// journal entry `commit=<k> seq=<seq> account=<id>` padded with `.` to
    /// 256 bytes; offset (`torture`, partition) → `k + 1`; timer
    /// `k * 10 + i` for account `i`; invoice `inv-<k%4>` = `commit=<k>`;
    /// dedup key `k << 64 | i`, fingerprint `k`, seen at `k`.
    ///
    /// Exits 0 when stdout is closed, 2 if the store cannot be opened or
    /// read, 3 if a commit fails.
    #[doc(hidden)]
    pub fn torture_writer(dir: &Path) -> ! {
        match torture_loop(dir) {
            Ok(never) => match never {},
            Err((code, message)) => {
                eprintln!("torture writer: {message}");
                std::process::exit(code)
            }
        }
    }
}

fn torture_account(i: u64) -> (String, u32) {
    // `TORTURE_PARTITIONS` is tiny, the cast cannot truncate.
    (format!("torture-{i}"), (i % TORTURE_PARTITIONS) as u32)
}

/// The `commit=<k>` field of a torture record.
fn torture_commit_of(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.split_whitespace()
        .find_map(|field| field.strip_prefix("commit="))
        .and_then(|k| k.parse().ok())
}

fn torture_loop(dir: &Path) -> Result<Infallible, (i32, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| (2, format!("cannot start runtime: {e}")))?;
    runtime.block_on(async {
        let store = EmbeddedStore::open(dir).map_err(|e| (2, e.to_string()))?;
        let mut epochs = Vec::new();
        for partition in 0..TORTURE_PARTITIONS as u32 {
            let epoch = store
                .claim_partition(partition, "torture-writer")
                .await
                .map_err(|e| (2, e.to_string()))?;
            epochs.push(epoch);
        }
        let mut heads = Vec::new();
        let mut last_commit = 0;
        for i in 0..TORTURE_ACCOUNTS {
            let (id, _) = torture_account(i);
            let stored = store
                .load_account(&id)
                .await
                .map_err(|e| (2, e.to_string()))?;
            let head = stored.as_ref().map_or(0, |a| a.journal_head);
            if let Some(account) = &stored {
                let commit = torture_commit_of(&account.snapshot)
                    .ok_or_else(|| (2, format!("unreadable snapshot of {id}")))?;
                last_commit = last_commit.max(commit);
            }
            heads.push(head);
        }

        let mut stdout = std::io::stdout().lock();
        let mut k = last_commit;
        loop {
            k += 1;
            let touched: BTreeSet<u64> = [0, 1, 3]
                .iter()
                .map(|d| (k + d) % TORTURE_ACCOUNTS)
                .collect();
            let entries = 1 + k % 3;
            let mut writes = Vec::new();
            for &i in &touched {
                let (id, partition) = torture_account(i);
                let first = heads[i as usize] + 1;
                let journal = (first..first + entries)
                    .map(|seq| {
                        let mut bytes = format!("commit={k} seq={seq} account={id} ").into_bytes();
                        bytes.resize(256, b'.');
                        JournalRecord {
                            seq,
                            at: k as i64,
                            bytes,
                        }
                    })
                    .collect();
                let head = first + entries - 1;
                writes.push(AccountWrite {
                    account_id: id,
                    partition,
                    epoch: epochs[partition as usize],
                    snapshot: format!("commit={k} seq={head}").into_bytes(),
                    journal,
                    invoices: vec![InvoiceRecord {
                        invoice_id: format!("inv-{}", k % 4),
                        bytes: format!("commit={k}").into_bytes(),
                    }],
                    dedup: vec![DedupRecord {
                        key: (u128::from(k) << 64) | u128::from(i),
                        fingerprint: k,
                        seen_at: k as i64,
                    }],
                    next_timer: Some((k * 10 + i) as i64),
                    offsets: vec![InputOffset {
                        topic: "torture".to_owned(),
                        partition: partition as i32,
                        next: k as i64 + 1,
                    }],
                    published_upto: None,
                    dead_letters: Vec::new(),
                    dead_letters_published: Vec::new(),
                });
            }
            store
                .commit(&writes)
                .await
                .map_err(|e| (3, format!("commit {k} failed: {e}")))?;
            let mut line = format!("acked {k}");
            for write in &writes {
                let head = write.journal.last().map_or(0, |r| r.seq);
                line.push_str(&format!(" {}:{}:{head}", write.account_id, write.partition));
            }
            line.push('\n');
            for &i in &touched {
                heads[i as usize] += entries;
            }
            // One small write per line, so a reader never sees half a line;
            // a closed pipe means the parent is gone.
            if stdout
                .write_all(line.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                std::process::exit(0);
            }
        }
    })
}
