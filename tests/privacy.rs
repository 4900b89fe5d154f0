//! SPEC §4 privacy and the environment interlock, seen from outside (issue
//! 12 items 3 and 6): a card number fed through every input path, in every
//! shape SPEC §4 names, never reaches a dead letter, a reason or the
//! console in full; the dead letter stays replayable; and an input that
//! names no environment, or another one, changes nothing.

use std::path::Path;
use std::process::Command;

use billstream::contracts::{
    parse_line, Catalog, DecodeError, Decoded, Decoder, OutputRecord, OutputTopic,
};
use billstream::engine::events::{
    AccountCommand, AccountKind, AdjustmentKind, Input, PaymentEvent, PaymentKind, UsageRecorded,
};
use billstream::engine::time::Timestamp;
use billstream::runtime::{Processor, SourcePos};
use billstream::store::EmbeddedStore;
use rust_decimal::Decimal;

use super::support::{engine_with_plan_p, processor_in};

const OPEN: &str = r#"{"event_id":"open-a1","account_id":"a1","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0.1","opened_at":"2026-03-01T00:00:00Z","environment":"prod"}"#;
const AT: &str = "2026-03-05T10:00:00Z";

/// A card number as a producer might write it: `text` is how it appears in
/// a field, `digits` the number itself.
struct Card {
    shape: &'static str,
    text: &'static str,
    digits: &'static str,
}

/// Every shape of SPEC §4, each a Luhn-valid test number of its own.
const CARDS: &[Card] = &[
    Card {
        shape: "16 contiguous",
        text: "4012888888881881",
        digits: "4012888888881881",
    },
    Card {
        shape: "13 contiguous",
        text: "4222222222222",
        digits: "4222222222222",
    },
    Card {
        shape: "19 contiguous",
        text: "6011111111111111110",
        digits: "6011111111111111110",
    },
    Card {
        shape: "4-4-4-4 spaces",
        text: "4111 1111 1111 1111",
        digits: "4111111111111111",
    },
    Card {
        shape: "4-4-4-4 dashes",
        text: "5555-5555-5555-4444",
        digits: "5555555555554444",
    },
    Card {
        shape: "4-4-4-4-3",
        text: "4000 0000 0000 0000 006",
        digits: "4000000000000000006",
    },
    Card {
        shape: "4-6-5",
        text: "3782 822463 10005",
        digits: "378282246310005",
    },
    Card {
        shape: "4-6-4",
        text: "3056-930902-5904",
        digits: "30569309025904",
    },
];

impl Card {
    fn contiguous(&self) -> bool {
        self.text == self.digits
    }

    /// The text with its first digit written as a JSON `\u00XX` escape.
    fn json_escaped(&self) -> String {
        format!("\\u{:04x}{}", self.text.as_bytes()[0], &self.text[1..])
    }
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// One processor on a fresh embedded store, with plan `p` and account `a1`
/// (environment `prod`) open.
struct Rig {
    p: Processor<EmbeddedStore>,
    decoder: Decoder,
    offset: i64,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Rig {
            p: processor_in(dir.path(), engine_with_plan_p(), ts("2026-03-01T00:00:00Z")).await,
            decoder: Decoder::new(Catalog::shared().unwrap()).unwrap(),
            offset: 0,
            _dir: dir,
        };
        let out = rig.line(OPEN).await;
        assert!(dead_letters(&out).is_empty(), "{out:?}");
        rig
    }

    /// Feed one record as `billstream run` does (bytes through the decoder).
    async fn record(&mut self, raw: &[u8]) -> Vec<OutputRecord> {
        let decoded = self.decoder.decode(raw);
        self.feed(raw, decoded).await
    }

    /// Feed one line as `billstream simulate` does.
    async fn line(&mut self, line: &str) -> Vec<OutputRecord> {
        let decoded = parse_line(line);
        self.feed(line.as_bytes(), decoded).await
    }

