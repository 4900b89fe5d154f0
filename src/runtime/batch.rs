//! Grouping a batch by account.
//!
//! Accounts are independent and only the order *within* an account
//! matters, so a batch is folded account by account: every record of one
//! account in a row, in the order it arrived. The account's state is then
//! loaded into cache once per batch instead of once per record, which is
//! what makes the fold fast with many accounts (see BENCHMARKS.md), and it
//! is the same grouping that turns many events of an account into one
//! state write.

use rustc_hash::FxHashMap;

/// The indices `0..keys.len()` grouped by key: groups in order of first
/// appearance, indices within a group ascending (arrival order kept).
/// Counting sort: linear in the batch, no comparisons.
///
/// Groups are formed on a 64-bit hash of the key, never by comparing the
/// keys: two accounts whose hashes collide simply share a group, which is
/// still correct because each account's records keep their arrival order
/// inside it. (Comparing keys would read every key's bytes again, a cache
/// miss per record with many accounts.)
pub fn group_by_account<'a>(keys: impl ExactSizeIterator<Item = &'a str>) -> Vec<u32> {
    group_by_account_ranked(keys.map(|k| (k, 0)), 1)
}

/// As `group_by_account`, and within an account's group the records of
/// rank 0 come first, then rank 1, and so on (`ranks` ranks), each rank in
/// arrival order. The runtime ranks by input topic — account commands,
/// then payments, then usage — because Kafka orders records only within a
/// partition of one topic: an account opened and used in the same batch
/// is opened first.
pub fn group_by_account_ranked<'a>(
    keys: impl ExactSizeIterator<Item = (&'a str, u8)>,
    ranks: u8,
) -> Vec<u32> {
    grouped(keys, ranks).0
}

/// As `group_by_account_ranked`, and an account's records of different
/// ranks (input topics) are then merged by their timestamps (`times[i]` of
/// record `i`; a tie goes to the lower rank), each rank's records keeping
/// their arrival order: one account's records from several topics of a
/// batch are folded in the order they were appended, as far as the
/// topics' timestamps tell (Kafka orders records only within a partition
/// of one topic). An account with records of one rank only, the common
/// case, costs nothing more.
pub fn group_by_account_in_time<'a>(
    keys: impl ExactSizeIterator<Item = (&'a str, u8)>,
    ranks: u8,
    times: &[i64],
) -> Vec<u32> {
    let (mut order, sizes) = grouped(keys, ranks);
    let ranks = usize::from(ranks.max(1));
    let mut at = 0usize;
    let mut merged = Vec::new();
    for group in sizes.chunks(ranks) {
        let len: usize = group.iter().map(|s| *s as usize).sum();
        if group.iter().filter(|s| **s > 0).count() > 1 {
            // Heads of each rank's run within the group, merged.
            let mut runs: Vec<std::ops::Range<usize>> = Vec::with_capacity(ranks);
            let mut start = at;
            for s in group {
                runs.push(start..start + *s as usize);
                start += *s as usize;
            }
            merged.clear();
            while let Some(r) = runs
                .iter()
                .enumerate()
                .filter(|(_, run)| !run.is_empty())
                .min_by_key(|(rank, run)| (times[order[run.start] as usize], *rank))
                .map(|(rank, _)| rank)
            {
                merged.push(order[runs[r].start]);
                runs[r].start += 1;
            }
            order[at..at + len].copy_from_slice(&merged);
        }
        at += len;
    }
    order
}

/// The counting sort behind both: the order, and the size of each
/// (account, rank) bucket, `ranks` buckets per account in order.
fn grouped<'a>(
    keys: impl ExactSizeIterator<Item = (&'a str, u8)>,
    ranks: u8,
) -> (Vec<u32>, Vec<u32>) {
    let ranks = u32::from(ranks.max(1));
    let n = keys.len();
    let mut ids: FxHashMap<u64, u32> = FxHashMap::default();
    let mut bucket_of = Vec::with_capacity(n);
    let mut sizes: Vec<u32> = Vec::new();
    for (k, rank) in keys {
        let next = ids.len() as u32;
        let g = *ids.entry(crate::engine::name::tag(k)).or_insert(next);
        if g == next {
            sizes.resize(sizes.len() + ranks as usize, 0);
        }
        let bucket = g * ranks + u32::from(rank).min(ranks - 1);
        sizes[bucket as usize] += 1;
        bucket_of.push(bucket);
    }
    // Start of each bucket in the output.
    let mut start = Vec::with_capacity(sizes.len());
    let mut acc = 0u32;
    for s in &sizes {
        start.push(acc);
        acc += s;
    }
    let mut order = vec![0u32; n];
    for (i, b) in bucket_of.into_iter().enumerate() {
        let slot = &mut start[b as usize];
        order[*slot as usize] = i as u32;
        *slot += 1;
    }
    (order, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_arrival_order_within_an_account() {
        let keys = ["a", "b", "a", "c", "b", "a"];
        let order = group_by_account(keys.iter().copied());
        assert_eq!(order, vec![0, 2, 5, 1, 4, 3]);
    }

    #[test]
    fn ranks_order_an_accounts_topics_and_keep_each_topics_order() {
        // (account, rank): usage (2) of "a" arrives before its opening (0).
        let keys = [("a", 2), ("b", 2), ("a", 0), ("a", 2), ("a", 1), ("b", 0)];
        let order = group_by_account_ranked(keys.iter().copied(), 3);
        assert_eq!(order, vec![2, 4, 0, 3, 5, 1]);
    }

    #[test]
    fn an_accounts_topics_are_merged_by_time_and_keep_each_topics_order() {
        // (account, rank) and timestamps: "a" has usage (2) at 5 and 9, an
        // opening (0) at 1 and a payment (1) at 7; "b" one rank only,
        // out of time order, kept as it came.
        let keys = [("a", 2), ("b", 2), ("a", 0), ("a", 2), ("a", 1), ("b", 2)];
        let times = [5, 30, 1, 9, 7, 20];
        let order = group_by_account_in_time(keys.iter().copied(), 3, &times);
        assert_eq!(order, vec![2, 0, 4, 3, 1, 5]);
        // Same timestamps: the lower rank first; within a rank, arrival
        // order even when its timestamps go back.
        let keys = [("a", 2), ("a", 2), ("a", 0)];
        let order = group_by_account_in_time(keys.iter().copied(), 3, &[4, 3, 4]);
        assert_eq!(order, vec![2, 0, 1]);
    }

    #[test]
    fn empty_batch_is_empty() {
        assert!(group_by_account(std::iter::empty()).is_empty());
    }
}
