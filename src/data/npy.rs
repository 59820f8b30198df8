//! NumPy `.npy` arrays and `.npz` archives of them, as user data sets.
//!
//! A data set is inputs `[N, ...]` (f32, f64 or u8; u8 is divided by 255 like the IDX
//! pixels, floats are taken as they are) and integer labels `[N]` (any integer dtype,
//! each in 0..=255). It comes either as one `.npz` holding arrays `x` and `y` (as
//! `numpy.savez(path, x=inputs, y=labels)` writes them), or as two `.npy` files.
//! Only C-order (`fortran_order: False`) arrays are read; big- and little-endian both.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use super::{DataError, Dataset};

/// Where one split's arrays are.
#[derive(Clone, Debug, PartialEq)]
pub enum ArraySource {
    /// A `.npz` with arrays `x` (inputs) and `y` (labels).
    Npz(PathBuf),
    /// Inputs and labels as two `.npy` files.
    Npy { inputs: PathBuf, labels: PathBuf },
}

impl ArraySource {
    /// `data.npz`, or `inputs.npy,labels.npy`.
    pub fn parse(spec: &str) -> ArraySource {
        match spec.split_once(',') {
            Some((i, l)) => ArraySource::Npy { inputs: i.trim().into(), labels: l.trim().into() },
            None => ArraySource::Npz(spec.into()),
        }
    }

    /// The file names, for a report: `val.npz`, or `x.npy,y.npy`.
    pub fn display(&self) -> String {
        let name = |p: &Path| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
        match self {
            ArraySource::Npz(p) => name(p),
            ArraySource::Npy { inputs, labels } => format!("{},{}", name(inputs), name(labels)),
        }
    }

    /// The same source with relative paths taken from `dir`.
    pub fn relative_to(&self, dir: &Path) -> ArraySource {
        match self {
            ArraySource::Npz(p) => ArraySource::Npz(dir.join(p)),
            ArraySource::Npy { inputs, labels } => ArraySource::Npy { inputs: dir.join(inputs), labels: dir.join(labels) },
        }
    }
}

/// Element type of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Uint,
}

/// A parsed `.npy` array.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// The dtype as written, e.g. `<f4`.
    pub descr: String,
    pub shape: Vec<usize>,
    kind: Kind,
    size: usize,
    big_endian: bool,
    data: Vec<u8>,
}

impl Array {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn raw(&self, i: usize) -> [u8; 8] {
        let mut b = [0u8; 8];
        let s = &self.data[i * self.size..(i + 1) * self.size];
        if self.big_endian {
            s.iter().rev().zip(b.iter_mut()).for_each(|(x, y)| *y = *x);
        } else {
            b[..self.size].copy_from_slice(s);
        }
        b
    }

    fn float(&self, i: usize) -> f64 {
        let b = self.raw(i);
        match (self.kind, self.size) {
            (Kind::Float, 4) => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            (Kind::Float, 8) => f64::from_le_bytes(b),
            (_, _) => self.int(i) as f64,
        }
    }

    fn int(&self, i: usize) -> i128 {
        let b = self.raw(i);
        let u = u64::from_le_bytes(b);
        match self.kind {
            Kind::Uint => i128::from(u),
            _ => {
                let shift = 64 - 8 * self.size as u32;
                i128::from(((u << shift) as i64) >> shift)
            }
        }
    }
}

fn npy_err(path: &Path, why: impl Into<String>) -> DataError {
    DataError::Npy { path: path.to_path_buf(), why: why.into() }
}

