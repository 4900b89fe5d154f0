//! Issue 12, the runtime's part: a record is applied only to the account
//! its key names (items 7), a dead letter is as durable as any other output
//! (item 8), and records for accounts that were never opened leave nothing
//! behind in memory (item 9).

use billstream::contracts::{parse_line, Catalog, Decoded, Decoder, OutputRecord, OutputTopic};
use billstream::engine::time::Timestamp;
use billstream::runtime::{BatchRecord, Processor, SourcePos};
use billstream::store::EmbeddedStore;

use super::support::{engine_with_plan_p, processor_in, PLAN};

fn now() -> Timestamp {
    Timestamp::parse_rfc3339("2026-03-06T00:00:00Z").unwrap()
}

/// A processor on the store in `dir` owning partition 0, with plan `p`.
async fn processor(dir: &std::path::Path) -> Processor<EmbeddedStore> {
    processor_in(dir, engine_with_plan_p(), now()).await
}

fn opened(account: &str) -> String {
    format!(
        r#"{{"event_id":"open-{account}","account_id":"{account}","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0.1","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}}"#
    )
}

fn usage(id: &str, account: &str, metric: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","account_id":"{account}","subject":"s","metric":"{metric}","quantity":"1","occurred_at":"2026-03-02T10:00:00Z","environment":"prod","attributes":{{}}}}"#
    )
}

/// One record as it comes off Kafka: topic, offset, key, Avro value.
struct Rec {
    topic: &'static str,
    offset: i64,
    key: Option<String>,
    raw: Vec<u8>,
}

fn rec(topic: &'static str, offset: i64, key: Option<&str>, line: &str) -> Rec {
    let Ok(Decoded::Input(input)) = parse_line(line) else {
        panic!("not an input: {line}");
    };
    Rec {
        topic,
        offset,
        key: key.map(str::to_string),
        raw: Catalog::shared().unwrap().encode_input(&input).unwrap(),
    }
}

/// Folds `records` as the Kafka loop does (`process_batch`).
async fn fold(p: &mut Processor<EmbeddedStore>, records: &[Rec]) {
    let decoder = Decoder::new(Catalog::shared().unwrap()).unwrap();
    let batch: Vec<BatchRecord<'_>> = records
        .iter()
        .map(|r| BatchRecord {
            pos: SourcePos {
                topic: r.topic.into(),
                partition: 0,
                offset: r.offset,
            },
            key: r.key.as_deref(),
            raw: &r.raw,
            now: now(),
            rank: u8::from(r.topic != "accounts"),
            produced_ms: None,
        })
        .collect();
    p.process_batch(&decoder, &batch).await.unwrap();
}

fn dead_letters(outputs: &[OutputRecord]) -> Vec<&OutputRecord> {
    outputs
        .iter()
        .filter(|o| o.topic == OutputTopic::Dlq)
        .collect()
}

fn kind(o: &OutputRecord) -> &str {
    o.json["error_kind"].as_str().unwrap()
}

#[tokio::test]
async fn issue_12_a_record_whose_key_is_not_its_account_is_dead_lettered_key_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(dir.path()).await;
    fold(
        &mut p,
        &[
            rec("accounts", 0, Some("a"), &opened("a")),
            rec("accounts", 1, Some("b"), &opened("b")),
        ],
    )
    .await;
    p.flush().await.unwrap();
    p.published();

    // `u-1` of account `a` produced under `b`'s key (so on `b`'s
    // partition, possibly another owner's), and once without a key.
    fold(
        &mut p,
        &[
            rec("usage", 0, Some("b"), &usage("u-1", "a", "m")),
            rec("usage", 1, None, &usage("u-2", "a", "m")),
        ],
    )
    .await;
    let out = p.flush().await.unwrap();
    let dlq = dead_letters(&out);
    assert_eq!(dlq.len(), 2, "{out:#?}");
    for (letter, (offset, key)) in dlq.iter().zip([(0, Some("b")), (1, None)]) {
        assert_eq!(kind(letter), "key_mismatch");
        assert_eq!(letter.json["offset"], offset);
        assert_eq!(letter.json["key"].as_str(), key);
        let reason = letter.json["reason"].as_str().unwrap();
        assert!(
            reason.contains("\"a\""),
            "reason names the account: {reason}"
        );
    }
    assert_eq!(p.stats.rejected.get("key_mismatch"), Some(&2));
    assert_eq!(p.stats.applied, 2, "only the two openings were applied");
    assert!(
        out.iter().all(|o| o.topic == OutputTopic::Dlq),
        "nothing changed on either account: {out:#?}"
    );

    // The event id was not used up: produced again under the right key,
    // it is applied (not a duplicate).
    fold(
        &mut p,
        &[rec("usage", 2, Some("a"), &usage("u-1", "a", "m"))],
    )
    .await;
    let out = p.flush().await.unwrap();
    assert!(dead_letters(&out).is_empty(), "{out:#?}");
    assert_eq!((p.stats.applied, p.stats.duplicates), (3, 0));
}

