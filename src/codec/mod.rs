//! Bit-level coding: an LSB-first bit writer/reader and the two position encodings
//! of sparse tensors. Self-contained: nothing else in the crate is used here.
//!
//! A sparse tensor stores its values at sorted, strictly increasing flat indices
//! ("positions") below `numel`. They are coded one of two ways:
//!
//! - **bitmap**: one bit per element (bit `i % 8` of byte `i / 8`, LSB first), so
//!   `ceil(numel / 8)` bytes; unused bits of the last byte are zero.
//! - **relative gaps** with a fixed width `b` in `1..=8` (Deep Compression style):
//!   walking a cursor from 0, each `b`-bit symbol `s` either places a value at
//!   `cursor + s` (then `cursor = position + 1`) when `s < 2^b - 1`, or, when
//!   `s == 2^b - 1`, is a *filler* that advances the cursor by `2^b - 1` without a
//!   value. Symbols are packed LSB first; the last byte is padded with zero bits.
//!
//! - **Huffman-coded gaps** with a span `S = 2^e` (`e` in `0..=15`): the same walk,
//!   over the alphabet `0..=S` where a symbol `s < S` places a value at
//!   `cursor + s` and `S` is the filler advancing the cursor by `S`. The symbols
//!   form one [`huffman`] stream (code-length table, then the code words), the
//!   code being optimal for this tensor's gap distribution.
//!
//! [`choose_position_coding`] measures the bitmap, every width and the Huffman
//! spans `2^1..=2^10` and keeps the smallest (on ties the bitmap, then fixed
//! widths, then smaller spans). Decoders check every position against `numel`,
//! the count against the stream, and the padding bits, so a stream decodes to at
//! most one position list and allocations are bounded by the input length.
//!
//! Besides positions, this module packs fixed-width indices ([`pack_indices`]),
//! and holds the Huffman coder ([`huffman`]) and an IEEE binary16 converter
//! ([`f16`](mod@f16)), and the fixed hash of hashed weight sharing ([`hash`]).

pub mod f16;
pub mod hash;
pub mod huffman;

/// Largest element count a position list can address (positions are `u32`).
pub const MAX_NUMEL: u64 = 1 << 32;

/// Why a bit stream or position stream does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The stream ended before the symbol being read.
    #[error("bit stream ends after {available} bits, {needed} needed")]
    Exhausted {
        /// Bits the symbol needs.
        needed: u64,
        /// Bits left in the stream.
        available: u64,
    },
    /// A decoded (or filler-advanced) position is not below `numel`.
    #[error("position {position} is outside 0..{numel}")]
    OutOfRange {
        /// The offending position.
        position: u64,
        /// Number of elements.
        numel: u64,
    },
    /// Bits after the last symbol of the final byte are not zero.
    #[error("padding bits after the last symbol are not zero")]
    NonzeroPadding,
    /// A bitmap's byte length does not match `ceil(numel / 8)`.
    #[error("bitmap has {found} bytes, {expected} expected")]
    BitmapLength {
        /// Bytes given.
        found: u64,
        /// Bytes `numel` implies.
        expected: u64,
    },
    /// A bitmap marks a different number of positions than expected.
    #[error("bitmap marks {found} positions, {expected} expected")]
    CountMismatch {
        /// Positions the bitmap marks.
        found: u64,
        /// Positions expected.
        expected: u64,
    },
    /// A gap width outside `1..=8`.
    #[error("gap width {0} is not in 1..=8")]
    BadWidth(u8),
    /// `numel` is more than [`MAX_NUMEL`].
    #[error("{0} elements cannot be addressed by 32-bit positions")]
    TooLarge(u64),
    /// A Huffman gap span exponent outside `0..=15`.
    #[error("gap span 2^{0} is not in 2^0..=2^15")]
    BadSpan(u8),
    /// An alphabet larger than [`huffman::MAX_SYMBOLS`].
    #[error("alphabet of {0} symbols exceeds 65536")]
    AlphabetTooLarge(u64),
    /// Code lengths whose Kraft sum exceeds 1 (or too many symbols for the limit).
    #[error("code lengths oversubscribe the code space (Kraft sum above 1)")]
    Oversubscribed,
    /// A code length above [`huffman::MAX_CODE_LEN`].
    #[error("code length {0} exceeds 16")]
    BadCodeLength(u8),
    /// A malformed serialised code-length table.
    #[error("Huffman table: {0}")]
    BadTable(&'static str),
    /// Bits that are no code word of an (incomplete) Huffman code.
    #[error("bits do not form a code word")]
    InvalidCode,
    /// Encoding a symbol that has no code word.
    #[error("symbol {0} has no code word")]
    NoCode(u32),
    /// A symbol or index outside its alphabet.
    #[error("symbol {symbol} is outside the alphabet of {alphabet}")]
    SymbolOutOfRange {
        /// The symbol.
        symbol: u32,
        /// Alphabet size.
        alphabet: u64,
    },
}

