//! The dead-letter record: an input that could not be applied, with where
//! it came from, why, and its bytes, so an operator can fix and replay it.
//! Its id is derived from the input's position, so re-rejecting the same
//! input after a restart yields the same record. Reason, key and payload
//! are masked (`redact`) when it is made and again when it is published:
//! no card number reaches the DLQ, whatever path the input took.

use serde_json::{json, Value};
use uuid::Uuid;

use super::outputs::{OutputRecord, OutputTopic, OUTPUT_ID_NAMESPACE};
use super::redact::{redact_payload, redact_text};
use crate::engine::events::Input;
use crate::engine::time::Timestamp;

/// An input that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Topic, or input file, the record came from.
    pub source_topic: String,
    /// Partition (0 for files).
    pub partition: i32,
    /// Offset (line number for files).
    pub offset: i64,
    /// The record's key, when it had one.
    pub key: Option<String>,
    /// Machine-readable kind, e.g. a `DecodeError::kind()`.
    pub error_kind: String,
    /// Human-readable reason (card-like digits masked).
    pub reason: String,
    /// The input bytes, card-like digits masked in place.
    pub payload: Vec<u8>,
    pub received_at: Timestamp,
}

impl DeadLetter {
    /// The same dead letter with every card-like number in its reason, key
    /// and payload masked (`redact`); `decoded` is the input the payload
    /// decoded to, if it did, so its fields are masked exactly. Masking
    /// twice changes nothing.
    pub fn redacted(mut self, decoded: Option<&Input>) -> DeadLetter {
        if let std::borrow::Cow::Owned(r) = redact_text(&self.reason) {
            self.reason = r;
        }
        if let Some(key) = &self.key {
            if let std::borrow::Cow::Owned(k) = redact_text(key) {
                self.key = Some(k);
            }
        }
        self.payload = redact_payload(&self.payload, decoded);
        self
    }

    /// `<source_topic>/<partition>/<offset>`: what caused the dead letter.
    pub fn causation_id(&self) -> String {
        format!("{}/{}/{}", self.source_topic, self.partition, self.offset)
    }

    /// The record for `billing.dlq.v1`, masked (`redacted`) whoever made
    /// this dead letter. The payload is a string when it is UTF-8
    /// (`payload_encoding: "utf8"`), base64 otherwise.
    pub fn to_output(&self) -> OutputRecord {
        let this = self.clone().redacted(None);
        let causation_id = self.causation_id();
        let event_id = Uuid::new_v5(
            &OUTPUT_ID_NAMESPACE,
            format!("dlq/{causation_id}").as_bytes(),
        )
        .to_string();
        let (payload, encoding) = match std::str::from_utf8(&this.payload) {
            Ok(text) => (text.to_string(), "utf8"),
            Err(_) => (base64_encode(&this.payload), "base64"),
        };
        let json = json!({
            "event_id": event_id,
            "causation_id": causation_id,
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": this.key,
            "error_kind": self.error_kind,
            "reason": this.reason,
            "payload": payload,
            "payload_encoding": encoding,
            "received_at": Value::String(self.received_at.to_rfc3339()),
        });
        OutputRecord {
            topic: OutputTopic::Dlq,
            key: this.key.clone().unwrap_or_default(),
            event_id,
            causation_id,
            kind: "DeadLetter",
            json,
            traceparent: None,
        }
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode standard base64 with padding; `None` if malformed.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (q, quad) in bytes.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && q + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::catalog::Catalog;

    fn letter(payload: &[u8]) -> DeadLetter {
        DeadLetter {
            source_topic: "billing.usage.v1".into(),
            partition: 3,
            offset: 1234,
            key: Some("acct-1".into()),
            error_kind: "card_data".into(),
            reason: "subject contains a card number (masked)".into(),
            payload: payload.to_vec(),
            received_at: Timestamp(1_767_225_600_000_000),
        }
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..20 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 200) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8"), None);
        assert_eq!(base64_decode("Z=8="), None);
        assert_eq!(base64_decode("Zm8!"), None);
    }

    #[test]
    fn dead_letter_id_is_derived_from_the_input_position() {
        let a = letter(b"{}").to_output();
        assert_eq!(a, letter(b"{}").to_output());
        assert_eq!(a.causation_id, "billing.usage.v1/3/1234");
        assert_eq!((a.topic, a.key.as_str()), (OutputTopic::Dlq, "acct-1"));
        let mut other = letter(b"{}");
        other.offset += 1;
        assert_ne!(other.to_output().event_id, a.event_id);
    }

    #[test]
    fn dead_letter_encodes_to_avro_with_the_original_bytes() {
        let catalog = Catalog::shared().unwrap();
        let entry = catalog.by_record("DeadLetter").unwrap();
        for payload in [
            &b"{\"quantity\":\"**** **** **** 1111\"}"[..],
            &[0, 0, 0, 0, 1, 0xff, 0xfe][..],
        ] {
            let out = letter(payload).to_output();
            let expected = if payload[0] == 0 { "base64" } else { "utf8" };
            assert_eq!(out.json["payload_encoding"], expected);
            let bytes = catalog.encode_output(&out).unwrap();
            let (_, body) = crate::contracts::framing::split(&bytes).unwrap();
            let apache_avro::types::Value::Record(fields) =
                apache_avro::from_avro_datum(&entry.schema, &mut &body[..], None).unwrap()
            else {
                panic!("not a record")
            };
            let got = fields
                .iter()
                .find(|(k, _)| k == "payload")
                .map(|(_, v)| v.clone());
            assert_eq!(
                got,
                Some(apache_avro::types::Value::Bytes(payload.to_vec()))
            );
        }
    }
}
