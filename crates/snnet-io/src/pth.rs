//! Readers for what `torch.save` writes: the zip archive of torch ≥ 1.6 and
//! the legacy format (`_use_new_zipfile_serialization=False`).
//!
//! [`TorchFile`] holds the whole object tree ([`Value`]) and the storages'
//! bytes (borrowed from the input where possible); tensors are materialised
//! to contiguous [`RawTensor`]s only on request, so an optimizer state next
//! to the model weights costs nothing.
//!
//! * Zip: `<prefix>/data.pkl` is the object pickle, `<prefix>/data/<key>` the
//!   raw bytes of each storage, `<prefix>/byteorder` (`little`/`big`, torch ≥
//!   2.1) the byte order (little when absent).
//! * Legacy: five consecutive pickles — magic number, protocol version (1001),
//!   sys_info, the object, the sorted list of storage keys — then, for each
//!   key in that order, an 8-byte element count and the raw data.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use crate::pickle::{self, StorageRef, TensorRef, Value};
use crate::zip::ZipArchive;
use crate::{Error, Format, RawTensor, Result, WeightFile};

/// The most bytes, summed over all tensors read by one
/// [`TorchFile::to_weight_file`] call, that broadcast views (strides of 0 or
/// overlapping) may add beyond the size of their storages.
pub const MAX_EXPANSION_BYTES: u64 = 256 << 20;

/// The most bytes a DEFLATED `data.pkl` (the object pickle of a zip `.pth`)
/// may inflate to. torch writes it STORED, and a STORED entry is bounded by the
/// file itself; a real object pickle is a few megabytes at most.
pub const MAX_INFLATED_PICKLE_BYTES: u64 = 256 << 20;

/// The little-endian bytes of the legacy format's magic number
/// `0x1950a86a20f9469cfc6c`.
pub const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// The legacy format's protocol version.
pub const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// Entry names tried, in order, when the root object is not itself a state dict.
pub const STATE_DICT_ENTRIES: [&str; 5] = ["model", "state_dict", "model_state_dict", "module", "net"];

