//! PyTorch state dicts: `.pth`/`.pt` files in the zip format that `torch.save` writes
//! by default since PyTorch 1.6, and `.safetensors` files of any origin.
//!
//! A `torch.save` zip holds one directory (named after the file, often `archive`) with
//! `data.pkl` (the pickled object), `data/<key>` (the raw little-endian bytes of each
//! storage), `version`, and in newer releases `byteorder`. Tensors in the pickle are
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls over
//! storages named by persistent ids `('storage', torch.FloatStorage, key, 'cpu', numel)`.
//! The pickle is read by [`super::pickle`], which executes nothing. Views (storage
//! offsets, any strides, shared storages) are gathered into dense row-major tensors.
//! Every floating or integer dtype is converted to f32.
//!
//! The legacy format (before 1.6, or `_use_new_zipfile_serialization=False`) is read
//! too: see [`read_legacy`].
//!
//! The state dict is the pickled dict itself when its values are tensors, or a dict of
//! tensors found under `state_dict`, `model_state_dict` or `model` in a training
//! checkpoint.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};


use super::pickle::{self, PickleError, TensorRef, Value};

/// One tensor of a state dict, dense row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    /// The dtype it was stored in (e.g. `float16`).
    pub dtype: &'static str,
}

/// Named tensors, sorted by name.
pub type StateDict = BTreeMap<String, Tensor>;

/// Why a state dict cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PytorchError {
    #[error("not a PyTorch zip archive: {0}")]
    Zip(String),
    #[error("the archive has no data.pkl; it is not a file written by torch.save")]
    NoPickle,
    #[error("PyTorch legacy (pre-1.6) format: {0}; load it in PyTorch and save it again with torch.save (the zip format is the default) or as safetensors")]
    Legacy(String),
    #[error(transparent)]
    Pickle(#[from] PickleError),
    #[error("the archive's byteorder is '{0}', expected 'little' or 'big'")]
    ByteOrder(String),
    #[error("tensor '{name}': {why}")]
    Tensor { name: String, why: String },
    #[error("no state dict found: {0}")]
    NoStateDict(String),
    #[error("not a valid safetensors file: {0}")]
    Safetensors(String),
    #[error("not a PyTorch state dict: expected a .pth/.pt zip written by torch.save or a .safetensors file{0}")]
    Unknown(String),
}

/// Reads a state dict from the bytes of a `.pth`/`.pt` zip or a `.safetensors` file
/// (sniffed from the content).
pub fn read_state_dict(bytes: &[u8]) -> Result<StateDict, PytorchError> {
    if bytes.starts_with(b"PK\x03\x04") {
        return read_torch_zip(bytes);
    }
    if super::safetensors::is_safetensors(bytes) {
        return read_safetensors(bytes);
    }
    // Legacy torch.save: a pickled magic number first (protocol 2, LONG1 of 10 bytes).
    if bytes.starts_with(LEGACY_MAGIC) {
        return read_legacy(bytes);
    }
    Err(PytorchError::Unknown(if bytes.is_empty() { " (the file is empty)".into() } else { String::new() }))
}

/// The legacy format's first pickle: protocol 2, LONG1 of the 10-byte magic number
/// 0x1950a86a20f9469cfc6c, STOP.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

/// Every tensor view anywhere in `v`.
fn tensor_refs<'a>(v: &'a Value, out: &mut Vec<&'a TensorRef>) {
    match v {
        Value::Tensor(t) => out.push(t),
        Value::Tuple(items) | Value::List(items) => items.iter().for_each(|x| tensor_refs(x, out)),
        Value::Dict(items) => items.iter().for_each(|(k, x)| {
            tensor_refs(k, out);
            tensor_refs(x, out)
        }),
        _ => {}
    }
}