/// Appends values of up to 32 bits, least significant bit first.
#[derive(Debug, Default, Clone)]
pub struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    pending: u32,
}

impl BitWriter {
    /// An empty writer.
    pub fn new() -> BitWriter {
        BitWriter::default()
    }

    /// Appends the low `width` bits of `value` (`width` is clamped to 32).
    pub fn write(&mut self, value: u32, width: u32) {
        let width = width.min(32);
        let mask = if width == 32 { u64::from(u32::MAX) } else { (1u64 << width) - 1 };
        self.acc |= (u64::from(value) & mask) << self.pending;
        self.pending += width;
        while self.pending >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.pending -= 8;
        }
    }

    /// Number of bits written so far.
    pub fn bit_len(&self) -> u64 {
        self.bytes.len() as u64 * 8 + u64::from(self.pending)
    }

    /// The bytes, the last one padded with zero bits.
    pub fn finish(mut self) -> Vec<u8> {
        if self.pending > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

/// Reads values of up to 32 bits, least significant bit first, from a byte slice.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    bytes: &'a [u8],
    pos: u64,
}

impl<'a> BitReader<'a> {
    /// A reader at the first bit of `bytes`.
    pub fn new(bytes: &'a [u8]) -> BitReader<'a> {
        BitReader { bytes, pos: 0 }
    }

    /// Reads `width` bits (clamped to 32).
    pub fn read(&mut self, width: u32) -> Result<u32, CodecError> {
        let width = width.min(32);
        let available = self.bytes.len() as u64 * 8 - self.pos;
        if u64::from(width) > available {
            return Err(CodecError::Exhausted { needed: u64::from(width), available });
        }
        let mut value = 0u64;
        let mut got = 0u32;
        while got < width {
            let byte = self.bytes.get((self.pos / 8) as usize).copied().unwrap_or(0);
            let offset = (self.pos % 8) as u32;
            let take = (8 - offset).min(width - got);
            let bits = (u64::from(byte) >> offset) & ((1u64 << take) - 1);
            value |= bits << got;
            got += take;
            self.pos += u64::from(take);
        }
        Ok(value as u32)
    }

    /// Reads one bit.
    pub fn read_bit(&mut self) -> Result<u32, CodecError> {
        match self.bytes.get((self.pos / 8) as usize) {
            Some(&b) => {
                let bit = u32::from(b >> (self.pos % 8)) & 1;
                self.pos += 1;
                Ok(bit)
            }
            None => Err(CodecError::Exhausted { needed: 1, available: 0 }),
        }
    }

    /// Number of bits read so far.
    pub fn bits_read(&self) -> u64 {
        self.pos
    }

    /// Checks that the rest of the current byte is zero padding and returns the
    /// number of bytes consumed (`ceil(bits_read / 8)`).
    pub fn finish(&self) -> Result<usize, CodecError> {
        let used = self.pos.div_ceil(8) as usize;
        if !self.pos.is_multiple_of(8) {
            let last = self.bytes.get(used - 1).copied().unwrap_or(0);
            if last >> (self.pos % 8) != 0 {
                return Err(CodecError::NonzeroPadding);
            }
        }
        Ok(used)
    }
}

/// How a position list is coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionCoding {
    /// One bit per element.
    Bitmap,
    /// Relative gaps of `width` bits (`1..=8`), `2^width - 1` being the filler.
    Gaps {
        /// Bits per symbol.
        width: u8,
    },
    /// Huffman-coded relative gaps with span `2^span_log2` (`0..=15`), `2^span_log2`
    /// being the filler symbol.
    HuffmanGaps {
        /// Exponent `e` of the span `S = 2^e`.
        span_log2: u8,
    },
}

