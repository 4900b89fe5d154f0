//! The replay plan and its record. `plan` decides, for each selected dead
//! letter, whether it goes back to its topic, is refused (`refusal`), or
//! was replayed before (the replay log names it; `--again` overrides).
//! The replay log is a JSON-lines file, one line per dead letter
//! republished: when, which dead letter, where its record went, and which
//! offset it got, so a replay can be audited and is not repeated by
//! accident.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{json, Value};

use super::record::DlqRecord;
use super::select::refusal;
use crate::engine::time::Timestamp;

/// What replay does with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Republish its payload to its source topic under its key.
    Replay,
    /// Never: the reason.
    Refused(&'static str),
    /// Already replayed (at this instant, by the log).
    AlreadyReplayed(String),
}

/// The decision for each of `selected`, given the replay log's entries
/// (dead-letter id → when it was replayed).
pub fn plan(
    selected: &[DlqRecord],
    replayed: &BTreeMap<String, String>,
    again: bool,
) -> Vec<Decision> {
    selected
        .iter()
        .map(|r| {
            if let Some(why) = refusal(r) {
                Decision::Refused(why)
            } else if let (Some(at), false) = (replayed.get(&r.event_id), again) {
                Decision::AlreadyReplayed(at.clone())
            } else {
                Decision::Replay
            }
        })
        .collect()
}

/// Dead-letter id → replay instant of each line of the log at `path` (an
/// absent file is an empty log).
pub fn read_log(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = BTreeMap::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), n + 1),
            )
        })?;
        if let (Some(id), Some(at)) = (
            v.get("dead_letter_id").and_then(Value::as_str),
            v.get("replayed_at").and_then(Value::as_str),
        ) {
            out.insert(id.to_string(), at.to_string());
        }
    }
    Ok(out)
}

/// The log line of `r` republished at `at` to `topic`, partition and
/// offset `to`.
pub fn log_entry(r: &DlqRecord, at: Timestamp, topic: &str, to: (i32, i64)) -> Value {
    json!({
        "replayed_at": at.to_rfc3339(),
        "dead_letter_id": r.event_id,
        "dead_letter_at": r.found_at,
        "error_kind": r.error_kind,
        "source": r.source(),
        "key": r.key,
        "bytes": r.payload.len(),
        "to_topic": topic,
        "to_partition": to.0,
        "to_offset": to.1,
    })
}

/// Append `entry` to the log at `path` (created if absent), durably.
pub fn append_log(path: &Path, entry: &Value) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{entry}")?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, kind: &str) -> DlqRecord {
        DlqRecord {
            event_id: id.into(),
            source_topic: "billing.usage.v1".into(),
            partition: 0,
            offset: 1,
            key: Some("acct-1".into()),
            error_kind: kind.into(),
            reason: "r".into(),
            payload: b"{}".to_vec(),
            received_at: Timestamp(0),
            found_at: "billing.dlq.v1/0/3".into(),
        }
    }

    #[test]
    fn replay_refuses_card_numbers_and_skips_what_the_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("replays.jsonl");
        assert!(read_log(&log).unwrap().is_empty());
        let selected = [
            record("a", "unknown_account"),
            record("b", "card_number"),
            record("c", "unknown_plan"),
        ];
        append_log(
            &log,
            &log_entry(&selected[2], Timestamp(0), "billing.usage.v1", (0, 9)),
        )
        .unwrap();
        let replayed = read_log(&log).unwrap();
        assert_eq!(replayed["c"], "1970-01-01T00:00:00Z");
        let decisions = plan(&selected, &replayed, false);
        assert_eq!(decisions[0], Decision::Replay);
        assert!(matches!(decisions[1], Decision::Refused(_)));
        assert_eq!(
            decisions[2],
            Decision::AlreadyReplayed("1970-01-01T00:00:00Z".into())
        );
        // --again replays a logged one, never a card number.
        let again = plan(&selected, &replayed, true);
        assert_eq!(again[2], Decision::Replay);
        assert!(matches!(again[1], Decision::Refused(_)));
    }
}