#[derive(Debug)]
enum Store<'a> {
    Zip { archive: ZipArchive<'a>, prefix: String },
    Legacy { blobs: HashMap<String, (&'a [u8], usize)> },
}

/// A parsed `.pth` file: the object tree and access to its storages.
#[derive(Debug)]
pub struct TorchFile<'a> {
    /// Zip or legacy.
    pub format: Format,
    /// The unpickled root object.
    pub root: Value,
    /// Every storage the object pickle refers to.
    pub storages: Vec<StorageRef>,
    /// Whether storages are big-endian (they are converted when materialised).
    pub big_endian: bool,
    file: String,
    store: Store<'a>,
}

/// Where the state dict is in a [`TorchFile`]'s object tree.
#[derive(Debug, Clone, PartialEq)]
pub struct StateDict<'v> {
    /// The top-level entry holding it (`None`: the root itself).
    pub entry: Option<String>,
    /// The tensors, in pickle order (a repeated key appears twice; the last wins).
    pub tensors: Vec<(String, &'v TensorRef)>,
    /// The other top-level keys.
    pub other_entries: Vec<String>,
}

impl<'a> TorchFile<'a> {
    /// Parses a zip or legacy `.pth` file (chosen by the zip magic).
    pub fn parse(bytes: &'a [u8], file: &str) -> Result<Self> {
        if bytes.starts_with(b"PK") {
            Self::parse_zip(bytes, file)
        } else {
            Self::parse_legacy(bytes, file)
        }
    }

    /// Parses a `torch.save` zip archive.
    pub fn parse_zip(bytes: &'a [u8], file: &str) -> Result<Self> {
        let zip_err = |e: crate::zip::ZipError| Error::Zip { file: file.into(), entry: e.entry, message: e.message };
        let archive = ZipArchive::new(bytes).map_err(zip_err)?;
        let pkl = archive
            .entries()
            .iter()
            .filter(|e| e.name == "data.pkl" || e.name.ends_with("/data.pkl"))
            .min_by_key(|e| e.name.matches('/').count())
            .ok_or_else(|| {
                let names: Vec<&str> = archive.entries().iter().take(8).map(|e| e.name.as_str()).collect();
                Error::Zip {
                    file: file.into(),
                    entry: None,
                    message: format!(
                        "no data.pkl entry: a zip archive, but not one torch.save wrote ({} entries: {}{})",
                        archive.entries().len(),
                        names.join(", "),
                        if archive.entries().len() > 8 { ", …" } else { "" }
                    ),
                }
            })?;
        let pkl_name = pkl.name.clone();
        let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_owned();
        let big_endian = match archive.find(&format!("{prefix}byteorder")) {
            None => false,
            Some(e) => match archive.read_at_most(e, b"little".len() as u64).map_err(zip_err)?.as_ref() {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(Error::Zip {
                        file: file.into(),
                        entry: Some(e.name.clone()),
                        message: format!(
                            "unknown byte order {:?} (expected \"little\" or \"big\")",
                            String::from_utf8_lossy(&other[..other.len().min(32)])
                        ),
                    })
                }
            },
        };
        let data = archive.read_at_most(pkl, MAX_INFLATED_PICKLE_BYTES).map_err(zip_err)?;
        let loaded = pickle::load(&data).map_err(|err| Error::Pickle { file: file.into(), part: pkl_name.clone(), err })?;
        Ok(TorchFile {
            format: Format::TorchZip,
            root: loaded.value,
            storages: loaded.storages,
            big_endian,
            file: file.into(),
            store: Store::Zip { archive, prefix },
        })
    }

    /// Parses the legacy (non-zip) `torch.save` format.
    pub fn parse_legacy(bytes: &'a [u8], file: &str) -> Result<Self> {
        let legacy = |message: String| Error::Legacy { file: file.into(), message };
        let mut pos = 0usize;
        let next = |part: &str, pos: &mut usize| -> Result<pickle::Loaded> {
            let start = *pos;
            let mut loaded = pickle::load(&bytes[start..]).map_err(|mut err| {
                err.offset += start;
                Error::Pickle { file: file.into(), part: part.into(), err }
            })?;
            *pos = start + loaded.consumed;
            loaded.consumed = *pos;
            Ok(loaded)
        };
        let magic = match pickle::load(bytes) {
            Ok(l) => l,
            Err(err) => {
                return Err(Error::UnknownFormat {
                    file: file.into(),
                    reason: format!("starts like a Python pickle, but the first pickle (torch's magic number) is unreadable: {err}"),
                })
            }
        };
        let is_magic = matches!(&magic.value, Value::BigInt(b) if b[..] == LEGACY_MAGIC[..]);
        if !is_magic {
            return Err(Error::UnknownFormat {
                file: file.into(),
                reason: format!("a Python pickle of a {}, not a torch.save file (no legacy magic number)", magic.value.kind()),
            });
        }
        pos += magic.consumed;
        let version = next("legacy protocol-version pickle", &mut pos)?;
        if version.value.as_int() != Some(LEGACY_PROTOCOL_VERSION) {
            return Err(legacy(format!("unsupported protocol version {:?} (expected {LEGACY_PROTOCOL_VERSION})", version.value)));
        }
        let sys_info = next("legacy sys_info pickle", &mut pos)?;
        let big_endian = matches!(sys_info.value.get("little_endian"), Some(Value::Bool(false)));
        let object = next("legacy object pickle", &mut pos)?;
        let keys = next("legacy storage-key pickle", &mut pos)?;
        let keys = match &keys.value {
            Value::List(k) | Value::Tuple(k) => k
                .iter()
                .map(|k| k.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| legacy("the storage-key list holds something that is not a string".into()))?,
            other => return Err(legacy(format!("the storage-key pickle is a {}, not a list", other.kind()))),
        };
        let sizes: HashMap<&str, &StorageRef> = object.storages.iter().map(|s| (s.key.as_str(), s)).collect();
        let mut blobs = HashMap::new();
        for key in &keys {
            let s = sizes
                .get(key.as_str())
                .ok_or_else(|| legacy(format!("storage '{key}' is listed but no object in the pickle refers to it")))?;
            let es = s
                .elem_size
                .ok_or_else(|| legacy(format!("storage '{key}' has unknown type {}: cannot tell where its data ends", s.storage_type)))?;
            let head = bytes.get(pos..pos.saturating_add(8)).ok_or_else(|| Error::Storage {
                file: file.into(),
                key: key.clone(),
                location: format!("legacy data at byte {pos}"),
                message: format!("truncated: the 8-byte element count is missing ({} bytes remain)", bytes.len().saturating_sub(pos)),
            })?;
            let mut a = [0u8; 8];
            a.copy_from_slice(head);
            let count = if big_endian { u64::from_be_bytes(a) } else { u64::from_le_bytes(a) };
            let start = pos + 8;
            let remain = (bytes.len() - start) as u64;
            let nbytes = count.checked_mul(es as u64).filter(|&n| n <= remain).ok_or_else(|| Error::Storage {
                file: file.into(),
                key: key.clone(),
                location: format!("legacy data at byte {pos}"),
                message: format!("holds {count} elements of {es} bytes but only {remain} bytes remain: truncated or corrupt file"),
            })? as usize;
            blobs.insert(key.clone(), (&bytes[start..start + nbytes], start));
            pos = start + nbytes;
        }
        Ok(TorchFile {
            format: Format::TorchLegacy,
            root: object.value,
            storages: object.storages,
            big_endian,
            file: file.into(),
            store: Store::Legacy { blobs },
        })
    }

    /// The display name given when parsing.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The raw bytes of a storage, as saved (byte order not converted).
    ///
    /// A DEFLATED storage entry is inflated only up to the bytes the object
    /// pickle declares for that storage (its element count times the element
    /// size; none for a key the pickle never mentions): an entry whose zip
    /// record declares more is refused before anything is inflated.
    pub fn storage_bytes(&self, key: &str) -> Result<Cow<'a, [u8]>> {
        match &self.store {
            Store::Zip { archive, prefix } => {
                let name = format!("{prefix}data/{key}");
                let storage_err = |message: String| Error::Storage {
                    file: self.file.clone(),
                    key: key.into(),
                    location: format!("zip entry '{name}'"),
                    message,
                };
                let entry = archive.find(&name).ok_or_else(|| storage_err("missing: the archive has no such entry".into()))?;
                let declared = self.declared_storage_bytes(key);
                if entry.method != 0 && entry.size > declared {
                    return Err(storage_err(format!(
                        "the compressed entry inflates to {} bytes, but the pickle declares {declared} bytes for this storage: refused before inflating",
                        entry.size
                    )));
                }
                archive.read_at_most(entry, declared).map_err(|e| Error::Zip {
                    file: self.file.clone(),
                    entry: e.entry,
                    message: e.message,
                })
            }
            Store::Legacy { blobs } => match blobs.get(key) {
                Some((b, _)) => Ok(Cow::Borrowed(*b)),
                None => Err(Error::Storage {
                    file: self.file.clone(),
                    key: key.into(),
                    location: "legacy storage records".into(),
                    message: "missing: not in the file's list of storage keys".into(),
                }),
            },
        }
    }

    /// The most bytes any reference to storage `key` declares (element count
    /// times element size, saturating; 0 when no tensor refers to it). A
    /// storage of unknown element type counts one byte per element.
    fn declared_storage_bytes(&self, key: &str) -> u64 {
        self.storages.iter().filter(|s| s.key == key).map(|s| s.numel.saturating_mul(s.elem_size.unwrap_or(1) as u64)).max().unwrap_or(0)
    }

    fn storage_location(&self, key: &str) -> String {
        match &self.store {
            Store::Zip { prefix, .. } => format!("zip entry '{prefix}data/{key}'"),
            Store::Legacy { blobs } => match blobs.get(key) {
                Some((_, at)) => format!("legacy data at byte {at}"),
                None => "legacy storage records".into(),
            },
        }
    }

    /// Finds the state dict in the object tree (see [`find_state_dict`]).
    pub fn state_dict(&self) -> Result<StateDict<'_>> {
        find_state_dict(&self.root).map_err(|message| Error::StateDict { file: self.file.clone(), message })
    }

    /// Copies one tensor out of its storage as a contiguous little-endian
    /// tensor. `name` is used in error messages.
    pub fn materialize(&self, name: &str, tensor: &TensorRef) -> Result<RawTensor> {
        let mut budget = MAX_EXPANSION_BYTES;
        self.materialize_with(name, tensor, &mut budget, &mut HashMap::new())
    }

    /// Finds the state dict and materialises its tensors.
    pub fn to_weight_file(&self) -> Result<WeightFile> {
        let sd = self.state_dict()?;
        let mut budget = MAX_EXPANSION_BYTES;
        let mut cache = HashMap::new();
        let mut tensors = BTreeMap::new();
        for (key, t) in &sd.tensors {
            let raw = self.materialize_with(key, t, &mut budget, &mut cache)?;
            tensors.insert(key.clone(), raw);
        }
        Ok(WeightFile {
            format: self.format,
            tensors,
            metadata: HashMap::new(),
            state_dict_entry: sd.entry,
            other_entries: sd.other_entries,
        })
    }

    fn materialize_with(
        &self,
        name: &str,
        t: &TensorRef,
        budget: &mut u64,
        cache: &mut HashMap<String, Cow<'a, [u8]>>,
    ) -> Result<RawTensor> {
        let terr = |message: String| Error::Tensor { file: self.file.clone(), tensor: name.into(), message };
        let s = &t.storage;
        let dtype = s.dtype.ok_or_else(|| terr(format!("unsupported storage type {} (no matching element type)", s.storage_type)))?;
        let es = dtype.size() as u64;
        if !cache.contains_key(&s.key) {
            let b = self.storage_bytes(&s.key)?;
            cache.insert(s.key.clone(), b);
        }
        let bytes: &[u8] = cache.get(&s.key).map(|c| c.as_ref()).unwrap_or(&[]);
        let serr = |message: String| Error::Storage {
            file: self.file.clone(),
            key: s.key.clone(),
            location: self.storage_location(&s.key),
            message,
        };
        let declared =
            s.numel.checked_mul(es).ok_or_else(|| serr(format!("declares {} elements of {es} bytes: the size overflows", s.numel)))?;
        if (bytes.len() as u64) < declared {
            return Err(serr(format!(
                "holds {} bytes, but the pickle declares {} elements of {dtype} = {declared} bytes (expected {declared}, actual {})",
                bytes.len(),
                s.numel,
                bytes.len()
            )));
        }
        let (base, limit) = match s.view {
            None => (0, s.numel),
            Some((off, n)) => {
                if off.checked_add(n).is_none_or(|end| end > s.numel) {
                    return Err(serr(format!("legacy storage view (offset {off}, {n} elements) exceeds its {} elements", s.numel)));
                }
                (off, n)
            }
        };
        if t.shape.len() != t.stride.len() {
            return Err(terr(format!("shape {:?} and stride {:?} have different ranks", t.shape, t.stride)));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| terr(format!("shape {:?}: the element count overflows", t.shape)))?;
        let out_bytes = numel
            .checked_mul(es)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| terr(format!("shape {:?}: the byte size overflows", t.shape)))?;
        let shape = t
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| terr(format!("shape {:?} does not fit in memory", t.shape)))?;
        if numel == 0 {
            return Ok(RawTensor { dtype, shape, bytes: Vec::new() });
        }
        let max = t.shape.iter().zip(&t.stride).try_fold(t.offset, |a, (&d, &st)| (d - 1).checked_mul(st).and_then(|x| a.checked_add(x)));
        match max {
            Some(m) if m < limit => {}
            _ => {
                return Err(terr(format!(
                    "view (storage offset {}, shape {:?}, stride {:?}) reaches element {} but storage '{}' has {limit} elements",
                    t.offset,
                    t.shape,
                    t.stride,
                    max.map_or_else(|| "beyond 2^64".to_owned(), |m| m.to_string()),
                    s.key
                )))
            }
        }
        let avail = limit * es; // ≤ declared ≤ bytes.len()
        if out_bytes as u64 > avail {
            let extra = out_bytes as u64 - avail;
            if extra > *budget {
                return Err(terr(format!(
                    "broadcast view of shape {:?} (stride {:?}) would expand {avail} storage bytes to {out_bytes}: over the limit of {MAX_EXPANSION_BYTES} expanded bytes per file",
                    t.shape, t.stride
                )));
            }
            *budget -= extra;
        }
        let src = &bytes[(base * es) as usize..((base + limit) * es) as usize];
        let out = gather(src, es as usize, t.offset, &t.shape, &t.stride, out_bytes)
            .ok_or_else(|| terr("internal error: view out of bounds".into()))?;
        let mut out = out;
        if self.big_endian && es > 1 {
            for c in out.chunks_exact_mut(es as usize) {
                c.reverse();
            }
        }
        Ok(RawTensor { dtype, shape, bytes: out })
    }
}

