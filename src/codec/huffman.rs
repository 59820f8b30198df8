//! Canonical, length-limited Huffman coding over alphabets of up to 65 536 symbols.
//!
//! # Code construction
//!
//! [`code_lengths`] computes optimal code lengths under a length limit (at most
//! [`MAX_CODE_LEN`] = 16 bits) with the package-merge algorithm (Larmore & Hirschberg
//! 1990). It is deterministic: symbols of equal frequency are ordered by symbol value,
//! and a leaf sorts before a package of equal weight. Symbols of frequency zero get
//! no code (length 0). A lone used symbol gets a 1-bit code, so every coded symbol
//! costs at least one bit and a decoder's output is bounded by its input's bit count.
//!
//! Code words are canonical, assigned as in DEFLATE (RFC 1951 §3.2.2): shorter codes
//! first, equal lengths in increasing symbol order. They are written into the
//! LSB-first [`BitWriter`] **most significant code bit first** (again as DEFLATE
//! does), so a decoder reads one bit at a time and appends it at the low end of the
//! code word being built.
//!
//! # Serialised code-length table
//!
//! A table describes the lengths of all `n` symbols of an alphabet whose size the
//! reader already knows. It is a sequence of Elias-gamma numbers (`x ≥ 1` is written
//! as `⌊log2 x⌋` one bits, a zero bit, then the low `⌊log2 x⌋` bits of `x`, LSB
//! first). Walking the symbols with a "previous length" `p` that starts at 8, each
//! item `g` (a gamma number) means:
//!
//! - `g = 1`: the next symbol's length is `p`;
//! - `g = 2`: a run of zero lengths (unused symbols) follows, its length `r ≥ 1`
//!   as a further gamma number;
//! - `g ≥ 3`: the next length is `p + d` where `z = g − 3` is `d` zigzag-coded
//!   (`z = 0, 1, 2, 3 …` ↦ `d = −1, +1, −2, +2 …`); it must lie in `1..=16`.
//!
//! `p` becomes the last non-zero length. Smoothly varying lengths thus cost 1–3
//! bits each and long stretches of unused symbols a few bits. The reader checks
//! that exactly `n` lengths are described and that they satisfy Kraft's inequality
//! (`Σ 2^-len ≤ 1`; incomplete codes are accepted, a bit pattern that is no code
//! word is then a decoding error).
//!
//! # Streams
//!
//! [`encode_stream`] writes a table followed by the code words of the symbols in
//! the same bit stream, the last byte padded with zero bits; [`decode_stream`]
//! reads a given number of symbols and checks the padding.

use super::{BitReader, BitWriter, CodecError};

/// Longest code word, in bits.
pub const MAX_CODE_LEN: u8 = 16;
/// Largest alphabet: every symbol must fit a code of [`MAX_CODE_LEN`] bits.
pub const MAX_SYMBOLS: usize = 1 << 16;
/// The "previous length" a table starts from.
const TABLE_START_LEN: u8 = 8;
/// Largest gamma number a table may contain (bounds the bits read per item).
const MAX_GAMMA_LOG: u32 = 17;

