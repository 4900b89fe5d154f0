//! Every CQL statement the ScyllaDB store runs, prepared once per session
//! and cached here, and how a planned `Mutation` binds to its statement.
//! (The schema itself lives in `schemas/cql/billstream.cql`.)

use scylla::client::session::Session;
use scylla::frame::types::Consistency;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::serialize::SerializationError;
use scylla::statement::prepared::PreparedStatement;

use super::plan::Mutation;
use crate::store::StoreError;

/// The statement texts for keyspace `ks`, by name (one list, so a test can
/// check them all and `prepare` cannot miss one).
pub fn texts(ks: &str) -> Vec<(&'static str, String)> {
    vec![
        ("select_owner", format!("SELECT epoch FROM {ks}.partition_owners WHERE partition = ?")),
        ("select_owner_serial", format!("SELECT epoch FROM {ks}.partition_owners WHERE partition = ?")),
        (
            "claim_first",
            format!("INSERT INTO {ks}.partition_owners (partition, epoch, owner, claimed_at) VALUES (?, ?, ?, ?) IF NOT EXISTS"),
        ),
        (
            "claim_next",
            format!("UPDATE {ks}.partition_owners SET epoch = ?, owner = ?, claimed_at = ? WHERE partition = ? IF epoch = ?"),
        ),
        (
            "select_account",
            format!(
                "SELECT partition, snapshot, journal_head, published_upto, next_timer, input_offsets, fenced_ranges, \
                 dead_letters, WRITETIME(snapshot), WRITETIME(published_upto) FROM {ks}.accounts WHERE account_id = ?"
            ),
        ),
        (
            "select_timer_of",
            format!("SELECT partition, next_timer FROM {ks}.accounts WHERE account_id = ?"),
        ),
        (
            "select_journal",
            format!(
                "SELECT seq, at, entry FROM {ks}.journal WHERE account_id = ? AND block = ? AND seq >= ? AND seq <= ? LIMIT ?"
            ),
        ),
        (
            "update_account",
            format!(
                "UPDATE {ks}.accounts USING TIMESTAMP ? SET partition = ?, snapshot = ?, journal_head = ?, \
                 published_upto = ?, next_timer = ?, input_offsets = ?, fenced_ranges = ?, dead_letters = ? \
                 WHERE account_id = ?"
            ),
        ),
        (
            "insert_journal",
            format!(
                "INSERT INTO {ks}.journal (account_id, block, seq, at, entry) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ),
        ),
        (
            "select_head",
            format!("SELECT journal_head FROM {ks}.accounts WHERE account_id = ?"),
        ),
        (
            "update_published",
            format!("UPDATE {ks}.accounts USING TIMESTAMP ? SET published_upto = ? WHERE account_id = ?"),
        ),
        (
            "insert_invoice",
            format!("INSERT INTO {ks}.invoices (account_id, invoice_id, document) VALUES (?, ?, ?) USING TIMESTAMP ?"),
        ),
        (
            "select_invoice",
            format!("SELECT document FROM {ks}.invoices WHERE account_id = ? AND invoice_id = ?"),
        ),
        (
            "select_invoices",
            format!("SELECT invoice_id, document FROM {ks}.invoices WHERE account_id = ?"),
        ),
        (
            "insert_dedup",
            format!(
                "INSERT INTO {ks}.dedup (account_id, seen_at, event_key, fingerprint) VALUES (?, ?, ?, ?) \
                 USING TTL ? AND TIMESTAMP ?"
            ),
        ),
        (
            "select_dedup",
            format!(
                "SELECT seen_at, event_key, fingerprint, WRITETIME(fingerprint) FROM {ks}.dedup \
                 WHERE account_id = ? AND seen_at >= ?"
            ),
        ),
        (
            "insert_timer",
            format!("INSERT INTO {ks}.timers (partition, bucket, at, account_id) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
        ),
        (
            "delete_timer",
            format!(
                "DELETE FROM {ks}.timers USING TIMESTAMP ? WHERE partition = ? AND bucket = ? AND at = ? AND account_id = ?"
            ),
        ),
        (
            "select_timers",
            format!("SELECT at, account_id FROM {ks}.timers WHERE partition = ? AND bucket = ? AND at <= ?"),
        ),
        (
            "insert_bucket",
            format!("INSERT INTO {ks}.timer_buckets (partition, bucket) VALUES (?, ?) USING TIMESTAMP ?"),
        ),
        (
            "select_buckets",
            format!("SELECT bucket FROM {ks}.timer_buckets WHERE partition = ? AND bucket >= ? AND bucket <= ?"),
        ),
        (
            "insert_partition_account",
            format!("INSERT INTO {ks}.partition_accounts (partition, account_id) VALUES (?, ?) USING TIMESTAMP ?"),
        ),
        (
            "delete_partition_account",
            format!("DELETE FROM {ks}.partition_accounts USING TIMESTAMP ? WHERE partition = ? AND account_id = ?"),
        ),
        (
            "select_partition_accounts",
            format!("SELECT account_id FROM {ks}.partition_accounts WHERE partition = ?"),
        ),
        (
            // Partition keys only: a scan of the token ring, paged.
            "select_all_accounts",
            format!("SELECT DISTINCT account_id FROM {ks}.accounts"),
        ),
    ]
}

/// The prepared statements of one session.
#[derive(Debug)]
pub struct Statements {
    pub select_owner: PreparedStatement,
    pub select_owner_serial: PreparedStatement,
    pub claim_first: PreparedStatement,
    pub claim_next: PreparedStatement,
    pub select_account: PreparedStatement,
    pub select_timer_of: PreparedStatement,
    pub select_journal: PreparedStatement,
    pub update_account: PreparedStatement,
    pub insert_journal: PreparedStatement,
    pub select_head: PreparedStatement,
    pub update_published: PreparedStatement,
    pub insert_invoice: PreparedStatement,
    pub select_invoice: PreparedStatement,
    pub select_invoices: PreparedStatement,
    pub insert_dedup: PreparedStatement,
    pub select_dedup: PreparedStatement,
    pub insert_timer: PreparedStatement,
    pub delete_timer: PreparedStatement,
    pub select_timers: PreparedStatement,
    pub insert_bucket: PreparedStatement,
    pub select_buckets: PreparedStatement,
    pub insert_partition_account: PreparedStatement,
    pub delete_partition_account: PreparedStatement,
    pub select_partition_accounts: PreparedStatement,
    pub select_all_accounts: PreparedStatement,
}

/// Rows per page of every paged read.
pub const PAGE_ROWS: i32 = 1_000;

impl Statements {
    /// Prepares every statement on `session`. A missing keyspace or table
    /// fails here, naming `billstream migrate`.
    pub async fn prepare(session: &Session, keyspace: &str) -> Result<Statements, StoreError> {
        let mut prepared = std::collections::HashMap::new();
        for (name, text) in texts(keyspace) {
            let mut statement = session.prepare(text).await.map_err(|e| {
                StoreError::Backend(format!(
                    "scylla store: cannot prepare {name} in keyspace {keyspace} ({e}); has `billstream migrate` been run?"
                ))
            })?;
            statement.set_page_size(PAGE_ROWS);
            // Every write carries its own timestamp, so sending it again
            // (a retry after a timeout) changes nothing: idempotent. The
            // claims (IF ...) are not.
            statement.set_is_idempotent(!name.starts_with("claim_"));
            if let Some(consistency) = consistency_of(name) {
                statement.set_consistency(consistency);
            }
            prepared.insert(name, statement);
        }
        let mut take = |name: &str| {
            prepared.remove(name).ok_or_else(|| {
                StoreError::Backend(format!("scylla store: statement {name} missing"))
            })
        };
        Ok(Statements {
            select_owner: take("select_owner")?,
            select_owner_serial: take("select_owner_serial")?,
            claim_first: take("claim_first")?,
            claim_next: take("claim_next")?,
            select_account: take("select_account")?,
            select_timer_of: take("select_timer_of")?,
            select_journal: take("select_journal")?,
            update_account: take("update_account")?,
            insert_journal: take("insert_journal")?,
            select_head: take("select_head")?,
            update_published: take("update_published")?,
            insert_invoice: take("insert_invoice")?,
            select_invoice: take("select_invoice")?,
            select_invoices: take("select_invoices")?,
            insert_dedup: take("insert_dedup")?,
            select_dedup: take("select_dedup")?,
            insert_timer: take("insert_timer")?,
            delete_timer: take("delete_timer")?,
            select_timers: take("select_timers")?,
            insert_bucket: take("insert_bucket")?,
            select_buckets: take("select_buckets")?,
            insert_partition_account: take("insert_partition_account")?,
            delete_partition_account: take("delete_partition_account")?,
            select_partition_accounts: take("select_partition_accounts")?,
            select_all_accounts: take("select_all_accounts")?,
        })
    }

    /// The statement a mutation binds to.
    pub fn for_mutation(&self, m: &Mutation<'_>) -> &PreparedStatement {
        match m {
            Mutation::Account { .. } => &self.update_account,
            Mutation::Journal { .. } => &self.insert_journal,
            Mutation::Invoice { .. } => &self.insert_invoice,
            Mutation::Dedup { .. } => &self.insert_dedup,
            Mutation::TimerInsert { .. } => &self.insert_timer,
            Mutation::TimerDelete { .. } => &self.delete_timer,
            Mutation::BucketInsert { .. } => &self.insert_bucket,
            Mutation::PartitionAccountInsert { .. } => &self.insert_partition_account,
            Mutation::PartitionAccountDelete { .. } => &self.delete_partition_account,
        }
    }
}

/// A mutation's bound values, in the order of its statement's markers
/// (see `texts`).
/// The consistency of a statement that does not use the session's
/// (LOCAL_QUORUM): the read a claim starts from is linearizable with the
/// claims, as they are.
pub fn consistency_of(name: &str) -> Option<Consistency> {
    (name == "select_owner_serial").then_some(Consistency::Serial)
}

impl SerializeRow for Mutation<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        match self {
            Mutation::Account {
                account_id,
                stamp,
                partition,
                snapshot,
                journal_head,
                published_upto,
                next_timer,
                offsets,
                fenced,
                dead_letters,
            } => (
                stamp,
                partition,
                snapshot,
                journal_head,
                published_upto,
                next_timer,
                offsets,
                fenced,
                dead_letters,
                account_id,
            )
                .serialize(ctx, writer),
            Mutation::Journal {
                account_id,
                stamp,
                block,
                seq,
                at,
                entry,
            } => (account_id, block, seq, at, entry, stamp).serialize(ctx, writer),
            Mutation::Invoice {
                account_id,
                stamp,
                invoice_id,
                document,
            } => (account_id, invoice_id, document, stamp).serialize(ctx, writer),
            Mutation::Dedup {
                account_id,
                stamp,
                ttl_secs,
                seen_at,
                event_key,
                fingerprint,
            } => (
                account_id,
                seen_at,
                &event_key[..],
                fingerprint,
                ttl_secs,
                stamp,
            )
                .serialize(ctx, writer),
            Mutation::TimerInsert {
                account_id,
                stamp,
                partition,
                bucket,
                at,
            } => (partition, bucket, at, account_id, stamp).serialize(ctx, writer),
            Mutation::TimerDelete {
                account_id,
                stamp,
                partition,
                bucket,
                at,
            } => (stamp, partition, bucket, at, account_id).serialize(ctx, writer),
            Mutation::BucketInsert {
                stamp,
                partition,
                bucket,
            } => (partition, bucket, stamp).serialize(ctx, writer),
            Mutation::PartitionAccountInsert {
                account_id,
                stamp,
                partition,
            } => (partition, account_id, stamp).serialize(ctx, writer),
            Mutation::PartitionAccountDelete {
                account_id,
                stamp,
                partition,
            } => (stamp, partition, account_id).serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_carries_a_timestamp_and_nothing_deletes_billing_records() {
        for (name, text) in texts("ks") {
            let upper = text.to_ascii_uppercase();
            let writes = upper.starts_with("INSERT")
                || upper.starts_with("UPDATE")
                || upper.starts_with("DELETE");
            if writes && !name.starts_with("claim_") {
                assert!(
                    upper.contains("USING TIMESTAMP ?") || upper.contains("AND TIMESTAMP ?"),
                    "{name}: {text}"
                );
            }
            if name.starts_with("claim_") {
                assert!(
                    upper.contains(" IF "),
                    "{name} must be a lightweight transaction"
                );
            }
            if upper.starts_with("DELETE") {
                assert!(
                    upper.starts_with("DELETE FROM KS.TIMERS ")
                        || upper.starts_with("DELETE FROM KS.PARTITION_ACCOUNTS "),
                    "{name} deletes from a table of record: {text}"
                );
            }
            assert!(!text.contains("ALLOW FILTERING"), "{name} filters: {text}");
        }
    }

    #[test]
    fn statement_names_are_unique() {
        let mut names: Vec<&str> = texts("ks").into_iter().map(|(n, _)| n).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
    }

    /// The number of `?` markers of each statement matches the number of
    /// values its mutation binds (checked by the driver at run time; here
    /// without a database).
    #[test]
    fn markers_match_bound_values() {
        let markers = |name: &str| {
            texts("ks")
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.matches('?').count())
                .unwrap()
        };
        assert_eq!(markers("update_account"), 10);
        assert_eq!(markers("insert_journal"), 6);
        assert_eq!(markers("insert_invoice"), 4);
        assert_eq!(markers("insert_dedup"), 6);
        assert_eq!(markers("insert_timer"), 5);
        assert_eq!(markers("delete_timer"), 5);
        assert_eq!(markers("insert_bucket"), 3);
        assert_eq!(markers("insert_partition_account"), 3);
        assert_eq!(markers("delete_partition_account"), 3);
    }
}
