//! Reads weight files without burn: safetensors and PyTorch `.pth` files
//! (what `torch.save` writes), with a pickle reader of its own that never
//! executes anything.
//!
//! # API
//!
//! * [`read_weights`] / [`read_weights_file`]: detect the format from the
//!   bytes (safetensors header, zip magic `PK\x03\x04`, legacy pickle magic)
//!   and return a [`WeightFile`]: the state dict's tensors by key as
//!   contiguous little-endian [`RawTensor`]s, plus what else the file holds.
//! * [`parse_safetensors`]: safetensors only.
//! * [`read_regular_file`]: reads a file, refusing named pipes, devices and
//!   directories instead of blocking on them.
//! * [`pth`]: the `.pth` readers. [`pth::TorchFile`] gives the whole object
//!   tree ([`pickle::Value`]) and materialises any tensor on demand; state
//!   dict discovery is [`pth::find_state_dict`].
//! * [`pickle`]: the unpickler and its [`pickle::Value`] tree.
//! * [`zip`]: the small zip reader used for `.pth` archives.
//!
//! # State dict discovery (`.pth`)
//!
//! If the root object is a dict of string → tensor (or empty), it is the
//! state dict. Otherwise the first of `model`, `state_dict`,
//! `model_state_dict`, `module`, `net` whose value is a non-empty string →
//! tensor dict is; the other top-level keys are listed in
//! [`WeightFile::other_entries`] and never materialised. A candidate that
//! holds tensors *and* something else is an error naming the key. Keys are
//! kept as saved (a DataParallel `module.` prefix is left in place).
//!
//! # Robustness
//!
//! All readers are meant for untrusted input (and are fuzzed: see `fuzz/`):
//! malformed input gives an [`Error`] naming the file and the culprit, never
//! a panic; lengths are checked against the input before allocating; views
//! are bounds-checked against their storage; broadcast views may not expand
//! beyond [`pth::MAX_EXPANSION_BYTES`] in total; a DEFLATED zip entry is
//! inflated only up to the bytes its tensors declare (the object pickle: up to
//! [`pth::MAX_INFLATED_PICKLE_BYTES`]) and refused before inflating if its
//! record declares more; files are read only if they are regular files.
//!
//! ```no_run
//! let wf = snnet_io::read_weights_file(std::path::Path::new("deit_tiny.pth"))?;
//! for (key, t) in &wf.tensors {
//!     println!("{key}: {:?} {:?}", t.dtype, t.shape);
//! }
//! # Ok::<(), snnet_io::Error>(())
//! ```
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

mod error;
pub mod pickle;
pub mod pth;
pub mod zip;

pub use error::{Error, Result};

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 64-bit float.
    F64,
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit signed int.
    I64,
    /// 32-bit signed int.
    I32,
    /// 16-bit signed int.
    I16,
    /// 8-bit signed int.
    I8,
    /// 8-bit unsigned int.
    U8,
    /// Bool, one byte (0 or 1).
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Whether it is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    /// The safetensors-style name (`F32`, `BF16`, `BOOL`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Contiguous row-major tensor, little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: DType,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// `numel() * dtype.size()` bytes, little-endian.
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Whether the element type is a floating-point type.
    pub fn is_float(&self) -> bool {
        self.dtype.is_float()
    }

    /// Values as f32 (F64/F16/BF16 cast; integer/bool types converted too).
    pub fn to_f32(&self) -> Vec<f32> {
        fn conv<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
            b.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        let b = &self.bytes;
        match self.dtype {
            DType::F64 => conv(b, |a| f64::from_le_bytes(a) as f32),
            DType::F32 => conv(b, f32::from_le_bytes),
            DType::F16 => conv(b, |a| half::f16::from_le_bytes(a).to_f32()),
            DType::BF16 => conv(b, |a| half::bf16::from_le_bytes(a).to_f32()),
            DType::I64 => conv(b, |a| i64::from_le_bytes(a) as f32),
            DType::I32 => conv(b, |a| i32::from_le_bytes(a) as f32),
            DType::I16 => conv(b, |a| i16::from_le_bytes(a) as f32),
            DType::I8 => b.iter().map(|&x| x as i8 as f32).collect(),
            DType::U8 => b.iter().map(|&x| x as f32).collect(),
            DType::Bool => b.iter().map(|&x| if x != 0 { 1.0 } else { 0.0 }).collect(),
        }
    }
}

