//! Issue 12: the hostile-input corpus. Bad records of many kinds, on every
//! input topic and in both encodings (Confluent Avro and CloudEvents JSON),
//! written from the contract (SPEC §2–§4) rather than from the code. Each
//! one goes through the processor that `billstream run` uses, followed by a
//! good record of the same partition, and must:
//! - be dead-lettered, exactly once, with its kind;
//! - carry a payload that is the input as sent (replayable), or, where the
//!   input held a card number, the same bytes with the digits masked (same
//!   length for Avro, valid UTF-8 for JSON);
//! - not panic the process, and not stop the partition: the good record
//!   after it is applied;
//! - leave no full card number in any output, dead letter or log line.
//!
//! Plus the two traps: a 16-digit number that fails Luhn, and an exact
//! duplicate, are not dead-lettered.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use billstream::contracts::{parse_line, Catalog, Decoded, Decoder, OutputRecord, OutputTopic};
use billstream::engine::time::Timestamp;
use billstream::runtime::{Processor, SourcePos};
use billstream::store::EmbeddedStore;

use super::support::{engine, processor_in};

const USAGE: &str = "billing.usage.v1";
const PAYMENTS: &str = "billing.payments.v1";
const ACCOUNTS: &str = "billing.accounts.v1";
const PLANS: &str = "billing.plans.v1";

/// Card numbers of every shape SPEC §4 names, all passing Luhn.
const VISA: &str = "4111111111111111";
const VISA_SPACED: &str = "4111 1111 1111 1111";
const MC_DASHED: &str = "5555-5555-5555-4444";
const AMEX: &str = "3782 822463 10005";
const DINERS: &str = "3056 930902 5904";
const VISA13: &str = "4222222222222";
const NINETEEN: &str = "6011 0009 9013 9424 123";
const NINETEEN_RUN: &str = "4000000000000000006";

/// The digits of every card number above: none may appear in any output,
/// dead letter or log line.
fn card_digits() -> Vec<String> {
    [
        VISA,
        VISA_SPACED,
        MC_DASHED,
        AMEX,
        DINERS,
        VISA13,
        NINETEEN,
        NINETEEN_RUN,
    ]
    .iter()
    .map(|c| c.chars().filter(char::is_ascii_digit).collect())
    .collect()
}

fn t(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

fn micros(s: &str) -> i64 {
    t(s).0
}

/// The processing clock of the whole run.
const NOW: &str = "2026-03-10T12:00:00Z";

fn schema(file: &str) -> Schema {
    let text = std::fs::read_to_string(format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("schemas/{file}: {e}"));
    Schema::parse_str(&text).unwrap()
}

/// A Confluent-framed Avro record of schema `name` (as in the manifest),
/// fields given in schema order as apache-avro values: anything the
/// schema's types allow, however hostile the contents.
fn avro(name: &str, fields: Vec<(&str, Avro)>) -> Vec<u8> {
    let catalog = Catalog::shared().unwrap();
    let full = format!("billstream.v1.{name}");
    let index = catalog
        .index_of(&full)
        .unwrap_or_else(|| panic!("no schema {full}"));
    let id = catalog.entries()[index].id;
    let schema = schema(&format!("{name}.avsc"));
    let Schema::Record(shape) = &schema else {
        unreachable!("{name} is a record")
    };
    // Fields in schema order; one not given takes its default (null, or
    // an empty array: AccountOpened's `thresholds`).
    let mut given: BTreeMap<&str, Avro> = fields.into_iter().collect();
    let record = Avro::Record(
        shape
            .fields
            .iter()
            .map(|f| {
                let v = given
                    .remove(f.name.as_str())
                    .unwrap_or_else(|| match &f.default {
                        Some(serde_json::Value::Array(a)) if a.is_empty() => Avro::Array(vec![]),
                        Some(_) => none(),
                        None => panic!("{name}.{} not given", f.name),
                    });
                (f.name.clone(), v)
            })
            .collect(),
    );
    assert!(given.is_empty(), "{name} has no fields {:?}", given.keys());
    let mut out = vec![0u8];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(
        apache_avro::to_avro_datum(&schema, record).unwrap_or_else(|e| panic!("{name}: {e}")),
    );
    out
}

fn s(v: &str) -> Avro {
    Avro::String(v.to_string())
}

fn ts(v: &str) -> Avro {
    Avro::TimestampMicros(micros(v))
}

fn some(v: Avro) -> Avro {
    Avro::Union(1, Box::new(v))
}

fn none() -> Avro {
    Avro::Union(0, Box::new(Avro::Null))
}

/// A usage record with every field open to the test.
#[derive(Clone)]
struct U {
    event_id: String,
    account_id: String,
    subject: String,
    metric: String,
    quantity: String,
    occurred_at: i64,
    environment: String,
    attributes: Vec<(String, String)>,
}

impl U {
    fn new(event_id: &str) -> U {
        U {
            event_id: event_id.into(),
            account_id: "a1".into(),
            subject: "app-1".into(),
            metric: "m".into(),
            quantity: "1".into(),
            occurred_at: micros("2026-03-05T10:00:00Z"),
            environment: "prod".into(),
            attributes: Vec::new(),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut U)) -> U {
        f(&mut self);
        self
    }

    fn avro(&self) -> Vec<u8> {
        avro(
            "UsageRecorded",
            vec![
                ("event_id", s(&self.event_id)),
                ("account_id", s(&self.account_id)),
                ("subject", s(&self.subject)),
                ("metric", s(&self.metric)),
                ("quantity", s(&self.quantity)),
                ("occurred_at", Avro::TimestampMicros(self.occurred_at)),
                ("environment", s(&self.environment)),
                (
                    "attributes",
                    Avro::Map(
                        self.attributes
                            .iter()
                            .map(|(k, v)| (k.clone(), s(v)))
                            .collect(),
                    ),
                ),
            ],
        )
    }

    /// As a CloudEvents 1.0 structured-mode JSON event.
    fn cloud_event(&self) -> Vec<u8> {
        let attributes: serde_json::Map<String, serde_json::Value> = self
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "specversion": "1.0",
            "type": "billing.usage.v1",
            "id": self.event_id,
            "source": "/corpus",
            "datacontenttype": "application/json",
            "data": {
                "event_id": self.event_id,
                "account_id": self.account_id,
                "subject": self.subject,
                "metric": self.metric,
                "quantity": self.quantity,
                "occurred_at": Timestamp(self.occurred_at).to_rfc3339(),
                "environment": self.environment,
                "attributes": attributes,
            }
        })
        .to_string()
        .into_bytes()
    }
}

