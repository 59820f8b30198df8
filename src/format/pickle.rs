//! A restricted reader for the pickle streams inside PyTorch checkpoints.
//!
//! This is not a Python unpickler: it never calls anything. It understands the opcodes
//! that `torch.save` emits (protocol 2, plus the few protocol-4 ones that appear when a
//! caller raises the protocol) and builds plain values: `None`, booleans, integers,
//! floats, strings, bytes, tuples, lists and dicts. A `GLOBAL` is accepted only from a
//! short allowlist ([`ALLOWED_GLOBALS`] and the `torch.*Storage` types), and `REDUCE`
//! only turns those few names into values (an ordered dict, a tensor, a parameter).
//! Anything else, including any other callable, is an error naming the opcode or the
//! global, never executed.
//!
//! Memo entries share the stored value (containers are reference-counted, so a GET
//! costs one pointer, not a copy: a "billion laughs" stream of GET, TUPLE2, PUT rounds
//! stays as small as its bytes). A container changed after it was memoised is copied
//! on write, so a memo GET sees it as it was when stored; `torch.save` streams do not
//! do that (shared storages are immutable tuples).
//!
//! Hostile streams are bounded: containers nest at most [`MAX_DEPTH`] deep (values are
//! built, walked and dropped recursively), and a value may expand, counting every
//! shared reference again, to at most [`MAX_EXPANDED`] values plus 16 per byte of the
//! stream (what a caller walking the value visits).

use std::collections::HashMap;
use std::rc::Rc;

/// The deepest nesting of containers a stream may build (`torch.save` state dicts nest
/// fewer than 10; Python's own pickler stops near 1000).
pub const MAX_DEPTH: u32 = 256;

/// Values a stream may expand to besides 16 per byte of it (shared references counted
/// each time they are reached).
pub const MAX_EXPANDED: u64 = 1 << 22;

/// Callables a checkpoint may name besides the `torch.*Storage` types.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
];

/// Element types of the storages squeeze reads (all converted to f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageType {
    /// The type behind a `torch.<Name>Storage` global.
    pub fn from_torch_name(name: &str) -> Option<StorageType> {
        Some(match name {
            "FloatStorage" => StorageType::F32,
            "HalfStorage" => StorageType::F16,
            "BFloat16Storage" => StorageType::BF16,
            "DoubleStorage" => StorageType::F64,
            "LongStorage" => StorageType::I64,
            "IntStorage" => StorageType::I32,
            "ShortStorage" => StorageType::I16,
            "CharStorage" => StorageType::I8,
            "ByteStorage" => StorageType::U8,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F16 | StorageType::BF16 | StorageType::I16 => 2,
            StorageType::I8 | StorageType::U8 | StorageType::Bool => 1,
        }
    }

    /// The dtype's name as PyTorch prints it.
    pub fn name(self) -> &'static str {
        match self {
            StorageType::F32 => "float32",
            StorageType::F16 => "float16",
            StorageType::BF16 => "bfloat16",
            StorageType::F64 => "float64",
            StorageType::I64 => "int64",
            StorageType::I32 => "int32",
            StorageType::I16 => "int16",
            StorageType::I8 => "int8",
            StorageType::U8 => "uint8",
            StorageType::Bool => "bool",
        }
    }

    /// Element `i` of little-endian `bytes` as f32 (the caller checks the length).
    pub fn read_f32(self, bytes: &[u8], i: usize) -> f32 {
        let s = self.size();
        let b = &bytes[i * s..(i + 1) * s];
        match self {
            StorageType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            StorageType::F16 => crate::codec::f16::to_f32(u16::from_le_bytes([b[0], b[1]])),
            StorageType::BF16 => f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
            StorageType::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            StorageType::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            StorageType::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32,
            StorageType::I16 => f32::from(i16::from_le_bytes([b[0], b[1]])),
            StorageType::I8 => f32::from(b[0] as i8),
            StorageType::U8 => f32::from(b[0]),
            StorageType::Bool => f32::from(u8::from(b[0] != 0)),
        }
    }
}