/// Reads PyTorch's legacy (pre-1.6, `_use_new_zipfile_serialization=False`) format:
/// pickles of the magic number, the protocol version (1001) and system info, then the
/// object, then the list of storage keys, then each storage as an 8-byte element
/// count and its raw little-endian bytes.
pub fn read_legacy(bytes: &[u8]) -> Result<StateDict, PytorchError> {
    let legacy = |why: String| PytorchError::Legacy(why);
    if !bytes.starts_with(LEGACY_MAGIC) {
        return Err(legacy("it does not start with the legacy magic number".into()));
    }
    let mut pos = LEGACY_MAGIC.len();
    let next = |pos: &mut usize| -> Result<Value, PytorchError> {
        let rest = bytes.get(*pos..).ok_or_else(|| legacy("truncated".into()))?;
        let (v, used) = pickle::load_prefix(rest)?;
        *pos += used;
        Ok(v)
    };
    match next(&mut pos)? {
        Value::Int(1001) => {}
        other => return Err(legacy(format!("protocol version {}, expected 1001", other.short()))),
    }
    let sys_info = next(&mut pos)?;
    if let Value::Dict(items) = &sys_info
        && items.iter().any(|(k, v)| *k == Value::Str("little_endian".into()) && *v == Value::Bool(false))
    {
        return Err(legacy("written on a big-endian machine".into()));
    }
    let root = next(&mut pos)?;
    let keys = match next(&mut pos)? {
        Value::List(keys) => std::rc::Rc::unwrap_or_clone(keys),
        other => return Err(legacy(format!("storage key list is a {}", other.kind()))),
    };
    let mut refs = Vec::new();
    tensor_refs(&root, &mut refs);
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for key in keys {
        let key = match key {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            other => return Err(legacy(format!("storage key {} is not a string", other.short()))),
        };
        let dtype = refs.iter().find(|t| t.key == key).map(|t| t.dtype).ok_or_else(|| legacy(format!("storage '{key}' is used by no tensor")))?;
        let count = bytes.get(pos..pos + 8).ok_or_else(|| legacy("truncated before a storage".into()))?;
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        let len = usize::try_from(count).ok().and_then(|c| c.checked_mul(dtype.size())).ok_or_else(|| legacy("storage size overflows".into()))?;
        let end = (pos + 8).checked_add(len).ok_or_else(|| legacy("storage size overflows".into()))?;
        let data = bytes.get(pos + 8..end).ok_or_else(|| legacy(format!("storage '{key}' is truncated")))?;
        storages.insert(key, data.to_vec());
        pos += 8 + len;
    }
    let mut out = StateDict::new();
    let mut budget = view_budget(bytes.len());
    for (name, t) in state_dict_entries(root)? {
        let storage = storages.get(&t.key).ok_or_else(|| PytorchError::Tensor { name: name.clone(), why: format!("storage '{}' is missing", t.key) })?;
        let tensor = gather(&t, storage, &mut budget).map_err(|why| PytorchError::Tensor { name: name.clone(), why })?;
        out.insert(name, tensor);
    }
    Ok(out)
}

/// Reads every tensor of a safetensors file (F32, F16, BF16, F64 and integer dtypes)
/// with the one safetensors reader ([`super::safetensors::Header`]).
pub fn read_safetensors(bytes: &[u8]) -> Result<StateDict, PytorchError> {
    let header = super::safetensors::Header::of(bytes).map_err(|e| PytorchError::Safetensors(e.to_string()))?;
    let mut source = Cursor::new(bytes);
    let mut out = StateDict::new();
    for (name, entry) in header.entries.iter() {
        let dtype = entry.element().ok_or_else(|| PytorchError::Tensor { name: name.clone(), why: format!("dtype {} is not supported", entry.dtype) })?;
        let values = header.tensor_f32(&mut source, entry).map_err(|why| PytorchError::Tensor { name: name.clone(), why })?;
        out.insert(name.clone(), Tensor { shape: entry.shape.clone(), values, dtype: dtype.name() });
    }
    Ok(out)
}

/// The most bytes one archive entry may inflate to (4 GiB): a guard against zip bombs.
const MAX_ENTRY: u64 = 4 << 30;

/// The most bytes one entry may inflate to in an archive of `archive_len` bytes: 64
/// times the archive (torch.save stores entries uncompressed, so a real entry is never
/// larger than the archive), at least 64 MiB, at most [`MAX_ENTRY`].
fn entry_limit(archive_len: usize) -> u64 {
    (archive_len as u64).saturating_mul(64).clamp(64 << 20, MAX_ENTRY)
}

