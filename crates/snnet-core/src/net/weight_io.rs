//! Weight files of a stitched network: official keys, snnet's metadata, partial loads.

use std::{collections::HashMap, path::Path};

use super::{NetworkDescription, StitchedNet};
use crate::{
    anchor::Anchor,
    error::{Error, Result},
    space::StitchSpace,
    stitch::Stitch,
    weights::{export_tensors_where, first_difference, import_tensors_where, read_weights, write_safetensors, LoadedWeights, TensorMap},
    Kernels,
};

/// Version of snnet's weight-file metadata.
pub const FORMAT_VERSION: &str = "1";

impl<B: Kernels, A: Anchor<B>, L: Stitch<B>> StitchedNet<B, A, L> {
    /// The official key (`stitch_layers.{pair}.{layer}.…`, `anchors.{i}.…`) of a parameter given
    /// by its key under burn's module path (stitching layers are numbered by slot there).
    pub fn official_key(&self, module_key: &str) -> String {
        official_key_of(&self.space, module_key)
    }

    /// The description stored in weight files.
    pub fn description(&self) -> NetworkDescription {
        NetworkDescription { anchors: self.layouts.clone(), space: self.space.settings.clone(), behaviour: self.behaviour.clone() }
    }

    /// Every parameter under its official key, in PyTorch orientation (1×1 conv shape for the
    /// affine stitching layers' `transform.weight` on maps).
    pub fn named_tensors(&self) -> Vec<(String, crate::weights::NamedTensor)> {
        self.named_tensors_where(&|_| true)
    }

    /// [`named_tensors`](Self::named_tensors) for the keys that `wanted` accepts; the other
    /// parameters are not read.
    pub(super) fn named_tensors_where(&self, wanted: &dyn Fn(&str) -> bool) -> Vec<(String, crate::weights::NamedTensor)> {
        let mut tensors = export_tensors_where::<B, _>(self, &|p| official_key_of(&self.space, p), wanted);
        for slot in self.space.layers.iter().filter(|s| s.in_kind == crate::layout::FeatureKind::Map) {
            let key = format!("{}.transform.weight", slot.key());
            if let Some((_, t)) = tensors.iter_mut().find(|(k, _)| *k == key) {
                t.shape.extend([1, 1]);
            }
        }
        tensors
    }

    /// Writes an snnet weight file: official key layout, PyTorch orientation, and the network
    /// description plus `extra` entries in the safetensors metadata.
    /// A network loaded from a route pack saves as a route pack of its routes.
    pub fn save(&self, path: &Path, extra: HashMap<String, String>) -> Result<()> {
        if let Some(routes) = &self.pack_routes {
            return self.save_route_pack(routes, path, extra).map(|_| ());
        }
        let mut meta = extra;
        meta.insert("format".into(), "snnet".into());
        meta.insert("format_version".into(), FORMAT_VERSION.into());
        meta.insert("snnet.network".into(), serde_json::to_string(&self.description()).expect("serialisable"));
        write_safetensors(path, &self.named_tensors(), meta)
    }

    /// Writes anchor `index` alone as a timm-style state dict (keys without the `anchors.{i}.`
    /// prefix, PyTorch orientation), the file [`load_anchor`](Self::load_anchor) and timm read;
    /// `extra` goes into the metadata with the anchor's layout.
    pub fn save_anchor(&self, index: usize, path: &Path, extra: HashMap<String, String>) -> Result<()> {
        let layout = self.layouts.get(index).ok_or_else(|| Error::WeightFile {
            path: path.display().to_string(),
            reason: format!("anchor {index} does not exist: the network has {} anchors", self.anchors.len()),
        })?;
        let prefix = format!("anchors.{index}.");
        let tensors: Vec<_> =
            self.named_tensors().into_iter().filter_map(|(k, t)| k.strip_prefix(&prefix).map(|k| (k.to_string(), t))).collect();
        let mut meta = extra;
        meta.insert("snnet.anchor".into(), serde_json::to_string(layout).expect("serialisable"));
        write_safetensors(path, &tensors, meta)
    }

    /// Loads a weight file: an snnet file (its stored description must equal this network's; the
    /// first difference is the error), or an official SN-Net checkpoint (`.pth` as the official
    /// training script saves it, or its state dict as safetensors), whose keys are the same.
    /// Missing, mis-shaped and unexpected tensors are errors. Returns the network and the file's
    /// metadata.
    pub fn load(self, path: &Path) -> Result<(Self, HashMap<String, String>)> {
        let (net, loaded, _) = self.load_with_report(path)?;
        Ok((net, loaded.metadata))
    }

    /// [`load`](Self::load), also returning what was read (format, skipped buffers, casts) and the
    /// number of tensors loaded.
    pub fn load_with_report(self, path: &Path) -> Result<(Self, LoadedWeights, usize)> {
        let shown = path.display().to_string();
        let mut loaded = read_weights(path)?;
        if let Some(routes) = loaded.metadata.get(super::ROUTES_METADATA) {
            return Err(Error::WeightFile {
                path: shown,
                reason: format!("a route pack of routes {routes}, not a whole network: load it as a route pack"),
            });
        }
        self.check_description(&loaded.metadata, &shown)?;
        let before = loaded.tensors.len();
        let net = self.load_state(&mut loaded.tensors, StatePart::All, &shown)?;
        Ok((net, loaded, before))
    }

