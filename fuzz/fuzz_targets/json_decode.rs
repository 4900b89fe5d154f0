//! The CloudEvents JSON decoder (what `billing.usage.v1` accepts besides
//! Avro) and the JSON-lines parser of `simulate` on arbitrary text: errors
//! are fine, panics are not. The dead-letter masking of the same bytes must
//! keep UTF-8 text UTF-8 (a masked JSON payload stays replayable) and be
//! idempotent.
#![no_main]

use std::sync::OnceLock;

use billstream::contracts::redact::redact_payload;
use billstream::contracts::{parse_line, Catalog, Decoded, Decoder};
use libfuzzer_sys::fuzz_target;

fn decoder() -> &'static Decoder {
    static DECODER: OnceLock<Decoder> = OnceLock::new();
    DECODER.get_or_init(|| Decoder::new(Catalog::shared().expect("catalog")).expect("decoder"))
}

fuzz_target!(|data: &[u8]| {
    let decoded = decoder().decode(data);
    let input = match &decoded {
        Ok(Decoded::Input(i)) => Some(i),
        _ => None,
    };
    let masked = redact_payload(data, input);
    if std::str::from_utf8(data).is_ok() {
        assert!(std::str::from_utf8(&masked).is_ok(), "masked text stays UTF-8");
    }
    assert_eq!(redact_payload(&masked, input), masked, "masking twice changes nothing");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_line(text);
    }
});