#[tokio::test]
async fn issue_12_a_plan_keyed_by_another_plan_id_is_dead_lettered_key_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(dir.path()).await;
    let catalog = Catalog::shared().unwrap();
    let decoder = Decoder::new(catalog).unwrap();
    let plan = |id: &str| {
        let Ok(Decoded::Plan(plan)) = parse_line(&PLAN.replace("\"p\"", &format!("\"{id}\"")))
        else {
            unreachable!()
        };
        catalog.encode_plan(&plan).unwrap()
    };
    let pos = |offset| SourcePos {
        topic: "plans".into(),
        partition: 0,
        offset,
    };
    // The plans topic is compacted by key: a plan under another plan's key
    // would let compaction delete one of the two.
    let wrong = plan("gold");
    p.process(
        &pos(0),
        Some("silver"),
        &wrong,
        decoder.decode(&wrong),
        now(),
    )
    .await
    .unwrap();
    assert!(p.engine().plans.get("gold").is_none());
    let right = plan("silver");
    p.process(
        &pos(1),
        Some("silver"),
        &right,
        decoder.decode(&right),
        now(),
    )
    .await
    .unwrap();
    assert!(p.engine().plans.get("silver").is_some());
    let out = p.flush().await.unwrap();
    let dlq = dead_letters(&out);
    assert_eq!(dlq.len(), 1, "{out:#?}");
    assert_eq!(kind(dlq[0]), "key_mismatch");
    assert_eq!(dlq[0].json["key"], "silver");
}

#[tokio::test]
async fn issue_13_a_plan_version_after_1_must_be_keyed_plan_id_at_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(dir.path()).await;
    let catalog = Catalog::shared().unwrap();
    let decoder = Decoder::new(catalog).unwrap();
    let plan = |version: u32| {
        let Ok(Decoded::Plan(mut plan)) = parse_line(&PLAN.replace("\"p\"", "\"silver\"")) else {
            unreachable!()
        };
        plan.version = version;
        catalog.encode_plan(&plan).unwrap()
    };
    let pos = |offset| SourcePos {
        topic: "plans".into(),
        partition: 0,
        offset,
    };
    // Version 2 under the bare plan id would be compacted over by version
    // 3 (and version 1 by it): refused. Under silver@2 it is kept, and
    // version 1 is still accepted under the bare id.
    for (offset, version, key) in [(0, 2, "silver"), (1, 2, "silver@2"), (2, 1, "silver")] {
        let bytes = plan(version);
        p.process(
            &pos(offset),
            Some(key),
            &bytes,
            decoder.decode(&bytes),
            now(),
        )
        .await
        .unwrap();
    }
    assert!(p.engine().plans.get_version("silver", 1).is_some());
    assert!(p.engine().plans.get_version("silver", 2).is_some());
    let out = p.flush().await.unwrap();
    let dlq = dead_letters(&out);
    assert_eq!(dlq.len(), 1, "{out:#?}");
    assert_eq!(kind(dlq[0]), "key_mismatch");
    assert_eq!(dlq[0].json["key"], "silver");
}

#[tokio::test]
async fn issue_12_a_flood_of_records_for_never_opened_accounts_leaves_no_resident_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(dir.path()).await;
    fold(&mut p, &[rec("accounts", 0, Some("a"), &opened("a"))]).await;
    p.flush().await.unwrap();
    assert_eq!(p.resident_accounts(), 1);

    const N: usize = 2_000;
    let ghosts: Vec<String> = (0..N).map(|i| format!("ghost-{i}")).collect();
    let flood: Vec<Rec> = ghosts
        .iter()
        .enumerate()
        .map(|(i, id)| {
            rec(
                "usage",
                i as i64,
                Some(id),
                &usage(&format!("g{i}"), id, "m"),
            )
        })
        .collect();
    fold(&mut p, &flood).await;
    let out = p.flush().await.unwrap();
    assert_eq!(p.stats.rejected.get("unknown_account"), Some(&(N as u64)));
    assert_eq!(dead_letters(&out).len(), N, "each one is dead-lettered");
    assert_eq!(
        p.resident_accounts(),
        1,
        "only the open account is held in memory"
    );
    // Still an ordinary account for the opening that comes later.
    fold(
        &mut p,
        &[rec("accounts", 1, Some("ghost-7"), &opened("ghost-7"))],
    )
    .await;
    p.flush().await.unwrap();
    assert_eq!(p.resident_accounts(), 2);
    assert!(p.account("ghost-7").is_some());
}