    /// Refuses metadata written for another network or another format version.
    pub(super) fn check_description(&self, meta: &HashMap<String, String>, shown: &str) -> Result<()> {
        if let Some(version) = meta.get("format_version") {
            if version != FORMAT_VERSION {
                return Err(Error::WeightFile {
                    path: shown.into(),
                    reason: format!("format version {version}, this snnet reads version {FORMAT_VERSION}"),
                });
            }
        }
        if let Some(stored) = meta.get("snnet.network") {
            let file: serde_json::Value = serde_json::from_str(stored)
                .map_err(|e| Error::WeightFile { path: shown.into(), reason: format!("corrupt `snnet.network` metadata: {e}") })?;
            let net = serde_json::to_value(self.description()).expect("serialisable");
            if let Some(difference) = first_difference("", &file, &net) {
                return Err(Error::DescriptionMismatch { path: shown.into(), difference });
            }
        }
        Ok(())
    }

    /// Loads `part` of the network from a state dict under the official keys (`anchors.{a}.…`,
    /// `stitch_layers.…`), removing the tensors it uses. A DataParallel `module.` prefix on every
    /// key is dropped. Parameters outside `part` keep their values; missing and mis-shaped tensors
    /// of `part`, and tensors left over, are errors naming the keys (`source` names the file).
    pub fn load_state(self, tensors: &mut TensorMap, part: StatePart, source: &str) -> Result<Self> {
        if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module.")) {
            *tensors = std::mem::take(tensors).into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
        }
        if let StatePart::Anchor(a) = part {
            if a >= self.anchors.len() {
                return Err(Error::WeightFile {
                    path: source.into(),
                    reason: format!("anchor {a} does not exist: the network has {} anchors", self.anchors.len()),
                });
            }
        }
        let prefix = match part {
            StatePart::All => String::new(),
            StatePart::Anchor(a) => format!("anchors.{a}."),
            StatePart::StitchingLayers => "stitch_layers.".into(),
        };
        self.adapt_anchor_checkpoints(tensors);
        let space = self.space.clone();
        let net =
            import_tensors_where::<B, _>(self, tensors, &|p: &str| official_key_of(&space, p), &|k: &str| k.starts_with(&prefix), source)?;
        if !tensors.is_empty() {
            let keys: Vec<_> = tensors.iter().take(5).map(|(k, t)| format!("`{k}` {:?}", t.shape)).collect();
            return Err(Error::WeightFile {
                path: source.into(),
                reason: format!("{} unexpected tensor(s) not in this network, e.g. {}", tensors.len(), keys.join(", ")),
            });
        }
        Ok(net)
    }

    /// Loads anchor `index` from a checkpoint of that model alone (timm keys, e.g. a DeiT release
    /// `.pth` or a timm safetensors file). Returns the network and what was read.
    pub fn load_anchor(self, index: usize, path: &Path) -> Result<(Self, LoadedWeights)> {
        let shown = path.display().to_string();
        let loaded = read_weights(path)?;
        if let (Some(stored), Some(layout)) = (loaded.metadata.get("snnet.anchor"), self.layouts.get(index)) {
            let file: serde_json::Value = serde_json::from_str(stored)
                .map_err(|e| Error::WeightFile { path: shown.clone(), reason: format!("corrupt `snnet.anchor` metadata: {e}") })?;
            let ours = serde_json::to_value(layout).expect("serialisable");
            if let Some(difference) = first_difference("", &file, &ours) {
                return Err(Error::DescriptionMismatch { path: shown, difference });
            }
        }
        let mut own = loaded.tensors.clone();
        if !own.is_empty() && own.keys().all(|k| k.starts_with("module.")) {
            own = own.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
        }
        let mut tensors: TensorMap = own.into_iter().map(|(k, v)| (format!("anchors.{index}.{k}"), v)).collect();
        let net = self.load_state(&mut tensors, StatePart::Anchor(index), &shown)?;
        Ok((net, loaded))
    }
}

impl<B: Kernels, A: Anchor<B>, L: Stitch<B>> StitchedNet<B, A, L> {
    /// Renames each anchor's tensors (`anchors.{a}.…`) from other layouts of its family to its own
    /// ([`Anchor::adapt_checkpoint`]: e.g. DeiT-III's `gamma_1` to timm's `ls1.gamma`).
    fn adapt_anchor_checkpoints(&self, tensors: &mut TensorMap) {
        for (a, anchor) in self.anchors.iter().enumerate() {
            let prefix = format!("anchors.{a}.");
            let keys: Vec<String> = tensors.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
            if keys.is_empty() {
                continue;
            }
            let own: TensorMap =
                keys.iter().filter_map(|k| tensors.remove_entry(k)).map(|(k, v)| (k[prefix.len()..].to_string(), v)).collect();
            tensors.extend(anchor.adapt_checkpoint(own).into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
        }
    }
}

/// Which parameters [`StitchedNet::load_state`] loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatePart {
    /// Every anchor and every stitching layer.
    All,
    /// Anchor `i` only (`anchors.{i}.…`).
    Anchor(usize),
    /// The stitching layers only.
    StitchingLayers,
}

/// Maps burn's path of a stitching layer (`stitch_layers.{slot}.…`) to its official key.
pub(super) fn official_key_of(space: &StitchSpace, path: &str) -> String {
    if let Some(rest) = path.strip_prefix("stitch_layers.") {
        if let Some((slot, tail)) = rest.split_once('.') {
            if let Some(layer) = slot.parse::<usize>().ok().and_then(|s| space.layers.get(s)) {
                return format!("{}.{tail}", layer.key());
            }
        }
    }
    path.to_string()
}