fn payment(name: &str, id: &str, env: Option<&str>, rest: Vec<(&str, Avro)>) -> Vec<u8> {
    let mut fields = vec![
        ("event_id", s(id)),
        ("account_id", s("a1")),
        ("occurred_at", ts("2026-03-06T00:00:00Z")),
        ("environment", env.map_or_else(none, |e| some(s(e)))),
    ];
    fields.extend(rest);
    avro(name, fields)
}

fn command(
    name: &str,
    id: &str,
    account: &str,
    env: Option<&str>,
    rest: Vec<(&str, Avro)>,
) -> Vec<u8> {
    let mut fields = vec![
        ("event_id", s(id)),
        ("account_id", s(account)),
        ("occurred_at", ts("2026-03-06T00:00:00Z")),
        ("environment", env.map_or_else(none, |e| some(s(e)))),
    ];
    fields.extend(rest);
    avro(name, fields)
}

fn opened(id: &str, account: &str, f: impl FnOnce(&mut BTreeMap<&'static str, Avro>)) -> Vec<u8> {
    let mut m: BTreeMap<&'static str, Avro> = BTreeMap::new();
    m.insert("plan_id", s("p"));
    m.insert("currency", s("EUR"));
    m.insert("timezone", s("Europe/Berlin"));
    m.insert("tax_rate", s("0.19"));
    m.insert("opened_at", ts("2026-03-01T00:00:00Z"));
    m.insert("environment", s("prod"));
    f(&mut m);
    account_opened_record(id, account, m)
}

fn account_opened_record(id: &str, account: &str, m: BTreeMap<&'static str, Avro>) -> Vec<u8> {
    let mut fields = vec![("event_id", s(id)), ("account_id", s(account))];
    fields.extend(m);
    avro("AccountOpened", fields)
}

fn plan_avro(plan_json: &str) -> Vec<u8> {
    let catalog = Catalog::shared().unwrap();
    match parse_line(plan_json).unwrap() {
        Decoded::Plan(p) => catalog.encode_plan(&p).unwrap(),
        other => panic!("not a plan: {other:?}"),
    }
}

/// One hostile record: where it is sent, with which key, its bytes, the
/// dead-letter kind it must get (`None`: it must be applied or counted as a
/// duplicate, never dead-lettered), and whether it carries a card number.
struct Bad {
    name: &'static str,
    topic: &'static str,
    key: Option<String>,
    bytes: Vec<u8>,
    kind: Option<&'static str>,
    card: bool,
}

fn bad(name: &'static str, topic: &'static str, bytes: Vec<u8>, kind: &'static str) -> Bad {
    Bad {
        name,
        topic,
        key: Some("a1".into()),
        bytes,
        kind: Some(kind),
        card: false,
    }
}

fn card(name: &'static str, topic: &'static str, bytes: Vec<u8>) -> Bad {
    Bad {
        card: true,
        ..bad(name, topic, bytes, "card_number")
    }
}

fn keyed(mut b: Bad, key: Option<&str>) -> Bad {
    b.key = key.map(str::to_string);
    b
}

const PLAN: &str = r#"{"plan_id":"p","currency":"EUR","recurring_fee":"10.00","minimum_spend":"0","charges":[{"metric":"m","model":"per_unit","unit_price":"0.5"},{"metric":"good","model":"per_unit","unit_price":"0.01"}]}"#;

fn corpus() -> Vec<Bad> {
    let u = |id: &str| U::new(id);
    let nested = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut c = vec![
        // ---- undecodable bytes, every topic ----
        bad("empty", USAGE, Vec::new(), "too_short"),
        bad("three_bytes", PAYMENTS, vec![0, 0, 0], "too_short"),
        bad(
            "bad_magic",
            ACCOUNTS,
            vec![1, 0, 0, 0, 1, 2, 3],
            "bad_magic",
        ),
        bad(
            "binary_garbage",
            USAGE,
            vec![0xff, 0xfe, 0x00, 0x80],
            "bad_magic",
        ),
        bad(
            "unknown_schema_id",
            USAGE,
            vec![0, 0, 0, 0x7f, 0xff, 2, b'x'],
            "unknown_schema_id",
        ),
        bad(
            "schema_id_zero",
            PLANS,
            vec![0, 0, 0, 0, 0, 2, b'x'],
            "unknown_schema_id",
        ),
        bad(
            "truncated_usage_avro",
            USAGE,
            {
                let b = u("trunc").avro();
                b[..b.len() / 2].to_vec()
            },
            "body_mismatch",
        ),
        bad(
            "usage_avro_trailing_bytes",
            USAGE,
            {
                let mut b = u("trail").avro();
                b.extend_from_slice(b"extra");
                b
            },
            "body_mismatch",
        ),
        bad(
            "usage_avro_huge_string_length",
            USAGE,
            {
                // Frame of the usage schema, then a string length of ~2^62.
                let b = u("len").avro();
                let mut out = b[..5].to_vec();
                out.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
                out
            },
            "body_mismatch",
        ),
        bad(
            "usage_avro_negative_map_block_flood",
            USAGE,
            {
                // All strings empty, then a map block claiming 2^40 entries.
                let b = u("m").avro();
                let mut out = b[..5].to_vec();
                out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
                out.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
                out
            },
            "body_mismatch",
        ),
        bad(
            "usage_avro_overlong_varint",
            USAGE,
            {
                let b = u("v").avro();
                let mut out = b[..5].to_vec();
                out.extend_from_slice(&[0xff; 12]);
                out
            },
            "body_mismatch",
        ),
        bad(
            "truncated_payment_avro",
            PAYMENTS,
            {
                let b = payment(
                    "CreditToppedUp",
                    "tp",
                    Some("prod"),
                    vec![("amount", s("10")), ("currency", s("EUR"))],
                );
                b[..b.len() - 3].to_vec()
            },
            "body_mismatch",
        ),
        bad(
            "truncated_plan_avro",
            PLANS,
            {
                let b = plan_avro(PLAN);
                b[..b.len() - 4].to_vec()
            },
            "body_mismatch",
        ),
        // ---- usage fields, Avro ----
        bad(
            "quantity_not_decimal",
            USAGE,
            u("q1").with(|u| u.quantity = "abc".into()).avro(),
            "invalid_field",
        ),
        bad(
            "quantity_empty",
            USAGE,
            u("q2").with(|u| u.quantity = String::new()).avro(),
            "invalid_field",
        ),
        bad(
            "quantity_float_exponent",
            USAGE,
            u("q3").with(|u| u.quantity = "1e3".into()).avro(),
            "invalid_field",
        ),
        bad(
            "quantity_nan",
            USAGE,
            u("q4").with(|u| u.quantity = "NaN".into()).avro(),
            "invalid_field",
        ),
        bad(
            "quantity_29_digits",
            USAGE,
            u("q5")
                .with(|u| u.quantity = "123456789012345678901234567890".into())
                .avro(),
            "invalid_field",
        ),
        bad(
            "quantity_negative",
            USAGE,
            u("q6").with(|u| u.quantity = "-1".into()).avro(),
            "invalid_quantity",
        ),
        bad(
            "quantity_over_maximum",
            USAGE,
            u("q7")
                .with(|u| u.quantity = "1000000000000001".into())
                .avro(),
            "invalid_quantity",
        ),
        bad(
            "occurred_at_far_future",
            USAGE,
            u("f1")
                .with(|u| u.occurred_at = micros("2096-03-05T10:00:00Z"))
                .avro(),
            "from_future",
        ),
        bad(
            "occurred_at_i64_max",
            USAGE,
            u("f2").with(|u| u.occurred_at = i64::MAX).avro(),
            "invalid_field",
        ),
        bad(
            "occurred_at_i64_min",
            USAGE,
            u("f3").with(|u| u.occurred_at = i64::MIN).avro(),
            "invalid_field",
        ),
        bad(
            "before_account_opened",
            USAGE,
            u("b1")
                .with(|u| u.occurred_at = micros("2026-02-20T10:00:00Z"))
                .avro(),
            "before_account_opened",
        ),
        keyed(
            bad(
                "unknown_account",
                USAGE,
                u("n1").with(|u| u.account_id = "nobody".into()).avro(),
                "unknown_account",
            ),
            Some("nobody"),
        ),
        bad(
            "unknown_metric",
            USAGE,
            u("n2").with(|u| u.metric = "gpu.hours".into()).avro(),
            "unknown_metric",
        ),
        bad(
            "wrong_environment",
            USAGE,
            u("e1").with(|u| u.environment = "staging".into()).avro(),
            "wrong_environment",
        ),
        bad(
            "empty_environment",
            USAGE,
            u("e2").with(|u| u.environment = String::new()).avro(),
            "wrong_environment",
        ),
        bad(
            "environment_case",
            USAGE,
            u("e3").with(|u| u.environment = "PROD".into()).avro(),
            "wrong_environment",
        ),
        keyed(
            bad("key_mismatch", USAGE, u("k1").avro(), "key_mismatch"),
            Some("a2"),
        ),
        keyed(
            bad("key_missing", USAGE, u("k2").avro(), "key_mismatch"),
            None,
        ),
        // ---- card numbers in usage free text, every shape, Avro ----
        card(
            "card_in_subject",
            USAGE,
            u("c1").with(|u| u.subject = VISA.into()).avro(),
        ),
        card(
            "card_spaced_in_subject",
            USAGE,
            u("c2")
                .with(|u| u.subject = format!("app {VISA_SPACED} x"))
                .avro(),
        ),
        card(
            "card_dashed_in_metric",
            USAGE,
            u("c3").with(|u| u.metric = MC_DASHED.into()).avro(),
        ),
        card(
            "amex_in_attribute_value",
            USAGE,
            u("c4")
                .with(|u| u.attributes = vec![("note".into(), AMEX.into())])
                .avro(),
        ),
        card(
            "diners_in_attribute_key",
            USAGE,
            u("c5")
                .with(|u| u.attributes = vec![(DINERS.into(), "x".into())])
                .avro(),
        ),
        card(
            "card_13_digits",
            USAGE,
            u("c6")
                .with(|u| u.subject = format!("pan={VISA13};"))
                .avro(),
        ),
        card(
            "card_4_4_4_4_3",
            USAGE,
            u("c7")
                .with(|u| u.attributes = vec![("pan".into(), NINETEEN.into())])
                .avro(),
        ),
        card(
            "card_19_digit_run",
            USAGE,
            u("c8").with(|u| u.subject = NINETEEN_RUN.into()).avro(),
        ),
        card(
            "card_and_wrong_environment",
            USAGE,
            u("c9")
                .with(|u| {
                    u.subject = VISA.into();
                    u.environment = "staging".into()
                })
                .avro(),
        ),
        keyed(
            card(
                "card_and_unknown_account",
                USAGE,
                u("c10")
                    .with(|u| {
                        u.subject = VISA.into();
                        u.account_id = "ghost-c".into()
                    })
                    .avro(),
            ),
            Some("ghost-c"),
        ),
        // A 26-byte string has the Avro length byte 0x34, an ASCII "4":
        // in the raw bytes the card number is part of a 17-digit run.
        card(
            "card_next_to_length_byte",
            USAGE,
            u("c11")
                .with(|u| u.subject = format!("{VISA} is my pan"))
                .avro(),
        ),
        // ---- usage, CloudEvents JSON ----
        bad(
            "json_invalid",
            USAGE,
            b"{\"specversion\":".to_vec(),
            "bad_json",
        ),
        bad(
            "json_not_object",
            USAGE,
            b"  {}".to_vec(),
            "not_cloud_event",
        ),
        bad(
            "json_wrong_specversion",
            USAGE,
            br#"{"specversion":"0.3","type":"billing.usage.v1","id":"x","source":"s","data":{}}"#
                .to_vec(),
            "not_cloud_event",
        ),
        bad(
            "json_wrong_type",
            USAGE,
            br#"{"specversion":"1.0","type":"com.example.other","id":"x","source":"s","data":{}}"#
                .to_vec(),
            "not_cloud_event",
        ),
        bad(
            "json_missing_data",
            USAGE,
            br#"{"specversion":"1.0","type":"billing.usage.v1","id":"x","source":"s"}"#.to_vec(),
            "not_cloud_event",
        ),
        bad(
            "json_deeply_nested",
            USAGE,
            format!("{{\"a\":{nested}}}").into_bytes(),
            "bad_json",
        ),
        bad(
            "json_invalid_utf8",
            USAGE,
            b"{\"specversion\":\"1.0\xff\xfe\"}".to_vec(),
            "bad_json",
        ),
        bad(
            "json_quantity_number",
            USAGE,
            String::from_utf8(u("j1").cloud_event())
                .unwrap()
                .replace("\"quantity\":\"1\"", "\"quantity\":1")
                .into_bytes(),
            "invalid_field",
        ),
        bad(
            "json_quantity_null",
            USAGE,
            String::from_utf8(u("j2").cloud_event())
                .unwrap()
                .replace("\"quantity\":\"1\"", "\"quantity\":null")
                .into_bytes(),
            "invalid_field",
        ),
        bad(
            "json_bad_time",
            USAGE,
            String::from_utf8(u("j3").cloud_event())
                .unwrap()
                .replace("2026-03-05T10:00:00", "2026-13-45T10:00:00")
                .into_bytes(),
            "invalid_field",
        ),
        bad(
            "json_bad_timezone_offset",
            USAGE,
            String::from_utf8(u("j4").cloud_event())
                .unwrap()
                .replace("2026-03-05T10:00:00Z", "2026-03-05T10:00:00+25:00")
                .into_bytes(),
            "invalid_field",
        ),
        bad(
            "json_attributes_not_map",
            USAGE,
            String::from_utf8(u("j5").cloud_event())
                .unwrap()
                .replace("\"attributes\":{}", "\"attributes\":[1,2]")
                .into_bytes(),
            "invalid_field",
        ),
        bad(
            "json_wrong_environment",
            USAGE,
            u("j6").with(|u| u.environment = "dev".into()).cloud_event(),
            "wrong_environment",
        ),
        card(
            "json_card_in_subject",
            USAGE,
            u("j7")
                .with(|u| u.subject = VISA_SPACED.into())
                .cloud_event(),
        ),
        // A card number in subject and a JSON-number quantity: the decode
        // error path must mask the raw bytes too.
        Bad {
            kind: Some("invalid_field"),
            ..card(
                "json_card_and_number_quantity",
                USAGE,
                String::from_utf8(u("j8").with(|u| u.subject = VISA.into()).cloud_event())
                    .unwrap()
                    .replace("\"quantity\":\"1\"", "\"quantity\":1")
                    .into_bytes(),
            )
        },
        // A card number as the quantity is a card number too (the scan
        // runs first, on numbers of 13+ digits), and no reason echoes it.
        Bad {
            kind: Some("card_number"),
            ..card(
                "card_as_quantity",
                USAGE,
                u("j9").with(|u| u.quantity = VISA.into()).avro(),
            )
        },
        // The same number written with JSON escapes.
        card(
            "json_card_with_unicode_escapes",
            USAGE,
            String::from_utf8(
                u("j10")
                    .with(|u| u.subject = "CARDPLACE".into())
                    .cloud_event(),
            )
            .unwrap()
            .replace(
                "CARDPLACE",
                &VISA
                    .chars()
                    .map(|c| format!("\\u{:04x}", c as u32))
                    .collect::<String>(),
            )
            .into_bytes(),
        ),
        // ---- payments ----
        keyed(
            bad(
                "payment_unknown_account",
                PAYMENTS,
                avro(
                    "CreditToppedUp",
                    vec![
                        ("event_id", s("pu")),
                        ("account_id", s("ghost")),
                        ("occurred_at", ts("2026-03-06T00:00:00Z")),
                        ("environment", some(s("prod"))),
                        ("amount", s("10")),
                        ("currency", s("EUR")),
                    ],
                ),
                "unknown_account",
            ),
            Some("ghost"),
        ),
        bad(
            "payment_currency_mismatch",
            PAYMENTS,
            payment(
                "CreditToppedUp",
                "p1",
                Some("prod"),
                vec![("amount", s("10")), ("currency", s("USD"))],
            ),
            "currency_mismatch",
        ),
        bad(
            "payment_negative_amount",
            PAYMENTS,
            payment(
                "CreditToppedUp",
                "p2",
                Some("prod"),
                vec![("amount", s("-10")), ("currency", s("EUR"))],
            ),
            "invalid_amount",
        ),
        bad(
            "payment_amount_too_precise",
            PAYMENTS,
            payment(
                "CreditToppedUp",
                "p3",
                Some("prod"),
                vec![("amount", s("10.001")), ("currency", s("EUR"))],
            ),
            "invalid_amount",
        ),
        bad(
            "payment_amount_huge",
            PAYMENTS,
            payment(
                "CreditToppedUp",
                "p4",
                Some("prod"),
                vec![
                    ("amount", s("99999999999999999999999999")),
                    ("currency", s("EUR")),
                ],
            ),
            "invalid_amount",
        ),
        bad(
            "payment_amount_not_decimal",
            PAYMENTS,
            payment(
                "CreditToppedUp",
                "p5",
                Some("prod"),
                vec![("amount", s("ten")), ("currency", s("EUR"))],
            ),
            "invalid_field",
        ),
        bad(
            "payment_unknown_charge",
            PAYMENTS,
            payment(
                "PaymentSucceeded",
                "p6",
                Some("prod"),
                vec![
                    ("charge_id", s("nope")),
                    ("invoice_id", s("nope")),
                    ("amount", s("1")),
                    ("currency", s("EUR")),
                ],
            ),
            "unknown_charge",
        ),
        bad(
            "refund_exceeds_credit",
            PAYMENTS,
            payment(
                "PaymentRefunded",
                "p7",
                Some("prod"),
                vec![
                    ("amount", s("1000000")),
                    ("currency", s("EUR")),
                    ("reason", s("goodwill")),
                ],
            ),
            "refund_exceeds_credit",
        ),
        bad(
            "detach_unknown_method",
            PAYMENTS,
            payment(
                "PaymentMethodDetached",
                "p8",
                Some("prod"),
                vec![("token_ref", s("tok_none"))],
            ),
            "unknown_payment_method",
        ),
        bad(
            "payment_wrong_environment",
            PAYMENTS,
            payment(
                "CreditToppedUp",
                "p9",
                Some("test"),
                vec![("amount", s("10")), ("currency", s("EUR"))],
            ),
            "wrong_environment",
        ),
        bad(
            "payment_without_environment",
            PAYMENTS,
            payment(
                "CreditToppedUp",
                "p10",
                None,
                vec![("amount", s("10")), ("currency", s("EUR"))],
            ),
            "wrong_environment",
        ),
        card(
            "card_in_payment_failed_reason",
            PAYMENTS,
            payment(
                "PaymentFailed",
                "p11",
                Some("prod"),
                vec![
                    ("charge_id", s("c")),
                    ("invoice_id", s("i")),
                    ("retryable", Avro::Boolean(true)),
                    ("reason", s(&format!("card {VISA_SPACED} declined"))),
                ],
            ),
        ),
        card(
            "card_in_bank_transfer_reference",
            PAYMENTS,
            payment(
                "BankTransferReceived",
                "p12",
                Some("prod"),
                vec![
                    ("reference", s(MC_DASHED)),
                    ("amount", s("5")),
                    ("currency", s("EUR")),
                ],
            ),
        ),
        card(
            "card_in_refund_reason",
            PAYMENTS,
            payment(
                "PaymentRefunded",
                "p13",
                Some("prod"),
                vec![
                    ("amount", s("1")),
                    ("currency", s("EUR")),
                    ("reason", s(AMEX)),
                ],
            ),
        ),
        card(
            "card_in_payment_method_brand",
            PAYMENTS,
            payment(
                "PaymentMethodAttached",
                "p14",
                Some("prod"),
                vec![
                    ("token_ref", s("tok_1")),
                    ("brand", s(VISA)),
                    ("last4", s("1111")),
                    ("expires", s("2030-01")),
                ],
            ),
        ),
        card(
            "card_in_payment_for_other_environment",
            PAYMENTS,
            payment(
                "PaymentFailed",
                "p15",
                Some("staging"),
                vec![
                    ("charge_id", s("c")),
                    ("invoice_id", s("i")),
                    ("retryable", Avro::Boolean(false)),
                    ("reason", s(DINERS)),
                ],
            ),
        ),
        // ---- account commands ----
        keyed(
            bad(
                "opening_unknown_timezone",
                ACCOUNTS,
                opened("o1", "b1", |m| {
                    m.insert("timezone", s("Mars/Olympus"));
                }),
                "invalid_field",
            ),
            Some("b1"),
        ),
        keyed(
            bad(
                "opening_unknown_currency",
                ACCOUNTS,
                opened("o2", "b2", |m| {
                    m.insert("currency", s("EURO"));
                }),
                "invalid_field",
            ),
            Some("b2"),
        ),
        keyed(
            bad(
                "opening_unknown_plan",
                ACCOUNTS,
                opened("o3", "b3", |m| {
                    m.insert("plan_id", s("nope"));
                }),
                "unknown_plan",
            ),
            Some("b3"),
        ),
        keyed(
            bad(
                "opening_negative_tax",
                ACCOUNTS,
                opened("o4", "b4", |m| {
                    m.insert("tax_rate", s("-0.2"));
                }),
                "invalid_field",
            ),
            Some("b4"),
        ),
        keyed(
            bad(
                "opening_tax_over_one",
                ACCOUNTS,
                opened("o5", "b5", |m| {
                    m.insert("tax_rate", s("19"));
                }),
                "invalid_field",
            ),
            Some("b5"),
        ),
        bad(
            "opening_already_open",
            ACCOUNTS,
            opened("o6", "a1", |_| {}),
            "account_already_open",
        ),
        keyed(
            bad(
                "opening_without_environment",
                ACCOUNTS,
                opened("o7", "b7", |m| {
                    m.insert("environment", s(""));
                }),
                "wrong_environment",
            ),
            Some("b7"),
        ),
        keyed(
            bad(
                "opening_for_other_environment",
                ACCOUNTS,
                opened("o8", "b8", |m| {
                    m.insert("environment", s("dev"));
                }),
                "wrong_environment",
            ),
            Some("b8"),
        ),
        keyed(
            bad(
                "opening_backdated_decades",
                ACCOUNTS,
                opened("o9", "b9", |m| {
                    m.insert("opened_at", ts("1970-01-01T00:00:00Z"));
                }),
                "too_late",
            ),
            Some("b9"),
        ),
        bad(
            "plan_changed_unknown_plan",
            ACCOUNTS,
            command(
                "PlanChanged",
                "o10",
                "a1",
                Some("prod"),
                vec![("plan_id", s("nope"))],
            ),
            "unknown_plan",
        ),
        bad(
            "plan_changed_without_environment",
            ACCOUNTS,
            command("PlanChanged", "o11", "a1", None, vec![("plan_id", s("p"))]),
            "wrong_environment",
        ),
        keyed(
            bad(
                "close_unknown_account",
                ACCOUNTS,
                command("AccountClosed", "o12", "ghost", Some("prod"), vec![]),
                "unknown_account",
            ),
            Some("ghost"),
        ),
        card(
            "card_in_adjustment_reason",
            ACCOUNTS,
            command(
                "AdjustmentIssued",
                "o13",
                "a1",
                Some("prod"),
                vec![
                    ("adjustment", Avro::Enum(0, "credit_note".into())),
                    ("amount", s("1")),
                    ("currency", s("EUR")),
                    ("reason", s(&format!("refund to {VISA}"))),
                ],
            ),
        ),
        bad(
            "adjustment_amount_huge",
            ACCOUNTS,
            command(
                "AdjustmentIssued",
                "o14",
                "a1",
                Some("prod"),
                vec![
                    ("adjustment", Avro::Enum(1, "debit".into())),
                    ("amount", s("9999999999999999999999")),
                    ("currency", s("EUR")),
                    ("reason", s("x")),
                ],
            ),
            "invalid_amount",
        ),
        // ---- plans ----
        keyed(
            bad(
                "plan_fee_overflows",
                PLANS,
                plan_avro(
                    r#"{"plan_id":"huge","currency":"EUR","recurring_fee":"100000000000000000","minimum_spend":"0","charges":[]}"#,
                ),
                "invalid_plan",
            ),
            Some("huge"),
        ),
        // An account opened on the plan just refused: before plans were
        // bounded, rating its fee panicked the process.
        keyed(
            bad(
                "opening_on_overflowing_plan",
                ACCOUNTS,
                opened("o15", "b15", |m| {
                    m.insert("plan_id", s("huge"));
                }),
                "unknown_plan",
            ),
            Some("b15"),
        ),
        keyed(
            bad(
                "plan_unit_price_negative",
                PLANS,
                plan_avro(
                    r#"{"plan_id":"neg","currency":"EUR","recurring_fee":"1","minimum_spend":"0","charges":[{"metric":"m","model":"per_unit","unit_price":"-1"}]}"#,
                ),
                "invalid_plan",
            ),
            Some("neg"),
        ),
        keyed(
            bad(
                "plan_package_size_zero",
                PLANS,
                plan_avro(
                    r#"{"plan_id":"pkg","currency":"EUR","recurring_fee":"1","minimum_spend":"0","charges":[{"metric":"m","model":"package","unit_price":"1","package_size":"0"}]}"#,
                ),
                "invalid_plan",
            ),
            Some("pkg"),
        ),
        keyed(
            bad(
                "plan_tiers_not_increasing",
                PLANS,
                plan_avro(
                    r#"{"plan_id":"tiers","currency":"EUR","recurring_fee":"1","minimum_spend":"0","charges":[{"metric":"m","model":"graduated","tiers":[{"up_to":"100","unit_price":"1","flat_fee":"0"},{"up_to":"50","unit_price":"1","flat_fee":"0"},{"up_to":null,"unit_price":"1","flat_fee":"0"}]}]}"#,
                ),
                "invalid_plan",
            ),
            Some("tiers"),
        ),
        keyed(
            bad(
                "plan_tier_price_huge",
                PLANS,
                plan_avro(
                    r#"{"plan_id":"tierhuge","currency":"EUR","recurring_fee":"1","minimum_spend":"0","charges":[{"metric":"m","model":"graduated","tiers":[{"up_to":null,"unit_price":"79228162514264337593543950335","flat_fee":"0"}]}]}"#,
                ),
                "invalid_plan",
            ),
            Some("tierhuge"),
        ),
    ];
    // A conflicting payload under a known id (the good record g0 is applied
    // before the corpus runs).
    c.push(bad(
        "conflict_same_id_other_payload",
        USAGE,
        U::new("g0")
            .with(|u| u.metric = "good".into())
            .with(|u| u.quantity = "2".into())
            .avro(),
        "conflict",
    ));
    // The two traps: neither is dead-lettered.
    c.push(Bad {
        kind: None,
        ..bad(
            "trap_16_digits_failing_luhn",
            USAGE,
            U::new("trap1")
                .with(|u| u.subject = "4111111111111112".into())
                .avro(),
            "",
        )
    });
    c.push(Bad {
        kind: None,
        ..bad(
            "trap_exact_duplicate",
            USAGE,
            U::new("g0").with(|u| u.metric = "good".into()).avro(),
            "",
        )
    });
    c
}

/// A `tracing` writer into a shared buffer: every log line of the run.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn dlq_payload(r: &OutputRecord) -> Vec<u8> {
    let text = r.json["payload"].as_str().expect("payload is a string");
    match r.json["payload_encoding"].as_str() {
        Some("utf8") => text.as_bytes().to_vec(),
        Some("base64") => base64_decode(text),
        other => panic!("payload_encoding {other:?}"),
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn contains_card(haystack: &[u8], cards: &[String]) -> Option<String> {
    // Each number as contiguous digits, and as JSON \u escapes.
    cards
        .iter()
        .find(|c| {
            let escaped: String = c.chars().map(|d| format!("\\u{:04x}", d as u32)).collect();
            [c.as_bytes(), escaped.as_bytes()]
                .iter()
                .any(|needle| haystack.windows(needle.len()).any(|w| w == *needle))
        })
        .cloned()
}

async fn send(
    p: &mut Processor<EmbeddedStore>,
    decoder: &Decoder,
    now: Timestamp,
    pos: SourcePos,
    key: Option<&str>,
    bytes: &[u8],
) {
    p.process(&pos, key, bytes, decoder.decode(bytes), now)
        .await
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn issue_12_hostile_corpus_is_dead_lettered_masked_and_processing_continues() {
    let corpus = corpus();
    let kinds = corpus.iter().filter(|b| b.kind.is_some()).count();
    assert!(
        kinds >= 60,
        "the corpus has {kinds} kinds of bad record, the issue asks for 60"
    );

    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let mut p = processor_in(dir.path(), engine(), t(NOW)).await;
    let catalog = Catalog::shared().unwrap();
    let decoder = Decoder::new(catalog).unwrap();
    let now = t(NOW);

    let mut offsets: BTreeMap<&str, i64> = BTreeMap::new();
    let mut next = |topic: &'static str| -> SourcePos {
        let o = offsets.entry(topic).or_default();
        *o += 1;
        SourcePos {
            topic: topic.into(),
            partition: 0,
            offset: *o,
        }
    };
    // The price book and one open account.
    let plan = plan_avro(PLAN);
    send(&mut p, &decoder, now, next(PLANS), Some("p"), &plan).await;
    let open = opened("open-a1", "a1", |_| {});
    send(&mut p, &decoder, now, next(ACCOUNTS), Some("a1"), &open).await;
    let credit = payment(
        "CreditToppedUp",
        "credit-1",
        Some("prod"),
        vec![("amount", s("5")), ("currency", s("EUR"))],
    );
    send(&mut p, &decoder, now, next(PAYMENTS), Some("a1"), &credit).await;
    let good = |i: usize| {
        U::new(&format!("g{i}"))
            .with(|u| u.metric = "good".into())
            .avro()
    };
    send(&mut p, &decoder, now, next(USAGE), Some("a1"), &good(0)).await;

    // Each bad record, then a good one on the same partition.
    let mut sent: Vec<(SourcePos, &Bad)> = Vec::new();
    for (i, b) in corpus.iter().enumerate() {
        let pos = next(b.topic);
        send(
            &mut p,
            &decoder,
            now,
            pos.clone(),
            b.key.as_deref(),
            &b.bytes,
        )
        .await;
        sent.push((pos, b));
        send(&mut p, &decoder, now, next(USAGE), Some("a1"), &good(i + 1)).await;
    }
    p.advance_timers(now);
    let outputs = p.flush().await.unwrap();

    // Every good record was applied: the partition kept moving.
    let st = p.account("a1").expect("a1 is open");
    let draft = p.engine().draft(st);
    let good_qty: rust_decimal::Decimal = draft
        .lines
        .iter()
        .filter(|l| l.metric.as_deref() == Some("good"))
        .map(|l| l.quantity)
        .sum();
    assert_eq!(
        good_qty,
        rust_decimal::Decimal::from(corpus.len() + 1),
        "every good record after a bad one is applied"
    );

    let dlq: Vec<&OutputRecord> = outputs
        .iter()
        .filter(|o| o.topic == OutputTopic::Dlq)
        .collect();
    let mut failures = Vec::new();
    for (pos, b) in &sent {
        let cause = format!("{}/{}/{}", pos.topic, pos.partition, pos.offset);
        let letters: Vec<&&OutputRecord> = dlq.iter().filter(|r| r.causation_id == cause).collect();
        match (b.kind, letters.as_slice()) {
            (None, []) => {}
            (None, [r]) => failures.push(format!(
                "{}: dead-lettered as {} but must be applied",
                b.name, r.json["error_kind"]
            )),
            (Some(kind), [r]) => {
                if r.json["error_kind"] != kind {
                    failures.push(format!(
                        "{}: kind {} (reason {}), expected {kind}",
                        b.name, r.json["error_kind"], r.json["reason"]
                    ));
                }
                let payload = dlq_payload(r);
                if b.card {
                    if payload.len() != b.bytes.len() && b.bytes.first() == Some(&0) {
                        failures.push(format!("{}: masked Avro payload changed length", b.name));
                    }
                    if b.bytes.first() == Some(&b'{') && std::str::from_utf8(&payload).is_err() {
                        failures.push(format!("{}: masked JSON payload is not UTF-8", b.name));
                    }
                    if payload == b.bytes {
                        failures.push(format!("{}: card payload not masked", b.name));
                    }
                } else if payload != b.bytes {
                    failures.push(format!("{}: payload is not the input as sent", b.name));
                }
            }
            (_, found) => failures.push(format!(
                "{}: {} dead letters, expected {}",
                b.name,
                found.len(),
                usize::from(b.kind.is_some())
            )),
        }
    }

    // No card number anywhere: outputs (dead letters included, with their
    // payloads decoded) and every log line.
    let cards = card_digits();
    for o in &outputs {
        let mut text = o.json.to_string().into_bytes();
        if o.topic == OutputTopic::Dlq {
            text.extend(dlq_payload(o));
        }
        if let Some(c) = contains_card(&text, &cards) {
            failures.push(format!("card {c} in output {} {}", o.kind, o.json));
        }
    }
    let log = logs.0.lock().unwrap().clone();
    if let Some(c) = contains_card(&log, &cards) {
        failures.push(format!("card {c} in the logs"));
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
