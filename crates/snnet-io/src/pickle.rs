//! A safe unpickler: turns a Python pickle stream (protocols 0–5, as far as
//! `torch.save` and Python's pickler use them) into a [`Value`] tree without
//! running any code.
//!
//! * A `GLOBAL` becomes a [`Value::Class`]; calling it (`REDUCE`, `NEWOBJ`)
//!   gives a generic [`Value::Object`], except for a few well-known callables
//!   that are rebuilt into plain values: `collections.OrderedDict` → dict,
//!   `builtins.set`/`frozenset`, `_codecs.encode` (protocol-2 bytes),
//!   `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor` →
//!   [`Value::Tensor`], `torch._utils._rebuild_parameter[_with_state]` → the
//!   tensor with [`TensorRef::is_parameter`] set.
//! * A persistent id `('storage', storage_type, key, location, numel[, view])`
//!   (what torch writes for every tensor storage) becomes a
//!   [`Value::Storage`]; any other persistent id a [`Value::PersistentId`].
//! * `BUILD` stores the state in a generic object (e.g. the `__dict__` of an
//!   `argparse.Namespace`) and is ignored on anything else.
//!
//! Only malformed streams are rejected, with a [`PickleError`] naming the
//! opcode and byte offset. Every length field is checked against the input
//! before allocating, shared references (memo) are kept as shared nodes while
//! loading, and the final tree is capped in depth ([`MAX_DEPTH`]) and size, so
//! a small input cannot expand into a huge tree.

use std::collections::HashMap;
use std::fmt;

use crate::DType;

/// The deepest nesting of containers the returned tree may have. Deeper (or
/// cyclic) object graphs are rejected.
pub const MAX_DEPTH: usize = 100;

/// A decoded Python object.
///
/// Dicts keep their items in pickle order; if a key repeats, the later item
/// wins in Python (and in this crate's state-dict extraction).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A larger int: little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A `str`.
    Str(String),
    /// `bytes` or `bytearray`.
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<Value>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `dict` (or `OrderedDict`): items in order.
    Dict(Vec<(Value, Value)>),
    /// A `set`.
    Set(Vec<Value>),
    /// A `frozenset`.
    FrozenSet(Vec<Value>),
    /// A global reference (class or function) that was not called.
    Class {
        /// The module, e.g. `argparse`.
        module: String,
        /// The qualified name, e.g. `Namespace`.
        name: String,
    },
    /// The result of calling something this reader does not rebuild.
    Object {
        /// What was called (usually a [`Value::Class`]).
        class: Box<Value>,
        /// The positional arguments.
        args: Vec<Value>,
        /// Keyword arguments (`NEWOBJ_EX` only).
        kwargs: Vec<(Value, Value)>,
        /// The `BUILD` state (e.g. the `__dict__`), if any.
        state: Option<Box<Value>>,
        /// Items appended to it (`APPEND`/`APPENDS` on a list subclass).
        list_items: Vec<Value>,
        /// Items set on it (`SETITEM(S)` on a dict subclass).
        dict_items: Vec<(Value, Value)>,
    },
    /// A persistent id that is not a torch storage.
    PersistentId(Box<Value>),
    /// A torch storage reference (the data lives outside the pickle).
    Storage(StorageRef),
    /// A torch tensor: a strided view of a storage.
    Tensor(TensorRef),
}

impl Value {
    /// The string, if this is a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The int, if this is a [`Value::Int`] (or a bool, as in Python).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The items, if this is a [`Value::Dict`].
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The value of the last item whose key is the string `key`, if this is a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?.iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// A short description for error messages: the type, or the class of an object.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::List(_) => "list".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::Dict(_) => "dict".into(),
            Value::Set(_) => "set".into(),
            Value::FrozenSet(_) => "frozenset".into(),
            Value::Class { module, name } => format!("class {module}.{name}"),
            Value::Object { class, .. } => match &**class {
                Value::Class { module, name } => format!("{module}.{name} object"),
                other => format!("object made by {}", other.kind()),
            },
            Value::PersistentId(_) => "persistent id".into(),
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
        }
    }
}