/// Optimal code lengths for `freqs` (one entry per symbol) under a limit of
/// `max_len` bits (clamped to `1..=16`), by package-merge. Unused symbols get 0; a
/// single used symbol gets 1. Errors if the alphabet exceeds [`MAX_SYMBOLS`] or more
/// than `2^max_len` symbols are used.
pub fn code_lengths(freqs: &[u64], max_len: u8) -> Result<Vec<u8>, CodecError> {
    if freqs.len() > MAX_SYMBOLS {
        return Err(CodecError::AlphabetTooLarge(freqs.len() as u64));
    }
    let max_len = max_len.clamp(1, MAX_CODE_LEN);
    let mut lengths = vec![0u8; freqs.len()];
    let mut used: Vec<usize> = (0..freqs.len()).filter(|&s| freqs[s] > 0).collect();
    match used.len() {
        0 => return Ok(lengths),
        1 => {
            lengths[used[0]] = 1;
            return Ok(lengths);
        }
        n if n as u64 > 1u64 << max_len => return Err(CodecError::Oversubscribed),
        _ => {}
    }
    used.sort_by_key(|&s| (freqs[s], s));
    let leaves: Vec<u64> = used.iter().map(|&s| freqs[s]).collect();
    let n = leaves.len();
    // `is_package[j]` flags the items of the list at depth level j (0 = deepest,
    // leaves only) in merged order; packages pair consecutive items of level j - 1.
    let mut is_package: Vec<Vec<bool>> = Vec::with_capacity(usize::from(max_len));
    is_package.push(vec![false; n]);
    let mut prev = leaves.clone();
    for _ in 1..max_len {
        let packages: Vec<u64> = prev.chunks_exact(2).map(|c| c[0].saturating_add(c[1])).collect();
        let mut merged = Vec::with_capacity(n + packages.len());
        let mut flags = Vec::with_capacity(n + packages.len());
        let (mut i, mut j) = (0, 0);
        while i < n || j < packages.len() {
            if j >= packages.len() || (i < n && leaves[i] <= packages[j]) {
                merged.push(leaves[i]);
                flags.push(false);
                i += 1;
            } else {
                merged.push(packages[j]);
                flags.push(true);
                j += 1;
            }
        }
        is_package.push(flags);
        prev = merged;
    }
    // Select the 2n - 2 cheapest items of the top list; a selected package selects
    // the first two unselected items of the level below, i.e. a prefix. Every
    // selected occurrence of a leaf adds one bit to its length.
    let mut select = 2 * n - 2;
    for flags in is_package.iter().rev() {
        let taken = &flags[..select.min(flags.len())];
        let packages = taken.iter().filter(|&&p| p).count();
        for &s in &used[..taken.len() - packages] {
            lengths[s] += 1;
        }
        select = 2 * packages;
    }
    Ok(lengths)
}

/// A canonical prefix code: lengths, code words, and the decoding tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HuffmanCode {
    lengths: Vec<u8>,
    /// Code words bit-reversed, ready for the LSB-first writer.
    reversed: Vec<u16>,
    /// Number of code words of each length 0..=16 (index 0 unused).
    count: [u32; 17],
    /// Coded symbols ordered by (length, symbol).
    sorted: Vec<u32>,
}

impl HuffmanCode {
    /// The length-limited ([`MAX_CODE_LEN`]) optimal code for `freqs`.
    pub fn from_frequencies(freqs: &[u64]) -> Result<HuffmanCode, CodecError> {
        HuffmanCode::from_lengths(code_lengths(freqs, MAX_CODE_LEN)?)
    }

    /// The canonical code with these lengths (0 = symbol unused). Checks the
    /// alphabet size, every length (≤ 16) and Kraft's inequality.
    pub fn from_lengths(lengths: Vec<u8>) -> Result<HuffmanCode, CodecError> {
        if lengths.len() > MAX_SYMBOLS {
            return Err(CodecError::AlphabetTooLarge(lengths.len() as u64));
        }
        let mut count = [0u32; 17];
        for &l in &lengths {
            if l > MAX_CODE_LEN {
                return Err(CodecError::BadCodeLength(l));
            }
            count[usize::from(l)] += 1;
        }
        count[0] = 0;
        let kraft: u64 = (1..=16).map(|l| u64::from(count[l]) << (16 - l)).sum();
        if kraft > 1 << 16 {
            return Err(CodecError::Oversubscribed);
        }
        let mut next = [0u32; 17];
        let mut code = 0u32;
        for l in 1..=16 {
            code = (code + count[l - 1]) << 1;
            next[l] = code;
        }
        let mut reversed = vec![0u16; lengths.len()];
        for (s, &l) in lengths.iter().enumerate() {
            if l > 0 {
                let c = next[usize::from(l)];
                next[usize::from(l)] += 1;
                reversed[s] = ((c as u16).reverse_bits()) >> (16 - u32::from(l));
            }
        }
        let mut sorted: Vec<u32> =
            (0..lengths.len() as u32).filter(|&s| lengths[s as usize] > 0).collect();
        sorted.sort_by_key(|&s| (lengths[s as usize], s));
        Ok(HuffmanCode { lengths, reversed, count, sorted })
    }

    /// Code length of every symbol (0 = no code word).
    pub fn lengths(&self) -> &[u8] {
        &self.lengths
    }

    /// Number of symbols of the alphabet.
    pub fn alphabet_size(&self) -> usize {
        self.lengths.len()
    }

    /// Writes the code word of `symbol`; errors if it has none.
    pub fn write_symbol(&self, w: &mut BitWriter, symbol: u32) -> Result<(), CodecError> {
        match self.lengths.get(symbol as usize) {
            Some(&l) if l > 0 => {
                w.write(u32::from(self.reversed[symbol as usize]), u32::from(l));
                Ok(())
            }
            _ => Err(CodecError::NoCode(symbol)),
        }
    }

