//! The IDX file format (as used by MNIST and Fashion-MNIST), raw or gzipped.
//!
//! An IDX file is a big-endian header followed by the data:
//! `0x00 0x00 <type> <ndims>`, then `ndims` × `u32` dimensions, then exactly
//! `∏ dims` elements. Only unsigned bytes (type `0x08`) are supported, which is what
//! the MNIST family uses: magic `0x00000801` for labels `[n]`, `0x00000803` for
//! images `[n, rows, cols]`. A file whose first two bytes are `0x1f 0x8b` is read
//! through gzip.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use super::DataError;

/// Magic number of an IDX labels file: unsigned bytes, one dimension.
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Magic number of an IDX images file: unsigned bytes, three dimensions.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// The most payload bytes a gzipped IDX file may claim (512 MiB); larger claims are
/// rejected before anything is allocated.
pub const MAX_GZ_PAYLOAD: u64 = 512 << 20;

/// A parsed IDX file of unsigned bytes: its dimensions and its payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Idx {
    /// The dimensions from the header, e.g. `[60000, 28, 28]`.
    pub dims: Vec<usize>,
    /// Exactly `dims.iter().product()` bytes, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes with `ndims` dimensions (raw or gzipped).
///
/// Checks the magic number (`0x0800 | ndims`), that the payload length is exactly the
/// product of the dimensions (short or trailing bytes are errors), and never allocates
/// more than the file can hold: for raw files the claim is compared with the file
/// size, for gzipped files it is capped at [`MAX_GZ_PAYLOAD`].
pub fn read_idx(path: &Path, ndims: u8) -> Result<Idx, DataError> {
    let io_err = |source| DataError::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut sig = [0u8; 2];
    let gz = match file.read_exact(&mut sig) {
        Ok(()) => sig == [0x1f, 0x8b],
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(io_err(e)),
    };
    file.rewind().map_err(io_err)?;
    let file = BufReader::with_capacity(1 << 16, file);
    if gz {
        parse(path, ndims, MultiGzDecoder::new(file), Limit::Gzip)
    } else {
        parse(path, ndims, file, Limit::FileLen(file_len))
    }
}

/// What bounds the payload a header may claim before anything is allocated.
enum Limit {
    /// A raw file of this many bytes, header included.
    FileLen(u64),
    /// A gzip stream: at most [`MAX_GZ_PAYLOAD`].
    Gzip,
}

/// Parses header and payload from `r`, rejecting claims beyond `limit`.
fn parse(path: &Path, ndims: u8, mut r: impl Read, limit: Limit) -> Result<Idx, DataError> {
    let io_err = |source| DataError::Io { path: path.to_path_buf(), source };
    let expected_magic = 0x0800 | u32::from(ndims);
    let header_len = 4 + 4 * u64::from(ndims);
    let truncated = |got: u64| DataError::Truncated { path: path.to_path_buf(), expected: header_len, got };

    let mut head = Vec::with_capacity(header_len as usize);
    (&mut r).take(header_len).read_to_end(&mut head).map_err(io_err)?;
    if head.len() < 4 {
        return Err(truncated(head.len() as u64));
    }
    let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let found = word(0);
    if found != expected_magic {
        return Err(DataError::BadMagic { path: path.to_path_buf(), found, expected: expected_magic });
    }
    if (head.len() as u64) < header_len {
        return Err(truncated(head.len() as u64));
    }
    let dims: Vec<usize> = (0..usize::from(ndims)).map(|d| word(4 + 4 * d) as usize).collect();
    let claimed = dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d as u64));
    match limit {
        Limit::FileLen(len) if claimed > len.saturating_sub(header_len) => {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                expected: header_len.saturating_add(claimed),
                got: len,
            });
        }
        Limit::Gzip if claimed > MAX_GZ_PAYLOAD => {
            return Err(DataError::TooLarge { path: path.to_path_buf(), claimed, limit: MAX_GZ_PAYLOAD });
        }
        _ => {}
    }
    // A gzip header's claim is not the data: reserve at most 64 MiB up front, grow as
    // bytes really arrive.
    let mut data = Vec::with_capacity(claimed.min(64 << 20) as usize);
    (&mut r).take(claimed).read_to_end(&mut data).map_err(io_err)?;
    if (data.len() as u64) < claimed {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len + claimed,
            got: header_len + data.len() as u64,
        });
    }
    let extra = io::copy(&mut r.take(MAX_GZ_PAYLOAD), &mut io::sink()).map_err(io_err)?;
    if extra > 0 {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            expected: header_len + claimed,
            got: header_len + claimed + extra,
        });
    }
    Ok(Idx { dims, data })
}

/// Writes `parts` one after another to `path`, through gzip when `gzip` is set.
fn write_file(path: &Path, gzip: bool, parts: &[&[u8]]) -> io::Result<()> {
    let file = io::BufWriter::new(File::create(path)?);
    if gzip {
        let mut enc = GzEncoder::new(file, Compression::fast());
        parts.iter().try_for_each(|p| enc.write_all(p))?;
        enc.finish()?.flush()
    } else {
        let mut file = file;
        parts.iter().try_for_each(|p| file.write_all(p))?;
        file.flush()
    }
}

