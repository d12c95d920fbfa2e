//! Named tensors in PyTorch orientation, and safetensors files that hold them.
//!
//! burn names parameters by module field path (`blocks.3.attn.qkv.weight`); with timm's field
//! names that is already the state-dict key. Two conventions differ from PyTorch and are mapped
//! here, in one place: burn's `Linear` stores `[in, out]` (PyTorch `[out, in]`), and burn's norms
//! call their affine parameters `gamma`/`beta` (PyTorch `weight`/`bias`).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use burn::{
    module::{Module, ModuleMapper, ModuleVisitor, Param},
    tensor::{backend::Backend, Tensor, TensorData},
};
use safetensors::{tensor::TensorView, Dtype};

pub use snnet_io::Format;

use crate::error::{Error, Result};

/// A tensor with its PyTorch-style key, shape and f32 values (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Shape in PyTorch orientation.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
    /// Element type the tensor was stored in (for reporting casts).
    pub stored_as: &'static str,
}

/// Tensors by key.
pub type TensorMap = BTreeMap<String, NamedTensor>;

/// Tracks the module path during a burn visit or map (`enter_module`/`exit_module`) and derives
/// the PyTorch key of the parameter being visited from it.
#[derive(Clone, Debug, Default)]
pub struct KeyPath {
    names: Vec<String>,
    containers: Vec<String>,
}

impl KeyPath {
    /// A module was entered (`ModuleVisitor::enter_module`).
    pub fn enter(&mut self, name: &str, container: &str) {
        self.names.push(name.to_string());
        self.containers.push(container.to_string());
    }

    /// The innermost module was left.
    pub fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }

    /// The PyTorch key of the parameter at the top of the stack, and whether burn stores it
    /// transposed with respect to PyTorch.
    pub fn torch_key(&self) -> (String, bool) {
        let parent = self.containers.last().map(String::as_str).unwrap_or("");
        let field = self.names.last().map(String::as_str).unwrap_or("");
        let is_norm = matches!(parent, "Struct:LayerNorm" | "Struct:BatchNorm" | "Struct:GroupNorm");
        let renamed = match (is_norm, field) {
            (true, "gamma") => "weight",
            (true, "beta") => "bias",
            _ => field,
        };
        // Enum variants (e.g. an anchor enum's `Vit`) are not part of PyTorch keys.
        let parents = self.names.len().saturating_sub(1);
        let mut key = String::new();
        for (name, container) in self.names[..parents].iter().zip(&self.containers) {
            if !container.starts_with("Enum:") {
                key.push_str(name);
                key.push('.');
            }
        }
        key.push_str(renamed);
        // burn keeps a Linear's weight, and our stitching map's weight and LoRA factors, as
        // `[in, out]`-style transposes of PyTorch's.
        let transposed = match parent {
            "Struct:Linear" => field == "weight",
            "Struct:StitchLinear" => matches!(field, "weight" | "lora_A" | "lora_B"),
            _ => false,
        };
        (key, transposed)
    }
}

struct Exporter<'a, F: Fn(&str) -> String> {
    path: KeyPath,
    remap: &'a F,
    wanted: &'a dyn Fn(&str) -> bool,
    out: Vec<(String, NamedTensor)>,
}

impl<B: Backend, F: Fn(&str) -> String> ModuleVisitor<B> for Exporter<'_, F> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let (key, transposed) = self.path.torch_key();
        let key = (self.remap)(&key);
        if !(self.wanted)(&key) {
            return;
        }
        let mut t = param.val();
        if transposed && D == 2 {
            t = t.transpose();
        }
        let shape = t.dims().to_vec();
        let data = t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        self.out.push((key, NamedTensor { shape, data, stored_as: "F32" }));
    }
}

/// Every float parameter of `module` under its PyTorch key (after `remap`), in PyTorch orientation.
pub fn export_tensors<B: Backend, M: Module<B>>(module: &M, remap: &impl Fn(&str) -> String) -> Vec<(String, NamedTensor)> {
    export_tensors_where(module, remap, &|_| true)
}

/// [`export_tensors`] for the keys (after `remap`) that `wanted` accepts; the other parameters
/// are not read (a lazily initialised one stays uninitialised).
pub fn export_tensors_where<B: Backend, M: Module<B>>(
    module: &M,
    remap: &impl Fn(&str) -> String,
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<(String, NamedTensor)> {
    let mut exporter = Exporter { path: KeyPath::default(), remap, wanted, out: Vec::new() };
    module.visit(&mut exporter);
    exporter.out
}

struct Importer<'a, F: Fn(&str) -> String> {
    path: KeyPath,
    remap: &'a F,
    wanted: &'a dyn Fn(&str) -> bool,
    tensors: &'a mut TensorMap,
    errors: Vec<String>,
}

