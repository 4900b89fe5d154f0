//! Operation counters for the state store, shared by every backend.
//!
//! The cost of billing is dominated by store round trips, so each store
//! counts what it was asked to do, by kind, with plain atomics (no lock on
//! the hot path). The embedded store and the ScyllaDB store fill the same
//! struct, which lets benchmarks report "state writes per event" for either
//! backend and lets telemetry export the counters with `StoreOp::name()` as a
//! small, fixed label set.

use std::sync::atomic::{AtomicU64, Ordering};

/// One kind of store operation.
///
/// Every call of a `StateStore` method counts once under its kind, whether
/// it succeeds or not; a failed call also counts once in the error counter
/// of its kind. `AccountWrite` counts the per-account writes carried by
/// `commit` calls (one per `AccountWrite`, i.e. one "state write"), next to
/// the one `Commit` for the call itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreOp {
    /// One account's write inside a `commit` call.
    AccountWrite,
    /// One `commit` call (one transaction or batch on the backend).
    Commit,
    /// `load_account`.
    LoadAccount,
    /// `load_dedup`.
    LoadDedup,
    /// `read_journal` (one page).
    ReadJournal,
    /// `mark_published`.
    MarkPublished,
    /// `invoice` (one document).
    ReadInvoice,
    /// `invoices` (all documents of an account).
    ListInvoices,
    /// `due_timers`.
    DueTimers,
    /// `accounts` (all accounts of a partition) and `all_accounts`.
    ListAccounts,
    /// `claim_partition`.
    ClaimPartition,
    /// `load_partition` read in one pass (stores that override it).
    LoadPartition,
}

impl StoreOp {
    /// Every kind, in a fixed order (the order of `StoreStats::snapshot`).
    pub const ALL: [StoreOp; 12] = [
        StoreOp::AccountWrite,
        StoreOp::Commit,
        StoreOp::LoadAccount,
        StoreOp::LoadDedup,
        StoreOp::ReadJournal,
        StoreOp::MarkPublished,
        StoreOp::ReadInvoice,
        StoreOp::ListInvoices,
        StoreOp::DueTimers,
        StoreOp::ListAccounts,
        StoreOp::ClaimPartition,
        StoreOp::LoadPartition,
    ];

    /// Stable snake_case name, used as a metric label value.
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::AccountWrite => "account_write",
            StoreOp::Commit => "commit",
            StoreOp::LoadAccount => "load_account",
            StoreOp::LoadDedup => "load_dedup",
            StoreOp::ReadJournal => "read_journal",
            StoreOp::MarkPublished => "mark_published",
            StoreOp::ReadInvoice => "read_invoice",
            StoreOp::ListInvoices => "list_invoices",
            StoreOp::DueTimers => "due_timers",
            StoreOp::ListAccounts => "list_accounts",
            StoreOp::ClaimPartition => "claim_partition",
            StoreOp::LoadPartition => "load_partition",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const KINDS: usize = StoreOp::ALL.len();

/// Lock-free counters of store operations and of failed operations, by kind.
#[derive(Debug, Default)]
pub struct StoreStats {
    ops: [AtomicU64; KINDS],
    errors: [AtomicU64; KINDS],
}

impl StoreStats {
    /// All counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one operation of kind `op`.
    pub fn record(&self, op: StoreOp) {
        self.record_n(op, 1);
    }

    /// Count `n` operations of kind `op` (e.g. the account writes of a commit).
    pub fn record_n(&self, op: StoreOp, n: u64) {
        self.ops[op.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Count one failed operation of kind `op`.
    pub fn record_error(&self, op: StoreOp) {
        self.errors[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Operations of kind `op` so far.
    pub fn get(&self, op: StoreOp) -> u64 {
        self.ops[op.index()].load(Ordering::Relaxed)
    }

    /// Failed operations of kind `op` so far.
    pub fn errors(&self, op: StoreOp) -> u64 {
        self.errors[op.index()].load(Ordering::Relaxed)
    }

    /// Every operation counter, in `StoreOp::ALL` order.
    pub fn snapshot(&self) -> Vec<(StoreOp, u64)> {
        StoreOp::ALL.iter().map(|&op| (op, self.get(op))).collect()
    }

    /// Every error counter, in `StoreOp::ALL` order.
    pub fn error_snapshot(&self) -> Vec<(StoreOp, u64)> {
        StoreOp::ALL
            .iter()
            .map(|&op| (op, self.errors(op)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kind_once_in_index_order() {
        for (i, op) in StoreOp::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?} is out of order in StoreOp::ALL");
        }
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<&str> = StoreOp::ALL.iter().map(|op| op.name()).collect();
        for name in &names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name} is not snake_case"
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS, "two kinds share a name");
    }

    #[test]
    fn counts_ops_and_errors_separately() {
        let stats = StoreStats::new();
        stats.record(StoreOp::Commit);
        stats.record_n(StoreOp::AccountWrite, 3);
        stats.record_error(StoreOp::Commit);
        assert_eq!(stats.get(StoreOp::Commit), 1);
        assert_eq!(stats.get(StoreOp::AccountWrite), 3);
        assert_eq!(stats.errors(StoreOp::Commit), 1);
        assert_eq!(stats.errors(StoreOp::AccountWrite), 0);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.len(), KINDS);
        assert_eq!(snapshot[0], (StoreOp::AccountWrite, 3));
        assert_eq!(snapshot[1], (StoreOp::Commit, 1));
    }
}
