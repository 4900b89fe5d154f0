//! Reading the Avro binary encoding by hand: a bounds-checked cursor
//! (zigzag varints, length-prefixed bytes) and `Skip`, a walk compiled once
//! from any schema that steps over a value of that schema without building
//! it. The fast usage reader is made of these; the cold path runs `Skip`
//! over a body before apache-avro decodes it, so a length or count that
//! does not fit in the message is refused here, before anything allocates;
//! and the redactor (`redact.rs`) walks a dead letter's payload with it to
//! find every string the record holds.

use apache_avro::Schema;

use super::errors::DecodeError;

/// A position in an Avro body. Every read checks the remaining length.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Items of no encoded size (null, empty record) still allowed in this
    /// message: they cost no bytes, so the length cannot bound them.
    empty_items: usize,
}

fn mismatch(what: &str, pos: usize) -> DecodeError {
    DecodeError::BodyMismatch(format!("{what} at byte {pos}"))
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor {
            buf,
            pos: 0,
            empty_items: MAX_EMPTY_ITEMS,
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Refuse trailing bytes after the last field.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::BodyMismatch(format!(
                "{n} trailing byte(s) after the record"
            ))),
        }
    }

    // The hot decoder's steps are `inline(always)`: with `overflow-checks`
    // on (release, issue 12) they grew past the inliner's threshold and
    // `decode_only` lost 3–10% to the calls; inlined, it is 7% faster than
    // before issue 12 (BENCHMARKS.md, "Core path after issue 12").
    #[inline(always)]
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| mismatch("truncated", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    /// A zigzag-encoded variable-length long (at most 10 bytes).
    #[inline(always)]
    pub fn long(&mut self) -> Result<i64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(mismatch("varint overflows 64 bits", start));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((value >> 1) as i64) ^ -((value & 1) as i64))
    }

    /// A zigzag-encoded int: a long that must fit in 32 bits.
    pub fn int(&mut self) -> Result<i32, DecodeError> {
        let start = self.pos;
        let v = self.long()?;
        i32::try_from(v).map_err(|_| mismatch("int out of 32-bit range", start))
    }

    pub fn boolean(&mut self) -> Result<bool, DecodeError> {
        let start = self.pos;
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(mismatch("boolean byte is neither 0 nor 1", start)),
        }
    }

    /// `n` raw bytes.
    #[inline(always)]
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(mismatch(
                &format!("{n} bytes announced, {} left", self.remaining()),
                self.pos,
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// A length-prefixed byte string.
    #[inline(always)]
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| mismatch("negative length", start))?;
        self.fixed(len)
    }

    /// A length-prefixed UTF-8 string.
    #[inline(always)]
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| mismatch("string is not UTF-8", start))
    }

    /// The item count of the next array or map block; 0 ends the sequence.
    /// A negative count is followed by the block's byte size, which is
    /// read and ignored. Refuses counts that cannot fit in what is left
    /// given the smallest encoded item.
    pub fn block_count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let start = self.pos;
        let raw = self.long()?;
        let count = if raw < 0 {
            self.long()?;
            raw.checked_neg()
                .ok_or_else(|| mismatch("bad block count", start))?
        } else {
            raw
        };
        let count = usize::try_from(count).map_err(|_| mismatch("bad block count", start))?;
        if min_item == 0 {
            // Bounded per message, not per block: many blocks of a few
            // bytes each would otherwise announce billions of items.
            if count > self.empty_items {
                return Err(mismatch(
                    &format!("more than {MAX_EMPTY_ITEMS} items of no size in one message"),
                    start,
                ));
            }
            self.empty_items -= count;
            return Ok(count);
        }
        let limit = self.remaining() / min_item;
        if count > limit {
            return Err(mismatch(
                &format!(
                    "block of {count} items cannot fit in {} bytes",
                    self.remaining()
                ),
                start,
            ));
        }
        Ok(count)
    }

    /// A union branch index, checked against the number of branches.
    pub fn branch(&mut self, branches: usize) -> Result<usize, DecodeError> {
        let start = self.pos;
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .filter(|&i| i < branches)
            .ok_or_else(|| mismatch(&format!("union branch {i} of {branches}"), start))
    }
}

/// Most items of zero encoded size (null, empty record) one message may
/// hold, over all its arrays and blocks.
const MAX_EMPTY_ITEMS: usize = 1 << 16;

