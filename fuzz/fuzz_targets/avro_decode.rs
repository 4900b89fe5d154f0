//! The Confluent Avro decoder on arbitrary bodies: the first byte picks one
//! of the manifest's schema ids, the rest is the Avro body. Decoding may
//! fail; it must never panic, and a decoded input must survive the
//! engine's envelope checks without panicking either.
#![no_main]

use std::sync::OnceLock;

use billstream::contracts::{Catalog, Decoder};
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
    let _ = decoder().decode(&framed);
    // The raw bytes as they came, too (a bad frame, JSON, anything).
    let _ = decoder().decode(data);
});