    /// Reads one code word and returns its symbol.
    pub fn read_symbol(&self, r: &mut BitReader) -> Result<u32, CodecError> {
        let (mut code, mut first, mut index) = (0u32, 0u32, 0u32);
        for l in 1..=16 {
            code |= r.read_bit()?;
            let c = self.count[l];
            if code < first + c {
                return self
                    .sorted
                    .get((index + code - first) as usize)
                    .copied()
                    .ok_or(CodecError::InvalidCode);
            }
            index += c;
            if index as usize >= self.sorted.len() {
                // Every code word is shorter than what was read: no code word
                // starts with these bits (incomplete code).
                return Err(CodecError::InvalidCode);
            }
            first = (first + c) << 1;
            code <<= 1;
        }
        Err(CodecError::InvalidCode)
    }

    /// Total bits of the code words for symbols with these frequencies (symbols
    /// beyond the alphabet or without a code word count as `u64::MAX`).
    pub fn payload_bits(&self, freqs: &[u64]) -> u64 {
        let mut bits = 0u64;
        for (s, &f) in freqs.iter().enumerate() {
            if f == 0 {
                continue;
            }
            match self.lengths.get(s) {
                Some(&l) if l > 0 => bits = bits.saturating_add(f.saturating_mul(u64::from(l))),
                _ => return u64::MAX,
            }
        }
        bits
    }

    /// Appends the serialised code-length table (see the module documentation).
    pub fn write_table(&self, w: &mut BitWriter) {
        let mut prev = TABLE_START_LEN;
        let mut i = 0;
        while i < self.lengths.len() {
            let l = self.lengths[i];
            if l == 0 {
                let run = self.lengths[i..].iter().take_while(|&&x| x == 0).count();
                write_gamma(w, 2);
                write_gamma(w, run as u32);
                i += run;
                continue;
            }
            let d = i32::from(l) - i32::from(prev);
            let g = match d {
                0 => 1,
                d if d < 0 => 3 + (2 * (-d) - 2) as u32,
                d => 3 + (2 * d - 1) as u32,
            };
            write_gamma(w, g);
            prev = l;
            i += 1;
        }
    }

    /// Bits [`HuffmanCode::write_table`] appends.
    pub fn table_bit_len(&self) -> u64 {
        let mut w = BitWriter::new();
        self.write_table(&mut w);
        w.bit_len()
    }

    /// Reads a table for an alphabet of `alphabet` symbols and builds its code.
    pub fn read_table(r: &mut BitReader, alphabet: usize) -> Result<HuffmanCode, CodecError> {
        if alphabet > MAX_SYMBOLS {
            return Err(CodecError::AlphabetTooLarge(alphabet as u64));
        }
        let mut lengths = Vec::with_capacity(alphabet);
        let mut prev = i32::from(TABLE_START_LEN);
        while lengths.len() < alphabet {
            let g = read_gamma(r)?;
            match g {
                1 => lengths.push(prev as u8),
                2 => {
                    let run = read_gamma(r)? as usize;
                    if run > alphabet - lengths.len() {
                        return Err(CodecError::BadTable("a zero run passes the alphabet's end"));
                    }
                    lengths.resize(lengths.len() + run, 0);
                }
                g => {
                    let z = (g - 3) as i32;
                    let d = if z % 2 == 0 { -(z / 2) - 1 } else { z / 2 + 1 };
                    let l = prev + d;
                    if !(1..=i32::from(MAX_CODE_LEN)).contains(&l) {
                        return Err(CodecError::BadTable("a code length is outside 1..=16"));
                    }
                    lengths.push(l as u8);
                    prev = l;
                }
            }
        }
        HuffmanCode::from_lengths(lengths)
    }
}

fn write_gamma(w: &mut BitWriter, x: u32) {
    let n = 31 - x.max(1).leading_zeros();
    for _ in 0..n {
        w.write(1, 1);
    }
    w.write(0, 1);
    w.write(x, n);
}

fn read_gamma(r: &mut BitReader) -> Result<u32, CodecError> {
    let mut n = 0;
    while r.read_bit()? == 1 {
        n += 1;
        if n > MAX_GAMMA_LOG {
            return Err(CodecError::BadTable("a number is too large"));
        }
    }
    Ok((1 << n) | r.read(n)?)
}