    async fn feed(
        &mut self,
        raw: &[u8],
        decoded: Result<Decoded, DecodeError>,
    ) -> Vec<OutputRecord> {
        self.offset += 1;
        let pos = SourcePos {
            topic: "in".into(),
            partition: 0,
            offset: self.offset,
        };
        let key = match &decoded {
            Ok(Decoded::Input(i)) => Some(i.account_id().to_string()),
            _ => None,
        };
        self.p
            .process(
                &pos,
                key.as_deref(),
                raw,
                decoded,
                ts("2026-03-06T00:00:00Z"),
            )
            .await
            .unwrap();
        self.p.flush().await.unwrap()
    }

    fn credit(&self) -> String {
        format!("{:?}", self.p.account("a1").map(|s| &s.credit))
    }
}

fn dead_letters(outputs: &[OutputRecord]) -> Vec<&OutputRecord> {
    outputs
        .iter()
        .filter(|o| o.topic == OutputTopic::Dlq)
        .collect()
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for quad in text.as_bytes().chunks(4) {
        let digits: Vec<u8> = quad
            .iter()
            .filter(|&&c| c != b'=')
            .map(|&c| value(c))
            .collect();
        let mut n = 0u32;
        for (i, d) in digits.iter().enumerate() {
            n |= u32::from(*d) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..digits.len() - 1]);
    }
    out
}

/// The payload bytes a dead letter carries.
fn payload(dl: &OutputRecord) -> Vec<u8> {
    let text = dl.json["payload"].as_str().unwrap();
    match dl.json["payload_encoding"].as_str().unwrap() {
        "utf8" => text.as_bytes().to_vec(),
        "base64" => base64_decode(text),
        other => panic!("payload_encoding {other}"),
    }
}

/// Whether `bytes` hold the card's digits in any readable form: JSON
/// `\u00XX` escapes decoded, spaces and dashes between digits removed.
fn holds(bytes: &[u8], card: &Card) -> bool {
    let mut plain = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'u') {
            let hex = bytes
                .get(i + 2..i + 6)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(c) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                plain.push(c);
                i += 6;
                continue;
            }
        }
        plain.push(bytes[i]);
        i += 1;
    }
    let squeezed: Vec<u8> = plain
        .into_iter()
        .filter(|c| *c != b' ' && *c != b'-')
        .collect();
    squeezed
        .windows(card.digits.len())
        .any(|w| w == card.digits.as_bytes())
}

/// What a dead letter's payload must still be after masking.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Replay {
    /// Valid UTF-8 JSON that still parses.
    Json,
    /// Not JSON at all (a line that was never valid): UTF-8 text.
    Text,
    /// Confluent Avro masked in place: same length, every byte outside the
    /// strings as it was (the body still reads against its schema), and
    /// it still decodes to an input.
    Avro,
    /// Masked in place like `Avro`, but the masked value was the one a
    /// decoder checks (a quantity, an amount) or the record never decoded:
    /// a hand fix away from replay.
    AvroToFix,
    /// Bytes of unknown structure (a truncated record): masked in place.
    SameLength,
}

/// Whether Confluent-framed Avro bytes read completely against the schema
/// their frame names (a masked string is still a string of its length).
fn avro_reads(bytes: &[u8]) -> bool {
    let catalog = Catalog::shared().unwrap();
    let Ok((id, mut body)) = billstream::contracts::framing::split(bytes) else {
        return false;
    };
    let Some(entry) = catalog.by_id(id) else {
        return false;
    };
    apache_avro::from_avro_datum(&entry.schema, &mut body, None).is_ok() && body.is_empty()
}

struct Path1 {
    name: &'static str,
    kind: &'static str,
    replay: Replay,
    raw: Vec<u8>,
    /// Fed as a simulate line (else as Kafka bytes through the decoder).
    line: bool,
}

