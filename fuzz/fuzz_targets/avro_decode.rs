//! The Confluent Avro decoder on arbitrary bodies: the first byte picks one
//! of the manifest's schema ids, the rest is the Avro body. Decoding may
//! fail; it must never panic. The dead-letter masking of the same bytes
//! (what the DLQ would carry) must not panic either, must keep an Avro
//! payload's length (masked in place, so it still reads against its
//! schema), and must be idempotent.
#![no_main]

use std::sync::OnceLock;

use billstream::contracts::redact::redact_payload;
use billstream::contracts::{Catalog, Decoded, Decoder};
use libfuzzer_sys::fuzz_target;

fn decoder() -> &'static Decoder {
    static DECODER: OnceLock<Decoder> = OnceLock::new();
    DECODER.get_or_init(|| Decoder::new(Catalog::shared().expect("catalog")).expect("decoder"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let entries = Catalog::shared().expect("catalog").entries();
    let id = entries[usize::from(pick) % entries.len()].id;
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend_from_slice(body);
    for bytes in [&framed[..], data] {
        let decoded = decoder().decode(bytes);
        let input = match &decoded {
            Ok(Decoded::Input(i)) => Some(i),
            _ => None,
        };
        let masked = redact_payload(bytes, input);
        if bytes.first() == Some(&0) {
            assert_eq!(masked.len(), bytes.len(), "Avro masked in place");
        }
        assert_eq!(redact_payload(&masked, input), masked, "masking twice changes nothing");
    }
});