/// A torch storage, as named by a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// The storage key: the file name under `data/` in a zip archive, or the
    /// key of the storage record in a legacy file.
    pub key: String,
    /// The storage class, e.g. `torch.FloatStorage`.
    pub storage_type: String,
    /// The element type, when the storage class is one this crate reads.
    pub dtype: Option<DType>,
    /// Bytes per element (also known for some types this crate does not
    /// decode, e.g. complex, so legacy files can skip them).
    pub elem_size: Option<usize>,
    /// Where it was saved from, e.g. `cpu` or `cuda:0`.
    pub location: String,
    /// The number of elements the pickle declares.
    pub numel: u64,
    /// Legacy storage views: `(offset, numel)` in elements of the root storage.
    pub view: Option<(u64, u64)>,
}

/// A tensor: a strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage holding the data.
    pub storage: StorageRef,
    /// Offset of the first element, in elements.
    pub offset: u64,
    /// The shape.
    pub shape: Vec<u64>,
    /// The strides, in elements.
    pub stride: Vec<u64>,
    /// `requires_grad` as saved.
    pub requires_grad: bool,
    /// Whether it was an `nn.Parameter`.
    pub is_parameter: bool,
}

/// The element type and size for a torch storage class name (`FloatStorage`, …).
pub fn storage_dtype(name: &str) -> (Option<DType>, Option<usize>) {
    let d = match name {
        "DoubleStorage" => DType::F64,
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" | "UntypedStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        "ComplexDoubleStorage" => return (None, Some(16)),
        "ComplexFloatStorage" => return (None, Some(8)),
        "QInt32Storage" => return (None, Some(4)),
        "QInt8Storage" | "QUInt8Storage" | "QUInt4x2Storage" | "QUInt2x4Storage" => return (None, Some(1)),
        _ => return (None, None),
    };
    (Some(d), Some(d.size()))
}

/// A malformed pickle stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    /// Byte offset of the opcode (or of the end of input) in the stream.
    pub offset: usize,
    /// The opcode being executed, if any.
    pub opcode: Option<u8>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.opcode {
            Some(op) => write!(f, "pickle error at byte {}, opcode {} (0x{op:02x}): {}", self.offset, opcode_name(op), self.message),
            None => write!(f, "pickle error at byte {}: {}", self.offset, self.message),
        }
    }
}

impl std::error::Error for PickleError {}

/// The name of a pickle opcode, e.g. `BINGET` for `b'h'`.
pub fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown opcode",
    }
}

/// The result of [`load`]: the object, how many bytes the pickle took, and
/// every torch storage it referenced (in order of first appearance).
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The unpickled object.
    pub value: Value,
    /// Bytes consumed, up to and including `STOP`.
    pub consumed: usize,
    /// The storages named by persistent ids, first appearance first, each once.
    pub storages: Vec<StorageRef>,
}

/// Unpickles the pickle at the start of `data` (trailing bytes are left
/// alone: see [`Loaded::consumed`]).
pub fn load(data: &[u8]) -> Result<Loaded, PickleError> {
    let mut vm = Vm::new(data);
    let root = vm.run()?;
    // The tree may not be much larger than the stream: shared references
    // (memo) could otherwise expand exponentially.
    let mut budget = 4096usize.saturating_add(data.len().saturating_mul(32));
    let value = vm.to_value(root, 0, &mut budget).map_err(|message| PickleError { offset: vm.pos, opcode: None, message })?;
    Ok(Loaded { value, consumed: vm.pos, storages: vm.storages })
}

type Id = usize;

#[derive(Debug)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    FrozenSet(Vec<Id>),
    Class { module: String, name: String },
    Object { class: Id, args: Vec<Id>, kwargs: Vec<(Id, Id)>, state: Option<Id>, list_items: Vec<Id>, dict_items: Vec<(Id, Id)> },
    PersistentId(Id),
    Storage(StorageRef),
    Tensor(TensorRef),
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed.
    op_pos: usize,
    op: Option<u8>,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    storages: Vec<StorageRef>,
    storage_keys: HashMap<String, usize>,
}

