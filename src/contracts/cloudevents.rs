//! CloudEvents 1.0 structured-mode JSON usage events, so producers can
//! start with kcat or an HTTP-to-Kafka proxy before they speak Avro. The
//! usage fields travel in `data` under their pinned names; the envelope's
//! `id` stands in for a missing `event_id` and its `time` for a missing
//! `occurred_at`.

use serde_json::{Map, Value};

use super::decimal::truncate;
use super::errors::DecodeError;
use super::json::usage_from_object;
use crate::engine::events::UsageRecorded;

/// CloudEvents `type`s accepted as usage.
pub const USAGE_TYPES: &[&str] = &[
    "billing.usage.v1",
    "billstream.usage.v1",
    "billstream.v1.UsageRecorded",
];

fn not_ce(reason: impl Into<String>) -> DecodeError {
    DecodeError::NotCloudEvent(reason.into())
}

fn attribute<'a>(ce: &'a Map<String, Value>, name: &str) -> Result<&'a str, DecodeError> {
    match ce.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(not_ce(format!(
            "attribute {name} must be a non-empty string"
        ))),
        None => Err(not_ce(format!("required attribute {name} is missing"))),
    }
}

/// Decode one structured-mode CloudEvent carrying a usage record.
pub fn decode_usage(bytes: &[u8]) -> Result<UsageRecorded, DecodeError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::BadJson(e.to_string()))?;
    let Value::Object(ce) = value else {
        return Err(not_ce("expected a JSON object"));
    };
    let version = attribute(&ce, "specversion")?;
    if version != "1.0" {
        return Err(not_ce(format!(
            "specversion must be \"1.0\", got {:?}",
            truncate(version)
        )));
    }
    let kind = attribute(&ce, "type")?;
    if !USAGE_TYPES.contains(&kind) {
        return Err(not_ce(format!(
            "type {:?} is not a usage event; expected one of {}",
            truncate(kind),
            USAGE_TYPES.join(", ")
        )));
    }
    let id = attribute(&ce, "id")?;
    attribute(&ce, "source")?;
    if let Some(ct) = ce.get("datacontenttype") {
        if !ct.as_str().is_some_and(|ct| ct.contains("json")) {
            return Err(not_ce(
                "datacontenttype must be a JSON media type, e.g. application/json",
            ));
        }
    }
    if ce.contains_key("data_base64") {
        return Err(not_ce(
            "data_base64 is not supported: send the usage fields as a JSON object in data",
        ));
    }
    let Some(Value::Object(data)) = ce.get("data") else {
        return Err(not_ce("data must be a JSON object with the usage fields"));
    };
    let mut data = data.clone();
    if data.get("event_id").is_none_or(Value::is_null) {
        data.insert("event_id".into(), Value::String(id.to_string()));
    }
    if data.get("occurred_at").is_none_or(Value::is_null) {
        if let Some(time) = ce.get("time") {
            data.insert("occurred_at".into(), time.clone());
        }
    }
    usage_from_object(&data, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"specversion":"1.0","type":"billing.usage.v1","source":"/platform/containers",
        "id":"ce-1","time":"2026-02-01T10:00:00Z","datacontenttype":"application/json",
        "data":{"account_id":"a1","subject":"app","metric":"container.hours","quantity":"0.5","environment":"prod"}}"#;

    #[test]
    fn envelope_id_and_time_fill_missing_fields() {
        let u = decode_usage(GOOD.as_bytes()).unwrap();
        assert_eq!(u.event_id, "ce-1");
        assert_eq!(u.occurred_at.to_rfc3339(), "2026-02-01T10:00:00Z");
        assert_eq!(u.quantity.to_string(), "0.5");
    }

    #[test]
    fn data_fields_win_over_the_envelope() {
        let text = GOOD.replace(
            r#""account_id""#,
            r#""event_id":"u-9","occurred_at":"2026-02-01T09:00:00Z","account_id""#,
        );
        let u = decode_usage(text.as_bytes()).unwrap();
        assert_eq!(u.event_id, "u-9");
        assert_eq!(u.occurred_at.to_rfc3339(), "2026-02-01T09:00:00Z");
    }

    #[test]
    fn non_usage_or_malformed_envelopes_are_refused() {
        let cases = [
            GOOD.replace(r#""specversion":"1.0""#, r#""specversion":"0.3""#),
            GOOD.replace("billing.usage.v1", "com.example.other"),
            GOOD.replace(r#""id":"ce-1","#, ""),
            GOOD.replace(r#""source":"/platform/containers","#, ""),
            GOOD.replace(
                r#""datacontenttype":"application/json""#,
                r#""datacontenttype":"text/plain""#,
            ),
            GOOD.replace(r#""data":{"#, r#""data_base64":"", "x":{"#),
        ];
        for text in cases {
            assert!(
                matches!(
                    decode_usage(text.as_bytes()),
                    Err(DecodeError::NotCloudEvent(_))
                ),
                "{text}"
            );
        }
        assert!(matches!(decode_usage(b"{"), Err(DecodeError::BadJson(_))));
        let float = GOOD.replace(r#""quantity":"0.5""#, r#""quantity":0.5"#);
        assert!(
            matches!(decode_usage(float.as_bytes()), Err(DecodeError::InvalidField { field, .. }) if field == "quantity")
        );
    }
}