/// A tensor as the pickle describes it: a view into a stored storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage's key: its data is the archive entry `data/<key>`.
    pub key: String,
    pub dtype: StorageType,
    /// Elements in the storage, as the pickle states it.
    pub storage_numel: usize,
    /// First element of the view, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A value built from the stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// Containers are shared (a memo GET is a reference, not a copy).
    Tuple(Rc<Vec<Value>>),
    List(Rc<Vec<Value>>),
    /// Keys and values in insertion order (dicts and ordered dicts).
    Dict(Rc<Vec<(Value, Value)>>),
    /// An allowlisted callable, waiting for `REDUCE`.
    Global(String, String),
    /// A `torch.*Storage` type, as named inside a persistent id.
    StorageClass(StorageType),
    /// A storage loaded by persistent id: `('storage', type, key, location, numel)`.
    Storage { dtype: StorageType, key: String, numel: usize },
    Tensor(TensorRef),
}

impl Value {
    /// A tuple of `items`.
    pub fn tuple(items: Vec<Value>) -> Value {
        Value::Tuple(Rc::new(items))
    }

    /// A list of `items`.
    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Rc::new(items))
    }

    /// A dict of `items`.
    pub fn dict(items: Vec<(Value, Value)>) -> Value {
        Value::Dict(Rc::new(items))
    }

    /// The value as a message shows it: its debug form, cut at 80 characters (a
    /// hostile value may expand to millions).
    pub fn short(&self) -> String {
        struct Limited(String);
        impl std::fmt::Write for Limited {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                for c in s.chars() {
                    if self.0.len() >= 80 {
                        self.0.push('…');
                        return Err(std::fmt::Error);
                    }
                    self.0.push(c);
                }
                Ok(())
            }
        }
        let mut out = Limited(String::new());
        let _ = std::fmt::write(&mut out, format_args!("{self:?}"));
        out.0
    }

    /// What kind of value it is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(..) => "callable",
            Value::StorageClass(_) => "storage type",
            Value::Storage { .. } => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Why a pickle stream was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error("pickle ends early at byte {0} (the file is truncated)")]
    Truncated(usize),
    #[error("pickle opcode 0x{op:02x} at byte {at} is not supported by squeeze's restricted reader (only plain containers and tensors are read)")]
    Opcode { op: u8, at: usize },
    #[error("pickle names {0}.{1}, which squeeze does not run: only tensors, dicts, lists and plain values are read; save model.state_dict() rather than the whole model")]
    Global(String, String),
    #[error("pickle is malformed at byte {at}: {why}")]
    Malformed { at: usize, why: String },
    #[error("pickle protocol {0} is not supported (torch.save writes 2)")]
    Protocol(u8),
    #[error("pickle nests containers more than {MAX_DEPTH} deep at byte {0}; a state dict nests a few levels, so the file is not one (or is hostile)")]
    TooDeep(usize),
    #[error("pickle expands to more than {limit} values at byte {at} (memo references repeated over and over); a state dict is far smaller, so the file is not one (or is hostile)")]
    TooLarge { at: usize, limit: u64 },
}

/// A value on the stack or in the memo, with its nesting depth and the number of
/// values it expands to (shared references counted each time).
#[derive(Clone)]
struct Item {
    v: Value,
    depth: u32,
    size: u64,
}

impl Item {
    fn leaf(v: Value) -> Item {
        Item { v, depth: 1, size: 1 }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(PickleError::Truncated(self.bytes.len()))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated(self.bytes.len()))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| PickleError::Malformed { at: self.pos, why: "GLOBAL name is not UTF-8".into() })?;
        self.pos += n + 1;
        Ok(s.to_string())
    }
}

