//! The CloudEvents JSON decoder (what `billing.usage.v1` accepts besides
//! Avro) and the JSON-lines parser of `simulate` on arbitrary text: errors
//! are fine, panics are not.
#![no_main]

use std::sync::OnceLock;

use billstream::contracts::{parse_line, Catalog, Decoder};
use libfuzzer_sys::fuzz_target;

fn decoder() -> &'static Decoder {
    static DECODER: OnceLock<Decoder> = OnceLock::new();
    DECODER.get_or_init(|| Decoder::new(Catalog::shared().expect("catalog")).expect("decoder"))
}

fuzz_target!(|data: &[u8]| {
    let _ = decoder().decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_line(text);
    }
});