/// Copies the strided view to a contiguous buffer. The caller has checked
/// that every index is in bounds; `None` if that were not so.
fn gather(src: &[u8], es: usize, offset: u64, shape: &[u64], stride: &[u64], out_bytes: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(out_bytes);
    let el = |i: u64| -> Option<&[u8]> {
        let i = usize::try_from(i).ok()?;
        src.get(i.checked_mul(es)?..i.checked_mul(es)?.checked_add(es)?)
    };
    let rank = shape.len();
    if rank == 0 {
        out.extend_from_slice(el(offset)?);
        return Some(out);
    }
    // Row-major contiguous (dims of size 1 may have any stride): one copy.
    let mut expect = 1u64;
    let mut contiguous = true;
    for k in (0..rank).rev() {
        if shape[k] != 1 && stride[k] != expect {
            contiguous = false;
            break;
        }
        expect = expect.saturating_mul(shape[k]);
    }
    if contiguous {
        let start = usize::try_from(offset).ok()?.checked_mul(es)?;
        out.extend_from_slice(src.get(start..start.checked_add(out_bytes)?)?);
        return Some(out);
    }
    let (inner_n, inner_st) = (shape[rank - 1], stride[rank - 1]);
    let mut idx = vec![0u64; rank - 1];
    let mut row = offset;
    loop {
        if inner_st == 1 {
            let a = usize::try_from(row).ok()?.checked_mul(es)?;
            let len = usize::try_from(inner_n).ok()?.checked_mul(es)?;
            out.extend_from_slice(src.get(a..a.checked_add(len)?)?);
        } else {
            let mut e = row;
            for _ in 0..inner_n {
                out.extend_from_slice(el(e)?);
                e = e.wrapping_add(inner_st);
            }
        }
        // Advance the outer indices (wrapping arithmetic: intermediate values
        // past the last row are undone before use).
        let mut k = rank - 1;
        loop {
            if k == 0 {
                return Some(out);
            }
            k -= 1;
            idx[k] += 1;
            row = row.wrapping_add(stride[k]);
            if idx[k] < shape[k] {
                break;
            }
            row = row.wrapping_sub(stride[k].wrapping_mul(shape[k]));
            idx[k] = 0;
        }
    }
}

