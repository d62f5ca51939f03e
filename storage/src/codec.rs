//! The compression codecs of record batches (attribute bits 0–2), used only where the broker
//! must look inside a batch: the key check of compacted topics and the cleaner. The produce and
//! fetch paths never inflate anything.
//!
//! Decompression is bounded: past `limit` bytes it stops and reports [`CodecError::TooLarge`],
//! so a small batch that inflates to gigabytes costs at most `limit` bytes of memory.

use std::io::{Read, Write};

/// Kafka's codec ids (the low three bits of the batch attributes).
pub const NONE: i16 = 0;
pub const GZIP: i16 = 1;
pub const SNAPPY: i16 = 2;
pub const LZ4: i16 = 3;
pub const ZSTD: i16 = 4;

/// The 8-byte magic that opens snappy-java's framing, which Kafka's Java client writes
/// (followed by two 4-byte version fields, then length-prefixed raw snappy blocks).
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_BYTES: usize = 16;
/// snappy-java's block size, which Kafka's Java client uses.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// Attribute bits naming no codec.
    Unknown(i16),
    /// Inflates to more than the limit.
    TooLarge,
    /// Not a valid stream of the codec.
    Corrupt(String),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Unknown(c) => write!(f, "unknown compression codec {c}"),
            CodecError::TooLarge => write!(f, "records inflate past the broker's limit"),
            CodecError::Corrupt(why) => write!(f, "corrupt compressed records: {why}"),
        }
    }
}

fn corrupt(e: impl std::fmt::Display) -> CodecError {
    CodecError::Corrupt(e.to_string())
}

/// Inflates a batch's records section compressed with `codec`, to at most `limit` bytes.
pub fn decompress(codec: i16, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    match codec {
        NONE => {
            if data.len() > limit {
                return Err(CodecError::TooLarge);
            }
            Ok(data.to_vec())
        }
        GZIP => read_bounded(flate2::read::MultiGzDecoder::new(data), limit),
        SNAPPY => snappy_decompress(data, limit),
        LZ4 => read_bounded(lz4::Decoder::new(data).map_err(corrupt)?, limit),
        ZSTD => read_bounded(
            zstd::stream::read::Decoder::new(data).map_err(corrupt)?,
            limit,
        ),
        other => Err(CodecError::Unknown(other)),
    }
}

/// Compresses a records section with `codec`, in the framing Kafka's Java client writes.
pub fn compress(codec: i16, data: &[u8]) -> Result<Vec<u8>, CodecError> {
    match codec {
        NONE => Ok(data.to_vec()),
        GZIP => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).map_err(corrupt)?;
            encoder.finish().map_err(corrupt)
        }
        SNAPPY => {
            let mut out = Vec::with_capacity(data.len() / 2 + XERIAL_HEADER_BYTES);
            out.extend_from_slice(&XERIAL_MAGIC);
            out.extend_from_slice(&1u32.to_be_bytes()); // version
            out.extend_from_slice(&1u32.to_be_bytes()); // minimum compatible version
            let mut encoder = snap::raw::Encoder::new();
            for block in data.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder.compress_vec(block).map_err(corrupt)?;
                let len = u32::try_from(compressed.len()).map_err(corrupt)?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        LZ4 => {
            // Independent blocks: Kafka's Java LZ4 stream does not support linked blocks.
            let mut encoder = lz4::EncoderBuilder::new()
                .block_mode(lz4::BlockMode::Independent)
                .build(Vec::new())
                .map_err(corrupt)?;
            encoder.write_all(data).map_err(corrupt)?;
            let (out, result) = encoder.finish();
            result.map_err(corrupt)?;
            Ok(out)
        }
        ZSTD => zstd::stream::encode_all(data, 3).map_err(corrupt),
        other => Err(CodecError::Unknown(other)),
    }
}

fn read_bounded(reader: impl Read, limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out).map_err(corrupt)?;
    if out.len() > limit {
        return Err(CodecError::TooLarge);
    }
    Ok(out)
}

/// Snappy as Kafka clients write it: snappy-java's framing (Java client), or one raw snappy
/// block (some other clients).
fn snappy_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut decoder = snap::raw::Decoder::new();
    let mut inflate = |block: &[u8], out: &mut Vec<u8>| -> Result<(), CodecError> {
        let len = snap::raw::decompress_len(block).map_err(corrupt)?;
        if out.len().saturating_add(len) > limit {
            return Err(CodecError::TooLarge);
        }
        let start = out.len();
        out.resize(start + len, 0);
        let n = decoder
            .decompress(block, &mut out[start..])
            .map_err(corrupt)?;
        out.truncate(start + n);
        Ok(())
    };
    let mut out = Vec::new();
    if !data.starts_with(&XERIAL_MAGIC) {
        inflate(data, &mut out)?;
        return Ok(out);
    }
    let mut rest = data
        .get(XERIAL_HEADER_BYTES..)
        .ok_or_else(|| corrupt("short header"))?;
    while !rest.is_empty() {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("short block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let (block, after) = after
            .split_at_checked(len)
            .ok_or_else(|| corrupt("short block"))?;
        inflate(block, &mut out)?;
        rest = after;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in [NONE, GZIP, SNAPPY, LZ4, ZSTD] {
            let packed = compress(codec, &data).expect("compresses");
            let back = decompress(codec, &packed, data.len()).expect("inflates");
            assert_eq!(back, data, "codec {codec}");
            if codec != NONE {
                assert_eq!(
                    decompress(codec, &packed, data.len() - 1),
                    Err(CodecError::TooLarge),
                    "codec {codec} honours the limit"
                );
            }
        }
    }

    #[test]
    fn raw_snappy_and_garbage() {
        let raw = snap::raw::Encoder::new()
            .compress_vec(b"hello hello hello")
            .expect("compresses");
        assert_eq!(
            decompress(SNAPPY, &raw, 100).expect("raw snappy"),
            b"hello hello hello"
        );
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            assert!(decompress(codec, b"\x00\x01garbage", 1 << 20).is_err());
            let _ = decompress(codec, b"", 1 << 20); // never panics
        }
        assert_eq!(decompress(7, b"", 10), Err(CodecError::Unknown(7)));
    }
}