/// Ids of the dead letters among `outputs`.
fn dlq_ids(outputs: &[OutputRecord]) -> Vec<String> {
    dead_letters(outputs)
        .iter()
        .map(|o| o.event_id.clone())
        .collect()
}

#[tokio::test]
async fn issue_12_a_dead_letter_persisted_with_its_position_survives_a_crash_before_it_is_published(
) {
    let dir = tempfile::tempdir().unwrap();
    let opening = rec("accounts", 0, Some("a"), &opened("a"));
    // An unknown metric: rejected, and its position is written with `a`.
    let bad = rec("usage", 0, Some("a"), &usage("u-gpu", "a", "gpu.hours"));

    let mut first = processor(dir.path()).await;
    fold(&mut first, &[opening]).await;
    first.flush().await.unwrap();
    first.published();
    fold(&mut first, std::slice::from_ref(&bad)).await;
    let sent = first.flush().await.unwrap();
    let ids = dlq_ids(&sent);
    assert_eq!(ids.len(), 1, "{sent:#?}");
    let letter = dead_letters(&sent)[0].clone();
    assert_eq!(kind(&letter), "unknown_metric");
    // kill -9: the position past `bad` is durable, the dead letter was
    // never acknowledged, and the input offset never committed.
    drop(first);

    let mut second = processor(dir.path()).await;
    let recovered = second.unpublished_outputs(0).await.unwrap();
    assert_eq!(
        dlq_ids(&recovered),
        ids,
        "the dead letter is published again, under the same id"
    );
    let again = dead_letters(&recovered)[0];
    assert_eq!(again.json, letter.json);
    assert_eq!(again.key, letter.key);
    // Kafka delivers `bad` again (its offset was never committed): it is
    // below the stored position, so skipped, and makes no second letter.
    fold(&mut second, std::slice::from_ref(&bad)).await;
    assert_eq!(second.stats.replays_skipped, 1);
    assert!(dlq_ids(&second.flush().await.unwrap()).is_empty());
    second.published();
    second.persist_published_marks().await.unwrap();
    drop(second);

    let mut third = processor(dir.path()).await;
    assert!(
        third.unpublished_outputs(0).await.unwrap().is_empty(),
        "an acknowledged dead letter is not sent again"
    );
}

#[tokio::test]
async fn issue_12_an_acknowledged_dead_letter_is_dropped_with_the_accounts_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = processor(dir.path()).await;
    fold(&mut first, &[rec("accounts", 0, Some("a"), &opened("a"))]).await;
    first.flush().await.unwrap();
    first.published();
    fold(
        &mut first,
        &[rec(
            "usage",
            0,
            Some("a"),
            &usage("u-gpu", "a", "gpu.hours"),
        )],
    )
    .await;
    assert_eq!(dlq_ids(&first.flush().await.unwrap()).len(), 1);
    first.published();
    // The account's next write (a usage event) carries the acknowledgement.
    fold(
        &mut first,
        &[rec("usage", 1, Some("a"), &usage("u-ok", "a", "m"))],
    )
    .await;
    first.flush().await.unwrap();
    first.published();
    drop(first);

    let mut second = processor(dir.path()).await;
    let recovered = second.unpublished_outputs(0).await.unwrap();
    assert!(dlq_ids(&recovered).is_empty(), "{recovered:#?}");
}

/// Not a change of issue 12, the other half of its guarantee: a record
/// rejected for an account that does not exist moves no stored position,
/// so its dead letter is durable through the input offset, committed only
/// once the letter is acknowledged; redelivered after a crash, it is
/// rejected again under the same id.
#[tokio::test]
async fn a_dead_letter_for_an_unknown_account_is_made_again_with_the_same_id_on_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let bad = rec("usage", 0, Some("nobody"), &usage("u-1", "nobody", "m"));
    let mut first = processor(dir.path()).await;
    fold(&mut first, std::slice::from_ref(&bad)).await;
    let ids = dlq_ids(&first.flush().await.unwrap());
    assert_eq!(ids.len(), 1);
    drop(first);

    let mut second = processor(dir.path()).await;
    assert!(second.unpublished_outputs(0).await.unwrap().is_empty());
    fold(&mut second, std::slice::from_ref(&bad)).await;
    assert_eq!(dlq_ids(&second.flush().await.unwrap()), ids);
    assert_eq!(second.resident_accounts(), 0);
}