/// Which container a [`WeightFile`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// A safetensors file.
    Safetensors,
    /// `torch.save` zip archive (torch ≥ 1.6).
    TorchZip,
    /// `torch.save(..., _use_new_zipfile_serialization=False)` legacy format.
    TorchLegacy,
}

/// What a weight file holds: the tensors of its state dict, by key.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightFile {
    /// The container format.
    pub format: Format,
    /// The state dict's tensors, by key.
    pub tensors: BTreeMap<String, RawTensor>,
    /// safetensors `__metadata__` (empty for .pth).
    pub metadata: HashMap<String, String>,
    /// For .pth: which top-level entry held the state dict (`None` = the root object itself), e.g. Some("model").
    pub state_dict_entry: Option<String>,
    /// For .pth: the other top-level keys, e.g. ["optimizer","lr_scheduler","epoch","scaler","args"].
    pub other_entries: Vec<String>,
}

/// Detects the format from the bytes (safetensors header / zip magic
/// `PK\x03\x04` / legacy pickle magic) and reads. `source` is the display
/// name used in error messages.
pub fn read_weights(bytes: &[u8], source: &str) -> Result<WeightFile> {
    if bytes.is_empty() {
        return Err(Error::UnknownFormat { file: source.into(), reason: "the file is empty (0 bytes)".into() });
    }
    // safetensors first: its 8-byte header length may start with any byte
    // (0x80, even "PK"), but a zip local header or a legacy torch pickle never
    // has '{' at offset 8.
    if bytes.len() > 8 && bytes[8] == b'{' {
        return parse_safetensors(bytes, source);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return pth::TorchFile::parse_zip(bytes, source)?.to_weight_file();
    }
    if bytes[0] == 0x80 {
        return pth::TorchFile::parse_legacy(bytes, source)?.to_weight_file();
    }
    Err(Error::UnknownFormat { file: source.into(), reason: describe_unknown(bytes) })
}

fn describe_unknown(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let guess = if bytes.starts_with(b"PK") {
        "a zip archive without a local file header at the start"
    } else if bytes.starts_with(b"\x1f\x8b") {
        "gzip data (decompress it first)"
    } else if bytes.starts_with(b"\x89HDF") {
        "an HDF5 file (Keras?)"
    } else if bytes.starts_with(b"\x93NUMPY") {
        "a NumPy .npy file"
    } else if bytes.len() <= 8 {
        "too short to be a weight file"
    } else {
        "not safetensors (no JSON header), not a torch.save zip (no PK\\x03\\x04), not a legacy torch.save pickle (no \\x80 protocol byte)"
    };
    format!("{} bytes starting with {}: {guess}", bytes.len(), head.join(" "))
}

/// Reads a weight file from disk ([`read_regular_file`]); the path is the
/// display name in errors.
pub fn read_weights_file(path: &Path) -> Result<WeightFile> {
    let name = path.display().to_string();
    let bytes = read_regular_file(path).map_err(|err| Error::Io { file: name.clone(), err })?;
    read_weights(&bytes, &name)
}

/// Reads a whole file, refusing anything but a regular file (a named pipe, a
/// device, a socket, a directory) before opening it: opening a FIFO would wait
/// for a writer forever, and a device may never end. The error is
/// [`std::io::ErrorKind::InvalidInput`] and says what the path is.
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    require_regular_file(path)?;
    std::fs::read(path)
}

