//! The SN-Net description file: which anchors, and how the space is enumerated.
//!
//! ```json
//! {
//!   "anchors": ["deit_tiny_patch16_224", "deit_small_patch16_224",
//!               {"arch": "vit", "img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 64,
//!                "depth": 12, "num_heads": 4, "mlp_ratio": 4.0, "qkv_bias": true, "num_classes": 10}],
//!   "space": {"kernel_size": 2, "stride": 1, "nearest_stitching": true},
//!   "behaviour": {"final_norm_on_stitched": false}
//! }
//! ```
//!
//! SN-Netv2's two-way space of two anchors, the shallower first: `"space": {"kind": "two_way"}`.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use snnet_core::{
    cost::route_cost, net::PackSummary, AnchorCosts, AnchorLayout, Behaviour, Kernels, RouteCost, SpaceSettings, StitchSpace, StitchedNet,
};

use crate::{
    error::{Error, Result},
    family::{family_defaults, preset_names, AnyAnchor, Architecture, ARCHITECTURES},
};

/// The metadata entry of a weight file that holds the [`Description`] of its network (JSON).
pub const DESCRIPTION_METADATA: &str = "snnet.description";

/// One anchor: a preset name or an explicit architecture.
///
/// Read from JSON by [`AnchorSpec::from_json_value`], whose errors name the field at fault and
/// what was expected.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AnchorSpec {
    /// A preset, e.g. `deit_small_patch16_224`.
    Preset(String),
    /// Explicit fields.
    Explicit(Architecture),
}

impl<'de> Deserialize<'de> for AnchorSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_json_value(value).map_err(serde::de::Error::custom)
    }
}

impl AnchorSpec {
    /// One anchor of a description from its JSON value: a string is a preset name (checked when
    /// resolved), an object an explicit architecture (`arch`, one of [`ARCHITECTURES`], and that
    /// family's fields). The error names the field at fault and what was expected.
    pub fn from_json_value(value: serde_json::Value) -> std::result::Result<Self, String> {
        use serde_json::Value;
        let mut fields = match value {
            Value::String(name) => return Ok(AnchorSpec::Preset(name)),
            Value::Object(fields) => fields,
            other => {
                return Err(format!(
                    "expected a preset name (a string such as \"{}\") or an object with `arch` ({}) and that family's fields, got {}",
                    preset_names()[0],
                    ARCHITECTURES.join(", "),
                    json_kind(&other)
                ))
            }
        };
        let arch = match fields.remove("arch") {
            Some(Value::String(arch)) => arch,
            Some(other) => return Err(format!("arch: expected one of {}, got {}", ARCHITECTURES.join(", "), json_kind(&other))),
            None => {
                return Err(format!(
                    "an explicit anchor needs `arch` (one of {}) beside its fields; or give a preset name: {}",
                    ARCHITECTURES.join(", "),
                    preset_names().join(", ")
                ))
            }
        };
        let fields = Value::Object(fields);
        let Some(architecture) = Architecture::from_fields(&arch, fields) else {
            return Err(format!("arch: unknown architecture `{arch}`, expected one of {}", ARCHITECTURES.join(", ")));
        };
        architecture.map(AnchorSpec::Explicit).map_err(|e| format!("{arch} anchor: {e}"))
    }

    /// The architecture, resolving presets.
    pub fn architecture(&self) -> Result<Architecture> {
        match self {
            AnchorSpec::Explicit(a) => Ok(a.clone()),
            AnchorSpec::Preset(name) => Architecture::preset(name),
        }
    }

    /// A short name for tables and layouts.
    pub fn name(&self) -> String {
        match self {
            AnchorSpec::Preset(n) => n.clone(),
            AnchorSpec::Explicit(a) => a.short_name(),
        }
    }

    /// The anchor's layout, without building it (after checking its fields and
    /// [`limits`](crate::limits)).
    pub fn layout(&self) -> Result<AnchorLayout> {
        let a = self.architecture()?;
        a.validate()?;
        Ok(a.layout(&self.name()))
    }