/// A compiled walk over one schema's encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    Null,
    Boolean,
    /// int, long and the logical types stored in them.
    Varint,
    Float,
    Double,
    /// bytes and string.
    Bytes,
    Fixed(usize),
    Enum(usize),
    Array(Box<Skip>),
    Map(Box<Skip>),
    Union(Vec<Skip>),
    Record(Vec<Skip>),
}

impl Skip {
    /// Compile the walk of `schema`. Named references (recursive types) are
    /// not supported: none of billstream's schemas use them.
    pub fn compile(schema: &Schema) -> Result<Skip, String> {
        Ok(match schema {
            Schema::Null => Skip::Null,
            Schema::Boolean => Skip::Boolean,
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Skip::Varint,
            Schema::Float => Skip::Float,
            Schema::Double => Skip::Double,
            Schema::Bytes | Schema::String | Schema::Uuid | Schema::BigDecimal => Skip::Bytes,
            Schema::Fixed(f) => Skip::Fixed(f.size),
            Schema::Duration => Skip::Fixed(12),
            Schema::Decimal(d) => Skip::compile(&d.inner)?,
            Schema::Enum(e) => Skip::Enum(e.symbols.len()),
            Schema::Array(a) => Skip::Array(Box::new(Skip::compile(&a.items)?)),
            Schema::Map(m) => Skip::Map(Box::new(Skip::compile(&m.types)?)),
            Schema::Union(u) => Skip::Union(
                u.variants()
                    .iter()
                    .map(Skip::compile)
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Record(r) => Skip::Record(
                r.fields
                    .iter()
                    .map(|f| Skip::compile(&f.schema))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Ref { name } => {
                return Err(format!(
                    "named reference {} is not supported",
                    name.fullname(None)
                ))
            }
        })
    }

    /// Smallest number of bytes a value of this shape takes.
    pub fn min_size(&self) -> usize {
        match self {
            Skip::Null => 0,
            Skip::Boolean
            | Skip::Varint
            | Skip::Bytes
            | Skip::Enum(_)
            | Skip::Array(_)
            | Skip::Map(_)
            | Skip::Union(_) => 1,
            Skip::Float => 4,
            Skip::Double => 8,
            Skip::Fixed(n) => *n,
            Skip::Record(fields) => fields.iter().map(Skip::min_size).sum(),
        }
    }

    /// Step over one value.
    pub fn run(&self, c: &mut Cursor<'_>) -> Result<(), DecodeError> {
        self.walk(c, &mut |_, _| {})
    }

    /// Step over one value, handing `texts` the range (in the cursor's
    /// buffer) of every bytes, string and fixed value in it, map keys
    /// included.
    pub fn walk(
        &self,
        c: &mut Cursor<'_>,
        texts: &mut impl FnMut(usize, usize),
    ) -> Result<(), DecodeError> {
        match self {
            Skip::Null => {}
            Skip::Boolean => {
                c.boolean()?;
            }
            Skip::Varint => {
                c.long()?;
            }
            Skip::Float => {
                c.fixed(4)?;
            }
            Skip::Double => {
                c.fixed(8)?;
            }
            Skip::Bytes => {
                let b = c.bytes()?;
                texts(c.position() - b.len(), c.position());
            }
            Skip::Fixed(n) => {
                c.fixed(*n)?;
                texts(c.position() - n, c.position());
            }
            Skip::Enum(n) => {
                c.branch(*n)?;
            }
            Skip::Array(item) => {
                let min = item.min_size();
                loop {
                    let n = c.block_count(min)?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        item.walk(c, texts)?;
                    }
                }
            }
            Skip::Map(value) => {
                let min = 1 + value.min_size();
                loop {
                    let n = c.block_count(min)?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        let key = c.bytes()?;
                        texts(c.position() - key.len(), c.position());
                        value.walk(c, texts)?;
                    }
                }
            }
            Skip::Union(branches) => {
                let i = c.branch(branches.len())?;
                if let Some(b) = branches.get(i) {
                    b.walk(c, texts)?;
                }
            }
            Skip::Record(fields) => {
                for f in fields {
                    f.walk(c, texts)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(v: i64) -> Vec<u8> {
        apache_avro::to_avro_datum(&Schema::Long, apache_avro::types::Value::Long(v)).unwrap()
    }

    #[test]
    fn varints_match_apache_avro() {
        for v in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            300,
            i64::from(i32::MAX),
            i64::MAX,
            i64::MIN,
        ] {
            let bytes = zigzag(v);
            let mut c = Cursor::new(&bytes);
            assert_eq!(c.long(), Ok(v));
            assert_eq!(c.finish(), Ok(()));
        }
    }

    #[test]
    fn overlong_varint_is_refused() {
        let bytes = [0xff; 11];
        assert!(matches!(
            Cursor::new(&bytes).long(),
            Err(DecodeError::BodyMismatch(_))
        ));
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(matches!(
            Cursor::new(&bytes).long(),
            Err(DecodeError::BodyMismatch(_))
        ));
    }

    #[test]
    fn lengths_beyond_the_message_are_refused() {
        // A string announcing 2^40 bytes in a 7-byte message.
        let mut bytes = zigzag(1 << 40);
        bytes.push(b'x');
        assert!(matches!(
            Cursor::new(&bytes).str(),
            Err(DecodeError::BodyMismatch(_))
        ));
        let bytes = zigzag(-3);
        assert!(matches!(
            Cursor::new(&bytes).bytes(),
            Err(DecodeError::BodyMismatch(_))
        ));
        // An array of a billion longs in a few bytes.
        let bytes = zigzag(1_000_000_000);
        let skip = Skip::Array(Box::new(Skip::Varint));
        assert!(skip.run(&mut Cursor::new(&bytes)).is_err());
        // A billion nulls is refused too, instead of looping.
        let skip = Skip::Array(Box::new(Skip::Null));
        assert!(skip.run(&mut Cursor::new(&bytes)).is_err());
    }

    #[test]
    fn issue_12_zero_size_items_are_capped_per_message_not_only_per_block() {
        // Many blocks of the per-block maximum of nulls: a few bytes each,
        // billions of items in one small message.
        let mut bytes = Vec::new();
        for _ in 0..1000 {
            bytes.extend(zigzag(MAX_EMPTY_ITEMS as i64));
        }
        bytes.extend(zigzag(0));
        let skip = Skip::Array(Box::new(Skip::Null));
        let err = skip.run(&mut Cursor::new(&bytes)).unwrap_err();
        assert!(err.to_string().contains("items of no size"), "{err}");
        // The same through two arrays of empty records in one message,
        // each within the per-block limit.
        let empty = Skip::Record(vec![]);
        let rec = Skip::Record(vec![
            Skip::Array(Box::new(empty.clone())),
            Skip::Array(Box::new(empty)),
        ]);
        let mut bytes = Vec::new();
        for _ in 0..2 {
            bytes.extend(zigzag(MAX_EMPTY_ITEMS as i64 / 2 + 1));
            bytes.extend(zigzag(0));
        }
        assert!(rec.run(&mut Cursor::new(&bytes)).is_err());
        // Up to the cap is fine.
        let mut bytes = zigzag(MAX_EMPTY_ITEMS as i64);
        bytes.extend(zigzag(0));
        let skip = Skip::Array(Box::new(Skip::Null));
        assert_eq!(skip.run(&mut Cursor::new(&bytes)), Ok(()));
    }

    #[test]
    fn skip_steps_over_exactly_one_value() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":{"type":"map","values":["null","string"]}},
                {"name":"b","type":{"type":"array","items":"double"}},
                {"name":"c","type":{"type":"fixed","name":"F","size":3}},
                {"name":"d","type":{"type":"enum","name":"E","symbols":["x","y"]}}]}"#,
        )
        .unwrap();
        use apache_avro::types::Value;
        let value = Value::Record(vec![
            (
                "a".into(),
                Value::Map(
                    [(
                        "k".to_string(),
                        Value::Union(1, Box::new(Value::String("v".into()))),
                    )]
                    .into(),
                ),
            ),
            (
                "b".into(),
                Value::Array(vec![Value::Double(1.5), Value::Double(2.0)]),
            ),
            ("c".into(), Value::Fixed(3, vec![1, 2, 3])),
            ("d".into(), Value::Enum(1, "y".into())),
        ]);
        let mut bytes = apache_avro::to_avro_datum(&schema, value).unwrap();
        let len = bytes.len();
        bytes.push(9);
        let mut c = Cursor::new(&bytes);
        Skip::compile(&schema).unwrap().run(&mut c).unwrap();
        assert_eq!(c.position(), len);
        assert!(c.finish().is_err());
    }
}