/// Parses the bytes of one `.npy` file (`path` names it in errors).
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<Array, DataError> {
    let err = |why: String| npy_err(path, why);
    if !bytes.starts_with(b"\x93NUMPY") || bytes.len() < 10 {
        return Err(err("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(err(format!("unsupported .npy version {v}"))),
    };
    let header = bytes.get(start..start + header_len).ok_or_else(|| err("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| err("header is not text".into()))?;
    let field = |name: &str| -> Result<&str, DataError> {
        let key = format!("'{name}':");
        let at = header.find(&key).ok_or_else(|| err(format!("header has no '{name}'")))?;
        Ok(header[at + key.len()..].trim_start())
    };
    let descr_rest = field("descr")?;
    let descr = descr_rest.strip_prefix('\'').and_then(|r| r.split('\'').next()).ok_or_else(|| err("descr is not a string".into()))?.to_string();
    if field("fortran_order")?.starts_with("True") {
        return Err(err("Fortran-order arrays are not supported; save with numpy.ascontiguousarray(a)".into()));
    }
    let shape_rest = field("shape")?;
    let shape_text = shape_rest.strip_prefix('(').and_then(|r| r.split(')').next()).ok_or_else(|| err("shape is not a tuple".into()))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| err(format!("bad shape entry '{s}'"))))
        .collect::<Result<Vec<_>, _>>()?;
    let b = descr.as_bytes();
    if b.len() < 3 {
        return Err(err(format!("unsupported dtype '{descr}'")));
    }
    let big_endian = b[0] == b'>';
    let kind = match b[1] {
        b'f' => Kind::Float,
        b'i' => Kind::Int,
        b'u' => Kind::Uint,
        b'b' => Kind::Uint, // bool, one byte
        _ => return Err(err(format!("unsupported dtype '{descr}' (expected float, signed or unsigned integers)"))),
    };
    let size: usize = descr[2..].parse().map_err(|_| err(format!("unsupported dtype '{descr}'")))?;
    if !matches!((kind, size), (Kind::Float, 4 | 8) | (Kind::Int | Kind::Uint, 1 | 2 | 4 | 8)) {
        return Err(err(format!("unsupported dtype '{descr}'")));
    }
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| err("shape overflows".into()))?;
    let data = &bytes[start + header_len..];
    let need = numel.checked_mul(size).ok_or_else(|| err("shape overflows".into()))?;
    if data.len() != need {
        return Err(err(format!("holds {} data bytes, shape {shape:?} of {descr} needs {need} (truncated or not a plain array)", data.len())));
    }
    Ok(Array { descr, shape, kind, size, big_endian, data: data.to_vec() })
}

/// Reads one `.npy` file.
pub fn read_npy(path: &Path) -> Result<Array, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    parse_npy(&bytes, path)
}

/// Reads arrays `names` from a `.npz` (stored or deflated).
pub fn read_npz(path: &Path, names: &[&str]) -> Result<Vec<Array>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    parse_npz(&bytes, path, names)
}

/// Parses arrays `names` from the bytes of a `.npz` (`path` names it in errors). An
/// array may inflate to at most 1 GiB or 64 times the archive, whichever is larger
/// (numpy.savez stores arrays uncompressed; savez_compressed rarely gains 64×), so a
/// small hostile archive cannot claim gigabytes.
pub fn parse_npz(bytes: &[u8], path: &Path, names: &[&str]) -> Result<Vec<Array>, DataError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| npy_err(path, format!("not a .npz (zip) archive: {e}")))?;
    let present: Vec<String> = zip.file_names().filter_map(Result::ok).map(|n| n.trim_end_matches(".npy").to_string()).collect();
    let limit = (bytes.len() as u64).saturating_mul(64).max(1 << 30);
    names
        .iter()
        .map(|name| {
            let f = zip.by_name(&format!("{name}.npy")).map_err(|_| {
                npy_err(path, format!("has no array '{name}' (it holds: {}); save with numpy.savez(path, x=inputs, y=labels)", present.join(", ")))
            })?;
            let mut buf = Vec::new();
            f.take(limit + 1).read_to_end(&mut buf).map_err(|e| npy_err(path, format!("array '{name}': {e}")))?;
            if buf.len() as u64 > limit {
                return Err(npy_err(path, format!("array '{name}' inflates to more than {limit} bytes")));
            }
            parse_npy(&buf, &path.join(format!("{name}.npy")))
        })
        .collect()
}

