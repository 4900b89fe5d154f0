//! Confluent wire framing: a zero magic byte, the schema id as 4 big-endian
//! bytes, then the Avro binary body. Every input byte is length-checked
//! before it is read: a short record must reach the DLQ, not panic.

use super::errors::DecodeError;

/// The Confluent magic byte.
pub const MAGIC: u8 = 0;

/// Bytes before the Avro body.
pub const HEADER_LEN: usize = 5;

/// Frame an Avro body with its schema id.
pub fn encode(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Split a framed record into its schema id and Avro body.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let Some((&magic, rest)) = bytes.split_first() else {
        return Err(DecodeError::TooShort(0));
    };
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let Some((id, body)) = rest.split_first_chunk::<4>() else {
        return Err(DecodeError::TooShort(bytes.len()));
    };
    Ok((u32::from_be_bytes(*id), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips() {
        let framed = encode(0x0102_0304, b"body");
        assert_eq!(framed, [0, 1, 2, 3, 4, b'b', b'o', b'd', b'y']);
        assert_eq!(split(&framed), Ok((0x0102_0304, &b"body"[..])));
        assert_eq!(split(&encode(7, b"")), Ok((7, &b""[..])));
    }

    #[test]
    fn short_frames_are_errors_not_panics() {
        assert_eq!(split(&[]), Err(DecodeError::TooShort(0)));
        for n in 1..HEADER_LEN {
            assert_eq!(split(&vec![0; n]), Err(DecodeError::TooShort(n)));
        }
    }

    #[test]
    fn wrong_magic_byte_is_bad_magic() {
        assert_eq!(split(&[1, 0, 0, 0, 1, 2]), Err(DecodeError::BadMagic(1)));
    }
}
