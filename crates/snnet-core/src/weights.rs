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
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

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

/// Tracks the module path during a visit and derives PyTorch names from it.
#[derive(Default)]
struct PathStack {
    names: Vec<String>,
    containers: Vec<String>,
}

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        self.names.push(name.to_string());
        self.containers.push(container.to_string());
    }

    fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }

    /// The PyTorch key of the parameter at the top of the stack, and whether burn stores it
    /// transposed with respect to PyTorch.
    fn torch_key(&self) -> (String, bool) {
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
        (key, parent == "Struct:Linear" && field == "weight")
    }
}

struct Exporter<'a, F: Fn(&str) -> String> {
    path: PathStack,
    remap: &'a F,
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
        let mut t = param.val();
        if transposed && D == 2 {
            t = t.transpose();
        }
        let shape = t.dims().to_vec();
        let data = t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        self.out.push(((self.remap)(&key), NamedTensor { shape, data, stored_as: "F32" }));
    }
}

/// Every float parameter of `module` under its PyTorch key (after `remap`), in PyTorch orientation.
pub fn export_tensors<B: Backend, M: Module<B>>(module: &M, remap: &impl Fn(&str) -> String) -> Vec<(String, NamedTensor)> {
    let mut exporter = Exporter { path: PathStack::default(), remap, out: Vec::new() };
    module.visit(&mut exporter);
    exporter.out
}

struct Importer<'a, F: Fn(&str) -> String> {
    path: PathStack,
    remap: &'a F,
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
        let (id, tensor, mapper) = param.consume();
        let mut expected = tensor.dims().to_vec();
        if transposed && D == 2 {
            expected.swap(0, 1);
        }
        let Some(found) = self.tensors.remove(&key) else {
            self.errors.push(format!("missing tensor `{key}` (expected shape {expected:?})"));
            return Param::from_mapped_value(id, tensor, mapper);
        };
        // A 1×1 convolution weight `[o, i, 1, 1]` loads into a channel map `[o, i]`.
        let squeezed: Vec<usize> = if found.shape.len() > expected.len() && found.shape[expected.len()..].iter().all(|&d| d == 1) {
            found.shape[..expected.len()].to_vec()
        } else {
            found.shape.clone()
        };
        if squeezed != expected {
            self.errors.push(format!("tensor `{key}` has shape {:?}, the network expects {expected:?}", found.shape));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let device = tensor.device();
        let mut value = Tensor::<B, D>::from_data(TensorData::new(found.data, expected), &device);
        if transposed && D == 2 {
            value = value.transpose();
        }
        if tensor.is_require_grad() {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
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
    let mut importer = Importer { path: PathStack::default(), remap, tensors, errors: Vec::new() };
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

fn decode(key: &str, view: &TensorView<'_>, path: &str) -> Result<NamedTensor> {
    let bytes = view.data();
    let (data, stored_as): (Vec<f32>, &'static str) = match view.dtype() {
        Dtype::F32 => (bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(), "F32"),
        Dtype::F64 => (
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
            "F64",
        ),
        Dtype::F16 => (bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(), "F16"),
        Dtype::BF16 => (bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(), "BF16"),
        other => {
            return Err(Error::WeightFile {
                path: path.into(),
                reason: format!("tensor `{key}` has dtype {other:?}; only F32, F64, F16 and BF16 are supported"),
            })
        }
    };
    Ok(NamedTensor { shape: view.shape().to_vec(), data, stored_as })
}

/// Parses safetensors bytes into tensors (cast to f32) and the metadata.
pub fn parse_safetensors(bytes: &[u8], path: &str) -> Result<(TensorMap, HashMap<String, String>)> {
    let err = |reason: String| Error::WeightFile { path: path.into(), reason };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let mut tensors = TensorMap::new();
    for (key, view) in st.iter() {
        tensors.insert(key.to_string(), decode(key, &view, path)?);
    }
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

/// Reads a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<(TensorMap, HashMap<String, String>)> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: shown.clone(), source })?;
    parse_safetensors(&bytes, &shown)
}

/// Writes tensors (f32) and metadata to `path` atomically (a temporary file renamed into place).
pub fn write_safetensors(path: &Path, tensors: &[(String, NamedTensor)], metadata: HashMap<String, String>) -> Result<()> {
    let shown = path.display().to_string();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
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