/// Largest Huffman gap span exponent.
pub const MAX_SPAN_LOG2: u8 = 15;
/// The span exponents [`choose_position_coding`] tries.
pub const TRIED_SPANS: std::ops::RangeInclusive<u8> = 1..=10;

/// Byte length of a bitmap over `numel` elements.
pub fn bitmap_len(numel: u64) -> u64 {
    numel.div_ceil(8)
}

/// The bitmap of `positions` (sorted, below `numel`; others are ignored).
pub fn encode_bitmap(positions: &[u32], numel: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; bitmap_len(numel.min(MAX_NUMEL)) as usize];
    for &p in positions {
        if u64::from(p) < numel
            && let Some(b) = bytes.get_mut(p as usize / 8)
        {
            *b |= 1 << (p % 8);
        }
    }
    bytes
}

/// Decodes a bitmap of exactly `bitmap_len(numel)` bytes that must mark `count` positions.
pub fn decode_bitmap(bytes: &[u8], numel: u64, count: u64) -> Result<Vec<u32>, CodecError> {
    if numel > MAX_NUMEL {
        return Err(CodecError::TooLarge(numel));
    }
    let expected = bitmap_len(numel);
    if bytes.len() as u64 != expected {
        return Err(CodecError::BitmapLength { found: bytes.len() as u64, expected });
    }
    if !numel.is_multiple_of(8) && bytes.last().is_some_and(|&b| b >> (numel % 8) != 0) {
        return Err(CodecError::NonzeroPadding);
    }
    let found: u64 = bytes.iter().map(|b| u64::from(b.count_ones())).sum();
    if found != count {
        return Err(CodecError::CountMismatch { found, expected: count });
    }
    let mut out = Vec::with_capacity(found as usize);
    for (i, &byte) in bytes.iter().enumerate() {
        let mut b = byte;
        while b != 0 {
            out.push((i as u64 * 8 + u64::from(b.trailing_zeros())) as u32);
            b &= b - 1;
        }
    }
    Ok(out)
}

fn filler(width: u8) -> Result<u64, CodecError> {
    if (1..=8).contains(&width) {
        Ok((1u64 << width) - 1)
    } else {
        Err(CodecError::BadWidth(width))
    }
}

/// Number of bits the gap coding of `positions` takes at `width` (without padding).
pub fn gaps_bit_len(positions: &[u32], width: u8) -> Result<u64, CodecError> {
    let m = filler(width)?;
    let mut next = 0u64;
    let mut bits = 0u64;
    for &p in positions {
        let gap = u64::from(p).saturating_sub(next);
        bits += (gap / m + 1) * u64::from(width);
        next = u64::from(p) + 1;
    }
    Ok(bits)
}

/// The gap coding of `positions` (sorted, strictly increasing) at `width` bits.
pub fn encode_gaps(positions: &[u32], width: u8) -> Result<Vec<u8>, CodecError> {
    let m = filler(width)?;
    let mut w = BitWriter::new();
    let mut next = 0u64;
    for &p in positions {
        let gap = u64::from(p).saturating_sub(next);
        for _ in 0..gap / m {
            w.write(m as u32, u32::from(width));
        }
        w.write((gap % m) as u32, u32::from(width));
        next = u64::from(p) + 1;
    }
    Ok(w.finish())
}