/// [`read_regular_file`]'s check: an error unless `path` is a regular file.
fn require_regular_file(path: &Path) -> std::io::Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file but {}: give the path of a file", describe_file_type(kind)),
        ));
    }
    Ok(())
}

fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// The `__metadata__` entries of a safetensors file, reading its header only (the tensor data is
/// not read). A file that is not safetensors, or whose header is truncated or corrupt, is an error.
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    /// safetensors' own bound on a header.
    const MAX_HEADER: u64 = 100 << 20;
    let name = path.display().to_string();
    let io = |err: std::io::Error| Error::Io { file: name.clone(), err };
    let st_err = |message: String| Error::Safetensors { file: name.clone(), message };
    require_regular_file(path).map_err(io)?;
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(|_| st_err("truncated header: fewer than the 8 bytes of its length".into()))?;
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER {
        return Err(st_err(format!("a header of {length} bytes, over safetensors' limit of {MAX_HEADER}: not a safetensors file?")));
    }
    let mut header = Vec::with_capacity(length as usize);
    file.take(length).read_to_end(&mut header).map_err(io)?;
    if header.len() as u64 != length {
        return Err(st_err(format!("truncated header: {} of its {length} bytes", header.len())));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| st_err(format!("corrupt header: {e}: not a safetensors file?")))?;
    let metadata = match value.get("__metadata__") {
        None => return Ok(HashMap::new()),
        Some(m) => m.as_object().ok_or_else(|| st_err("`__metadata__` is not an object".into()))?,
    };
    metadata
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(text) => Ok((k.clone(), text.to_string())),
            None => Err(st_err(format!("metadata entry `{k}` is not a string"))),
        })
        .collect()
}

/// Parses a safetensors file (dtypes F64/F32/F16/BF16/I64/I32/I16/I8/U8/BOOL).
pub fn parse_safetensors(bytes: &[u8], source: &str) -> Result<WeightFile> {
    use safetensors::{Dtype, SafeTensorError, SafeTensors};
    let st_err = |message: String| Error::Safetensors { file: source.into(), message };
    if bytes.len() < 8 {
        return Err(st_err(format!("truncated header: {} bytes, but the header length alone takes 8", bytes.len())));
    }
    let describe = |e: SafeTensorError| -> String {
        match e {
            SafeTensorError::InvalidOffset(name) => {
                format!("tensor '{name}': its data offsets do not fit the file (truncated or corrupt)")
            }
            SafeTensorError::MetadataIncompleteBuffer => {
                format!("truncated: the header describes more tensor data than the {} bytes after it", bytes.len())
            }
            SafeTensorError::InvalidTensorView(dtype, shape, n) => {
                format!("a {dtype:?} tensor of shape {shape:?} does not match its {n} data bytes (corrupt header)")
            }
            other => format!("truncated or corrupt header: {other}"),
        }
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| st_err(describe(e)))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| st_err(describe(e)))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.iter() {
        let dtype = match view.dtype() {
            Dtype::F64 => DType::F64,
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::I16 => DType::I16,
            Dtype::I8 => DType::I8,
            Dtype::U8 => DType::U8,
            Dtype::BOOL => DType::Bool,
            other => {
                return Err(Error::Tensor {
                    file: source.into(),
                    tensor: name.into(),
                    message: format!("unsupported safetensors dtype {other:?}"),
                })
            }
        };
        let shape = view.shape().to_vec();
        let expected = shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
        if expected != Some(view.data().len()) {
            return Err(Error::Tensor {
                file: source.into(),
                tensor: name.into(),
                message: format!("shape {shape:?} of {dtype} needs {expected:?} bytes but the file gives it {}", view.data().len()),
            });
        }
        tensors.insert(name.to_owned(), RawTensor { dtype, shape, bytes: view.data().to_vec() });
    }
    Ok(WeightFile {
        format: Format::Safetensors,
        tensors,
        metadata: meta.metadata().clone().unwrap_or_default(),
        state_dict_entry: None,
        other_entries: Vec::new(),
    })
}