/// Reads one entry. Its claimed size is only a hint: the buffer is reserved for at most
/// the archive's real size and grows as bytes really arrive, up to [`entry_limit`].
fn read_entry(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str, archive_len: usize) -> Result<Option<Vec<u8>>, PytorchError> {
    let f = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(PytorchError::Zip(format!("{name}: {e}"))),
    };
    let limit = entry_limit(archive_len);
    if f.size() > limit {
        return Err(PytorchError::Zip(format!("{name}: entry claims {} bytes, more than an archive of {archive_len} bytes can hold (at most {limit})", f.size())));
    }
    let mut buf = Vec::with_capacity(f.size().min(archive_len as u64) as usize);
    f.take(limit + 1).read_to_end(&mut buf).map_err(|e| PytorchError::Zip(format!("{name}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(PytorchError::Zip(format!("{name}: entry inflates to more than {limit} bytes")));
    }
    Ok(Some(buf))
}

/// Reads a `torch.save` zip archive.
pub fn read_torch_zip(bytes: &[u8]) -> Result<StateDict, PytorchError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| PytorchError::Zip(e.to_string()))?;
    // The archive's one top directory, e.g. `archive/` or `<file stem>/`.
    let pkl = zip
        .file_names()
        .filter_map(Result::ok)
        .map(|n| n.into_owned())
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .min()
        .ok_or(PytorchError::NoPickle)?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let big_endian = match read_entry(&mut zip, &format!("{prefix}byteorder"), bytes.len())? {
        None => false,
        Some(b) if b == b"little" => false,
        Some(b) if b == b"big" => true,
        Some(b) => return Err(PytorchError::ByteOrder(String::from_utf8_lossy(&b).into())),
    };
    let pickled = read_entry(&mut zip, &pkl, bytes.len())?.ok_or(PytorchError::NoPickle)?;
    let root = pickle::load(&pickled)?;
    let entries = state_dict_entries(root)?;
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut out = StateDict::new();
    let mut budget = view_budget(bytes.len());
    for (name, t) in entries {
        if !storages.contains_key(&t.key) {
            let entry = format!("{prefix}data/{}", t.key);
            let mut data = read_entry(&mut zip, &entry, bytes.len())?
                .ok_or_else(|| PytorchError::Tensor { name: name.clone(), why: format!("its storage '{entry}' is missing from the archive") })?;
            if big_endian {
                data.chunks_exact_mut(t.dtype.size()).for_each(|c| c.reverse());
            }
            storages.insert(t.key.clone(), data);
        }
        let tensor = gather(&t, &storages[&t.key], &mut budget).map_err(|why| PytorchError::Tensor { name: name.clone(), why })?;
        out.insert(name, tensor);
    }
    Ok(out)
}

/// The (name, tensor) pairs of the state dict inside `root`.
fn state_dict_entries(root: Value) -> Result<Vec<(String, TensorRef)>, PytorchError> {
    let Value::Dict(items) = root else {
        return Err(PytorchError::NoStateDict("the file holds a single value, not a dict of tensors; save model.state_dict()".into()));
    };
    let all_tensors = !items.is_empty() && items.iter().all(|(_, v)| matches!(v, Value::Tensor(_)));
    let items = if all_tensors {
        std::rc::Rc::unwrap_or_clone(items)
    } else {
        const NESTED: [&str; 3] = ["state_dict", "model_state_dict", "model"];
        let keys: Vec<String> = items.iter().map(|(k, _)| match k {
            Value::Str(s) => s.clone(),
            other => other.short(),
        }).collect();
        let found = items.iter().find_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Dict(d)) if NESTED.contains(&k.as_str()) && d.iter().all(|(_, v)| matches!(v, Value::Tensor(_))) => Some(d.clone()),
            _ => None,
        });
        let found = found.ok_or_else(|| {
            PytorchError::NoStateDict(format!(
                "the top-level dict (keys: {}) is neither a dict of tensors nor holds one under 'state_dict', 'model_state_dict' or 'model'",
                keys.join(", ")
            ))
        })?;
        drop(items);
        std::rc::Rc::unwrap_or_clone(found)
    };
    items
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Ok((k, t)),
            (k, _) => Err(PytorchError::NoStateDict(format!("key {} is not a string naming a tensor", k.short()))),
        })
        .collect()
}

/// Elements all the views of one file may expand to besides one per byte of the file
/// (64 MiB as f32): a view may repeat its storage (stride 0), so the storage's size
/// does not bound it, but dense views of a real state dict hold fewer elements than
/// the file has bytes.
const VIEW_SLACK: usize = 1 << 24;

/// The element budget of the views of a file of `file_len` bytes (see [`VIEW_SLACK`]).
fn view_budget(file_len: usize) -> usize {
    file_len.saturating_add(VIEW_SLACK)
}