/// Reads one pickled object from `bytes` (which must end right after its STOP).
pub fn load(bytes: &[u8]) -> Result<Value, PickleError> {
    let (v, used) = load_prefix(bytes)?;
    if used != bytes.len() {
        return Err(PickleError::Malformed { at: used, why: "bytes follow STOP".into() });
    }
    Ok(v)
}

/// Reads the pickled object at the start of `bytes`; returns it and the bytes it took
/// (PyTorch's legacy format writes several pickles and raw data one after another).
pub fn load_prefix(bytes: &[u8]) -> Result<(Value, usize), PickleError> {
    let mut r = Reader { bytes, pos: 0 };
    let mut stack: Vec<Item> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Item> = HashMap::new();
    let limit = MAX_EXPANDED.saturating_add(16u64.saturating_mul(bytes.len() as u64));
    loop {
        let at = r.pos;
        let op = r.u8()?;
        let bad = |why: &str| PickleError::Malformed { at, why: why.to_string() };
        // A container made of `items` (or grown by them): its depth and size, checked.
        let grown = |depth: u32, size: u64, items: &[&Item]| -> Result<(u32, u64), PickleError> {
            let d = items.iter().map(|i| i.depth + 1).fold(depth, u32::max);
            let n = items.iter().fold(size, |n, i| n.saturating_add(i.size));
            if d > MAX_DEPTH {
                return Err(PickleError::TooDeep(at));
            }
            if n > limit {
                return Err(PickleError::TooLarge { at, limit });
            }
            Ok((d, n))
        };
        macro_rules! pop {
            () => {
                stack.pop().ok_or_else(|| bad("stack is empty"))?
            };
        }
        macro_rules! pop_mark {
            () => {{
                let m = marks.pop().ok_or_else(|| bad("no MARK"))?;
                if m > stack.len() {
                    return Err(bad("MARK beyond the stack"));
                }
                stack.split_off(m)
            }};
        }
        macro_rules! push {
            ($v:expr) => {
                stack.push(Item::leaf($v))
            };
        }
        match op {
            0x80 => {
                let p = r.u8()?;
                if p > 5 {
                    return Err(PickleError::Protocol(p));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: a length hint only
            }
            b'.' => {
                let v = pop!();
                return Ok((v.v, r.pos));
            }
            b'(' => marks.push(stack.len()),
            b'}' => push!(Value::dict(Vec::new())),
            b']' => push!(Value::list(Vec::new())),
            b')' => push!(Value::tuple(Vec::new())),
            b'N' => push!(Value::None),
            0x88 => push!(Value::Bool(true)),
            0x89 => push!(Value::Bool(false)),
            b'J' => push!(Value::Int(i64::from(r.u32()? as i32))),
            b'K' => push!(Value::Int(i64::from(r.u8()?))),
            b'M' => push!(Value::Int(i64::from(r.u16()?))),
            0x8a => {
                let n = usize::from(r.u8()?);
                if n > 8 {
                    return Err(bad("LONG1 wider than 64 bits"));
                }
                let b = r.take(n)?;
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= i64::from(x) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n); // two's complement of n bytes
                }
                push!(Value::Int(v));
            }
            b'G' => push!(Value::Float(f64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes")))),
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.u32()? as usize,
                    0x8c => usize::from(r.u8()?),
                    _ => usize::try_from(r.u64()?).map_err(|_| bad("string too long"))?,
                };
                let s = std::str::from_utf8(r.take(n)?).map_err(|_| bad("string is not UTF-8"))?;
                push!(Value::Str(s.to_string()));
            }
            // Python 2 byte strings (checkpoints saved under Python 2): read as Latin-1 text.
            b'T' | b'U' => {
                let n = if op == b'T' { r.u32()? as usize } else { usize::from(r.u8()?) };
                push!(Value::Str(r.take(n)?.iter().map(|&b| char::from(b)).collect()));
            }
            b'B' | b'C' => {
                let n = if op == b'B' { r.u32()? as usize } else { usize::from(r.u8()?) };
                push!(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => u32::from(r.u8()?),
                    b'r' => r.u32()?,
                    _ => memo.len() as u32,
                };
                // Shared, not copied: containers are reference-counted.
                let top = stack.last().ok_or_else(|| bad("PUT on an empty stack"))?.clone();
                memo.insert(idx, top);
            }
            b'h' | b'j' => {
                let idx = if op == b'h' { u32::from(r.u8()?) } else { r.u32()? };
                let v = memo.get(&idx).ok_or_else(|| bad(&format!("GET of unknown memo entry {idx}")))?.clone();
                stack.push(v);
            }
            b't' => {
                let items = pop_mark!();
                let (depth, size) = grown(1, 1, &items.iter().collect::<Vec<_>>())?;
                stack.push(Item { v: Value::tuple(items.into_iter().map(|i| i.v).collect()), depth, size });
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    return Err(bad("TUPLE with too few items"));
                }
                let items = stack.split_off(stack.len() - n);
                let (depth, size) = grown(1, 1, &items.iter().collect::<Vec<_>>())?;
                stack.push(Item { v: Value::tuple(items.into_iter().map(|i| i.v).collect()), depth, size });
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                push!(global(&module, &name)?);
            }
            0x93 => {
                let name = pop!();
                let module = pop!();
                match (module.v, name.v) {
                    (Value::Str(m), Value::Str(n)) => push!(global(&m, &n)?),
                    _ => return Err(bad("STACK_GLOBAL needs two strings")),
                }
            }
            b'Q' => {
                let pid = pop!();
                push!(persistent_load(pid.v).map_err(|why| bad(&why))?);
            }
            b'R' => {
                let args = pop!();
                let func = pop!();
                // The result is built from the arguments: no deeper, no larger.
                let (depth, size) = (args.depth, args.size);
                stack.push(Item { v: reduce(func.v, args.v).map_err(|why| bad(&why))?, depth, size });
            }
            b'b' => {
                let _state = pop!();
                // BUILD sets attributes (an OrderedDict's `_metadata`, a tensor's Python
                // attributes); none of them changes the weights, so they are dropped.
                match stack.last() {
                    Some(Item { v: Value::Dict(_) | Value::Tensor(_), .. }) => {}
                    Some(i) => return Err(bad(&format!("BUILD on a {}", i.v.kind()))),
                    None => return Err(bad("BUILD on an empty stack")),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop!();
                    let k = pop!();
                    vec![k, v]
                } else {
                    pop_mark!()
                };
                if items.len() % 2 != 0 {
                    return Err(bad("SETITEMS with an odd number of items"));
                }
                let Some(top) = stack.last_mut() else { return Err(bad("SETITEM on an empty stack")) };
                let (depth, size) = grown(top.depth, top.size, &items.iter().collect::<Vec<_>>())?;
                let Value::Dict(d) = &mut top.v else { return Err(bad("SETITEM on a non-dict")) };
                let d = Rc::make_mut(d); // a copy only if the memo shares it
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k.v, v.v));
                }
                (top.depth, top.size) = (depth, size);
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![pop!()] } else { pop_mark!() };
                let Some(top) = stack.last_mut() else { return Err(bad("APPEND on an empty stack")) };
                let (depth, size) = grown(top.depth, top.size, &items.iter().collect::<Vec<_>>())?;
                let Value::List(l) = &mut top.v else { return Err(bad("APPEND on a non-list")) };
                Rc::make_mut(l).extend(items.into_iter().map(|i| i.v));
                (top.depth, top.size) = (depth, size);
            }
            _ => return Err(PickleError::Opcode { op, at }),
        }
    }
}