type R<T> = Result<T, PickleError>;

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Vm {
            data,
            pos: 0,
            op_pos: 0,
            op: None,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: Vec::new(),
            storage_keys: HashMap::new(),
        }
    }

    fn fail<T>(&self, message: impl Into<String>) -> R<T> {
        Err(PickleError { offset: self.op_pos, opcode: self.op, message: message.into() })
    }

    fn take(&mut self, n: u64) -> R<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left as u64 {
            return self.fail(format!("needs {n} byte(s) but only {left} remain: truncated or corrupt pickle"));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A text line (protocol 0 arguments), without its `\n`.
    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.fail("unterminated text argument (no newline): truncated pickle");
        };
        self.pos += n + 1;
        match std::str::from_utf8(&rest[..n]) {
            Ok(s) => Ok(s.strip_suffix('\r').unwrap_or(s)),
            Err(_) => self.fail("text argument is not valid UTF-8"),
        }
    }

    fn push(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
    }

    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> R<Id> {
        if self.stack.len() <= self.base() {
            return self.fail("stack underflow");
        }
        Ok(self.stack.pop().unwrap_or(0))
    }

    fn top(&self) -> R<Id> {
        if self.stack.len() <= self.base() {
            return self.fail("stack underflow (no object to act on)");
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    fn pop_mark(&mut self) -> R<Vec<Id>> {
        let Some(m) = self.marks.pop() else {
            return self.fail("no MARK on the stack");
        };
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn memo_get(&mut self, key: u64) -> R<()> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.fail(format!("memo slot {key} was never stored")),
        }
    }

    fn memo_put(&mut self, key: u64) -> R<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn string(&mut self, n: u64) -> R<()> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => {
                self.push(Node::Str(s.to_owned()));
                Ok(())
            }
            Err(e) => self.fail(format!("string is not valid UTF-8: {e}")),
        }
    }

    /// Python 2 `str`: UTF-8 if it is, else Latin-1.
    fn py2_string(&mut self, n: u64) -> R<()> {
        let b = self.take(n)?;
        let s = match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => b.iter().map(|&c| c as char).collect(),
        };
        self.push(Node::Str(s));
        Ok(())
    }

    fn long(&mut self, n: u64) -> R<()> {
        let b = self.take(n)?;
        let node = long_from_bytes(b);
        self.push(node);
        Ok(())
    }

    fn run(&mut self) -> R<Id> {
        loop {
            self.op_pos = self.pos;
            self.op = None;
            if self.pos >= self.data.len() {
                return self.fail("truncated pickle: the stream ends before STOP");
            }
            let op = self.data[self.pos];
            self.pos += 1;
            self.op = Some(op);
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return self.fail(format!("unsupported pickle protocol {v}"));
                    }
                }
                0x95 => {
                    let n = self.u64()?;
                    if n > (self.data.len() - self.pos) as u64 {
                        return self.fail(format!("frame of {n} bytes but only {} remain: truncated pickle", self.data.len() - self.pos));
                    }
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.base() {
                        self.stack.pop();
                    } else if self.marks.pop().is_none() {
                        return self.fail("stack underflow");
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Node::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Node::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as u64;
                    self.long(n)?;
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return self.fail("negative LONG4 length");
                    }
                    self.long(n as u64)?;
                }
                b'I' => {
                    let l = self.line()?;
                    let node = match l {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        _ => match l.parse::<i64>() {
                            Ok(v) => Node::Int(v),
                            Err(_) => return self.fail(format!("bad INT argument {l:?}")),
                        },
                    };
                    self.push(node);
                }
                b'L' => {
                    let l = self.line()?;
                    match l.strip_suffix('L').unwrap_or(l).parse::<i64>() {
                        Ok(v) => self.push(Node::Int(v)),
                        Err(_) => return self.fail(format!("bad or too large LONG argument {l:?}")),
                    }
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Node::Float(f64::from_be_bytes(a)));
                }
                b'F' => {
                    let l = self.line()?;
                    match l.parse::<f64>() {
                        Ok(v) => self.push(Node::Float(v)),
                        Err(_) => return self.fail(format!("bad FLOAT argument {l:?}")),
                    }
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    self.string(n)?;
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    self.string(n)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    self.string(n)?;
                }
                b'U' => {
                    let n = self.u8()? as u64;
                    self.py2_string(n)?;
                }
                b'T' => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return self.fail("negative BINSTRING length");
                    }
                    self.py2_string(n as u64)?;
                }
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.u8()? as u64,
                        b'B' => self.u32()? as u64,
                        _ => self.u64()?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b));
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b']' => self.push(Node::List(Vec::new())),
                b')' => self.push(Node::Tuple(Vec::new())),
                0x8f => self.push(Node::Set(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.fail("odd number of items for a dict");
                    }
                    let pairs = items.chunks_exact(2).map(|c| (c[0], c[1])).collect();
                    self.push(Node::Dict(pairs));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < self.base() + n {
                        return self.fail("stack underflow");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Node::Tuple(items));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::FrozenSet(items));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.fail("odd number of items for SETITEMS");
                    }
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let t = self.top()?;
                    match &mut self.nodes[t] {
                        Node::Set(s) => s.extend(items),
                        Node::Object { list_items, .. } => list_items.extend(items),
                        _ => return self.fail("ADDITEMS on something that is not a set"),
                    }
                }
                b'p' => {
                    let l = self.line()?;
                    match l.parse::<u64>() {
                        Ok(k) => self.memo_put(k)?,
                        Err(_) => return self.fail(format!("bad PUT argument {l:?}")),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.line()?;
                    match l.parse::<u64>() {
                        Ok(k) => self.memo_get(k)?,
                        Err(_) => return self.fail(format!("bad GET argument {l:?}")),
                    }
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?.to_owned();
                    let name = self.line()?.to_owned();
                    self.push(Node::Class { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Str(m), Node::Str(n)) = (&self.nodes[module], &self.nodes[name]) else {
                        return self.fail("STACK_GLOBAL needs two strings (module, name)");
                    };
                    let node = Node::Class { module: m.clone(), name: n.clone() };
                    self.push(node);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Node::Tuple(args) = &self.nodes[args] else {
                        return self.fail("REDUCE arguments are not a tuple");
                    };
                    let args = args.clone();
                    let node = self.call(callable, args);
                    self.push(node);
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let Node::Tuple(args) = &self.nodes[args] else {
                        return self.fail("NEWOBJ arguments are not a tuple");
                    };
                    let args = args.clone();
                    let node = self.call(class, args);
                    self.push(node);
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let (Node::Tuple(args), Node::Dict(kwargs)) = (&self.nodes[args], &self.nodes[kwargs]) else {
                        return self.fail("NEWOBJ_EX needs an args tuple and a kwargs dict");
                    };
                    let (args, kwargs) = (args.clone(), kwargs.clone());
                    self.push(object(class, args, kwargs));
                }
                b'i' => {
                    let module = self.line()?.to_owned();
                    let name = self.line()?.to_owned();
                    let args = self.pop_mark()?;
                    self.nodes.push(Node::Class { module, name });
                    let class = self.nodes.len() - 1;
                    let node = self.call(class, args);
                    self.push(node);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.fail("OBJ without a class");
                    }
                    let class = items.remove(0);
                    let node = self.call(class, items);
                    self.push(node);
                }
                b'b' => {
                    let state = self.pop()?;
                    let t = self.top()?;
                    if let Node::Object { state: s, .. } = &mut self.nodes[t] {
                        *s = Some(state);
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let node = self.persistent_load(pid);
                    self.push(node);
                }
                b'P' => {
                    let l = self.line()?.to_owned();
                    self.nodes.push(Node::Str(l));
                    let pid = self.nodes.len() - 1;
                    self.push(Node::PersistentId(pid));
                }
                0x98 => {
                    self.top()?;
                }
                0x97 => return self.fail("out-of-band buffers (protocol 5 NEXT_BUFFER) are not supported"),
                0x82..=0x84 => return self.fail("extension registry codes (EXT1/2/4) are not supported"),
                b'S' | b'V' => {
                    return self.fail("protocol 0 quoted strings are not supported");
                }
                _ => return self.fail("unknown opcode"),
            }
        }
    }

    fn set_items(&mut self, items: Vec<Id>) -> R<()> {
        let t = self.top()?;
        let pairs = items.chunks_exact(2).map(|c| (c[0], c[1]));
        match &mut self.nodes[t] {
            Node::Dict(d) => d.extend(pairs),
            Node::Object { dict_items, .. } => dict_items.extend(pairs),
            _ => return self.fail("SETITEM(S) on something that is not a dict"),
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Id>) -> R<()> {
        let t = self.top()?;
        match &mut self.nodes[t] {
            Node::List(l) => l.extend(items),
            Node::Object { list_items, .. } => list_items.extend(items),
            _ => return self.fail("APPEND(S) on something that is not a list"),
        }
        Ok(())
    }

    fn class_name(&self, id: Id) -> Option<(&str, &str)> {
        match &self.nodes[id] {
            Node::Class { module, name } => {
                let module = match module.as_str() {
                    "__builtin__" => "builtins",
                    "copy_reg" => "copyreg",
                    m => m,
                };
                Some((module, name.as_str()))
            }
            _ => None,
        }
    }

    fn int(&self, id: Id) -> Option<i64> {
        match self.nodes[id] {
            Node::Int(i) => Some(i),
            Node::Bool(b) => Some(b as i64),
            _ => None,
        }
    }

    fn uint_tuple(&self, id: Id) -> Option<Vec<u64>> {
        match &self.nodes[id] {
            Node::Tuple(items) | Node::List(items) => items.iter().map(|&i| self.int(i).and_then(|v| u64::try_from(v).ok())).collect(),
            // torch.Size pickled as an object: torch.Size((2, 3))
            Node::Object { args, .. } if args.len() == 1 => self.uint_tuple(args[0]),
            _ => None,
        }
    }

    /// Calls `callable(*args)`: a few known callables are rebuilt, anything
    /// else becomes a generic object.
    fn call(&mut self, callable: Id, args: Vec<Id>) -> Node {
        if let Some(node) = self.known_call(callable, &args) {
            return node;
        }
        object(callable, args, Vec::new())
    }

    fn known_call(&self, callable: Id, args: &[Id]) -> Option<Node> {
        let (module, name) = self.class_name(callable)?;
        match (module, name) {
            ("collections", "OrderedDict") | ("builtins", "dict") => match args {
                [] => Some(Node::Dict(Vec::new())),
                [items] => {
                    let (Node::List(l) | Node::Tuple(l)) = &self.nodes[*items] else {
                        return None;
                    };
                    let mut pairs = Vec::with_capacity(l.len());
                    for &p in l {
                        match &self.nodes[p] {
                            Node::Tuple(kv) | Node::List(kv) if kv.len() == 2 => pairs.push((kv[0], kv[1])),
                            _ => return None,
                        }
                    }
                    Some(Node::Dict(pairs))
                }
                _ => None,
            },
            ("builtins", "set") | ("builtins", "frozenset") => {
                let items = match args {
                    [] => Vec::new(),
                    [it] => match &self.nodes[*it] {
                        Node::List(l) | Node::Tuple(l) | Node::Set(l) | Node::FrozenSet(l) => l.clone(),
                        _ => return None,
                    },
                    _ => return None,
                };
                Some(if name == "set" { Node::Set(items) } else { Node::FrozenSet(items) })
            }
            ("builtins", "bytearray") | ("builtins", "bytes") => match args {
                [] => Some(Node::Bytes(Vec::new())),
                [b] => match &self.nodes[*b] {
                    Node::Bytes(b) => Some(Node::Bytes(b.clone())),
                    _ => None,
                },
                _ => None,
            },
            // Protocol 2 writes bytes as _codecs.encode(str, 'latin1').
            ("_codecs", "encode") => {
                let [s, enc] = args else { return None };
                let (Node::Str(s), Node::Str(enc)) = (&self.nodes[*s], &self.nodes[*enc]) else {
                    return None;
                };
                if enc != "latin1" && enc != "latin-1" {
                    return None;
                }
                s.chars().map(|c| u8::try_from(c as u32).ok()).collect::<Option<Vec<u8>>>().map(Node::Bytes)
            }
            ("copyreg", "_reconstructor") => {
                let [class, ..] = args else { return None };
                Some(object(*class, Vec::new(), Vec::new()))
            }
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                if args.len() < 4 {
                    return None;
                }
                let Node::Storage(storage) = &self.nodes[args[0]] else {
                    return None;
                };
                let offset = u64::try_from(self.int(args[1])?).ok()?;
                let shape = self.uint_tuple(args[2])?;
                let stride = self.uint_tuple(args[3])?;
                let requires_grad = args.get(4).and_then(|&a| self.int(a)).unwrap_or(0) != 0;
                Some(Node::Tensor(TensorRef { storage: storage.clone(), offset, shape, stride, requires_grad, is_parameter: false }))
            }
            ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
                let Node::Tensor(t) = &self.nodes[*args.first()?] else {
                    return None;
                };
                let mut t = t.clone();
                t.is_parameter = true;
                if let Some(rg) = args.get(1).and_then(|&a| self.int(a)) {
                    t.requires_grad = rg != 0;
                }
                Some(Node::Tensor(t))
            }
            _ => None,
        }
    }

    fn persistent_load(&mut self, pid: Id) -> Node {
        match self.storage_ref(pid) {
            Some(s) => {
                if !self.storage_keys.contains_key(&s.key) {
                    self.storage_keys.insert(s.key.clone(), self.storages.len());
                    self.storages.push(s.clone());
                }
                Node::Storage(s)
            }
            None => Node::PersistentId(pid),
        }
    }

    /// `('storage', storage_type, key, location, numel[, view_metadata])`.
    fn storage_ref(&self, pid: Id) -> Option<StorageRef> {
        let Node::Tuple(items) = &self.nodes[pid] else {
            return None;
        };
        if items.len() != 5 && items.len() != 6 {
            return None;
        }
        match &self.nodes[items[0]] {
            Node::Str(s) if s == "storage" => {}
            _ => return None,
        }
        let Node::Class { module, name } = &self.nodes[items[1]] else {
            return None;
        };
        let key = match &self.nodes[items[2]] {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            _ => return None,
        };
        let location = match &self.nodes[items[3]] {
            Node::Str(s) => s.clone(),
            _ => String::new(),
        };
        let numel = u64::try_from(self.int(items[4])?).ok()?;
        let view = match items.get(5).map(|&v| &self.nodes[v]) {
            None | Some(Node::None) => None,
            Some(Node::Tuple(v)) if v.len() == 3 => {
                let off = u64::try_from(self.int(v[1])?).ok()?;
                let n = u64::try_from(self.int(v[2])?).ok()?;
                Some((off, n))
            }
            Some(_) => return None,
        };
        let (dtype, elem_size) = storage_dtype(name);
        Some(StorageRef { key, storage_type: format!("{module}.{name}"), dtype, elem_size, location, numel, view })
    }

    fn to_value(&self, id: Id, depth: usize, budget: &mut usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("the object graph is nested deeper than {MAX_DEPTH} levels (or is cyclic)"));
        }
        if *budget == 0 {
            return Err("the object graph is too large for the pickle's size (shared references expand too much)".into());
        }
        *budget -= 1;
        let d = depth + 1;
        let list =
            |ids: &[Id], budget: &mut usize| -> Result<Vec<Value>, String> { ids.iter().map(|&i| self.to_value(i, d, budget)).collect() };
        let pairs = |ids: &[(Id, Id)], budget: &mut usize| -> Result<Vec<(Value, Value)>, String> {
            ids.iter().map(|&(k, v)| Ok((self.to_value(k, d, budget)?, self.to_value(v, d, budget)?))).collect()
        };
        Ok(match &self.nodes[id] {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::BigInt(b) => Value::BigInt(b.clone()),
            Node::Float(f) => Value::Float(*f),
            Node::Str(s) => Value::Str(s.clone()),
            Node::Bytes(b) => Value::Bytes(b.clone()),
            Node::List(l) => Value::List(list(l, budget)?),
            Node::Tuple(l) => Value::Tuple(list(l, budget)?),
            Node::Set(l) => Value::Set(list(l, budget)?),
            Node::FrozenSet(l) => Value::FrozenSet(list(l, budget)?),
            Node::Dict(p) => Value::Dict(pairs(p, budget)?),
            Node::Class { module, name } => Value::Class { module: module.clone(), name: name.clone() },
            Node::Object { class, args, kwargs, state, list_items, dict_items } => Value::Object {
                class: Box::new(self.to_value(*class, d, budget)?),
                args: list(args, budget)?,
                kwargs: pairs(kwargs, budget)?,
                state: match state {
                    Some(s) => Some(Box::new(self.to_value(*s, d, budget)?)),
                    None => None,
                },
                list_items: list(list_items, budget)?,
                dict_items: pairs(dict_items, budget)?,
            },
            Node::PersistentId(p) => Value::PersistentId(Box::new(self.to_value(*p, d, budget)?)),
            Node::Storage(s) => Value::Storage(s.clone()),
            Node::Tensor(t) => Value::Tensor(t.clone()),
        })
    }
}