    /// Per-part costs at the native resolution, without building the anchor (after checking its
    /// fields and [`limits`](crate::limits)).
    pub fn costs(&self) -> Result<AnchorCosts> {
        let a = self.architecture()?;
        a.validate()?;
        Ok(a.costs())
    }

    /// Builds the anchor with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<AnyAnchor<B>> {
        self.architecture()?.init(&self.name(), device)
    }
}

/// What a JSON value is, for error messages: `the number 5`, `an array`, ….
fn json_kind(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A whole SN-Net: anchors in order, space settings, behaviour switches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// Anchors, front (smallest) first.
    pub anchors: Vec<AnchorSpec>,
    /// Enumeration settings (official DeiT defaults when absent).
    #[serde(default)]
    pub space: SpaceSettings,
    /// Official behaviour or corrections.
    #[serde(default)]
    pub behaviour: Behaviour,
}

impl Description {
    /// Anchors given by name (presets), with their family's official space settings and behaviour
    /// ([`family_defaults`]).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        let anchors: Vec<AnchorSpec> = names.iter().map(|n| AnchorSpec::Preset(n.as_ref().to_string())).collect();
        let (space, behaviour) = Self::defaults_for(&anchors);
        Self { anchors, space, behaviour }
    }

    /// Parses a description from JSON text; `space` and `behaviour`, when absent, take the
    /// family's official values ([`family_defaults`]).
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let fail = |e: serde_json::Error| Error::Description { path: source.into(), reason: e.to_string() };
        let value: serde_json::Value = serde_json::from_str(text).map_err(fail)?;
        let mut d: Self = serde_path_to_error::deserialize(value.clone())
            .map_err(|e| Error::Description { path: source.into(), reason: e.to_string() })?;
        if d.anchors.is_empty() {
            return Err(Error::Description { path: source.into(), reason: "`anchors` is empty".into() });
        }
        let (space, behaviour) = Self::defaults_for(&d.anchors);
        if value.get("space").is_none() {
            d.space = space;
        }
        if value.get("behaviour").is_none() {
            d.behaviour = behaviour;
        }
        Ok(d)
    }

    /// The family defaults of `anchors`; anchors that do not resolve (reported later) count as DeiT.
    fn defaults_for(anchors: &[AnchorSpec]) -> (SpaceSettings, Behaviour) {
        let architectures: Vec<Architecture> = anchors.iter().filter_map(|a| a.architecture().ok()).collect();
        family_defaults(&architectures)
    }

    /// Reads a description file (a regular file: a named pipe or a directory is an error, see
    /// [`snnet_core::read_regular_file`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let fail = |reason: String| Error::Description { path: shown.clone(), reason };
        let bytes = snnet_core::read_regular_file(path).map_err(|e| fail(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|e| fail(format!("not UTF-8 text: {e}")))?;
        Self::from_json(&text, &shown)
    }

    /// Layouts of every anchor, without building them; an anchor's error names it (`anchors[1]`).
    pub fn layouts(&self) -> Result<Vec<AnchorLayout>> {
        self.anchors.iter().enumerate().map(|(i, a)| a.layout().map_err(|e| e.in_anchor(i))).collect()
    }

    /// The stitch space and the cost of every route, without building any tensor. Anchors over
    /// the [`limits`](crate::limits) and spaces over the route limit
    /// ([`snnet_core::limits::max_routes`]) are errors before anything is enumerated.
    pub fn space_with_costs(&self) -> Result<(StitchSpace, Vec<RouteCost>)> {
        let layouts = self.layouts()?;
        let costs = self.anchors.iter().map(AnchorSpec::costs).collect::<Result<Vec<_>>>()?;
        let space = StitchSpace::build(&layouts, &self.space)?;
        let routes = space
            .routes
            .iter()
            .map(|r| route_cost(r, &layouts, &costs, &space.layers, self.behaviour.stitched_final_norm(&self.space)))
            .collect();
        Ok((space, routes))
    }

    /// Builds the stitched network with random weights. The whole network (every anchor's
    /// parameters and index tables, every stitching layer) is checked against the parameter limit
    /// ([`limits::max_params`](crate::limits::max_params)) before anything is allocated.
    pub fn build<B: Kernels>(&self, device: &B::Device) -> Result<StitchedNet<B, AnyAnchor<B>>> {
        self.check_network_size()?;
        let anchors = self.anchors.iter().map(|a| a.init::<B>(device)).collect::<Result<Vec<_>>>()?;
        Ok(StitchedNet::new(anchors, &self.space, self.behaviour.clone(), device)?)
    }

    /// [`build`](Self::build) with the parameters left lazy ([`StitchedNet::unmaterialized`]): for
    /// a network whose weights are loaded next, above all from a route pack, whose unused parts then
    /// never take memory.
    pub fn build_unmaterialized<B: Kernels>(&self, device: &B::Device) -> Result<StitchedNet<B, AnyAnchor<B>>> {
        self.check_network_size()?;
        let anchors = self.anchors.iter().map(|a| a.init::<B>(device)).collect::<Result<Vec<_>>>()?;
        Ok(StitchedNet::unmaterialized(anchors, &self.space, self.behaviour.clone(), device)?)
    }

    /// Writes a route pack of `net`, built from this description: the tensors `routes` use, with
    /// this description in the metadata ([`DESCRIPTION_METADATA`]) so that
    /// [`open_route_pack`](Self::open_route_pack) needs nothing but the file
    /// ([`StitchedNet::save_route_pack`] says what else it holds).
    pub fn save_route_pack<B: Kernels>(
        &self,
        net: &StitchedNet<B, AnyAnchor<B>>,
        routes: &[usize],
        path: &Path,
        extra: std::collections::HashMap<String, String>,
    ) -> Result<PackSummary> {
        // The pack holds the stitching layers merged (SN-Netv2's LoRA folded in): its network has
        // plain affine layers.
        let mut stored = self.clone();
        stored.space.lora_rank = 0;
        let mut meta = extra;
        meta.insert(DESCRIPTION_METADATA.into(), stored.to_json());
        Ok(net.save_route_pack(routes, path, meta)?)
    }

    /// Opens a route pack written by [`save_route_pack`](Self::save_route_pack): the network its
    /// metadata describes, built without initialising anything, with the pack's tensors loaded.
    /// It runs the pack's routes under their ids in the whole space. Returns the network, the
    /// description and the file's metadata.
    pub fn open_route_pack<B: Kernels>(
        path: &Path,
        device: &B::Device,
    ) -> Result<(StitchedNet<B, AnyAnchor<B>>, Self, std::collections::HashMap<String, String>)> {
        let desc = Self::from_weight_file(path)?;
        let (net, meta) = desc.build_unmaterialized::<B>(device)?.load_route_pack(path)?;
        Ok((net, desc, meta))
    }

    /// The description stored in a weight file's metadata ([`DESCRIPTION_METADATA`], which route
    /// packs and `snnet infer` outputs carry), reading the file's header only.
    pub fn from_weight_file(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let meta = snnet_core::weights::read_weights_metadata(path)?;
        let text = meta.get(DESCRIPTION_METADATA).ok_or_else(|| Error::Description {
            path: shown.clone(),
            reason: format!("the file holds no `{DESCRIPTION_METADATA}` metadata: give the network's description (--config)"),
        })?;
        Self::from_json(text, &format!("{shown} (`{DESCRIPTION_METADATA}` metadata)"))
    }

    /// The parameters of the whole network within [`limits::max_params`](crate::limits::max_params).
    fn check_network_size(&self) -> Result<()> {
        let layouts = self.layouts()?;
        let anchors = self.anchors.iter().map(|a| Ok(a.costs()?.total().params as u128)).sum::<Result<u128>>()?;
        let space = StitchSpace::build(&layouts, &self.space)?;
        let stitching: u128 = space.layers.iter().map(|l| snnet_core::cost::stitch_cost(l).params as u128).sum();
        crate::limits::require_params(anchors + stitching, "parameters in the network (anchors and stitching layers)")
    }

    /// JSON text of the description (stored in weight files as `snnet.description`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a description serialises")
    }
}