fn global(module: &str, name: &str) -> Result<Value, PickleError> {
    if module == "torch"
        && let Some(t) = StorageType::from_torch_name(name)
    {
        return Ok(Value::StorageClass(t));
    }
    if ALLOWED_GLOBALS.contains(&(module, name)) {
        return Ok(Value::Global(module.into(), name.into()));
    }
    Err(PickleError::Global(module.into(), name.into()))
}

fn persistent_load(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else { return Err(format!("persistent id is a {}, expected a tuple", pid.kind())) };
    match items.as_slice() {
        // The zip format's 5 fields; the legacy format adds a 6th, the view (None).
        [Value::Str(tag), Value::StorageClass(dtype), key, Value::Str(_location), Value::Int(numel)]
        | [Value::Str(tag), Value::StorageClass(dtype), key, Value::Str(_location), Value::Int(numel), Value::None]
            if tag == "storage" =>
        {
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return Err("storage key is neither a string nor an int".into()),
            };
            let numel = usize::try_from(*numel).map_err(|_| "negative storage size".to_string())?;
            Ok(Value::Storage { dtype: *dtype, key, numel })
        }
        _ => Err("persistent id is not ('storage', torch.<Type>Storage, key, location, numel)".into()),
    }
}

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err(format!("tensor {what} holds a non-negative-int value")),
            })
            .collect(),
        _ => Err(format!("tensor {what} is a {}, expected a tuple", v.kind())),
    }
}