impl<B: Backend, F: Fn(&str) -> String> ModuleMapper<B> for Importer<'_, F> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (key, transposed) = self.path.torch_key();
        let key = (self.remap)(&key);
        if !(self.wanted)(&key) {
            return param;
        }
        // Shape and device from the parameter as declared: a lazily initialised parameter is
        // replaced without ever being initialised (a route pack loads only what its routes use).
        let stored: Vec<usize> = param.lazy_shape().iter().copied().collect();
        let mut expected = stored.clone();
        if transposed && D == 2 {
            expected.swap(0, 1);
        }
        let Some(found) = self.tensors.remove(&key) else {
            self.errors.push(format!("missing tensor `{key}` (expected shape {expected:?})"));
            return param;
        };
        // A 1×1 convolution weight `[o, i, 1, 1]` loads into a channel map `[o, i]`.
        let squeezed: Vec<usize> = if found.shape.len() > expected.len() && found.shape[expected.len()..].iter().all(|&d| d == 1) {
            found.shape[..expected.len()].to_vec()
        } else {
            found.shape.clone()
        };
        if squeezed != expected {
            self.errors.push(format!("tensor `{key}` has shape {:?}, the network expects {expected:?}", found.shape));
            return param;
        }
        // burn's `[in, out]` Linear layout, transposed on the host so the parameter is contiguous.
        let data = if transposed && D == 2 { transpose_2d(&found.data, expected[0], expected[1]) } else { found.data };
        let value = Tensor::<B, D>::from_data(TensorData::new(data, stored), &param.lazy_device());
        let id = param.id;
        param.transform_for_load(value, id)
    }
}

/// Row-major `[rows, cols]` values as row-major `[cols, rows]`.
fn transpose_2d(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for (r, row) in values.chunks_exact(cols.max(1)).enumerate() {
        for (c, v) in row.iter().enumerate() {
            out[c * rows + r] = *v;
        }
    }
    out
}

/// Loads every float parameter of `module` from `tensors` (keys after `remap`), removing the
/// tensors it uses. Missing tensors and shape mismatches are errors naming the key and both shapes;
/// tensors left in the map are the caller's to judge.
pub fn import_tensors<B: Backend, M: Module<B>>(
    module: M,
    tensors: &mut TensorMap,
    remap: &impl Fn(&str) -> String,
    source: &str,
) -> Result<M> {
    import_tensors_where(module, tensors, remap, &|_| true, source)
}

/// [`import_tensors`] restricted to the parameters whose key (after `remap`) is `wanted`; the
/// others keep their values and need no tensor.
pub fn import_tensors_where<B: Backend, M: Module<B>>(
    module: M,
    tensors: &mut TensorMap,
    remap: &impl Fn(&str) -> String,
    wanted: &dyn Fn(&str) -> bool,
    source: &str,
) -> Result<M> {
    let mut importer = Importer { path: KeyPath::default(), remap, wanted, tensors, errors: Vec::new() };
    let module = module.map(&mut importer);
    if importer.errors.is_empty() {
        Ok(module)
    } else {
        let n = importer.errors.len();
        let mut reason = importer.errors.into_iter().take(5).collect::<Vec<_>>().join("; ");
        if n > 5 {
            reason.push_str(&format!("; and {} more", n - 5));
        }
        Err(Error::WeightFile { path: source.into(), reason })
    }
}

/// Buffers that PyTorch checkpoints hold but snnet recomputes from the architecture, matched on a
/// key's last segment (or any segment, for `aux_bn`); they are skipped on import and reported:
///
/// - `num_batches_tracked`: BatchNorm's step counter (snnet uses a fixed momentum);
/// - `relative_position_index`, `relative_coords_table`, `attn_mask`: Swin's index tables and
///   shifted-window masks;
/// - `attention_bias_idxs`: LeViT's attention-bias index table;
/// - `aux_bn`: the auxiliary split-BatchNorm layers timm's `--split-bn` training adds (unused at
///   inference).
pub const RECOMPUTED_BUFFERS: [&str; 6] =
    ["num_batches_tracked", "relative_position_index", "relative_coords_table", "attn_mask", "attention_bias_idxs", "aux_bn"];

/// Whether `key` names a buffer in [`RECOMPUTED_BUFFERS`].
pub fn is_recomputed_buffer(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    RECOMPUTED_BUFFERS[..5].contains(&last) || key.split('.').any(|segment| segment == "aux_bn")
}

/// A weight file read into f32 tensors, with what it held besides.
#[derive(Clone, Debug)]
pub struct LoadedWeights {
    /// The state dict's float tensors, cast to f32, by key.
    pub tensors: TensorMap,
    /// safetensors metadata (empty for `.pth`).
    pub metadata: HashMap<String, String>,
    /// The container the tensors came from.
    pub format: snnet_io::Format,
    /// For `.pth`: the top-level entry that held the state dict (e.g. `model`).
    pub state_dict_entry: Option<String>,
    /// For `.pth`: the other top-level entries, not read (e.g. `optimizer`, `args`).
    pub other_entries: Vec<String>,
    /// Keys skipped as [recomputed buffers](RECOMPUTED_BUFFERS).
    pub skipped: Vec<String>,
    /// Tensors stored in another float type than f32, counted by type (`F16`, `BF16`, `F64`).
    pub cast: BTreeMap<&'static str, usize>,
}