fn usage(subject: &str, metric: &str, quantity: &str, environment: &str) -> UsageRecorded {
    UsageRecorded {
        event_id: "u-1".into(),
        account_id: "a1".into(),
        subject: subject.into(),
        metric: metric.into(),
        quantity: quantity.parse::<Decimal>().unwrap(),
        occurred_at: ts(AT),
        environment: environment.into(),
        attributes: Default::default(),
    }
}

fn avro(input: &Input) -> Vec<u8> {
    Catalog::shared().unwrap().encode_input(input).unwrap()
}

/// Replace the Avro string `from` by `to` (same length) in `bytes`.
fn patch(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap();
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to.as_bytes());
    out
}

fn ce(data: &str) -> Vec<u8> {
    format!(r#"{{"specversion":"1.0","type":"billing.usage.v1","source":"/t","id":"ce-1","time":"{AT}","data":{{{data}}}}}"#).into_bytes()
}

fn usage_line(fields: &str) -> String {
    format!(
        r#"{{"event_id":"u-1","account_id":"a1",{fields},"occurred_at":"{AT}","attributes":{{}}}}"#
    )
}

/// Every input path a card number can take, for one card.
fn paths(card: &Card) -> Vec<Path1> {
    let t = card.text;
    let mut v = vec![
        Path1 {
            name: "simulate line, card in subject",
            kind: "card_number",
            replay: Replay::Json,
            raw: usage_line(&format!(
                r#""subject":"card {t}","metric":"m","quantity":"1","environment":"prod""#
            ))
            .into_bytes(),
            line: true,
        },
        Path1 {
            name: "simulate line, card in subject written with a JSON escape",
            kind: "card_number",
            replay: Replay::Json,
            raw: usage_line(&format!(
                r#""subject":"card {}","metric":"m","quantity":"1","environment":"prod""#,
                card.json_escaped()
            ))
            .into_bytes(),
            line: true,
        },
        Path1 {
            name: "simulate line, card in an attribute value, unknown account",
            kind: "card_number",
            replay: Replay::Json,
            raw: format!(r#"{{"event_id":"u-1","account_id":"nobody","subject":"s","metric":"m","quantity":"1","occurred_at":"{AT}","environment":"prod","attributes":{{"note":"{t}"}}}}"#).into_bytes(),
            line: true,
        },
        Path1 {
            name: "simulate line, card in subject, wrong environment",
            kind: "card_number",
            replay: Replay::Json,
            raw: usage_line(&format!(
                r#""subject":"{t}","metric":"m","quantity":"1","environment":"staging""#
            ))
            .into_bytes(),
            line: true,
        },
        Path1 {
            name: "simulate line, card as the account id of an unknown account",
            kind: "unknown_account",
            replay: Replay::Json,
            raw: format!(r#"{{"event_id":"u-1","account_id":"{t}","subject":"s","metric":"m","quantity":"1","occurred_at":"{AT}","environment":"prod","attributes":{{}}}}"#).into_bytes(),
            line: true,
        },
        Path1 {
            name: "simulate line, card in the event id of a line that is not JSON",
            kind: "bad_json",
            replay: Replay::Text,
            raw: format!(r#"{{"event_id":"{t}","account_id":"a1""#).into_bytes(),
            line: true,
        },
        Path1 {
            name: "simulate line, card in a payment reason, no environment",
            kind: "card_number",
            replay: Replay::Json,
            raw: format!(r#"{{"event_id":"pf-1","account_id":"a1","kind":"payment_failed","charge_id":"c","invoice_id":"i","retryable":false,"reason":"declined {t}","occurred_at":"{AT}"}}"#).into_bytes(),
            line: true,
        },
        Path1 {
            name: "simulate line, card in an unknown field's name",
            kind: "invalid_field",
            replay: Replay::Json,
            raw: usage_line(&format!(
                r#""subject":"s","metric":"m","quantity":"1","environment":"prod","{t}":"x""#
            ))
            .into_bytes(),
            line: true,
        },
        Path1 {
            name: "CloudEvent, card in subject and a JSON-number quantity",
            kind: "invalid_field",
            replay: Replay::Json,
            raw: ce(&format!(
                r#""account_id":"a1","subject":"card {t}","metric":"m","quantity":5,"environment":"prod""#
            )),
            line: false,
        },
        Path1 {
            name: "CloudEvent, card in subject written with a JSON escape, wrong environment",
            kind: "card_number",
            replay: Replay::Json,
            raw: ce(&format!(
                r#""account_id":"a1","subject":"{}","metric":"m","quantity":"1","environment":"test""#,
                card.json_escaped()
            )),
            line: false,
        },
        Path1 {
            name: "Avro usage, card in subject, wrong environment",
            kind: "card_number",
            replay: Replay::Avro,
            raw: avro(&Input::Usage(usage(&format!("card {t}"), "m", "1", "staging"))),
            line: false,
        },
        Path1 {
            // A subject of 26 bytes has the length byte 0x34, the digit '4',
            // right before the card.
            name: "Avro usage, card right after a length byte that is a digit",
            kind: "card_number",
            replay: Replay::Avro,
            raw: avro(&Input::Usage(usage(&format!("{t:x<26}"), "m", "1", "prod"))),
            line: false,
        },
        Path1 {
            // The card ends the subject; the metric's length byte (24 bytes:
            // 0x30, '0') and the metric's own digits follow it.
            name: "Avro usage, card right before a length byte and digits",
            kind: "card_number",
            replay: Replay::Avro,
            raw: avro(&Input::Usage(usage(
                &format!("x {t}"),
                "2024.compute.hours.total",
                "1",
                "prod",
            ))),
            line: false,
        },
        Path1 {
            name: "Avro usage, card and a bad quantity (decode error)",
            kind: "invalid_field",
            replay: Replay::AvroToFix,
            raw: patch(
                &avro(&Input::Usage(usage(&format!("{t:x<26}"), "m", "777", "prod"))),
                "777",
                "7x7",
            ),
            line: false,
        },
        Path1 {
            name: "Avro usage cut short after the card (structure unknown)",
            kind: "body_mismatch",
            replay: Replay::SameLength,
            raw: {
                let whole = avro(&Input::Usage(usage(&format!("{t:x<26}"), "m", "1", "prod")));
                whole[..whole.len() - 3].to_vec()
            },
            line: false,
        },
        Path1 {
            name: "Avro payment, card in the failure reason, no environment",
            kind: "card_number",
            replay: Replay::Avro,
            raw: avro(&Input::Payment(PaymentEvent {
                event_id: "pf-1".into(),
                account_id: "a1".into(),
                occurred_at: ts(AT),
                environment: None,
                kind: PaymentKind::PaymentFailed {
                    charge_id: "c".into(),
                    invoice_id: "i".into(),
                    retryable: false,
                    reason: format!("declined {t}"),
                },
            })),
            line: false,
        },
        Path1 {
            name: "Avro adjustment, card in the reason, wrong environment",
            kind: "card_number",
            replay: Replay::Avro,
            raw: avro(&Input::Account(AccountCommand {
                event_id: "adj-1".into(),
                account_id: "a1".into(),
                occurred_at: ts(AT),
                environment: Some("staging".into()),
                kind: AccountKind::AdjustmentIssued {
                    adjustment: AdjustmentKind::Debit,
                    amount: "5.00".parse().unwrap(),
                    currency: "EUR".into(),
                    reason: format!("refund to {t}"),
                    invoice_id: None,
                    grant: Default::default(),
                },
            })),
            line: false,
        },
    ];
    if card.contiguous() {
        v.extend([
            Path1 {
                name: "CloudEvent, card as a JSON-number quantity",
                kind: "invalid_field",
                replay: Replay::Json,
                raw: ce(&format!(
                    r#""account_id":"a1","subject":"s","metric":"m","quantity":{t},"environment":"prod""#
                )),
                line: false,
            },
            Path1 {
                name: "simulate line, card as the quantity",
                kind: "card_number",
                replay: Replay::Json,
                raw: usage_line(&format!(
                    r#""subject":"s","metric":"m","quantity":"{t}","environment":"prod""#
                ))
                .into_bytes(),
                line: true,
            },
            Path1 {
                name: "Avro usage, card as the quantity, wrong environment",
                kind: "card_number",
                replay: Replay::AvroToFix,
                raw: avro(&Input::Usage(usage("s", "m", t, "staging"))),
                line: false,
            },
            Path1 {
                name: "Avro credit top-up, card as the amount",
                kind: "card_number",
                replay: Replay::AvroToFix,
                raw: avro(&Input::Payment(PaymentEvent {
                    event_id: "top-1".into(),
                    account_id: "a1".into(),
                    occurred_at: ts(AT),
                    environment: Some("prod".into()),
                    kind: PaymentKind::CreditToppedUp {
                        amount: t.parse().unwrap(),
                        currency: "EUR".into(),
                        grant: Default::default(),
                    },
                })),
                line: false,
            },
        ]);
    } else {
        v.push(Path1 {
            name: "CloudEvent, grouped card as the quantity text",
            kind: "invalid_field",
            replay: Replay::Json,
            raw: ce(&format!(
                r#""account_id":"a1","subject":"s","metric":"m","quantity":"{t}","environment":"prod""#
            )),
            line: false,
        });
    }
    v
}

#[tokio::test]
async fn issue_12_no_card_number_reaches_a_dead_letter_on_any_path() {
    let mut failures = Vec::new();
    for card in CARDS {
        for path in paths(card) {
            let mut rig = Rig::new().await;
            let before = rig.credit();
            let out = if path.line {
                rig.line(std::str::from_utf8(&path.raw).unwrap()).await
            } else {
                rig.record(&path.raw).await
            };
            let what = format!("{} / {}", card.shape, path.name);
            assert!(
                holds(&path.raw, card),
                "{what}: the test input must hold the card"
            );
            let dls = dead_letters(&out);
            if dls.len() != 1 {
                failures.push(format!("{what}: {} dead letters", dls.len()));
                continue;
            }
            let dl = dls[0];
            let kind = dl.json["error_kind"].as_str().unwrap();
            if kind != path.kind {
                failures.push(format!("{what}: kind {kind}, expected {}", path.kind));
            }
            // Nothing of the dead letter holds the card: reason, key,
            // payload, the record as published.
            let bytes = payload(dl);
            for (part, text) in [
                ("payload", bytes.clone()),
                ("record", dl.json.to_string().into_bytes()),
                ("key", dl.key.clone().into_bytes()),
            ] {
                if holds(&text, card) {
                    failures.push(format!(
                        "{what}: the dead letter's {part} holds the card: {}",
                        String::from_utf8_lossy(&text)
                    ));
                }
            }
            if out
                .iter()
                .any(|o| o.topic != OutputTopic::Dlq && holds(o.json.to_string().as_bytes(), card))
            {
                failures.push(format!("{what}: an output holds the card"));
            }
            if rig.credit() != before {
                failures.push(format!("{what}: the credit changed"));
            }
            // Replayable after masking.
            let replayable = match path.replay {
                Replay::Json => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                    .is_some(),
                Replay::Text => std::str::from_utf8(&bytes).is_ok(),
                Replay::Avro => {
                    bytes.len() == path.raw.len()
                        && avro_reads(&bytes)
                        && rig.decoder.decode(&bytes).is_ok()
                }
                Replay::AvroToFix => bytes.len() == path.raw.len() && avro_reads(&bytes),
                Replay::SameLength => bytes.len() == path.raw.len(),
            };
            if !replayable {
                failures.push(format!(
                    "{what}: the masked payload is not replayable as {:?}: {bytes:?}",
                    path.replay
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn issue_12_a_number_failing_luhn_and_an_exact_duplicate_are_not_dead_lettered() {
    let mut rig = Rig::new().await;
    // 16 digits that fail Luhn: an order number, not a card.
    let line = usage_line(
        r#""subject":"order 4012888888881882","metric":"m","quantity":"2","environment":"prod""#,
    );
    let first = rig.line(&line).await;
    assert!(dead_letters(&first).is_empty(), "{first:?}");
    let again = rig.line(&line).await;
    assert!(dead_letters(&again).is_empty(), "{again:?}");
    assert_eq!(rig.p.stats.duplicates, 1);
    // A card-like identifier is opaque (SPEC §4): the event is applied.
    let id_like_card = format!(
        r#"{{"event_id":"4012888888881881","account_id":"a1","subject":"s","metric":"m","quantity":"1","occurred_at":"{AT}","environment":"prod","attributes":{{}}}}"#
    );
    let out = rig.line(&id_like_card).await;
    assert!(dead_letters(&out).is_empty(), "{out:?}");
    assert_eq!(rig.p.stats.applied, 3, "opening and two usage events");
}

/// The environment interlock (SPEC §4, §7): every input is compared with
/// the instance's environment; one that names none is refused like one
/// that names another, before it can move money.
#[tokio::test]
async fn issue_12_input_without_environment_is_rejected_and_moves_no_money() {
    let lines = [
        format!(
            r#"{{"event_id":"top-1","account_id":"a1","kind":"credit_topped_up","amount":"100.00","currency":"EUR","occurred_at":"{AT}"}}"#
        ),
        format!(
            r#"{{"event_id":"adj-1","account_id":"a1","kind":"adjustment_issued","adjustment":"credit_note","amount":"50.00","currency":"EUR","reason":"goodwill","occurred_at":"{AT}"}}"#
        ),
        format!(
            r#"{{"event_id":"plan-1","account_id":"a1","kind":"plan_changed","plan_id":"p","occurred_at":"{AT}"}}"#
        ),
        format!(
            r#"{{"event_id":"close-1","account_id":"a1","kind":"account_closed","occurred_at":"{AT}"}}"#
        ),
        format!(
            r#"{{"event_id":"top-2","account_id":"a1","kind":"credit_topped_up","amount":"100.00","currency":"EUR","occurred_at":"{AT}","environment":"test"}}"#
        ),
    ];
    let mut rig = Rig::new().await;
    let before = rig.credit();
    for line in &lines {
        let out = rig.line(line).await;
        let dls = dead_letters(&out);
        assert_eq!(dls.len(), 1, "{line}: {out:?}");
        assert_eq!(dls[0].json["error_kind"], "wrong_environment", "{line}");
        assert!(
            out.iter().all(|o| o.topic == OutputTopic::Dlq),
            "{line}: {out:?}"
        );
    }
    assert_eq!(rig.credit(), before);
    // The same in Avro, where `environment` is an optional field.
    let top_up = |environment: Option<&str>| {
        avro(&Input::Payment(PaymentEvent {
            event_id: "top-avro".into(),
            account_id: "a1".into(),
            occurred_at: ts(AT),
            environment: environment.map(str::to_string),
            kind: PaymentKind::CreditToppedUp {
                amount: "100.00".parse().unwrap(),
                currency: "EUR".into(),
                grant: Default::default(),
            },
        }))
    };
    let out = rig.record(&top_up(None)).await;
    assert_eq!(dead_letters(&out).len(), 1, "{out:?}");
    assert_eq!(
        dead_letters(&out)[0].json["error_kind"],
        "wrong_environment"
    );
    assert!(dead_letters(&out)[0].json["reason"]
        .as_str()
        .unwrap()
        .contains("names no environment"));
    assert_eq!(rig.credit(), before);
    // Named: applied.
    let out = rig.record(&top_up(Some("prod"))).await;
    assert!(dead_letters(&out).is_empty(), "{out:?}");
    assert_ne!(rig.credit(), before);
    // An opening without one is refused too (its decoders require it).
    let open_b = r#"{"event_id":"open-b","account_id":"b","plan_id":"p","currency":"EUR","timezone":"UTC","tax_rate":"0","opened_at":"2026-03-01T00:00:00Z"}"#;
    let out = rig.line(open_b).await;
    assert_eq!(dead_letters(&out).len(), 1, "{out:?}");
    assert!(rig.p.account("b").is_none());
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/simulate")
}

/// `simulate` reports every rejected line on stderr: never with the card.
#[test]
fn issue_12_simulate_never_prints_a_card_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for card in CARDS {
        let t = card.text;
        lines.push(String::from_utf8(ce(&format!(r#""account_id":"acct-a","subject":"card {t}","metric":"container.hours","quantity":5,"environment":"prod""#))).unwrap());
        lines.push(format!(r#"{{"event_id":"x-{}","account_id":"acct-a","subject":"{t}","metric":"container.hours","quantity":"1","occurred_at":"2026-03-23T10:00:00Z","environment":"staging","attributes":{{}}}}"#, lines.len()));
        lines.push(format!(r#"{{"event_id":"y-{}","account_id":"{t}","subject":"s","metric":"container.hours","quantity":"1","occurred_at":"2026-03-23T10:00:00Z","environment":"prod","attributes":{{}}}}"#, lines.len()));
        if card.contiguous() {
            lines.push(format!(r#"{{"event_id":"z-{}","account_id":"acct-a","subject":"s","metric":"container.hours","quantity":"{t}","occurred_at":"2026-03-23T10:00:00Z","environment":"prod","attributes":{{}}}}"#, lines.len()));
        }
    }
    let events = dir.path().join("hostile.jsonl");
    std::fs::write(&events, lines.join("\n")).unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_billstream"))
        .arg("simulate")
        .arg("--plans")
        .arg(fixtures().join("plans.jsonl"))
        .arg("--accounts")
        .arg(fixtures().join("accounts.jsonl"))
        .arg("--events")
        .arg(&events)
        .args(["--until", "2026-05-01T02:00:00Z", "--out"])
        .arg(&out_dir)
        .output()
        .expect("billstream simulate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().count() >= lines.len(), "{stderr}");
    let mut written = Vec::new();
    for entry in std::fs::read_dir(&out_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            written.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    for card in CARDS {
        assert!(!holds(&out.stdout, card), "{}: stdout", card.shape);
        assert!(
            !holds(&out.stderr, card),
            "{}: stderr:\n{stderr}",
            card.shape
        );
        for (path, bytes) in &written {
            assert!(!holds(bytes, card), "{}: {path}", card.shape);
        }
    }
}

/// `billstream config` prints the settings in effect: never a secret of
/// `kafka.properties` (issue 12 item 10).
#[test]
fn issue_12_config_redacts_kafka_property_secrets() {
    let secrets = [
        ("SASL.PASSWORD", "sasl-pw-7f3a"),
        ("SSL.KEY.PASSWORD", "key-pw-91bc"),
        ("SSL.KEYSTORE.PASSWORD", "store-pw-2d4e"),
        (
            "SASL.JAAS.CONFIG",
            "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"u\" password=\"jaas-pw-55aa\";",
        ),
        ("SASL.OAUTHBEARER.CLIENT.SECRET", "oauth-secret-c0ffee"),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_billstream"));
    cmd.arg("config");
    for (k, v) in secrets {
        cmd.env(format!("BILLSTREAM__KAFKA__PROPERTIES__{k}"), v);
    }
    cmd.env(
        "BILLSTREAM__KAFKA__PROPERTIES__SASL.USERNAME",
        "billing-user",
    );
    let out = cmd.output().expect("billstream config runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (k, v) in secrets {
        let shown = v
            .split('"')
            .find(|p| p.contains("pw") || p.contains("secret"));
        assert!(
            !stdout.contains(shown.unwrap_or(v)),
            "{k} printed:\n{stdout}"
        );
        assert!(
            stdout.contains(&k.to_lowercase()),
            "{k} not listed:\n{stdout}"
        );
    }
    assert!(stdout.contains("billing-user"), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
}