/// Decodes `count` positions below `numel` from the front of `bytes` at `width` bits.
/// Returns them and the number of bytes the stream used (padding checked).
pub fn decode_gaps(
    bytes: &[u8],
    numel: u64,
    count: u64,
    width: u8,
) -> Result<(Vec<u32>, usize), CodecError> {
    let m = filler(width)?;
    if numel > MAX_NUMEL {
        return Err(CodecError::TooLarge(numel));
    }
    let most = bytes.len() as u64 * 8 / u64::from(width);
    let mut out = Vec::with_capacity(count.min(most) as usize);
    let mut r = BitReader::new(bytes);
    let mut cursor = 0u64;
    while (out.len() as u64) < count {
        let s = u64::from(r.read(u32::from(width))?);
        if s == m {
            cursor += m;
            if cursor >= numel {
                return Err(CodecError::OutOfRange { position: cursor, numel });
            }
            continue;
        }
        let p = cursor + s;
        if p >= numel {
            return Err(CodecError::OutOfRange { position: p, numel });
        }
        out.push(p as u32);
        cursor = p + 1;
    }
    Ok((out, r.finish()?))
}

fn span(span_log2: u8) -> Result<u64, CodecError> {
    if span_log2 <= MAX_SPAN_LOG2 {
        Ok(1u64 << span_log2)
    } else {
        Err(CodecError::BadSpan(span_log2))
    }
}

/// The gap symbols of `positions` for span `2^span_log2` (see the module documentation).
fn gap_symbols(positions: &[u32], span_log2: u8) -> Result<Vec<u32>, CodecError> {
    let s = span(span_log2)?;
    let mut out = Vec::with_capacity(positions.len());
    let mut next = 0u64;
    for &p in positions {
        let gap = u64::from(p).saturating_sub(next);
        out.extend(std::iter::repeat_n(s as u32, (gap / s) as usize));
        out.push((gap % s) as u32);
        next = u64::from(p) + 1;
    }
    Ok(out)
}

/// Byte length of the Huffman gap coding of `positions` at span `2^span_log2`.
pub fn huffman_gaps_len(positions: &[u32], span_log2: u8) -> Result<u64, CodecError> {
    let alphabet = span(span_log2)? as usize + 1;
    let s = span(span_log2)?;
    let mut freqs = vec![0u64; alphabet];
    let mut next = 0u64;
    for &p in positions {
        let gap = u64::from(p).saturating_sub(next);
        freqs[alphabet - 1] += gap / s;
        freqs[(gap % s) as usize] += 1;
        next = u64::from(p) + 1;
    }
    huffman::stream_len(&freqs)
}

/// The Huffman gap coding of `positions` (sorted, strictly increasing) at span
/// `2^span_log2`: one [`huffman::encode_stream`] over the alphabet `0..=2^span_log2`.
pub fn encode_huffman_gaps(positions: &[u32], span_log2: u8) -> Result<Vec<u8>, CodecError> {
    let symbols = gap_symbols(positions, span_log2)?;
    huffman::encode_stream(&symbols, span(span_log2)? as usize + 1)
}

/// Decodes `count` positions below `numel` from the front of `bytes`, Huffman gap
/// coded at span `2^span_log2`. Returns them and the number of bytes the stream used
/// (padding checked).
pub fn decode_huffman_gaps(
    bytes: &[u8],
    numel: u64,
    count: u64,
    span_log2: u8,
) -> Result<(Vec<u32>, usize), CodecError> {
    let s = span(span_log2)?;
    if numel > MAX_NUMEL {
        return Err(CodecError::TooLarge(numel));
    }
    let mut r = BitReader::new(bytes);
    let code = huffman::HuffmanCode::read_table(&mut r, s as usize + 1)?;
    // Every code word has at least one bit.
    let most = (bytes.len() as u64 * 8).saturating_sub(r.bits_read());
    let mut out = Vec::with_capacity(count.min(most) as usize);
    let mut cursor = 0u64;
    while (out.len() as u64) < count {
        let sym = u64::from(code.read_symbol(&mut r)?);
        if sym == s {
            cursor += s;
            if cursor >= numel {
                return Err(CodecError::OutOfRange { position: cursor, numel });
            }
            continue;
        }
        let p = cursor + sym;
        if p >= numel {
            return Err(CodecError::OutOfRange { position: p, numel });
        }
        out.push(p as u32);
        cursor = p + 1;
    }
    Ok((out, r.finish()?))
}