/// Symbol frequencies of `symbols` over an alphabet of `alphabet` symbols; errors
/// on a symbol outside it.
pub fn frequencies(symbols: &[u32], alphabet: usize) -> Result<Vec<u64>, CodecError> {
    if alphabet > MAX_SYMBOLS {
        return Err(CodecError::AlphabetTooLarge(alphabet as u64));
    }
    let mut freqs = vec![0u64; alphabet];
    for &s in symbols {
        match freqs.get_mut(s as usize) {
            Some(f) => *f += 1,
            None => {
                return Err(CodecError::SymbolOutOfRange { symbol: s, alphabet: alphabet as u64 });
            }
        }
    }
    Ok(freqs)
}

/// Byte length [`encode_stream`] would produce for these symbol frequencies.
pub fn stream_len(freqs: &[u64]) -> Result<u64, CodecError> {
    let code = HuffmanCode::from_frequencies(freqs)?;
    Ok((code.table_bit_len() + code.payload_bits(freqs)).div_ceil(8))
}

/// Huffman-codes `symbols` (each below `alphabet`) with the optimal code for their
/// own frequencies: the table, then the code words, zero-padded to a byte.
pub fn encode_stream(symbols: &[u32], alphabet: usize) -> Result<Vec<u8>, CodecError> {
    let code = HuffmanCode::from_frequencies(&frequencies(symbols, alphabet)?)?;
    let mut w = BitWriter::new();
    code.write_table(&mut w);
    for &s in symbols {
        code.write_symbol(&mut w, s)?;
    }
    Ok(w.finish())
}