fn key_name(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("<{}>", other.kind()),
    }
}

enum Shape<'v> {
    NotDict,
    Tensors(Vec<(String, &'v TensorRef)>),
    /// Some tensors and a value that is not one (or a key that is not a string).
    Mixed {
        key: String,
        kind: String,
    },
    NoTensors,
}

fn classify(v: &Value) -> Shape<'_> {
    let Value::Dict(items) = v else {
        return Shape::NotDict;
    };
    let mut tensors = Vec::with_capacity(items.len());
    let mut bad = None;
    for (k, v) in items {
        match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => tensors.push((k.clone(), t)),
            (k, Value::Tensor(_)) => {
                bad.get_or_insert((key_name(k), format!("key of type {}", k.kind())));
            }
            (k, v) => {
                bad.get_or_insert((key_name(k), v.kind()));
            }
        }
    }
    match bad {
        None if tensors.is_empty() && !items.is_empty() => Shape::NoTensors,
        None => Shape::Tensors(tensors),
        Some(_) if tensors.is_empty() => Shape::NoTensors,
        Some((key, kind)) => Shape::Mixed { key, kind },
    }
}

/// Finds the state dict in a `.pth` object tree: the root if it is a dict of
/// string → tensor (or empty), else the first of [`STATE_DICT_ENTRIES`]
/// that is a non-empty one. The error message lists what was found.
pub fn find_state_dict(root: &Value) -> std::result::Result<StateDict<'_>, String> {
    let Value::Dict(items) = root else {
        return Err(format!(
            "the root object is a {}, not a dict: no state dict to read{}",
            root.kind(),
            if matches!(root, Value::Object { .. }) {
                " (a pickled nn.Module? re-save it with torch.save(model.state_dict(), path))"
            } else {
                ""
            }
        ));
    };
    match classify(root) {
        Shape::Tensors(tensors) => {
            return Ok(StateDict { entry: None, tensors, other_entries: Vec::new() });
        }
        Shape::Mixed { key, kind } => {
            if !STATE_DICT_ENTRIES.iter().any(|e| root.get(e).is_some()) {
                return Err(format!("the root dict holds tensors, but key '{key}' holds a {kind}, not a tensor: not a state dict"));
            }
        }
        Shape::NotDict | Shape::NoTensors => {}
    }
    let mut notes = Vec::new();
    for name in STATE_DICT_ENTRIES {
        let Some(v) = root.get(name) else { continue };
        match classify(v) {
            Shape::Tensors(tensors) if !tensors.is_empty() => {
                let mut other_entries: Vec<String> = Vec::new();
                for (k, _) in items {
                    let k = key_name(k);
                    if k != name && !other_entries.contains(&k) {
                        other_entries.push(k);
                    }
                }
                return Ok(StateDict { entry: Some(name.to_owned()), tensors, other_entries });
            }
            Shape::Mixed { key, kind } => {
                return Err(format!("entry '{name}' holds tensors, but its key '{key}' holds a {kind}, not a tensor"));
            }
            Shape::Tensors(_) => notes.push(format!("'{name}' is an empty dict")),
            Shape::NoTensors => notes.push(format!("'{name}' is a dict without tensors")),
            Shape::NotDict => notes.push(format!("'{name}' is a {}", v.kind())),
        }
    }
    let keys: Vec<String> = items.iter().take(20).map(|(k, _)| format!("'{}'", key_name(k))).collect();
    Err(format!(
        "no state dict found: the root dict's keys are [{}{}] and none of {} holds a dict of tensors{}",
        keys.join(", "),
        if items.len() > 20 { ", …" } else { "" },
        STATE_DICT_ENTRIES.join("/"),
        if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
    ))
}
