//! Which partition a producer puts a keyed record in. billstream's
//! fencing rests on every record of an account being in the partition its
//! key hashes to (one owner per partition, the input topics
//! co-partitioned); a producer with another partitioner puts an account's
//! records where another member owns them. `kafka.input_partitioner` names
//! the one the producers use, and every input record is checked against it
//! (`Processor::apply`: `wrong_partition`).

use serde::Deserialize;

/// The partitioner producers of the input topics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// The Java client's (and Kafka Streams', Connect's, most clients')
    /// default for keyed records: murmur2 of the key, made positive,
    /// modulo the partition count. librdkafka clients get it with
    /// `partitioner=murmur2_random`.
    Murmur2,
    /// librdkafka's default (`consistent_random`): CRC-32 of the key modulo
    /// the partition count.
    Crc32,
    /// No check (a custom partitioner that still keeps each account in one
    /// partition of every input topic; the operator vouches for it).
    Any,
}

impl Partitioner {
    /// The partition of `partitions` a record keyed `key` belongs in;
    /// `None` for `Any` (or no partitions).
    pub fn partition_of(self, key: &[u8], partitions: u32) -> Option<u32> {
        if partitions == 0 {
            return None;
        }
        match self {
            Partitioner::Murmur2 => Some((murmur2(key) & 0x7fff_ffff) as u32 % partitions),
            Partitioner::Crc32 => Some(crc32(key) % partitions),
            Partitioner::Any => None,
        }
    }

    /// The librdkafka `partitioner` property that produces the same
    /// placement, for billstream's own producers.
    pub fn librdkafka_name(self) -> Option<&'static str> {
        match self {
            Partitioner::Murmur2 => Some("murmur2_random"),
            Partitioner::Crc32 => Some("consistent_random"),
            Partitioner::Any => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Crc32 => "crc32",
            Partitioner::Any => "any",
        }
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`): seed
/// 0x9747b28c, little-endian 4-byte blocks, the tail, final mix.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// CRC-32 (IEEE 802.3, reflected, as librdkafka's `rd_crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_clients_test_vectors() {
        // Kafka's UtilsTest.testMurmur2.
        for (key, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
    }

    #[test]
    fn crc32_is_the_ieee_checksum() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_key_maps_to_the_partition_each_partitioner_gives_it() {
        // "21": murmur2 -973932308 & 0x7fffffff = 1173551340, mod 4 = 0.
        assert_eq!(Partitioner::Murmur2.partition_of(b"21", 4), Some(0));
        // "abc": 479470107 = 3 × 159823369, so partition 0 of 3; of 5: 2.
        assert_eq!(Partitioner::Murmur2.partition_of(b"abc", 3), Some(0));
        assert_eq!(Partitioner::Murmur2.partition_of(b"abc", 5), Some(2));
        assert_eq!(
            Partitioner::Crc32.partition_of(b"123456789", 7),
            Some(0xCBF4_3926 % 7)
        );
        assert_eq!(Partitioner::Any.partition_of(b"abc", 3), None);
        assert_eq!(Partitioner::Murmur2.partition_of(b"abc", 0), None);
    }
}