/// Decodes `count` symbols of an alphabet of `alphabet` symbols from the front of
/// `bytes` (as [`encode_stream`] writes them); returns them and the bytes used
/// (padding checked). Allocation is bounded by the input's bit count.
pub fn decode_stream(
    bytes: &[u8],
    alphabet: usize,
    count: u64,
) -> Result<(Vec<u32>, usize), CodecError> {
    let mut r = BitReader::new(bytes);
    let code = HuffmanCode::read_table(&mut r, alphabet)?;
    let most = (bytes.len() as u64 * 8).saturating_sub(r.bits_read());
    let mut out = Vec::with_capacity(count.min(most) as usize);
    for _ in 0..count {
        out.push(code.read_symbol(&mut r)?);
    }
    Ok((out, r.finish()?))
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
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn kraft(lengths: &[u8]) -> u64 {
        lengths.iter().filter(|&&l| l > 0).map(|&l| 1u64 << (16 - l)).sum()
    }

    /// Plain (unlimited) Huffman cost, for optimality checks.
    fn huffman_cost(freqs: &[u64]) -> u64 {
        let mut h: std::collections::BinaryHeap<std::cmp::Reverse<u64>> =
            freqs.iter().filter(|&&f| f > 0).map(|&f| std::cmp::Reverse(f)).collect();
        if h.len() == 1 {
            return freqs.iter().sum();
        }
        let mut cost = 0;
        while h.len() > 1 {
            let a = h.pop().unwrap().0;
            let b = h.pop().unwrap().0;
            cost += a + b;
            h.push(std::cmp::Reverse(a + b));
        }
        cost
    }

    fn round_trip(symbols: &[u32], alphabet: usize) -> Vec<u8> {
        let bytes = encode_stream(symbols, alphabet).unwrap();
        let freqs = frequencies(symbols, alphabet).unwrap();
        assert_eq!(stream_len(&freqs).unwrap(), bytes.len() as u64);
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0xA5, 0x5A]); // what follows is not consumed
        let (back, used) = decode_stream(&padded, alphabet, symbols.len() as u64).unwrap();
        assert_eq!(back, symbols);
        assert_eq!(used, bytes.len());
        bytes
    }

    #[test]
    fn lengths_are_optimal_limited_and_complete() {
        let mut g = Lcg(11);
        for case in 0..300 {
            let n = 2 + g.below(300) as usize;
            let freqs: Vec<u64> = (0..n)
                .map(|i| match case % 3 {
                    0 => 1 + g.below(1000),                            // uniform-ish
                    1 => (1u64 << (i % 40)).min(1 << 40) + g.below(3), // very skewed
                    _ => g.below(4) * g.below(50),                     // with unused symbols
                })
                .collect();
            let used = freqs.iter().filter(|&&f| f > 0).count();
            let l = code_lengths(&freqs, 16).unwrap();
            assert!(l.iter().all(|&x| x <= 16));
            assert!(l.iter().zip(&freqs).all(|(&x, &f)| (x == 0) == (f == 0)));
            if used >= 2 {
                assert_eq!(kraft(&l), 1 << 16, "complete code");
            }
            let cost: u64 = l.iter().zip(&freqs).map(|(&x, &f)| u64::from(x) * f).sum();
            if l.iter().all(|&x| x < 16) && used >= 2 {
                // The limit did not bind: as good as unlimited Huffman.
                assert_eq!(cost, huffman_cost(&freqs), "case {case}");
            }
            // Deterministic.
            assert_eq!(code_lengths(&freqs, 16).unwrap(), l);
            // Tighter limits still give valid codes.
            let l7 = code_lengths(&freqs, 9).unwrap();
            assert!(l7.iter().all(|&x| x <= 9) && (used < 2 || kraft(&l7) == 1 << 16));
        }
        // Fibonacci frequencies force a depth far beyond 16 without the limit.
        let mut fib = vec![1u64, 1];
        while fib.len() < 40 {
            fib.push(fib[fib.len() - 1] + fib[fib.len() - 2]);
        }
        let l = code_lengths(&fib, 16).unwrap();
        assert_eq!(*l.iter().max().unwrap(), 16);
        assert_eq!(kraft(&l), 1 << 16);
        assert_eq!(code_lengths(&[1; 5], 2), Err(CodecError::Oversubscribed));
        assert_eq!(code_lengths(&[0, 0], 16).unwrap(), vec![0, 0]);
        assert_eq!(code_lengths(&[0, 7, 0], 16).unwrap(), vec![0, 1, 0]);
    }

    #[test]
    fn streams_round_trip_exactly() {
        let mut g = Lcg(5);
        for case in 0..200 {
            let alphabet = 1 + g.below(if case % 10 == 0 { 5000 } else { 300 }) as usize;
            let n = g.below(3000) as usize;
            let symbols: Vec<u32> = match case % 4 {
                0 => (0..n).map(|_| g.below(alphabet as u64) as u32).collect(),
                1 => (0..n)
                    .map(|_| {
                        // Roughly geometric: heavily skewed.
                        let mut s = 0;
                        while s + 1 < alphabet as u32 && g.below(3) != 0 {
                            s += 1;
                        }
                        s
                    })
                    .collect(),
                2 => vec![(alphabet - 1) as u32; n], // a single symbol
                _ => (0..n).map(|_| (g.below(8) * g.below(alphabet as u64) / 8) as u32).collect(),
            };
            round_trip(&symbols, alphabet);
        }
        round_trip(&[], 0);
        round_trip(&[], 10);
        assert!(round_trip(&[3; 16], 4).len() <= 4); // small table + 16 one-bit codes
        // Alphabet edges: 1 and 65 536 symbols, every symbol used.
        round_trip(&[0, 0, 0], 1);
        let all: Vec<u32> = (0..MAX_SYMBOLS as u32).chain([7, 7, 7, 65535]).collect();
        round_trip(&all, MAX_SYMBOLS);
        assert!(matches!(
            encode_stream(&[], MAX_SYMBOLS + 1),
            Err(CodecError::AlphabetTooLarge(_))
        ));
        assert!(matches!(encode_stream(&[4], 4), Err(CodecError::SymbolOutOfRange { .. })));
    }

    #[test]
    fn skewed_input_beats_fixed_width_and_uniform_does_not() {
        let mut g = Lcg(8);
        let skewed: Vec<u32> =
            (0..10_000).map(|_| (g.below(32) * g.below(32) / 32) as u32).collect();
        assert!(round_trip(&skewed, 32).len() < 10_000 * 5 / 8 * 9 / 10);
        let uniform: Vec<u32> = (0..10_000).map(|_| g.below(32) as u32).collect();
        assert!(round_trip(&uniform, 32).len() > 10_000 * 5 / 8);
    }

    #[test]
    fn canonical_codes_and_tables() {
        // RFC 1951 §3.2.2 example: lengths (3, 3, 3, 3, 3, 2, 4, 4).
        let code = HuffmanCode::from_lengths(vec![3, 3, 3, 3, 3, 2, 4, 4]).unwrap();
        let mut w = BitWriter::new();
        for s in 0..8 {
            code.write_symbol(&mut w, s).unwrap();
        }
        let bytes = w.finish();
        // F = 00, A = 010 ... H = 1111, written MSB first.
        let mut r = BitReader::new(&bytes);
        let expect = ["010", "011", "100", "101", "110", "00", "1110", "1111"];
        for e in expect {
            let got: String =
                (0..e.len()).map(|_| char::from(b'0' + r.read(1).unwrap() as u8)).collect();
            assert_eq!(got, e);
        }
        let mut r = BitReader::new(&bytes);
        for s in 0..8 {
            assert_eq!(code.read_symbol(&mut r).unwrap(), s);
        }
        assert_eq!(code.write_symbol(&mut BitWriter::new(), 8), Err(CodecError::NoCode(8)));
        // Tables round trip, including long zero runs.
        for lengths in
            [vec![], vec![0; 1000], vec![1, 0, 0, 1], vec![16; 65536], code.lengths().to_vec()]
        {
            let c = HuffmanCode::from_lengths(lengths.clone()).unwrap();
            let mut w = BitWriter::new();
            c.write_table(&mut w);
            assert_eq!(w.bit_len(), c.table_bit_len());
            let bytes = w.finish();
            let back = HuffmanCode::read_table(&mut BitReader::new(&bytes), lengths.len()).unwrap();
            assert_eq!(back, c);
        }
        // The table of a 32-symbol Gaussian-ranked code is small.
        let freqs: Vec<u64> = (0..32)
            .map(|i: i32| (1e6 * (-f64::from((i - 16) * (i - 16)) / 50.0).exp()) as u64 + 1)
            .collect();
        let c = HuffmanCode::from_frequencies(&freqs).unwrap();
        assert!(c.table_bit_len() <= 32 * 3, "{}", c.table_bit_len());
    }

    #[test]
    fn invalid_codes_and_streams_are_errors() {
        assert_eq!(HuffmanCode::from_lengths(vec![1, 1, 1]), Err(CodecError::Oversubscribed));
        assert_eq!(HuffmanCode::from_lengths(vec![17]), Err(CodecError::BadCodeLength(17)));
        assert!(HuffmanCode::from_lengths(vec![0; MAX_SYMBOLS + 1]).is_err());
        // Incomplete code: the unused pattern is an error, not a symbol.
        let c = HuffmanCode::from_lengths(vec![1, 0]).unwrap();
        assert_eq!(c.read_symbol(&mut BitReader::new(&[1])), Err(CodecError::InvalidCode));
        assert_eq!(c.read_symbol(&mut BitReader::new(&[0])), Ok(0));
        let empty = HuffmanCode::from_lengths(vec![0; 3]).unwrap();
        assert_eq!(empty.read_symbol(&mut BitReader::new(&[0; 4])), Err(CodecError::InvalidCode));
        // Short stream, nonzero padding, zero run past the end, bad alphabet.
        let ok = encode_stream(&[0, 1, 1, 2, 2, 2], 3).unwrap();
        assert!(decode_stream(&ok[..ok.len() - 1], 3, 6).is_err());
        assert!(decode_stream(&ok, 3, 6 + 8).is_err());
        let mut bad_pad = ok.clone();
        *bad_pad.last_mut().unwrap() |= 0x80;
        assert!(decode_stream(&bad_pad, 3, 6).is_err());
        let mut w = BitWriter::new();
        write_gamma(&mut w, 2);
        write_gamma(&mut w, 5);
        assert!(matches!(decode_stream(&w.finish(), 4, 0), Err(CodecError::BadTable(_))));
        assert!(matches!(
            decode_stream(&[], MAX_SYMBOLS + 1, 0),
            Err(CodecError::AlphabetTooLarge(_))
        ));
        assert!(matches!(decode_stream(&[0xFF; 8], 4, 1), Err(CodecError::BadTable(_))));
    }

    #[test]
    fn random_and_mutated_streams_never_panic() {
        let mut g = Lcg(77);
        let valid =
            encode_stream(&(0..400).map(|i| (i * i % 37) as u32).collect::<Vec<_>>(), 37).unwrap();
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                (0..g.below(40)).map(|_| g.next() as u8).collect()
            } else {
                let mut b = valid.clone();
                for _ in 0..1 + g.below(3) {
                    let at = g.below(b.len() as u64) as usize;
                    b[at] ^= 1 << g.below(8);
                }
                b
            };
            let alphabet = if i % 2 == 0 { g.below(70_000) as usize } else { 37 };
            let count = g.below(500);
            if let Ok((s, used)) = decode_stream(&bytes, alphabet, count) {
                assert!(used <= bytes.len());
                assert_eq!(s.len() as u64, count);
                assert!(s.iter().all(|&x| (x as usize) < alphabet));
            }
        }
    }
}