fn reduce(func: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = func else { return Err(format!("REDUCE calls a {}", func.kind())) };
    let Value::Tuple(args) = args else { return Err(format!("REDUCE arguments are a {}, expected a tuple", args.kind())) };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => {
            // Python 3 pickles OrderedDict() then SETITEMS; Python 2 passes the items,
            // `OrderedDict([[key, value], ...])`.
            match args.as_slice() {
                [] => Ok(Value::dict(Vec::new())),
                [Value::List(items) | Value::Tuple(items)] => items
                    .iter()
                    .map(|kv| match kv {
                        Value::List(p) | Value::Tuple(p) if p.len() == 2 => Ok((p[0].clone(), p[1].clone())),
                        _ => Err("OrderedDict item is not a (key, value) pair".to_string()),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::dict),
                _ => Err("OrderedDict(...) arguments are not a list of pairs".into()),
            }
        }
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let arity = if name == "_rebuild_tensor" { 4..=4 } else { 6..=7 };
            if !arity.contains(&args.len()) {
                return Err(format!("{name} takes {arity:?} arguments, got {}", args.len()));
            }
            let Value::Storage { dtype, key, numel } = &args[0] else { return Err(format!("{name}: first argument is not a storage")) };
            let Value::Int(offset) = args[1] else { return Err(format!("{name}: storage offset is not an int")) };
            let offset = usize::try_from(offset).map_err(|_| "negative storage offset".to_string())?;
            let shape = usizes(&args[2], "size")?;
            let stride = usizes(&args[3], "stride")?;
            if shape.len() != stride.len() {
                return Err(format!("tensor size {shape:?} and stride {stride:?} differ in length"));
            }
            Ok(Value::Tensor(TensorRef { key: key.clone(), dtype: *dtype, storage_numel: *numel, offset, shape, stride }))
        }
        ("torch._utils", "_rebuild_parameter") => match args.first().cloned() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err("_rebuild_parameter: first argument is not a tensor".into()),
        },
        _ => Err(format!("{module}.{name} cannot be called")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_and_containers() {
        // pickle.dumps({'a': [1, -2, 300, 70000, True, None], 'b': (1.5, 'x')}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffM,\x01J\x70\x11\x01\x00\x88Ne\
X\x01\x00\x00\x00bq\x03G?\xf8\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x04\x86q\x05u.";
        let v = load(bytes).unwrap();
        let Value::Dict(d) = v else { panic!() };
        assert_eq!(d[0].0, Value::Str("a".into()));
        assert_eq!(
            d[0].1,
            Value::list(vec![Value::Int(1), Value::Int(-2), Value::Int(300), Value::Int(70000), Value::Bool(true), Value::None])
        );
        assert_eq!(d[1].1, Value::tuple(vec![Value::Float(1.5), Value::Str("x".into())]));
    }

    #[test]
    fn long1_is_twos_complement() {
        // LONG1 of 2**40 and of -129.
        let v = load(b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x02\x7f\xff\x86.").unwrap();
        assert_eq!(v, Value::tuple(vec![Value::Int(1 << 40), Value::Int(-129)]));
        // Python 2 strings.
        assert_eq!(load(b"\x80\x02U\x03cpu.").unwrap(), Value::Str("cpu".into()));
        // Python 2's OrderedDict([[k, v]]).
        let v = load(b"\x80\x02ccollections\nOrderedDict\n]U\x01aK\x01\x86a\x85R.").unwrap();
        assert_eq!(v, Value::dict(vec![(Value::Str("a".into()), Value::Int(1))]));
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        // os.system is never called, only named in the error.
        let e = load(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsq\x00\x85R.").unwrap_err();
        assert_eq!(e, PickleError::Global("os".into(), "system".into()));
        assert!(e.to_string().contains("os.system"));
        let e = load(b"\x80\x02ctorch.storage\n_load_from_bytes\n.").unwrap_err();
        assert!(matches!(e, PickleError::Global(..)));
        assert_eq!(load(b"\x80\x02}q\x00(").unwrap_err(), PickleError::Truncated(6));
        assert!(matches!(load(b"\x80\x02\x00."), Err(PickleError::Opcode { op: 0x00, at: 2 })));
        assert!(matches!(load(b"\x80\x02s."), Err(PickleError::Malformed { .. })));
        assert!(matches!(load(b"\x80\x02h\x05."), Err(PickleError::Malformed { .. })));
        assert!(matches!(load(b"\x80\x02N.extra"), Err(PickleError::Malformed { .. })));
        assert!(matches!(load(b"\x80\x02X\xff\xff\xff\xff"), Err(PickleError::Truncated(_))));
        // REDUCE of an allowed name with wrong arguments is an error, not a panic.
        assert!(matches!(load(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nK\x01\x85R."), Err(PickleError::Malformed { .. })));
    }

    /// Issue 19: memo GETs share (a billion-laughs stream is refused at once, without
    /// growing), nesting is capped, and a memoised list changed afterwards reads back
    /// as it was when stored.
    #[test]
    fn memo_shares_and_hostile_streams_are_bounded() {
        let mut laughs = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            laughs.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        laughs.push(b'.');
        let t = std::time::Instant::now();
        assert!(matches!(load(&laughs), Err(PickleError::TooLarge { .. })));
        assert!(t.elapsed().as_millis() < 1000);
        // Twelve rounds (4096 leaves) are fine and read as the full tree.
        let mut small = b"\x80\x02]q\x00".to_vec();
        for _ in 0..12 {
            small.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        small.push(b'.');
        fn leaves(v: &Value) -> usize {
            match v {
                Value::Tuple(t) => t.iter().map(leaves).sum(),
                _ => 1,
            }
        }
        assert_eq!(leaves(&load(&small).unwrap()), 4096);
        // A million nested lists: an error, not a stack overflow.
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 1_000_000));
        deep.extend(std::iter::repeat_n(b'a', 999_999));
        deep.push(b'.');
        assert!(matches!(load(&deep), Err(PickleError::TooDeep(_))));
        // MAX_DEPTH itself is allowed.
        let n = MAX_DEPTH as usize;
        let mut ok = b"\x80\x02".to_vec();
        ok.extend(std::iter::repeat_n(b']', n));
        ok.extend(std::iter::repeat_n(b'a', n - 1));
        ok.push(b'.');
        assert!(load(&ok).is_ok());
        // [] memoised, appended to, then read back: the memo has the empty list.
        let v = load(b"\x80\x02]q\x00K\x01ah\x00\x86.").unwrap();
        assert_eq!(v, Value::tuple(vec![Value::list(vec![Value::Int(1)]), Value::list(vec![])]));
    }
}