/// Reads a weight file of any supported format (safetensors, PyTorch `.pth` zip or legacy):
/// recomputed buffers are skipped, float tensors cast to f32. A non-float tensor, or one holding
/// NaN or infinite values, is an error naming its key.
pub fn read_weights(path: &Path) -> Result<LoadedWeights> {
    let shown = path.display().to_string();
    let bytes = snnet_io::read_regular_file(path).map_err(|source| Error::Io { path: shown.clone(), source })?;
    parse_weights(&bytes, &shown)
}

/// The metadata of a safetensors weight file, reading its header only.
pub fn read_weights_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let shown = path.display().to_string();
    snnet_io::read_safetensors_metadata(path)
        .map_err(|e| Error::WeightFile { path: shown.clone(), reason: strip_source(&e.to_string(), &shown) })
}

/// [`read_weights`] on bytes in memory; `source` names them in errors.
pub fn parse_weights(bytes: &[u8], source: &str) -> Result<LoadedWeights> {
    let file = snnet_io::read_weights(bytes, source)
        .map_err(|e| Error::WeightFile { path: source.into(), reason: strip_source(&e.to_string(), source) })?;
    let mut loaded = LoadedWeights {
        tensors: TensorMap::new(),
        metadata: file.metadata,
        format: file.format,
        state_dict_entry: file.state_dict_entry,
        other_entries: file.other_entries,
        skipped: Vec::new(),
        cast: BTreeMap::new(),
    };
    let err = |reason: String| Error::WeightFile { path: source.into(), reason };
    for (key, raw) in file.tensors {
        if is_recomputed_buffer(&key) {
            loaded.skipped.push(key);
            continue;
        }
        if !raw.is_float() {
            return Err(err(format!(
                "tensor `{key}` has dtype {} {:?}; weights must be F32, F16, BF16 or F64",
                raw.dtype.name(),
                raw.shape
            )));
        }
        let data = raw.to_f32();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(err(format!("tensor `{key}` holds a non-finite value ({}) at flat index {i}", data[i])));
        }
        if raw.dtype != snnet_io::DType::F32 {
            *loaded.cast.entry(raw.dtype.name()).or_default() += 1;
        }
        loaded.tensors.insert(key, NamedTensor { shape: raw.shape, data, stored_as: raw.dtype.name() });
    }
    Ok(loaded)
}

/// snnet-io's messages start with the file name, which [`Error::WeightFile`] already shows.
fn strip_source(message: &str, source: &str) -> String {
    message.strip_prefix(source).map(|m| m.trim_start_matches([':', ' ']).to_string()).unwrap_or_else(|| message.to_string())
}

/// The tensors and metadata of a weight file of any supported format (see [`read_weights`]).
pub fn read_tensors(path: &Path) -> Result<(TensorMap, HashMap<String, String>)> {
    let loaded = read_weights(path)?;
    Ok((loaded.tensors, loaded.metadata))
}

/// The tensors of an input file (what a network runs on, e.g. `snnet infer --input`), read as
/// [`read_tensors`] reads weights; errors are [`Error::InputFile`], naming the file as an input
/// (a NaN in it is the input's, not a weight's).
pub fn read_input_tensors(path: &Path) -> Result<TensorMap> {
    match read_weights(path) {
        Ok(loaded) => Ok(loaded.tensors),
        Err(Error::WeightFile { path, reason }) => Err(Error::InputFile { path, reason }),
        Err(other) => Err(other),
    }
}

/// Writes tensors (f32) and metadata to `path` atomically (a temporary file renamed into place).
pub fn write_safetensors(path: &Path, tensors: &[(String, NamedTensor)], metadata: HashMap<String, String>) -> Result<()> {
    let shown = path.display().to_string();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> =
        tensors.iter().map(|(k, t)| (k.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone())).collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::WeightFile { path: shown.clone(), reason: format!("tensor `{k}`: {e}") })
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| Error::WeightFile { path: shown.clone(), reason: format!("cannot write: {e}") })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: shown, source })
}

/// The first difference between two JSON values, as `path: file X, network Y`.
pub fn first_difference(path: &str, file: &serde_json::Value, net: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (file, net) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(vb) => {
                        if let Some(d) = first_difference(&p, va, vb) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{p}: file {va}, network has no such field")),
                }
            }
            b.keys().find(|k| !a.contains_key(*k)).map(|k| {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                format!("{p}: missing in file, network {}", b[k])
            })
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!("{path}: file has {} entries, network {}", a.len(), b.len()));
            }
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| first_difference(&format!("{path}[{i}]"), x, y))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: file {a}, network {b}")),
    }
}