fn object(class: Id, args: Vec<Id>, kwargs: Vec<(Id, Id)>) -> Node {
    Node::Object { class, args, kwargs, state: None, list_items: Vec::new(), dict_items: Vec::new() }
}

/// Little-endian two's complement bytes → Int when it fits in i64, else BigInt.
fn long_from_bytes(b: &[u8]) -> Node {
    if b.is_empty() {
        return Node::Int(0);
    }
    let negative = b[b.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0 };
    // Drop redundant sign-extension bytes.
    let mut n = b.len();
    while n > 1 && b[n - 1] == fill && (b[n - 2] & 0x80 != 0) == negative {
        n -= 1;
    }
    if n <= 8 {
        let mut a = [fill; 8];
        a[..n].copy_from_slice(&b[..n]);
        Node::Int(i64::from_le_bytes(a))
    } else {
        Node::BigInt(b[..n].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(data: &[u8]) -> Value {
        load(data).unwrap().value
    }

    #[test]
    fn scalars() {
        assert_eq!(val(b"\x80\x02K\x05."), Value::Int(5));
        assert_eq!(val(b"\x80\x02J\xff\xff\xff\xff."), Value::Int(-1));
        assert_eq!(val(b"\x80\x02M\x01\x02."), Value::Int(0x0201));
        assert_eq!(val(b"\x80\x02\x8a\x01\xff."), Value::Int(-1));
        assert_eq!(val(b"\x80\x02\x8a\x00."), Value::Int(0));
        assert_eq!(val(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00."), Value::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0x80, 0]));
        assert_eq!(val(b"\x80\x02G?\xf0\x00\x00\x00\x00\x00\x00."), Value::Float(1.0));
        assert_eq!(val(b"\x80\x02\x88."), Value::Bool(true));
        assert_eq!(val(b"\x80\x04\x8c\x02hi\x94."), Value::Str("hi".into()));
        assert_eq!(val(b"I01\n."), Value::Bool(true));
        assert_eq!(val(b"L-12L\n."), Value::Int(-12));
    }

    #[test]
    fn containers_and_memo_sharing() {
        // l = []; d = {'a': l, 'b': l}; l.append(1) after memoizing
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01K\x01aX\x01\x00\x00\x00bh\x01u.";
        let v = val(p);
        assert_eq!(v.get("a"), Some(&Value::List(vec![Value::Int(1)])));
        assert_eq!(v.get("b"), Some(&Value::List(vec![Value::Int(1)])));
    }

    #[test]
    fn unknown_class_is_generic_object_with_state() {
        let p = b"\x80\x02cargparse\nNamespace\nq\x00)\x81}X\x02\x00\x00\x00lrG?@bM\xd2\xf1\xa9\xfcsb.";
        let Value::Object { class, state, .. } = val(p) else { panic!() };
        assert_eq!(*class, Value::Class { module: "argparse".into(), name: "Namespace".into() });
        let state = state.unwrap();
        assert!(matches!(state.get("lr"), Some(Value::Float(_))));
    }

    #[test]
    fn errors_name_opcode_and_offset() {
        let e = load(b"\x80\x02h\x05.").unwrap_err();
        assert_eq!(e.offset, 2);
        assert_eq!(e.opcode, Some(b'h'));
        assert!(e.to_string().contains("BINGET"), "{e}");
        assert!(e.to_string().contains("memo slot 5"), "{e}");
        let e = load(b"\x80\x02X\xff\x00\x00\x00ab").unwrap_err();
        assert!(e.message.contains("needs 255 byte"), "{e}");
        let e = load(b"\x80\x02a").unwrap_err();
        assert!(e.message.contains("underflow"), "{e}");
        let e = load(b"\x80\x02K\x01").unwrap_err();
        assert!(e.message.contains("before STOP"), "{e}");
        let e = load(b"\xff").unwrap_err();
        assert!(e.message.contains("unknown opcode"), "{e}");
    }

    #[test]
    fn cycles_and_expansion_are_rejected() {
        // l = []; l.append(l)
        let e = load(b"]q\x00h\x00a.").unwrap_err();
        assert!(e.message.contains("deeper"), "{e}");
        // Each step: t = (t, t) — 2^60 leaves from a few hundred bytes.
        let mut p = b"\x80\x02N".to_vec();
        for _ in 0..60 {
            p.extend_from_slice(b"2\x86");
        }
        p.push(b'.');
        let e = load(&p).unwrap_err();
        assert!(e.message.contains("too large") || e.message.contains("deeper"), "{e}");
    }
}