/// Copies the view `t` out of its storage bytes into a dense row-major tensor, taking
/// its elements from `budget` (see [`view_budget`]).
fn gather(t: &TensorRef, storage: &[u8], budget: &mut usize) -> Result<Tensor, String> {
    let size = t.dtype.size();
    let have = storage.len() / size;
    if have < t.storage_numel {
        return Err(format!("storage holds {have} elements, the pickle says {}", t.storage_numel));
    }
    let numel = crate::spec::checked_numel(&t.shape).ok_or("shape overflows")?;
    // A view may repeat its storage (stride 0), so the storage's size does not bound it.
    if numel > *budget {
        return Err(format!("view of {numel} elements (shape {:?}) is larger than the file can hold (views left: {budget} elements)", t.shape));
    }
    *budget -= numel;
    let mut values = Vec::with_capacity(numel);
    if numel > 0 {
        // The furthest element the view reaches must lie inside the storage.
        let last = t.shape.iter().zip(&t.stride).try_fold(t.offset, |a, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| x.checked_add(a)));
        match last {
            Some(l) if l < t.storage_numel => {}
            _ => {
                return Err(format!(
                    "view (offset {}, size {:?}, stride {:?}) reaches beyond its storage of {} elements",
                    t.offset, t.shape, t.stride, t.storage_numel
                ));
            }
        }
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            values.push(t.dtype.read_f32(storage, at));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    Ok(Tensor { shape: t.shape.clone(), values, dtype: t.dtype.name() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pickle::StorageType;

    /// Truncated and mutated state dicts (a torch.save zip, a legacy pickle stream,
    /// safetensors) are errors or readable dicts, never a panic.
    #[test]
    fn corrupted_state_dicts_never_panic() {
        let fixtures: [&[u8]; 3] = [
            include_bytes!("../../tests/fixtures/pytorch/tiny_mlp.pth"),
            include_bytes!("../../tests/fixtures/pytorch/tiny_mlp.safetensors"),
            include_bytes!("../../tests/fixtures/pytorch/tiny_mlp_float16.pth"),
        ];
        for (i, bytes) in fixtures.iter().enumerate() {
            crate::testing::fuzz_reader(bytes, 11 + i as u64, 3000, read_state_dict);
        }
        // The zip's CRCs stop most mutants before the pickle: fuzz the pickle itself, and
        // a legacy file (pickles and raw storages, no checksums) from its start.
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(fixtures[0])).unwrap();
        let mut pkl = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name("tiny_mlp/data.pkl").unwrap(), &mut pkl).unwrap();
        assert!(crate::testing::fuzz_reader(&pkl, 17, 5000, crate::format::pickle::load) > 0);
        let legacy = include_bytes!("../../tests/fixtures/pytorch/lpips-alex-v0.1.pth");
        crate::testing::fuzz_reader(&legacy[..legacy.len().min(4096)], 19, 3000, read_legacy);
        crate::testing::fuzz_reader(legacy, 23, 300, read_legacy);
    }

    fn fview(offset: usize, shape: Vec<usize>, stride: Vec<usize>) -> TensorRef {
        TensorRef { key: "0".into(), dtype: StorageType::F32, storage_numel: 12, offset, shape, stride }
    }

    #[test]
    fn gathers_offsets_and_strides() {
        let storage: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        // A transposed 3x4 matrix (stride [1, 3]) starting at 0.
        let t = gather(&fview(0, vec![4, 3], vec![1, 4]), &storage, &mut view_budget(48)).unwrap();
        assert_eq!(t.values, vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        let t = gather(&fview(5, vec![2, 2], vec![2, 1]), &storage, &mut view_budget(48)).unwrap();
        assert_eq!(t.values, vec![5., 6., 7., 8.]);
        assert!(gather(&fview(5, vec![3, 3], vec![3, 1]), &storage, &mut view_budget(48)).unwrap_err().contains("beyond"));
        let t = gather(&fview(0, vec![], vec![]), &storage, &mut view_budget(48)).unwrap();
        assert_eq!(t.values, vec![0.0]);
        // A stride-0 view may claim any size over a small storage: bounded, not allocated.
        assert!(gather(&fview(0, vec![1 << 20, 1 << 20], vec![0, 0]), &storage, &mut view_budget(48)).unwrap_err().contains("larger than"));
    }

    #[test]
    fn unknown_bytes_are_clear_errors() {
        assert!(matches!(read_state_dict(b""), Err(PytorchError::Unknown(_))));
        assert!(matches!(read_state_dict(LEGACY_MAGIC), Err(PytorchError::Pickle(PickleError::Truncated(_)))));
        assert!(matches!(read_state_dict(b"PK\x03\x04 truncated"), Err(PytorchError::Zip(_))));
    }
}