/// Bits per index of an alphabet of `k` symbols in [`pack_indices`]:
/// `max(1, ceil(log2 k))` (at least one, so that a count is bounded by the input).
pub fn index_width(k: u64) -> u32 {
    (64 - k.saturating_sub(1).leading_zeros()).max(1)
}

/// Packs `indices` at [`index_width`]`(k)` bits each, LSB first, zero-padded to a
/// byte; errors on an index `≥ k`.
pub fn pack_indices(indices: &[u16], k: u64) -> Result<Vec<u8>, CodecError> {
    let width = index_width(k);
    let mut w = BitWriter::new();
    for &i in indices {
        if u64::from(i) >= k {
            return Err(CodecError::SymbolOutOfRange { symbol: u32::from(i), alphabet: k });
        }
        w.write(u32::from(i), width);
    }
    Ok(w.finish())
}

/// Unpacks `count` indices below `k` from the front of `bytes`; returns them and the
/// bytes used (padding checked).
pub fn unpack_indices(bytes: &[u8], k: u64, count: u64) -> Result<(Vec<u16>, usize), CodecError> {
    let width = index_width(k);
    let needed = count.saturating_mul(u64::from(width));
    if needed > bytes.len() as u64 * 8 {
        return Err(CodecError::Exhausted { needed, available: bytes.len() as u64 * 8 });
    }
    let mut r = BitReader::new(bytes);
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let i = r.read(width)?;
        if u64::from(i) >= k || i > u32::from(u16::MAX) {
            return Err(CodecError::SymbolOutOfRange { symbol: i, alphabet: k });
        }
        out.push(i as u16);
    }
    Ok((out, r.finish()?))
}

/// The smallest coding of `positions` over `numel` elements and its byte length:
/// the bitmap, gaps at the best width, or Huffman gaps at the best span of
/// [`TRIED_SPANS`] (ties: bitmap, then fixed widths, then smaller spans).
pub fn choose_position_coding(positions: &[u32], numel: u64) -> (PositionCoding, u64) {
    choose_position_coding_among(positions, numel, true)
}