/// A labelled data set from `source` (classes counted later by the caller).
pub fn load(source: &ArraySource) -> Result<Dataset, DataError> {
    let (x, xp, y, yp) = match source {
        ArraySource::Npz(p) => {
            let mut a = read_npz(p, &["x", "y"])?;
            let y = a.pop().expect("two arrays");
            let x = a.pop().expect("two arrays");
            (x, p.join("x.npy"), y, p.join("y.npy"))
        }
        ArraySource::Npy { inputs, labels } => (read_npy(inputs)?, inputs.clone(), read_npy(labels)?, labels.clone()),
    };
    if x.shape.len() < 2 {
        return Err(npy_err(&xp, format!("inputs have shape {:?}, expected [N, ...] with at least one dimension per sample", x.shape)));
    }
    if y.shape.len() != 1 {
        return Err(npy_err(&yp, format!("labels have shape {:?}, expected [N]", y.shape)));
    }
    if y.kind == Kind::Float {
        return Err(npy_err(&yp, format!("labels have dtype {}, expected integers (class indices)", y.descr)));
    }
    if x.shape[0] != y.shape[0] {
        return Err(npy_err(&yp, format!("holds {} labels for {} inputs in '{}'", y.shape[0], x.shape[0], xp.display())));
    }
    let mut labels = Vec::with_capacity(y.len());
    for i in 0..y.len() {
        let l = y.int(i);
        let l = u8::try_from(l).map_err(|_| npy_err(&yp, format!("label {l} at index {i} is not a class index in 0..=255")))?;
        labels.push(l);
    }
    let images: Vec<f32> = match (x.kind, x.size) {
        (Kind::Uint, 1) => x.data.iter().map(|&b| f32::from(b) / 255.0).collect(),
        (Kind::Float, _) => (0..x.len()).map(|i| x.float(i) as f32).collect(),
        _ => return Err(npy_err(&xp, format!("inputs have dtype {}, expected float32, float64 or uint8", x.descr))),
    };
    if let Some(i) = images.iter().position(|v| !v.is_finite()) {
        return Err(npy_err(&xp, format!("input value at flat index {i} is not finite")));
    }
    let num_classes = labels.iter().map(|&l| usize::from(l) + 1).max().unwrap_or(1);
    Ok(Dataset { images, labels, sample_shape: x.shape[1..].to_vec(), num_classes })
}

