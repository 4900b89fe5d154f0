//! The `StateStore` contract, written once and run against every store.
//!
//! `behaviours` holds one generic async function per rule of the contract;
//! each takes a fresh, empty store (and, for `reopen_keeps_everything`, a way
//! to open the same store again). The `embedded` module runs every behaviour
//! on an `EmbeddedStore` in its own temporary directory.
//!
//! To run the suite on ScyllaDB, add a second wrapper module next to
//! `embedded` whose constructor returns early (test passes as a no-op)
//! unless `BILLSTREAM_SCYLLA_NODES` is set, and otherwise opens the store on
//! a fresh keyspace with a random suffix, e.g.
//!
//! ```ignore
//! mod scylla {
//!     conformance_wrappers! {
//!         fresh: match fresh_keyspace_store().await { Some(pair) => pair, None => return },
//!         reopen: |keyspace: &FreshKeyspace| keyspace.open_store(),
//!     }
//! }
//! ```
//!
//! The list of behaviours lives in `conformance_wrappers!`, so both backends
//! always run the same suite; nothing in `behaviours` may depend on the
//! backend.
//!
//! The `scylla` module below is that wrapper: with
//! `BILLSTREAM_SCYLLA_NODES=127.0.0.1:9042` (see `docker-compose.yml`) each
//! behaviour runs on a fresh keyspace `billstream_test_<random>`
//! (SimpleStrategy, factor 1), created by the same migration as
//! `billstream migrate`; without it each test prints that it was skipped
//! and passes. Test keyspaces are left behind for inspection.

use std::future::Future;
use std::time::Duration;

/// Longest any single behaviour may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one behaviour with a timeout, so a hung store fails the test.
async fn within_timeout(name: &str, behaviour: impl Future<Output = ()>) {
    if tokio::time::timeout(TIMEOUT, behaviour).await.is_err() {
        panic!("store behaviour {name} did not finish within {TIMEOUT:?}");
    }
}

pub mod behaviours {
    use billstream::store::{
        AccountWrite, DeadLetterRecord, DedupRecord, InputOffset, InvoiceRecord, JournalRecord,
        StateStore, StoreError, StoreOp,
    };