/// As [`choose_position_coding`]; without `entropy_coding` only the bitmap and the
/// fixed-width gaps are considered (the codings of Deep Compression before Huffman).
pub fn choose_position_coding_among(positions: &[u32], numel: u64, entropy_coding: bool) -> (PositionCoding, u64) {
    let mut best = (PositionCoding::Bitmap, bitmap_len(numel));
    for width in 1..=8u8 {
        if let Ok(bits) = gaps_bit_len(positions, width)
            && bits.div_ceil(8) < best.1
        {
            best = (PositionCoding::Gaps { width }, bits.div_ceil(8));
        }
    }
    for span_log2 in TRIED_SPANS.into_iter().filter(|_| entropy_coding) {
        if let Ok(len) = huffman_gaps_len(positions, span_log2)
            && len < best.1
        {
            best = (PositionCoding::HuffmanGaps { span_log2 }, len);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny local generator (this module depends on nothing else in the crate).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn unit(&mut self) -> f64 {
            self.next() as f64 / (1u64 << 31) as f64
        }
    }

    fn random_positions(numel: u32, density: f64, seed: u64) -> Vec<u32> {
        let mut g = Lcg(seed);
        (0..numel).filter(|_| g.unit() < density).collect()
    }

    fn round_trip_all(pos: &[u32], numel: u64) {
        let count = pos.len() as u64;
        let bm = encode_bitmap(pos, numel);
        assert_eq!(bm.len() as u64, bitmap_len(numel));
        assert_eq!(decode_bitmap(&bm, numel, count).unwrap(), pos);
        for width in 1..=8 {
            let mut g = encode_gaps(pos, width).unwrap();
            assert_eq!(g.len() as u64, gaps_bit_len(pos, width).unwrap().div_ceil(8));
            let used = g.len();
            g.extend_from_slice(&[0xAB, 0xCD]); // whatever follows is not consumed
            let (back, n) = decode_gaps(&g, numel, count, width).unwrap();
            assert_eq!(back, pos, "width {width}");
            assert_eq!(n, used);
        }
        for span_log2 in 0..=MAX_SPAN_LOG2 {
            let mut g = encode_huffman_gaps(pos, span_log2).unwrap();
            assert_eq!(g.len() as u64, huffman_gaps_len(pos, span_log2).unwrap());
            let used = g.len();
            g.extend_from_slice(&[0xAB, 0xCD]);
            let (back, n) = decode_huffman_gaps(&g, numel, count, span_log2).unwrap();
            assert_eq!(back, pos, "span 2^{span_log2}");
            assert_eq!(n, used);
        }
        let (coding, len) = choose_position_coding(pos, numel);
        let actual = match coding {
            PositionCoding::Bitmap => bitmap_len(numel),
            PositionCoding::Gaps { width } => encode_gaps(pos, width).unwrap().len() as u64,
            PositionCoding::HuffmanGaps { span_log2 } => {
                encode_huffman_gaps(pos, span_log2).unwrap().len() as u64
            }
        };
        assert_eq!(len, actual);
    }

    #[test]
    fn bit_writer_reader_round_trip() {
        let mut g = Lcg(3);
        let items: Vec<(u32, u32)> = (0..500)
            .map(|_| {
                let w = (g.next() % 33) as u32;
                let v = g.next() as u32 & if w == 32 { u32::MAX } else { (1 << w) - 1 };
                (v, w)
            })
            .collect();
        let mut w = BitWriter::new();
        for &(v, n) in &items {
            w.write(v, n);
        }
        let bits = w.bit_len();
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for &(v, n) in &items {
            assert_eq!(r.read(n).unwrap(), v);
        }
        assert_eq!(r.bits_read(), bits);
        assert_eq!(r.finish().unwrap() as u64, bits.div_ceil(8));
        assert!(matches!(BitReader::new(&[1]).read(9), Err(CodecError::Exhausted { .. })));
    }

    #[test]
    fn positions_round_trip_at_all_densities_and_edges() {
        for (i, &d) in [0.01, 0.05, 0.5, 0.99].iter().enumerate() {
            for numel in [1u32, 7, 8, 9, 1000, 4099] {
                round_trip_all(&random_positions(numel, d, i as u64 * 31 + 7), u64::from(numel));
            }
        }
        round_trip_all(&[], 0);
        round_trip_all(&[], 1000);
        round_trip_all(&(0..1000).collect::<Vec<_>>(), 1000);
        round_trip_all(&[999], 1000);
        round_trip_all(&[0, 999], 1000);
        round_trip_all(&[0], 1);
        // Huge gaps: many fillers at width 1.
        round_trip_all(&[5000, 70000], 70001);
    }

    #[test]
    fn choice_prefers_bitmap_when_dense_and_gaps_when_sparse() {
        let mut dense = random_positions(10_000, 0.5, 1);
        dense.push(9_999);
        dense.dedup();
        assert_eq!(choose_position_coding(&dense, 10_000).0, PositionCoding::Bitmap);
        let sparse = random_positions(10_000, 0.05, 2);
        let (coding, len) = choose_position_coding(&sparse, 10_000);
        assert!(matches!(coding, PositionCoding::HuffmanGaps { .. }), "{coding:?}");
        let best_fixed = (1..=8).map(|w| gaps_bit_len(&sparse, w).unwrap().div_ceil(8)).min();
        assert!(len < best_fixed.unwrap());
    }

    #[test]
    fn packed_indices_round_trip_and_check_range() {
        assert_eq!((index_width(0), index_width(1), index_width(2)), (1, 1, 1));
        assert_eq!((index_width(3), index_width(32), index_width(33)), (2, 5, 6));
        assert_eq!(index_width(65536), 16);
        let mut g = Lcg(4);
        for k in [1u64, 2, 3, 32, 255, 256, 257, 65536] {
            let idx: Vec<u16> = (0..777).map(|_| (g.next() % k) as u16).collect();
            let mut b = pack_indices(&idx, k).unwrap();
            assert_eq!(b.len() as u64, (777 * u64::from(index_width(k))).div_ceil(8));
            let used = b.len();
            b.push(0xEE);
            assert_eq!(unpack_indices(&b, k, 777).unwrap(), (idx, used));
        }
        assert!(pack_indices(&[3], 3).is_err());
        assert!(matches!(unpack_indices(&[3], 3, 1), Err(CodecError::SymbolOutOfRange { .. })));
        assert!(matches!(unpack_indices(&[0], 3, 5), Err(CodecError::Exhausted { .. })));
        assert_eq!(unpack_indices(&[0x10], 4, 1), Err(CodecError::NonzeroPadding));
        assert!(unpack_indices(&[], 0, 1).is_err());
        assert_eq!(unpack_indices(&[], 0, 0), Ok((vec![], 0)));
    }

    #[test]
    fn malformed_streams_are_errors() {
        // Bitmap: wrong length, nonzero padding, wrong count.
        assert!(matches!(decode_bitmap(&[1], 9, 1), Err(CodecError::BitmapLength { .. })));
        assert_eq!(decode_bitmap(&[0x10], 4, 1), Err(CodecError::NonzeroPadding));
        assert!(matches!(decode_bitmap(&[3], 8, 1), Err(CodecError::CountMismatch { .. })));
        assert!(matches!(decode_bitmap(&[], 1 << 40, 0), Err(CodecError::TooLarge(_))));
        // Gaps: position beyond numel, filler beyond numel, short stream, padding, width.
        let g = encode_gaps(&[5], 4).unwrap();
        assert!(matches!(decode_gaps(&g, 5, 1, 4), Err(CodecError::OutOfRange { .. })));
        assert!(matches!(decode_gaps(&[0xFF], 10, 1, 4), Err(CodecError::OutOfRange { .. })));
        assert!(matches!(decode_gaps(&[0x00], 100, 3, 4), Err(CodecError::Exhausted { .. })));
        assert_eq!(decode_gaps(&[0x10], 100, 1, 4), Err(CodecError::NonzeroPadding));
        assert_eq!(decode_gaps(&[0], 100, 1, 9), Err(CodecError::BadWidth(9)));
        assert_eq!(encode_gaps(&[1], 0), Err(CodecError::BadWidth(0)));
    }

    #[test]
    fn random_streams_never_panic() {
        let mut g = Lcg(99);
        for _ in 0..3000 {
            let len = (g.next() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| g.next() as u8).collect();
            let numel = g.next() % 400;
            let count = g.next() % 50;
            let width = (g.next() % 10) as u8;
            let _ = decode_bitmap(&bytes, numel, count);
            let results = [
                decode_gaps(&bytes, numel, count, width),
                decode_huffman_gaps(&bytes, numel, count, width * 2),
            ];
            for (p, used) in results.into_iter().flatten() {
                assert!(used <= bytes.len());
                assert!(p.windows(2).all(|w| w[0] < w[1]));
                assert!(p.iter().all(|&x| u64::from(x) < numel));
                assert_eq!(p.len() as u64, count);
            }
        }
    }
}