/// Writes a `.npy` (version 1, C order) for tests and tools; `descr` e.g. `<f4`.
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Truncated and mutated .npy bytes are errors or arrays, never a panic.
    #[test]
    fn corrupted_npy_never_panics() {
        let data: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        for (descr, shape) in [("<f4", vec![3usize, 4]), ("<f4", vec![12]), ("|u1", vec![48])] {
            let bytes = npy_bytes(descr, &shape, &data);
            let accepted = crate::testing::fuzz_reader(&bytes, 3, 3000, |b| parse_npy(b, Path::new("fuzz.npy")));
            assert!(accepted > 0);
        }
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    fn npz(path: &Path, entries: &[(&str, Vec<u8>)], deflate: bool) {
        let f = std::fs::File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        for (name, bytes) in entries {
            z.start_file(format!("{name}.npy"), zip::write::SimpleFileOptions::default().compression_method(method)).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }

    #[test]
    fn reads_npz_and_npy_pairs_of_each_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let xs: Vec<u8> = [0.5f32, 1.0, -2.0, 3.25, 0.0, 1.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ys: Vec<u8> = [2i64, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = dir.path().join("d.npz");
        npz(&p, &[("x", npy_bytes("<f4", &[3, 2], &xs)), ("y", npy_bytes("<i8", &[3], &ys))], true);
        let d = load(&ArraySource::parse(p.to_str().unwrap())).unwrap();
        assert_eq!(d.images, vec![0.5, 1.0, -2.0, 3.25, 0.0, 1.5]);
        assert_eq!((d.labels.clone(), d.sample_shape.clone(), d.num_classes), (vec![2, 0, 1], vec![2], 3));

        // u8 pixels are scaled like IDX; big-endian f64 and u1 labels read too.
        let (xi, yi) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
        write(&xi, &npy_bytes("|u1", &[2, 1, 2], &[0, 255, 51, 102]));
        write(&yi, &npy_bytes("|u1", &[2], &[1, 1]));
        let d = load(&ArraySource::parse(&format!("{}, {}", xi.display(), yi.display()))).unwrap();
        assert_eq!((d.images.clone(), d.sample_shape.clone()), (vec![0.0, 1.0, 0.2, 0.4], vec![1, 2]));
        let be: Vec<u8> = [1.5f64, -0.25].iter().flat_map(|v| v.to_be_bytes()).collect();
        write(&xi, &npy_bytes(">f8", &[2, 1], &be));
        let d = load(&ArraySource::Npy { inputs: xi.clone(), labels: yi.clone() }).unwrap();
        assert_eq!(d.images, vec![1.5, -0.25]);
        let stored = dir.path().join("s.npz");
        npz(&stored, &[("x", npy_bytes("|u1", &[1, 1], &[255])), ("y", npy_bytes("<i4", &[1], &7i32.to_le_bytes()))], false);
        assert_eq!(load(&ArraySource::Npz(stored)).unwrap().num_classes, 8);
    }

    #[test]
    fn wrong_dtype_shape_and_counts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (xi, yi) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
        let src = ArraySource::Npy { inputs: xi.clone(), labels: yi.clone() };
        let err = |x: Vec<u8>, y: Vec<u8>| {
            write(&xi, &x);
            write(&yi, &y);
            load(&src).unwrap_err().to_string()
        };
        let ok_y = npy_bytes("|u1", &[2], &[0, 1]);
        let ok_x = npy_bytes("|u1", &[2, 2], &[0; 4]);
        assert!(err(npy_bytes("|u1", &[4], &[0; 4]), ok_y.clone()).contains("expected [N, ...]"));
        assert!(err(ok_x.clone(), npy_bytes("|u1", &[3], &[0; 3])).contains("holds 3 labels for 2 inputs"));
        assert!(err(ok_x.clone(), npy_bytes("<f4", &[2], &[0; 8])).contains("expected integers"));
        assert!(err(ok_x.clone(), npy_bytes("<i2", &[2], &[0, 1, 0, 1])).contains("label 256 at index 0"));
        assert!(err(npy_bytes("<i4", &[2, 1], &[0; 8]), ok_y.clone()).contains("expected float32, float64 or uint8"));
        assert!(err(npy_bytes("<c8", &[2, 1], &[0; 16]), ok_y.clone()).contains("unsupported dtype '<c8'"));
        assert!(err(npy_bytes("<f4", &[2, 2], &[0; 15]), ok_y.clone()).contains("truncated"));
        assert!(err(b"not numpy".to_vec(), ok_y.clone()).contains("no \\x93NUMPY magic"));
        let mut fortran = npy_bytes("<f4", &[2, 1], &[0; 8]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(err(fortran, ok_y.clone()).contains("Fortran-order"));
        let nan: Vec<u8> = [f32::NAN, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(err(npy_bytes("<f4", &[2, 1], &nan), ok_y.clone()).contains("not finite"));

        let p = dir.path().join("d.npz");
        npz(&p, &[("inputs", ok_x.clone())], true);
        let e = load(&ArraySource::Npz(p.clone())).unwrap_err().to_string();
        assert!(e.contains("has no array 'x' (it holds: inputs)"), "{e}");
        write(&p, b"PK\x03\x04 broken");
        assert!(load(&ArraySource::Npz(p)).unwrap_err().to_string().contains("not a .npz"));
        let e = load(&ArraySource::Npz(dir.path().join("missing.npz"))).unwrap_err().to_string();
        assert!(e.contains("missing.npz"), "{e}");
    }
}
