//! Which dead letters an operator means (`Filter`: kind, source topic,
//! account, time, ids) and which of them may never go back to their topic
//! (`refusal`): a card-number rejection (its payload held a card number;
//! what is kept is masked, and replaying it would feed a masked copy in
//! as if it were the customer's record) and a dead letter whose payload
//! was cut to fit `kafka.max_record_bytes` (it is not the record any more).

use super::record::DlqRecord;
use crate::config::Settings;
use crate::engine::time::Timestamp;

/// The kind of a card-number rejection (`Rejection::CardNumber`).
pub const CARD_NUMBER_KIND: &str = "card_number";

/// What `bounded` appends to the reason of a dead letter it cut.
const TRUNCATED_MARK: &str = "-byte limit (kafka.max_record_bytes)";

/// A selection of dead letters; an empty field selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Any of these `error_kind`s.
    pub kinds: Vec<String>,
    /// Any of these source topics (a name as configured, and the same
    /// topic by its default name: `topic_names`).
    pub topics: Vec<String>,
    /// The record key (the account id).
    pub account: Option<String>,
    /// Received at or after...
    pub since: Option<Timestamp>,
    /// ...and before.
    pub until: Option<Timestamp>,
    /// Any of these dead-letter event ids.
    pub ids: Vec<String>,
}

impl Filter {
    /// Whether nothing narrows the selection.
    pub fn is_empty(&self) -> bool {
        self == &Filter::default()
    }

    /// Whether `r` is selected.
    pub fn matches(&self, r: &DlqRecord) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&r.error_kind))
            && (self.topics.is_empty() || self.topics.contains(&r.source_topic))
            && self
                .account
                .as_ref()
                .is_none_or(|a| r.key.as_deref() == Some(a.as_str()))
            && self.since.is_none_or(|t| r.received_at >= t)
            && self.until.is_none_or(|t| r.received_at < t)
            && (self.ids.is_empty() || self.ids.contains(&r.event_id))
    }
}

/// The names `topic` may mean under `settings`: itself and, when it is a
/// topic's default name (`billing.usage.v1`), that topic as configured
/// (prefixed, renamed).
pub fn topic_names(settings: &Settings, topic: &str) -> Vec<String> {
    let t = &settings.topics;
    let known = [
        ("billing.usage.v1", &t.usage),
        ("billing.payments.v1", &t.payments),
        ("billing.accounts.v1", &t.accounts),
        ("billing.plans.v1", &t.plans),
        ("billing.invoices.v1", &t.invoices),
        ("billing.charges.v1", &t.charges),
        ("billing.notifications.v1", &t.notifications),
        ("billing.usage-rollups.v1", &t.usage_rollups),
        ("billing.journal.v1", &t.journal),
        ("billing.dlq.v1", &t.dlq),
    ];
    let mut names = vec![topic.to_string()];
    if let Some((_, configured)) = known.iter().find(|(default, _)| *default == topic) {
        names.push(configured.to_string());
    }
    names
}

/// Why `r` can never be replayed (`None`: it can).
pub fn refusal(r: &DlqRecord) -> Option<&'static str> {
    if r.error_kind == CARD_NUMBER_KIND {
        return Some(
            "a card-number rejection is never replayed: its payload is masked and the card number must not enter billing",
        );
    }
    if r.reason.contains(TRUNCATED_MARK) {
        return Some(
            "the payload was cut to fit kafka.max_record_bytes; produce the original record again instead",
        );
    }
    if r.payload.is_empty() {
        return Some("the dead letter holds no payload");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str) -> DlqRecord {
        DlqRecord {
            event_id: "id-1".into(),
            source_topic: "pre.billing.usage.v1".into(),
            partition: 0,
            offset: 4,
            key: Some("acct-1".into()),
            error_kind: kind.into(),
            reason: "account acct-1 is not open".into(),
            payload: b"{}".to_vec(),
            received_at: Timestamp::parse_rfc3339("2026-03-15T12:00:00Z").unwrap(),
            found_at: "x".into(),
        }
    }

    #[test]
    fn filters_select_by_kind_topic_account_time_and_id() {
        let r = record("unknown_account");
        let at = |s: &str| Timestamp::parse_rfc3339(s);
        let yes = [
            Filter::default(),
            Filter {
                kinds: vec!["too_late".into(), "unknown_account".into()],
                ..Filter::default()
            },
            Filter {
                topics: vec!["billing.usage.v1".into(), "pre.billing.usage.v1".into()],
                ..Filter::default()
            },
            Filter {
                topics: vec!["pre.billing.usage.v1".into()],
                account: Some("acct-1".into()),
                since: at("2026-03-15T12:00:00Z"),
                until: at("2026-03-15T12:00:01Z"),
                ids: vec!["id-1".into()],
                ..Filter::default()
            },
        ];
        for f in yes {
            assert!(f.matches(&r), "{f:?}");
        }
        let no = [
            Filter {
                kinds: vec!["too_late".into()],
                ..Filter::default()
            },
            Filter {
                topics: vec!["billing.usage.v1".into()],
                ..Filter::default()
            },
            Filter {
                account: Some("acct-2".into()),
                ..Filter::default()
            },
            Filter {
                since: at("2026-03-15T12:00:01Z"),
                ..Filter::default()
            },
            Filter {
                until: at("2026-03-15T12:00:00Z"),
                ..Filter::default()
            },
            Filter {
                ids: vec!["id-2".into()],
                ..Filter::default()
            },
        ];
        for f in no {
            assert!(!f.matches(&r), "{f:?}");
        }
        assert!(Filter::default().is_empty());
        let mut settings = Settings::from_layers(None, std::iter::empty()).unwrap();
        settings.topics.usage = "pre.billing.usage.v1".into();
        assert_eq!(
            topic_names(&settings, "billing.usage.v1"),
            ["billing.usage.v1", "pre.billing.usage.v1"]
        );
        assert_eq!(topic_names(&settings, "other"), ["other"]);
    }

    #[test]
    fn a_card_number_rejection_is_never_replayable() {
        assert!(refusal(&record("card_number"))
            .unwrap()
            .contains("card-number"));
        assert_eq!(refusal(&record("unknown_account")), None);
        // A dead letter cut to fit kafka.max_record_bytes, as the Kafka
        // sink sends it.
        let catalog = crate::contracts::Catalog::shared().unwrap();
        let big = crate::contracts::DeadLetter {
            source_topic: "billing.usage.v1".into(),
            partition: 0,
            offset: 9,
            key: Some("acct-1".into()),
            error_kind: "invalid_field".into(),
            reason: "subject: too long".into(),
            payload: vec![b'x'; 5000],
            received_at: Timestamp(0),
        };
        let (bytes, cut) = catalog
            .encode_output_bounded(&big.to_output(), 2000)
            .unwrap();
        assert!(cut.is_some(), "the dead letter was cut");
        let cut = DlqRecord::from_avro(catalog, &bytes, "x".into()).unwrap();
        assert!(
            refusal(&cut).unwrap().contains("max_record_bytes"),
            "{cut:?}"
        );
        let mut empty = record("bad_magic");
        empty.payload.clear();
        assert!(refusal(&empty).is_some());
    }
}