/// Writes an IDX images file (`0x00000803`, `[n, rows, cols]`), gzipped if `gzip`.
///
/// Meant for tests and fixtures: integration tests build tiny fake datasets with it.
/// `images` must hold exactly `n × rows × cols` bytes (else `InvalidInput`).
pub fn write_idx_images(path: &Path, images: &[u8], n: usize, rows: usize, cols: usize, gzip: bool) -> io::Result<()> {
    let dims = [n, rows, cols];
    let dims_u32: Vec<u32> = dims
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "IDX dimensions must fit in u32"))?;
    if dims.iter().product::<usize>() != images.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} image bytes do not match {n} × {rows} × {cols}", images.len()),
        ));
    }
    let mut header = IMAGES_MAGIC.to_be_bytes().to_vec();
    dims_u32.iter().for_each(|d| header.extend_from_slice(&d.to_be_bytes()));
    write_file(path, gzip, &[&header, images])
}

/// Writes an IDX labels file (`0x00000801`, `[n]`), gzipped if `gzip`.
///
/// Meant for tests and fixtures, like [`write_idx_images`].
pub fn write_idx_labels(path: &Path, labels: &[u8], gzip: bool) -> io::Result<()> {
    let n = u32::try_from(labels.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many labels for IDX"))?;
    let mut header = LABELS_MAGIC.to_be_bytes().to_vec();
    header.extend_from_slice(&n.to_be_bytes());
    write_file(path, gzip, &[&header, labels])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_raw_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 10).collect();
        for gzip in [false, true] {
            let p = dir.path().join(format!("img{gzip}"));
            write_idx_images(&p, &pixels, 2, 3, 4, gzip).unwrap();
            let idx = read_idx(&p, 3).unwrap();
            assert_eq!(idx, Idx { dims: vec![2, 3, 4], data: pixels.clone() });
            let l = dir.path().join(format!("lab{gzip}"));
            write_idx_labels(&l, &[3, 1, 4], gzip).unwrap();
            assert_eq!(read_idx(&l, 1).unwrap(), Idx { dims: vec![3], data: vec![3, 1, 4] });
        }
    }

    #[test]
    fn bad_magic_truncated_and_trailing() {
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path().join("labels");
        write_idx_labels(&l, &[1, 2, 3], false).unwrap();
        // Labels read as images: wrong magic.
        let err = read_idx(&l, 3).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { found: LABELS_MAGIC, .. }), "{err}");
        assert!(err.to_string().contains("0x00000801"), "{err}");

        let bytes = std::fs::read(&l).unwrap();
        std::fs::write(&l, &bytes[..bytes.len() - 1]).unwrap();
        let err = read_idx(&l, 1).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 11, got: 10, .. }), "{err}");
        std::fs::write(&l, &bytes[..6]).unwrap();
        assert!(matches!(read_idx(&l, 1).unwrap_err(), DataError::Truncated { expected: 8, got: 6, .. }));
        std::fs::write(&l, []).unwrap();
        assert!(matches!(read_idx(&l, 1).unwrap_err(), DataError::Truncated { .. }));

        let mut long = bytes.clone();
        long.push(0);
        std::fs::write(&l, &long).unwrap();
        let err = read_idx(&l, 1).unwrap_err();
        assert!(matches!(err, DataError::TrailingBytes { expected: 11, got: 12, .. }), "{err}");
    }

    #[test]
    fn gz_truncated_and_huge_claims() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img.gz");
        // A gzipped header claiming 2^32-1 × 2^32-1 × 1 bytes: rejected before allocating.
        let mut header = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [u32::MAX, u32::MAX, 1] {
            header.extend_from_slice(&d.to_be_bytes());
        }
        write_file(&p, true, &[&header]).unwrap();
        assert!(matches!(read_idx(&p, 3).unwrap_err(), DataError::TooLarge { .. }));
        // A sane claim with a short gzipped payload.
        write_idx_images(&p, &[7; 12], 3, 2, 2, true).unwrap();
        let good = std::fs::read(&p).unwrap();
        let mut dec = Vec::new();
        MultiGzDecoder::new(&good[..]).read_to_end(&mut dec).unwrap();
        write_file(&p, true, &[&dec[..dec.len() - 5]]).unwrap();
        assert!(matches!(read_idx(&p, 3).unwrap_err(), DataError::Truncated { .. }));
        // Corrupt gzip stream: an I/O error naming the file, no panic.
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid..].iter_mut().for_each(|b| *b ^= 0x5a);
        std::fs::write(&p, &bad).unwrap();
        let err = read_idx(&p, 3).unwrap_err();
        assert!(err.to_string().contains("img.gz"), "{err}");
    }
}