    /// A write of `account` in `partition` appending journal `seqs`, with a
    /// snapshot naming the last seq (so a test can tell snapshots apart).
    pub(crate) fn write(
        account: &str,
        partition: u32,
        epoch: u64,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> AccountWrite {
        let head = *seqs.end();
        AccountWrite {
            account_id: account.to_owned(),
            partition,
            epoch,
            snapshot: format!("{account}@{head}").into_bytes(),
            journal: seqs
                .map(|seq| JournalRecord {
                    seq,
                    at: seq as i64 * 1_000,
                    bytes: format!("{account}#{seq}").into_bytes(),
                })
                .collect(),
            invoices: Vec::new(),
            dedup: Vec::new(),
            next_timer: None,
            offsets: Vec::new(),
            published_upto: None,
            dead_letters: Vec::new(),
            dead_letters_published: Vec::new(),
        }
    }

    /// A write of `account` that appends nothing and sets only the timer.
    fn timer_write(account: &str, partition: u32, at: Option<i64>) -> AccountWrite {
        AccountWrite {
            account_id: account.to_owned(),
            partition,
            epoch: 0,
            snapshot: format!("{account} timer {at:?}").into_bytes(),
            journal: Vec::new(),
            invoices: Vec::new(),
            dedup: Vec::new(),
            next_timer: at,
            offsets: Vec::new(),
            published_upto: None,
            dead_letters: Vec::new(),
            dead_letters_published: Vec::new(),
        }
    }

    async fn head_of<S: StateStore>(store: &S, account: &str) -> Option<u64> {
        store
            .load_account(account)
            .await
            .unwrap()
            .map(|a| a.journal_head)
    }

    async fn published_upto<S: StateStore>(store: &S, account: &str) -> u64 {
        store
            .load_account(account)
            .await
            .unwrap()
            .expect("account exists")
            .published_upto
    }

    pub async fn load_of_unknown_account_is_none<S: StateStore>(store: S) {
        assert_eq!(store.load_account("nobody").await.unwrap(), None);
        assert!(store
            .read_journal("nobody", 1, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(store.invoices("nobody").await.unwrap().is_empty());
        assert_eq!(store.invoice("nobody", "inv-1").await.unwrap(), None);
        assert!(store
            .load_dedup("nobody", i64::MIN)
            .await
            .unwrap()
            .is_empty());
        assert!(store.accounts(0).await.unwrap().is_empty());
        assert!(store.due_timers(0, i64::MAX, 10).await.unwrap().is_empty());
    }

    pub async fn commit_then_load_returns_latest_snapshot<S: StateStore>(store: S) {
        store.commit(&[write("a", 0, 0, 1..=2)]).await.unwrap();
        let mut second = write("a", 0, 0, 3..=3);
        second.next_timer = Some(42);
        second.offsets = vec![InputOffset {
            topic: "usage".into(),
            partition: 3,
            next: 100,
        }];
        store.commit(&[second]).await.unwrap();

        let loaded = store.load_account("a").await.unwrap().expect("account a");
        assert_eq!(loaded.snapshot, b"a@3");
        assert_eq!(loaded.journal_head, 3);
        assert_eq!(loaded.published_upto, 0);
        assert_eq!(loaded.next_timer, Some(42));
        assert_eq!(
            loaded.offsets,
            vec![InputOffset {
                topic: "usage".into(),
                partition: 3,
                next: 100
            }]
        );
    }

    pub async fn commit_without_journal_keeps_head<S: StateStore>(store: S) {
        store.commit(&[write("a", 0, 0, 1..=2)]).await.unwrap();
        let mut snapshot_only = write("a", 0, 0, 1..=1);
        snapshot_only.journal.clear();
        snapshot_only.snapshot = b"rewritten".to_vec();
        store.commit(&[snapshot_only]).await.unwrap();
        let loaded = store.load_account("a").await.unwrap().unwrap();
        assert_eq!(loaded.snapshot, b"rewritten");
        assert_eq!(loaded.journal_head, 2);
    }

    pub async fn offsets_upserted_per_source<S: StateStore>(store: S) {
        let offset = |topic: &str, partition, next| InputOffset {
            topic: topic.into(),
            partition,
            next,
        };
        let mut first = write("a", 0, 0, 1..=1);
        first.offsets = vec![offset("usage", 0, 10), offset("usage", 1, 5)];
        store.commit(&[first]).await.unwrap();
        let mut second = write("a", 0, 0, 2..=2);
        second.offsets = vec![offset("usage", 1, 7), offset("plans", 0, 1)];
        store
            .commit(&[second, write("b", 0, 0, 1..=1)])
            .await
            .unwrap();

        let mut offsets = store.load_account("a").await.unwrap().unwrap().offsets;
        offsets.sort();
        assert_eq!(
            offsets,
            vec![
                offset("plans", 0, 1),
                offset("usage", 0, 10),
                offset("usage", 1, 7)
            ]
        );
        assert!(store
            .load_account("b")
            .await
            .unwrap()
            .unwrap()
            .offsets
            .is_empty());
    }

    pub async fn journal_append_with_gap_is_rejected_and_writes_nothing<S: StateStore>(store: S) {
        store.commit(&[write("a", 0, 0, 1..=2)]).await.unwrap();

        // A valid write of b and a gapped write of a in one call: neither lands.
        let mut gapped = write("a", 0, 0, 4..=5);
        gapped.invoices = vec![InvoiceRecord {
            invoice_id: "inv-1".into(),
            bytes: b"draft".to_vec(),
        }];
        let err = store
            .commit(&[write("b", 1, 0, 1..=1), gapped])
            .await
            .expect_err("a journal gap must be rejected");
        match err {
            StoreError::JournalSequence {
                account_id,
                expected,
                got,
            } => {
                assert_eq!((account_id.as_str(), expected, got), ("a", 3, 4));
            }
            other => panic!("expected JournalSequence, got {other:?}"),
        }
        assert_eq!(
            store.load_account("b").await.unwrap(),
            None,
            "b was written"
        );
        assert!(store.read_journal("b", 1, 10).await.unwrap().is_empty());
        assert!(store.accounts(1).await.unwrap().is_empty());
        let a = store.load_account("a").await.unwrap().unwrap();
        assert_eq!((a.journal_head, a.snapshot.as_slice()), (2, &b"a@2"[..]));
        assert_eq!(store.invoice("a", "inv-1").await.unwrap(), None);

        // A gap inside one write is a gap too.
        let mut inner_gap = write("a", 0, 0, 3..=3);
        inner_gap.journal.push(JournalRecord {
            seq: 5,
            at: 0,
            bytes: Vec::new(),
        });
        assert!(matches!(
            store.commit(&[inner_gap]).await,
            Err(StoreError::JournalSequence {
                expected: 4,
                got: 5,
                ..
            })
        ));
        assert_eq!(head_of(&store, "a").await, Some(2));

        // The first journal of a new account starts at 1.
        assert!(matches!(
            store.commit(&[write("c", 0, 0, 2..=2)]).await,
            Err(StoreError::JournalSequence {
                expected: 1,
                got: 2,
                ..
            })
        ));
    }

    pub async fn journal_rewrite_of_existing_seq_is_rejected<S: StateStore>(store: S) {
        store.commit(&[write("a", 0, 0, 1..=3)]).await.unwrap();
        let mut rewrite = write("a", 0, 0, 3..=4);
        rewrite.journal[0].bytes = b"forged".to_vec();
        assert!(matches!(
            store.commit(&[rewrite]).await,
            Err(StoreError::JournalSequence {
                expected: 4,
                got: 3,
                ..
            })
        ));
        let journal = store.read_journal("a", 3, 10).await.unwrap();
        assert_eq!(journal.len(), 1);
        assert_eq!(journal[0].bytes, b"a#3");
    }

    pub async fn same_account_twice_in_one_commit_continues_journal<S: StateStore>(store: S) {
        store
            .commit(&[write("a", 0, 0, 1..=2), write("a", 0, 0, 3..=3)])
            .await
            .unwrap();
        let a = store.load_account("a").await.unwrap().unwrap();
        assert_eq!((a.journal_head, a.snapshot.as_slice()), (3, &b"a@3"[..]));
        assert!(matches!(
            store
                .commit(&[write("a", 0, 0, 4..=4), write("a", 0, 0, 4..=4)])
                .await,
            Err(StoreError::JournalSequence {
                expected: 5,
                got: 4,
                ..
            })
        ));
        assert_eq!(head_of(&store, "a").await, Some(3));
    }

    pub async fn journal_pages_in_order<S: StateStore>(store: S) {
        // 25 entries over several commits, plus a neighbour whose entries
        // must never leak into a's pages.
        store.commit(&[write("a", 0, 0, 1..=7)]).await.unwrap();
        store
            .commit(&[write("a", 0, 0, 8..=20), write("a0", 0, 0, 1..=5)])
            .await
            .unwrap();
        store.commit(&[write("a", 0, 0, 21..=25)]).await.unwrap();

        let mut seen = Vec::new();
        let mut from = 1;
        loop {
            let page = store.read_journal("a", from, 10).await.unwrap();
            assert!(page.len() <= 10, "page longer than the limit");
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            seen.extend(page);
        }
        let seqs: Vec<u64> = seen.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
        for record in &seen {
            assert_eq!(record.bytes, format!("a#{}", record.seq).into_bytes());
            assert_eq!(record.at, record.seq as i64 * 1_000);
        }
        let middle = store.read_journal("a", 12, 3).await.unwrap();
        assert_eq!(
            middle.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [12, 13, 14]
        );
        assert!(store.read_journal("a", 26, 10).await.unwrap().is_empty());
        assert!(store.read_journal("a", 1, 0).await.unwrap().is_empty());
    }

    pub async fn stale_epoch_write_is_fenced<S: StateStore>(store: S) {
        // A partition never claimed accepts epoch 0.
        store.commit(&[write("a", 0, 0, 1..=1)]).await.unwrap();

        let old = store.claim_partition(0, "old-owner").await.unwrap();
        store.commit(&[write("a", 0, old, 2..=2)]).await.unwrap();
        let new = store.claim_partition(0, "new-owner").await.unwrap();
        assert!(new > old);

        let err = store
            .commit(&[write("b", 1, 0, 1..=1), write("a", 0, old, 3..=3)])
            .await
            .expect_err("a write with the old epoch must be fenced");
        match err {
            StoreError::Fenced {
                partition,
                current,
                attempted,
            } => assert_eq!((partition, current, attempted), (0, new, old)),
            other => panic!("expected Fenced, got {other:?}"),
        }
        assert_eq!(head_of(&store, "a").await, Some(2));
        assert_eq!(
            store.load_account("b").await.unwrap(),
            None,
            "b was written"
        );
        assert!(matches!(
            store.commit(&[write("c", 0, 0, 1..=1)]).await,
            Err(StoreError::Fenced { .. })
        ));

        // The new owner writes; the old one cannot publish either.
        store.commit(&[write("a", 0, new, 3..=3)]).await.unwrap();
        assert_eq!(head_of(&store, "a").await, Some(3));
        assert!(matches!(
            store.mark_published("a", 0, old, 3).await,
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(
            store
                .load_account("a")
                .await
                .unwrap()
                .unwrap()
                .published_upto,
            0
        );
        // Other partitions are not affected.
        store.commit(&[write("b", 1, 0, 1..=1)]).await.unwrap();
    }

    pub async fn claim_partition_epochs_strictly_increase<S: StateStore>(store: S) {
        let mut last = 0;
        for owner in ["x", "y", "x", "z"] {
            let epoch = store.claim_partition(7, owner).await.unwrap();
            assert!(epoch > last, "epoch {epoch} after {last}");
            last = epoch;
        }
        // Each partition has its own epochs.
        let other = store.claim_partition(8, "x").await.unwrap();
        assert!(other >= 1);
        let again = store.claim_partition(7, "y").await.unwrap();
        assert!(again > last);
    }

    pub async fn due_timers_only_returns_owned_partition_in_time_order<S: StateStore>(store: S) {
        store
            .commit(&[
                timer_write("p0-late", 0, Some(300)),
                timer_write("p0-early", 0, Some(100)),
                timer_write("p1-early", 1, Some(50)),
                timer_write("p0-mid", 0, Some(200)),
                timer_write("p0-none", 0, None),
                timer_write("p0-future", 0, Some(1_000)),
            ])
            .await
            .unwrap();
        store
            .commit(&[timer_write("p0-tie", 0, Some(200))])
            .await
            .unwrap();

        let due = store.due_timers(0, 300, 100).await.unwrap();
        assert_eq!(
            due,
            vec![
                (100, "p0-early".to_owned()),
                (200, "p0-mid".to_owned()),
                (200, "p0-tie".to_owned()),
                (300, "p0-late".to_owned()),
            ]
        );
        assert_eq!(
            store.due_timers(0, 300, 2).await.unwrap(),
            due[..2].to_vec()
        );
        assert_eq!(
            store.due_timers(1, 300, 100).await.unwrap(),
            vec![(50, "p1-early".to_owned())]
        );
        assert!(store.due_timers(0, 99, 100).await.unwrap().is_empty());
        assert!(store.due_timers(2, i64::MAX, 100).await.unwrap().is_empty());
        assert_eq!(store.due_timers(0, i64::MAX, 100).await.unwrap().len(), 5);
    }

    pub async fn timer_replaced_when_account_rescheduled<S: StateStore>(store: S) {
        store
            .commit(&[timer_write("a", 0, Some(100))])
            .await
            .unwrap();
        store
            .commit(&[timer_write("a", 0, Some(500))])
            .await
            .unwrap();
        assert!(store.due_timers(0, 499, 10).await.unwrap().is_empty());
        assert_eq!(
            store.due_timers(0, 500, 10).await.unwrap(),
            vec![(500, "a".to_owned())]
        );
        assert_eq!(
            store.load_account("a").await.unwrap().unwrap().next_timer,
            Some(500)
        );

        // No timer: the account leaves the index.
        store.commit(&[timer_write("a", 0, None)]).await.unwrap();
        assert!(store.due_timers(0, i64::MAX, 10).await.unwrap().is_empty());
        assert_eq!(
            store.load_account("a").await.unwrap().unwrap().next_timer,
            None
        );

        // A failed commit leaves the previous timer in place.
        store
            .commit(&[timer_write("a", 0, Some(700))])
            .await
            .unwrap();
        let mut bad = write("a", 0, 0, 9..=9);
        bad.next_timer = Some(10);
        assert!(store.commit(&[bad]).await.is_err());
        assert_eq!(
            store.due_timers(0, i64::MAX, 10).await.unwrap(),
            vec![(700, "a".to_owned())]
        );
    }

    pub async fn dedup_records_since_window<S: StateStore>(store: S) {
        let record = |key: u128, seen_at| DedupRecord {
            key,
            fingerprint: key as u64 ^ 0xabcd,
            seen_at,
        };
        let mut first = write("a", 0, 0, 1..=1);
        first.dedup = vec![record(1, 100), record(u128::MAX, 200)];
        let mut other = write("b", 0, 0, 1..=1);
        other.dedup = vec![record(9, 250)];
        store.commit(&[first, other]).await.unwrap();
        let mut second = write("a", 0, 0, 2..=2);
        second.dedup = vec![record(3, 300), record(2, 250)];
        store.commit(&[second]).await.unwrap();

        let sorted = |mut v: Vec<DedupRecord>| {
            v.sort_by_key(|r| (r.seen_at, r.key));
            v
        };
        assert_eq!(
            sorted(store.load_dedup("a", i64::MIN).await.unwrap()),
            vec![
                record(1, 100),
                record(u128::MAX, 200),
                record(2, 250),
                record(3, 300)
            ]
        );
        // `since` is inclusive.
        assert_eq!(
            sorted(store.load_dedup("a", 250).await.unwrap()),
            vec![record(2, 250), record(3, 300)]
        );
        assert!(store.load_dedup("a", 301).await.unwrap().is_empty());
        assert_eq!(
            store.load_dedup("b", 0).await.unwrap(),
            vec![record(9, 250)]
        );
    }

    pub async fn invoice_upsert_keeps_latest<S: StateStore>(store: S) {
        let invoice = |id: &str, body: &str| InvoiceRecord {
            invoice_id: id.into(),
            bytes: body.as_bytes().to_vec(),
        };
        let mut first = write("a", 0, 0, 1..=1);
        first.invoices = vec![invoice("inv-2", "draft"), invoice("inv-1", "issued")];
        let mut neighbour = write("a-b", 0, 0, 1..=1);
        neighbour.invoices = vec![invoice("inv-0", "other account")];
        store.commit(&[first, neighbour]).await.unwrap();
        let mut second = write("a", 0, 0, 2..=2);
        second.invoices = vec![invoice("inv-2", "issued")];
        store.commit(&[second]).await.unwrap();

        assert_eq!(
            store.invoice("a", "inv-2").await.unwrap(),
            Some(invoice("inv-2", "issued"))
        );
        assert_eq!(store.invoice("a", "inv-0").await.unwrap(), None);
        assert_eq!(
            store.invoices("a").await.unwrap(),
            vec![invoice("inv-1", "issued"), invoice("inv-2", "issued")]
        );
        assert_eq!(
            store.invoices("a-b").await.unwrap(),
            vec![invoice("inv-0", "other account")]
        );
    }

    /// Issue 15: an account whose one write is far above Cassandra's
    /// 50 KiB batch limit (and ScyllaDB's 1 MiB): a first write with a
    /// big snapshot, many invoice documents, a journal, dedup ids and a
    /// timer (so index rows too), then a write that moves the timer and
    /// rewrites every document. Both land whole.
    pub async fn issue_15_a_large_account_commits_within_the_batch_limits<S: StateStore>(store: S) {
        let documents = |version: &str| -> Vec<InvoiceRecord> {
            (0..300)
                .map(|i| InvoiceRecord {
                    invoice_id: format!("inv-{i:04}"),
                    // ~4 KiB each, ~1.2 MiB in all.
                    bytes: format!("{version}:{}", "line;".repeat(800)).into_bytes(),
                })
                .collect()
        };
        let mut first = write("big", 3, 0, 1..=400);
        for record in &mut first.journal {
            record.bytes = vec![b'j'; 2_000];
        }
        first.snapshot = vec![b's'; 120_000];
        first.invoices = documents("v1");
        first.dedup = (0..200)
            .map(|k| DedupRecord {
                key: k,
                fingerprint: 7,
                seen_at: 1_000,
            })
            .collect();
        first.next_timer = Some(5_000);
        store.commit(&[first]).await.unwrap();

        let mut second = write("big", 3, 0, 401..=401);
        second.snapshot = vec![b't'; 120_000];
        second.invoices = documents("v2");
        second.next_timer = Some(86_400_000_000 * 3);
        store.commit(&[second]).await.unwrap();

        let stored = store.load_account("big").await.unwrap().expect("stored");
        assert_eq!(stored.journal_head, 401);
        assert_eq!(stored.snapshot, vec![b't'; 120_000]);
        assert_eq!(stored.next_timer, Some(86_400_000_000 * 3));
        let invoices = store.invoices("big").await.unwrap();
        assert_eq!(invoices, documents("v2"));
        assert_eq!(
            store.read_journal("big", 1, 1_000).await.unwrap().len(),
            401
        );
        assert_eq!(store.load_dedup("big", 0).await.unwrap().len(), 200);
        assert_eq!(store.accounts(3).await.unwrap(), vec!["big".to_string()]);
        assert!(store.due_timers(3, 10_000, 10).await.unwrap().is_empty());
        assert_eq!(
            store.due_timers(3, 86_400_000_000 * 3, 10).await.unwrap(),
            vec![(86_400_000_000 * 3, "big".to_string())]
        );
    }

    pub async fn published_watermark_never_goes_back<S: StateStore>(store: S) {
        store.commit(&[write("a", 0, 0, 1..=10)]).await.unwrap();
        store.mark_published("a", 0, 0, 4).await.unwrap();
        assert_eq!(published_upto(&store, "a").await, 4);
        store.mark_published("a", 0, 0, 2).await.unwrap();
        assert_eq!(published_upto(&store, "a").await, 4, "watermark went back");
        store.mark_published("a", 0, 0, 10).await.unwrap();
        assert_eq!(published_upto(&store, "a").await, 10);

        // Nothing beyond the journal head can have been published.
        assert!(matches!(
            store.mark_published("a", 0, 0, 11).await,
            Err(StoreError::JournalSequence { .. })
        ));
        assert_eq!(published_upto(&store, "a").await, 10);

        // Later commits keep the watermark and the snapshot keeps its value.
        store.commit(&[write("a", 0, 0, 11..=11)]).await.unwrap();
        let a = store.load_account("a").await.unwrap().unwrap();
        assert_eq!((a.published_upto, a.journal_head), (10, 11));
        assert_eq!(a.snapshot, b"a@11");
    }

    pub async fn published_watermark_rides_on_account_writes<S: StateStore>(store: S) {
        store.commit(&[write("a", 0, 0, 1..=5)]).await.unwrap();
        let mut w = write("a", 0, 0, 6..=6);
        w.published_upto = Some(5);
        store.commit(&[w]).await.unwrap();
        assert_eq!(published_upto(&store, "a").await, 5);
        // Never backwards, never past the journal head.
        let mut w = write("a", 0, 0, 7..=7);
        w.published_upto = Some(3);
        store.commit(&[w]).await.unwrap();
        assert_eq!(published_upto(&store, "a").await, 5);
        let mut w = write("a", 0, 0, 8..=8);
        w.published_upto = Some(99);
        store.commit(&[w]).await.unwrap();
        assert_eq!(published_upto(&store, "a").await, 8);
    }

    fn letter(id: &str) -> DeadLetterRecord {
        DeadLetterRecord {
            id: id.to_owned(),
            bytes: format!("dead letter {id}").into_bytes(),
        }
    }

    async fn kept_letters<S: StateStore>(store: &S, account: &str) -> Vec<String> {
        store
            .load_account(account)
            .await
            .unwrap()
            .expect("account exists")
            .dead_letters
            .into_iter()
            .map(|d| {
                assert_eq!(d.bytes, letter(&d.id).bytes, "bytes of {}", d.id);
                d.id
            })
            .collect()
    }

    /// Issue 12 item 8: a dead letter is written with the account write
    /// that moves the input position past its record, and kept until a
    /// later write says it was acknowledged; a write that fails or is
    /// fenced keeps none of its dead letters.
    pub async fn dead_letters_are_kept_with_the_account_until_acknowledged<S: StateStore>(
        store: S,
    ) {
        let epoch = store.claim_partition(0, "first").await.unwrap();
        let mut w = write("a", 0, epoch, 1..=1);
        w.dead_letters = vec![letter("d2"), letter("d1")];
        w.offsets = vec![InputOffset {
            topic: "usage".into(),
            partition: 0,
            next: 8,
        }];
        store.commit(&[w]).await.unwrap();
        assert_eq!(kept_letters(&store, "a").await, ["d1", "d2"]);

        // A write without dead letters keeps them; one acknowledging d1 and
        // an id never kept drops d1 only, and may add new ones.
        store.commit(&[write("a", 0, epoch, 2..=2)]).await.unwrap();
        assert_eq!(kept_letters(&store, "a").await, ["d1", "d2"]);
        let mut w = write("a", 0, epoch, 3..=3);
        w.dead_letters_published = vec!["d1".into(), "never-kept".into()];
        w.dead_letters = vec![letter("d3")];
        store.commit(&[w]).await.unwrap();
        assert_eq!(kept_letters(&store, "a").await, ["d2", "d3"]);

        // A failed write (journal gap) keeps nothing of it.
        let mut w = write("a", 0, epoch, 9..=9);
        w.dead_letters = vec![letter("d9")];
        w.dead_letters_published = vec!["d2".into()];
        assert!(store.commit(&[w]).await.is_err());
        assert_eq!(kept_letters(&store, "a").await, ["d2", "d3"]);

        // A fenced writer neither adds nor drops any.
        let newer = store.claim_partition(0, "second").await.unwrap();
        let mut w = write("a", 0, epoch, 4..=4);
        w.dead_letters = vec![letter("d8")];
        w.dead_letters_published = vec!["d2".into(), "d3".into()];
        assert!(matches!(
            store.commit(&[w]).await,
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(kept_letters(&store, "a").await, ["d2", "d3"]);

        // The new owner loads them with the partition, and acknowledges them.
        let loaded = store.load_partition(0, Some(0)).await.unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            loaded[0].stored,
            store.load_account("a").await.unwrap().unwrap()
        );
        let mut w = write("a", 0, newer, 4..=4);
        w.dead_letters_published = vec!["d2".into(), "d3".into()];
        store.commit(&[w]).await.unwrap();
        assert!(kept_letters(&store, "a").await.is_empty());
        // Other accounts keep their own.
        let mut w = write("b", 0, newer, 1..=1);
        w.dead_letters = vec![letter("d1")];
        store.commit(&[w]).await.unwrap();
        assert_eq!(kept_letters(&store, "b").await, ["d1"]);
        assert!(kept_letters(&store, "a").await.is_empty());
    }

    pub async fn accounts_listed_per_partition<S: StateStore>(store: S) {
        store
            .commit(&[
                write("b", 1, 0, 1..=1),
                write("a", 1, 0, 1..=1),
                write("c", 2, 0, 1..=1),
            ])
            .await
            .unwrap();
        store.commit(&[write("a", 1, 0, 2..=2)]).await.unwrap();
        let mut p1 = store.accounts(1).await.unwrap();
        p1.sort();
        assert_eq!(p1, ["a", "b"]);
        assert_eq!(store.accounts(2).await.unwrap(), ["c"]);
        assert!(store.accounts(0).await.unwrap().is_empty());
    }

    pub async fn all_accounts_lists_every_partition_and_stops_at_the_limit<S: StateStore>(
        store: S,
    ) {
        assert!(store.all_accounts(10).await.unwrap().is_empty());
        store
            .commit(&[
                write("b", 1, 0, 1..=1),
                write("a", 1, 0, 1..=1),
                write("c", 2, 0, 1..=1),
                write("d", 0, 0, 1..=1),
            ])
            .await
            .unwrap();
        // Written twice, listed once.
        store.commit(&[write("a", 1, 0, 2..=2)]).await.unwrap();
        let mut all = store.all_accounts(10).await.unwrap();
        all.sort();
        assert_eq!(all, ["a", "b", "c", "d"]);
        let mut exact = store.all_accounts(4).await.unwrap();
        exact.sort();
        assert_eq!(exact, ["a", "b", "c", "d"]);
        // A limit cuts the scan short: that many distinct accounts, no more.
        let mut some = store.all_accounts(3).await.unwrap();
        some.sort();
        some.dedup();
        assert_eq!(some.len(), 3, "{some:?}");
        assert!(some.iter().all(|id| all.contains(id)), "{some:?}");
        assert!(store.all_accounts(0).await.unwrap().is_empty());
    }

    pub async fn partition_loads_like_each_account<S: StateStore>(store: S) {
        let record = |key: u128, seen_at| DedupRecord {
            key,
            fingerprint: key as u64,
            seen_at,
        };
        let mut a = write("a", 1, 0, 1..=2);
        a.dedup = vec![record(1, 100), record(2, 300)];
        a.offsets = vec![InputOffset {
            topic: "usage".into(),
            partition: 1,
            next: 7,
        }];
        a.next_timer = Some(5_000);
        let mut b = write("b", 1, 0, 1..=1);
        b.dedup = vec![record(3, 400)];
        store
            .commit(&[a, b, write("c", 2, 0, 1..=1)])
            .await
            .unwrap();
        store.commit(&[write("a", 1, 0, 3..=3)]).await.unwrap();

        let mut loaded = store.load_partition(1, Some(200)).await.unwrap();
        loaded.sort_by(|x, y| x.account_id.cmp(&y.account_id));
        let ids: Vec<&str> = loaded.iter().map(|l| l.account_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        for l in &loaded {
            let one = store.load_account(&l.account_id).await.unwrap().unwrap();
            assert_eq!(l.stored, one, "{}", l.account_id);
            let by_time = |mut v: Vec<DedupRecord>| {
                v.sort_by_key(|r| (r.seen_at, r.key));
                v
            };
            assert_eq!(
                by_time(l.dedup.clone()),
                by_time(store.load_dedup(&l.account_id, 200).await.unwrap())
            );
        }
        assert_eq!(loaded[0].stored.journal_head, 3);
        assert_eq!(loaded[0].stored.snapshot, b"a@3");
        assert_eq!(loaded[0].dedup, vec![record(2, 300)]);
        assert!(store.load_partition(0, Some(0)).await.unwrap().is_empty());
        // Without a dedup instant: the same accounts, no dedup read.
        let mut bare = store.load_partition(1, None).await.unwrap();
        bare.sort_by(|x, y| x.account_id.cmp(&y.account_id));
        assert_eq!(bare.len(), loaded.len());
        for (b, l) in bare.iter().zip(&loaded) {
            assert_eq!((&b.account_id, &b.stored), (&l.account_id, &l.stored));
            assert!(b.dedup.is_empty(), "{}", b.account_id);
        }
    }

    pub async fn stats_count_each_operation<S: StateStore>(store: S) {
        for (op, n) in store.stats().snapshot() {
            assert_eq!(n, 0, "fresh store has {n} {} ops", op.name());
        }
        store
            .commit(&[write("a", 0, 0, 1..=1), write("b", 0, 0, 1..=1)])
            .await
            .unwrap();
        store.commit(&[write("a", 0, 0, 2..=2)]).await.unwrap();
        assert!(store.commit(&[write("a", 0, 0, 9..=9)]).await.is_err());
        store.load_account("a").await.unwrap();
        store.load_dedup("a", 0).await.unwrap();
        store.read_journal("a", 1, 10).await.unwrap();
        store.mark_published("a", 0, 0, 1).await.unwrap();
        store.invoice("a", "inv").await.unwrap();
        store.invoices("a").await.unwrap();
        store.due_timers(0, 0, 10).await.unwrap();
        store.accounts(0).await.unwrap();
        store.claim_partition(0, "me").await.unwrap();

        let stats = store.stats();
        let expected = [
            (StoreOp::AccountWrite, 4),
            (StoreOp::Commit, 3),
            (StoreOp::LoadAccount, 1),
            (StoreOp::LoadDedup, 1),
            (StoreOp::ReadJournal, 1),
            (StoreOp::MarkPublished, 1),
            (StoreOp::ReadInvoice, 1),
            (StoreOp::ListInvoices, 1),
            (StoreOp::DueTimers, 1),
            (StoreOp::ListAccounts, 1),
            (StoreOp::ClaimPartition, 1),
        ];
        for (op, n) in expected {
            assert_eq!(stats.get(op), n, "count of {}", op.name());
        }
        assert_eq!(stats.snapshot().len(), StoreOp::ALL.len());
        assert_eq!(stats.errors(StoreOp::Commit), 1);
        assert_eq!(stats.errors(StoreOp::LoadAccount), 0);
    }

    /// `reopen` must open the same store again once the first handle is
    /// dropped.
    pub async fn reopen_keeps_everything<S, F, Fut>(store: S, reopen: F)
    where
        S: StateStore,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = S>,
    {
        let epoch = store.claim_partition(3, "first").await.unwrap();
        let mut w = write("a", 3, epoch, 1..=4);
        w.invoices = vec![InvoiceRecord {
            invoice_id: "inv-1".into(),
            bytes: b"issued".to_vec(),
        }];
        w.dedup = vec![DedupRecord {
            key: 77,
            fingerprint: 5,
            seen_at: 1_000,
        }];
        w.next_timer = Some(9_000);
        w.offsets = vec![InputOffset {
            topic: "usage".into(),
            partition: 1,
            next: 55,
        }];
        w.dead_letters = vec![letter("d1")];
        store.commit(&[w]).await.unwrap();
        store.mark_published("a", 3, epoch, 2).await.unwrap();
        let before = store.load_account("a").await.unwrap().unwrap();
        assert_eq!(before.dead_letters, [letter("d1")]);
        drop(store);

        let store = reopen().await;
        assert_eq!(store.load_account("a").await.unwrap().unwrap(), before);
        assert_eq!(before.published_upto, 2);
        assert_eq!(store.read_journal("a", 1, 100).await.unwrap().len(), 4);
        assert_eq!(store.invoices("a").await.unwrap().len(), 1);
        assert_eq!(store.load_dedup("a", 0).await.unwrap().len(), 1);
        assert_eq!(
            store.due_timers(3, i64::MAX, 10).await.unwrap(),
            vec![(9_000, "a".to_owned())]
        );
        assert_eq!(store.accounts(3).await.unwrap(), ["a"]);
        // Epochs survive too: the next claim is newer, the old one is fenced.
        let next = store.claim_partition(3, "second").await.unwrap();
        assert!(next > epoch);
        assert!(matches!(
            store.commit(&[write("a", 3, epoch, 5..=5)]).await,
            Err(StoreError::Fenced { .. })
        ));
    }
}

/// Declares one `#[tokio::test]` per behaviour in the calling module, which
/// must be a child of this one.
///
/// `fresh` is an expression (it may `.await` or `return`) giving
/// `(guard, store)`: a fresh, empty store and a guard keeping its resources
/// (directory, keyspace) alive for the test. `reopen` is a closure from
/// `&guard` to a future of a store opened on the same data.
///
/// Add every new behaviour to this list, and only here.
macro_rules! conformance_wrappers {
    (fresh: $fresh:expr, reopen: $reopen:expr $(,)?) => {
        conformance_wrappers!(@each $fresh;
            load_of_unknown_account_is_none,
            commit_then_load_returns_latest_snapshot,
            commit_without_journal_keeps_head,
            offsets_upserted_per_source,
            journal_append_with_gap_is_rejected_and_writes_nothing,
            journal_rewrite_of_existing_seq_is_rejected,
            same_account_twice_in_one_commit_continues_journal,
            journal_pages_in_order,
            stale_epoch_write_is_fenced,
            claim_partition_epochs_strictly_increase,
            due_timers_only_returns_owned_partition_in_time_order,
            timer_replaced_when_account_rescheduled,
            dedup_records_since_window,
            invoice_upsert_keeps_latest,
            issue_15_a_large_account_commits_within_the_batch_limits,
            published_watermark_never_goes_back,
            published_watermark_rides_on_account_writes,
            dead_letters_are_kept_with_the_account_until_acknowledged,
            accounts_listed_per_partition,
            all_accounts_lists_every_partition_and_stops_at_the_limit,
            partition_loads_like_each_account,
            stats_count_each_operation,
        );

        #[tokio::test]
        async fn reopen_keeps_everything() {
            let (guard, store) = $fresh;
            let reopen = || ($reopen)(&guard);
            super::within_timeout(
                "reopen_keeps_everything",
                super::behaviours::reopen_keeps_everything(store, reopen),
            )
            .await;
        }
    };
    (@each $fresh:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_guard, store) = $fresh;
                super::within_timeout(
                    stringify!($name),
                    super::behaviours::$name(store),
                )
                .await;
            }
        )*
    };
}

mod embedded {
    use billstream::store::EmbeddedStore;
    use tempfile::TempDir;

    fn fresh() -> (TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = EmbeddedStore::open(dir.path()).expect("open embedded store");
        (dir, store)
    }

    conformance_wrappers! {
        fresh: fresh(),
        reopen: |dir: &TempDir| {
            std::future::ready(EmbeddedStore::open(dir.path()).expect("reopen embedded store"))
        },
    }

    #[test]
    fn open_reports_the_path_it_could_not_use() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"file").unwrap();
        let err = EmbeddedStore::open(&blocker.join("store")).expect_err("open under a file");
        assert!(
            err.to_string().contains("not-a-dir"),
            "error does not name the path: {err}"
        );
    }
}

mod scylla {
    use billstream::config::{BasicAuth, Replication, ScyllaSettings};
    use billstream::store::scylla::{
        connect_session, detect_backend, migrate, render_schema, schema_statements, Backend,
    };
    use billstream::store::ScyllaStore;

    /// A keyspace of its own for one test (left behind afterwards).
    pub struct FreshKeyspace {
        settings: ScyllaSettings,
    }

    impl FreshKeyspace {
        pub fn open_store(&self) -> impl std::future::Future<Output = ScyllaStore> + 'static {
            let settings = self.settings.clone();
            async move {
                ScyllaStore::connect(&settings)
                    .await
                    .expect("connect to the test keyspace")
            }
        }
    }

    /// Settings for a fresh keyspace `billstream_test_<random>` (not yet
    /// created), or `None` (test skipped) when `BILLSTREAM_SCYLLA_NODES` is
    /// not set.
    pub fn fresh_settings() -> Option<ScyllaSettings> {
        let Ok(nodes) = std::env::var("BILLSTREAM_SCYLLA_NODES") else {
            println!("skipped: BILLSTREAM_SCYLLA_NODES is not set (no ScyllaDB to run the live store suite on)");
            return None;
        };
        Some(ScyllaSettings {
            nodes: nodes.split(',').map(|n| n.trim().to_string()).collect(),
            keyspace: format!("billstream_test_{:016x}", rand::random::<u64>()),
            replication: Replication::Simple { factor: 1 },
            local_datacenter: None,
            dedup_ttl: std::time::Duration::from_secs(36 * 86_400),
            // A server with PasswordAuthenticator (services.sh with
            // BILLSTREAM_CASSANDRA_AUTH=1 prints both).
            auth: std::env::var("BILLSTREAM_SCYLLA_USERNAME")
                .ok()
                .map(|username| BasicAuth {
                    username,
                    password: std::env::var("BILLSTREAM_SCYLLA_PASSWORD").unwrap_or_default(),
                }),
            tls_ca_file: None,
        })
    }

    /// A store on a fresh keyspace, or `None` (test skipped) when
    /// `BILLSTREAM_SCYLLA_NODES` is not set.
    pub async fn fresh_keyspace_store() -> Option<(FreshKeyspace, ScyllaStore)> {
        let settings = fresh_settings()?;
        migrate(&settings)
            .await
            .expect("create the test keyspace (is ScyllaDB up?)");
        let keyspace = FreshKeyspace { settings };
        let store = keyspace.open_store().await;
        Some((keyspace, store))
    }

    /// Runs the schema's statements with `edit` applied to each (a keyspace
    /// as an older or hand-made schema left it).
    async fn create_schema_as(settings: &ScyllaSettings, edit: impl Fn(&str) -> String) {
        let session = connect_session(settings).await.expect("connect");
        let server = detect_backend(&session).await.expect("detect the server");
        let cql = render_schema(&settings.keyspace, &settings.replication, Some(&server));
        for statement in schema_statements(&cql) {
            session
                .query_unpaged(edit(&statement), ())
                .await
                .expect("create the old schema");
        }
        session.await_schema_agreement().await.expect("agreement");
    }

    #[tokio::test]
    async fn issue_15_migrate_adds_a_column_a_keyspace_made_before_it_lacks() {
        let Some(settings) = fresh_settings() else {
            return;
        };
        // `accounts` as a billstream from before `dead_letters` made it.
        create_schema_as(&settings, |statement| {
            statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("dead_letters "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .await;
        let run = migrate(&settings)
            .await
            .expect("migrate an older keyspace")
            .statements;
        let alter = format!(
            "ALTER TABLE {}.accounts ADD dead_letters frozen<map<text, blob>>",
            settings.keyspace
        );
        assert!(run.contains(&alter), "{run:#?}");
        let store = ScyllaStore::connect(&settings)
            .await
            .expect("the store opens on the migrated keyspace");
        super::within_timeout(
            "dead letters on a migrated keyspace",
            super::behaviours::dead_letters_are_kept_with_the_account_until_acknowledged(store),
        )
        .await;
        let again = migrate(&settings).await.expect("migrate again").statements;
        assert!(
            !again.iter().any(|s| s.starts_with("ALTER")),
            "nothing left to add: {again:#?}"
        );
    }

    /// Issue 15: migrate asks the server what it is and creates the
    /// keyspace with tablets disabled only where they would be on by
    /// default (ScyllaDB 6+, NetworkTopologyStrategy); on Cassandra,
    /// without the option (which Cassandra does not have).
    #[tokio::test]
    async fn issue_15_migrate_detects_the_server_and_disables_tablets_only_on_scylladb() {
        let Some(mut settings) = fresh_settings() else {
            return;
        };
        // What a production keyspace uses (one datacenter of factor 1
        // here), so ScyllaDB 6+ would give it tablets.
        settings.replication = Replication::NetworkTopology { factor: 1 };
        let migration = migrate(&settings).await.expect("migrate");
        println!("server: {}", migration.backend);
        let keyspace = &migration.statements[0];
        assert!(keyspace.starts_with("CREATE KEYSPACE"), "{keyspace}");
        let tablets = migration.backend.tablets_by_default(&settings.replication);
        assert_eq!(keyspace.contains("'enabled': false"), tablets, "{keyspace}");
        let session = connect_session(&settings).await.expect("connect");
        match &migration.backend {
            Backend::Cassandra { release } => {
                assert!(!tablets);
                let (local,): (String,) = session
                    .query_unpaged("SELECT release_version FROM system.local", ())
                    .await
                    .unwrap()
                    .into_rows_result()
                    .unwrap()
                    .single_row()
                    .unwrap();
                assert_eq!(release, &local);
            }
            Backend::Scylla { version } => {
                assert!(!version.is_empty());
            }
        }
        // The keyspace works, claims (LWT) included.
        let store = ScyllaStore::connect(&settings).await.expect("connect");
        super::within_timeout(
            "claims on the migrated keyspace",
            super::behaviours::claim_partition_epochs_strictly_increase(store),
        )
        .await;
    }

    /// Issue 15: on a server with PasswordAuthenticator (services.sh with
    /// BILLSTREAM_CASSANDRA_AUTH=1), the right credentials connect (the
    /// rest of this suite runs with them) and wrong or missing ones fail
    /// with an error naming the settings.
    #[tokio::test]
    async fn issue_15_wrong_or_missing_credentials_name_the_settings() {
        let Some(mut settings) = fresh_settings() else {
            return;
        };
        let Some(right) = settings.auth.clone() else {
            println!(
                "skipped: BILLSTREAM_SCYLLA_USERNAME is not set (the server has no authentication)"
            );
            return;
        };
        migrate(&settings)
            .await
            .expect("migrate with the right credentials");
        ScyllaStore::connect(&settings)
            .await
            .expect("the right credentials connect");
        settings.auth = Some(BasicAuth {
            password: format!("{}-wrong", right.password),
            ..right
        });
        let wrong = ScyllaStore::connect(&settings)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("the server refused store.username / store.password"),
            "{wrong}"
        );
        assert!(
            !wrong.contains("-wrong"),
            "the password is not printed: {wrong}"
        );
        settings.auth = None;
        let missing = ScyllaStore::connect(&settings)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("requires authentication: set store.username and store.password"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn issue_15_migrate_refuses_a_column_of_another_type() {
        let Some(settings) = fresh_settings() else {
            return;
        };
        create_schema_as(&settings, |statement| {
            statement.replace("published_upto bigint", "published_upto int")
        })
        .await;
        let err = migrate(&settings)
            .await
            .expect_err("a changed type is refused")
            .to_string();
        assert!(
            err.contains(&format!("{}.accounts.published_upto", settings.keyspace))
                && err.contains("`int`")
                && err.contains("`bigint`"),
            "{err}"
        );
    }

    conformance_wrappers! {
        fresh: match fresh_keyspace_store().await { Some(pair) => pair, None => return },
        reopen: |keyspace: &FreshKeyspace| keyspace.open_store(),
    }

    /// Issue 15 item 4: ownership was checked before a commit's writes
    /// only. A writer delayed between that check and its writes (GC, the
    /// network) let a new owner claim the partition and load the account
    /// first; its write then landed and it published outputs the new owner
    /// re-derives differently (one output id, two payloads). Two clients
    /// of the same keyspace: the old owner's commit must come back
    /// `Fenced` (so nothing of it is published or committed).
    #[tokio::test]
    async fn a_write_that_lands_after_a_newer_claim_is_reported_fenced() {
        use billstream::store::{StateStore, StoreError};
        use std::time::Duration;

        let Some((keyspace, old_owner)) = fresh_keyspace_store().await else {
            return;
        };
        let new_owner = keyspace.open_store().await;
        let old = old_owner.claim_partition(0, "old").await.unwrap();
        old_owner
            .commit(&[super::behaviours::write("a", 0, old, 1..=1)])
            .await
            .unwrap();

        old_owner.pause_after_fence_check(Duration::from_secs(3));
        let second = [super::behaviours::write("a", 0, old, 2..=2)];
        let delayed = old_owner.commit(&second);
        let takeover = async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            let new = new_owner.claim_partition(0, "new").await.unwrap();
            let loaded = new_owner.load_account("a").await.unwrap().unwrap();
            (new, loaded.journal_head)
        };
        let (outcome, (new, head_seen)) = tokio::join!(delayed, takeover);
        assert!(new > old);
        assert_eq!(
            head_seen, 1,
            "the new owner loaded the state before the delayed write"
        );
        match outcome {
            Err(StoreError::Fenced {
                partition: 0,
                current,
                attempted,
            }) => assert_eq!((current, attempted), (new, old)),
            other => panic!("the delayed writer was not told it lost the partition: {other:?}"),
        }
    }

    /// Issue 15 (dedup windows read late): a new owner loads an account
    /// without its dedup window and reads it before the account's first
    /// input. By then a writer delayed past its ownership check may have
    /// landed its row and its dedup ids (it is told `Fenced` and publishes
    /// nothing, but the rows are there). Those ids are not part of the
    /// snapshot the new owner holds: counting them as seen would drop the
    /// inputs behind them when they are read again. The window read for
    /// the loaded snapshot (`load_dedup_of`) leaves them out, even once
    /// the account's row in this store's cache is the fenced writer's (a
    /// read API in the same process reads it, as `run --api` does).
    #[tokio::test]
    async fn a_dedup_window_read_late_is_the_loaded_snapshots_not_a_fenced_writers() {
        use billstream::store::{DedupRecord, StateStore, StoreError};
        use std::time::Duration;

        let Some((keyspace, old_owner)) = fresh_keyspace_store().await else {
            return;
        };
        let record = |key: u128, seen_at| DedupRecord {
            key,
            fingerprint: key as u64,
            seen_at,
        };
        let new_owner = keyspace.open_store().await;
        let old = old_owner.claim_partition(0, "old").await.unwrap();
        let mut first = super::behaviours::write("a", 0, old, 1..=1);
        first.dedup = vec![record(1, 100)];
        old_owner.commit(&[first]).await.unwrap();

        old_owner.pause_after_fence_check(Duration::from_secs(3));
        let mut second = super::behaviours::write("a", 0, old, 2..=2);
        second.dedup = vec![record(2, 200)];
        let delayed = old_owner.commit(std::slice::from_ref(&second));
        let takeover = async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            new_owner.claim_partition(0, "new").await.unwrap();
            new_owner.load_partition(0, None).await.unwrap()
        };
        let (outcome, loaded) = tokio::join!(delayed, takeover);
        assert!(
            matches!(outcome, Err(StoreError::Fenced { .. })),
            "{outcome:?}"
        );
        assert_eq!(loaded.len(), 1);
        let held = &loaded[0].stored;
        assert_eq!(held.journal_head, 1, "loaded before the delayed write");
        assert!(loaded[0].dedup.is_empty(), "no window without an instant");

        // The fenced writer's row is the account's row now.
        let now = new_owner.load_account("a").await.unwrap().unwrap();
        assert_eq!(now.journal_head, 2, "the delayed write landed");
        let keys = |v: Vec<DedupRecord>| {
            let mut k: Vec<u128> = v.into_iter().map(|r| r.key).collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(new_owner.load_dedup("a", 0).await.unwrap()),
            [1, 2],
            "as of the row now, the fenced writer's id counts"
        );
        assert_eq!(
            keys(
                new_owner
                    .load_dedup_of("a", 0, &held.version)
                    .await
                    .unwrap()
            ),
            [1],
            "the loaded snapshot's window holds the fenced writer's id"
        );
    }
}
