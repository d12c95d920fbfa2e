//! `StitchedNet`: a family of anchors, the stitching layers between them, and every route through them.

use std::{collections::HashMap, path::Path, time::Instant};

use burn::{
    module::Module,
    tensor::{backend::Backend, ElementConversion, Tensor},
};
use faer::Mat;
use serde::{Deserialize, Serialize};

use crate::{
    anchor::Anchor,
    cost::{route_cost, RouteCost},
    error::{Error, Result},
    features::Features,
    layout::{AnchorCosts, AnchorLayout},
    lstsq::{accumulate_cross, solve, NormalEquations},
    space::{Route, SpaceSettings, StitchSpace},
    stitching_layer::StitchingLayer,
    weights::{export_tensors, first_difference, import_tensors_where, read_weights, write_safetensors, LoadedWeights, TensorMap},
    Kernels,
};

/// Version of snnet's weight-file metadata.
pub const FORMAT_VERSION: &str = "1";

/// Switches between the official implementation's behaviour and our corrections (docs/design.md,
/// "Official behaviour"). The defaults reproduce what released checkpoints depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Apply the end anchor's final norm on stitched routes. Official DeiT skips it (spec §9 B1):
    /// `false` (default) reproduces that; `true` corrects it (then retrain).
    pub final_norm_on_stitched: bool,
}

/// The network's identity as stored in weight files: anchor layouts, space settings, behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkDescription {
    /// Layout of each anchor, in order.
    pub anchors: Vec<AnchorLayout>,
    /// Space settings.
    pub space: SpaceSettings,
    /// Behaviour switches.
    pub behaviour: Behaviour,
}

/// Where a feature is taken inside an anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Boundary {
    /// Input of a block (after any stage transition).
    Input(usize),
    /// Output of a block.
    Output(usize),
}

/// Progress of least-squares initialisation.
#[derive(Clone, Copy, Debug)]
pub struct LsProgress {
    /// Calibration images processed.
    pub images_done: usize,
    /// Calibration images in total.
    pub images_total: usize,
}

/// What least-squares initialisation did, per stitching layer.
#[derive(Clone, Debug, Serialize)]
pub struct LsLayerReport {
    /// Official key of the layer.
    pub key: String,
    /// Positions averaged.
    pub positions: usize,
    /// Smallest number of singular values kept over its positions.
    pub min_rank: usize,
    /// Largest condition number (of the kept part) over its positions.
    pub max_condition: f64,
}

/// Summary of a least-squares initialisation.
#[derive(Clone, Debug, Serialize)]
pub struct LsReport {
    /// Calibration images used.
    pub images: usize,
    /// Seconds spent running anchors and accumulating normal equations.
    pub seconds_features: f64,
    /// Of `seconds_features`, the part spent running anchors and reading features back.
    pub seconds_forward: f64,
    /// Seconds spent solving.
    pub seconds_solve: f64,
    /// Per-layer details.
    pub layers: Vec<LsLayerReport>,
}

/// Anchors stitched into one network with many routes, switchable at run time.
#[derive(Module, Debug)]
pub struct StitchedNet<B: Backend, A> {
    /// The anchors, in order (`anchors.{i}.…` in weight files).
    pub anchors: Vec<A>,
    /// Stitching layers in [`StitchSpace::layers`] order (`stitch_layers.…` in weight files).
    pub stitch_layers: Vec<StitchingLayer<B>>,
    #[module(skip)]
    space: StitchSpace,
    #[module(skip)]
    layouts: Vec<AnchorLayout>,
    #[module(skip)]
    route_costs: Vec<RouteCost>,
    #[module(skip)]
    behaviour: Behaviour,
    #[module(skip)]
    selected: usize,
}

impl<B: Kernels, A: Anchor<B>> StitchedNet<B, A> {
    /// Stitches `anchors` with fresh stitching layers (PyTorch's default Linear init).
    pub fn new(anchors: Vec<A>, settings: &SpaceSettings, behaviour: Behaviour, device: &B::Device) -> Result<Self> {
        let layouts: Vec<AnchorLayout> = anchors.iter().map(|a| a.layout().clone()).collect();
        let space = StitchSpace::build(&layouts, settings)?;
        let stitch_layers = space.layers.iter().map(|s| StitchingLayer::new(s.in_channels, s.out_channels, s.out_kind, device)).collect();
        let costs: Vec<AnchorCosts> = anchors.iter().map(|a| a.costs()).collect();
        let route_costs =
            space.routes.iter().map(|r| route_cost(r, &layouts, &costs, &space.layers, behaviour.final_norm_on_stitched)).collect();
        let net = Self { anchors, stitch_layers, space, layouts, route_costs, behaviour, selected: 0 };
        // burn initialises parameters lazily, drawing from the backend's RNG on first use; touching
        // them all now, in module order, makes a seeded network independent of which route runs first.
        net.visit(&mut Materialize);
        Ok(net)
    }

    /// Seeds every anchor's stochastic layers (drop path) for the next training forward; a
    /// training loop calls it once per step with a seed derived from the step.
    pub fn reseed(&self, seed: u64) {
        for (i, anchor) in self.anchors.iter().enumerate() {
            anchor.reseed(crate::rng::SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64());
        }
    }

    /// The stitch space.
    pub fn space(&self) -> &StitchSpace {
        &self.space
    }

    /// Anchor layouts.
    pub fn layouts(&self) -> &[AnchorLayout] {
        &self.layouts
    }

    /// Behaviour switches.
    pub fn behaviour(&self) -> &Behaviour {
        &self.behaviour
    }

    /// Number of routes.
    pub fn num_routes(&self) -> usize {
        self.space.num_routes()
    }

    /// The route with official id `id`.
    pub fn route(&self, id: usize) -> Result<&Route> {
        self.space.route(id)
    }

    /// FLOPs and parameters of every route, indexed by route id.
    pub fn costs(&self) -> &[RouteCost] {
        &self.route_costs
    }

    /// Selects the route used by [`forward_selected`](Self::forward_selected) (the official
    /// `reset_stitch_id`). Switching is free: nothing is reloaded or allocated.
    pub fn select(&mut self, id: usize) -> Result<()> {
        self.space.route(id)?;
        self.selected = id;
        Ok(())
    }

    /// The selected route id.
    pub fn selected(&self) -> usize {
        self.selected
    }

    /// Runs the selected route.
    pub fn forward_selected(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        self.forward(images, self.selected)
    }

    /// Runs route `id` on images `[batch, channels, height, width]`, giving logits `[batch, classes]`.
    pub fn forward(&self, images: Tensor<B, 4>, id: usize) -> Result<Tensor<B, 2>> {
        let route = self.space.route(id)?;
        self.check_input(&images, route.comb_id[0])?;
        Ok(self.forward_route(images, route))
    }

    fn check_input(&self, images: &Tensor<B, 4>, anchor: usize) -> Result<()> {
        let [b, c, h, w] = images.dims();
        let [ec, eh, ew] = self.layouts[anchor].input;
        if [c, h, w] != [ec, eh, ew] || b == 0 {
            return Err(Error::Shape {
                what: format!("input images of anchor {anchor} (`{}`)", self.layouts[anchor].name),
                expected: vec![b.max(1), ec, eh, ew],
                actual: vec![b, c, h, w],
            });
        }
        Ok(())
    }

    fn forward_route(&self, images: Tensor<B, 4>, route: &Route) -> Tensor<B, 2> {
        if route.is_anchor() {
            return self.anchors[route.comb_id[0]].forward(images);
        }
        let mut x: Option<Features<B>> = None;
        for (i, seg) in route.segments.iter().enumerate() {
            let anchor = &self.anchors[seg.anchor];
            let input = match x.take() {
                None => anchor.embed(images.clone()),
                Some(f) => self.stitch_layers[route.slots[i - 1]].forward(f),
            };
            x = Some(anchor.blocks(input, seg.blocks.clone()));
        }
        let last = route.segments.last().expect("a route has segments").anchor;
        self.anchors[last].head(x.expect("a route runs blocks"), self.behaviour.final_norm_on_stitched)
    }

    /// Least-squares initialisation of every stitching layer from a calibration batch (spec §1.4).
    ///
    /// Each anchor runs once over the images (in chunks of `chunk` images, bounding memory); the
    /// normal equations of every position are accumulated in f64; each layer is set to the mean of
    /// the pseudo-inverse solutions of the positions that share it. Features are taken in inference
    /// mode (no drop-path), a deliberate, documented deviation from the official training-mode init.
    pub fn init_least_squares(&mut self, images: Tensor<B, 4>, chunk: usize, mut progress: impl FnMut(LsProgress)) -> Result<LsReport> {
        let total = images.dims()[0];
        if total == 0 {
            return Err(Error::LeastSquares("the calibration batch is empty".into()));
        }
        let chunk = chunk.max(1);
        let t0 = Instant::now();
        // What each anchor must provide, and the normal equations to accumulate.
        let mut needed: Vec<Vec<Boundary>> = vec![Vec::new(); self.anchors.len()];
        let mut grams: HashMap<(usize, usize), NormalEquations> = HashMap::new();
        // (slot, position index) -> (front key, end anchor, end block, cross)
        let mut crosses: Vec<(usize, (usize, usize), usize, usize, Mat<f64>)> = Vec::new();
        for (s, slot) in self.space.layers.iter().enumerate() {
            for &pos in &slot.positions {
                let (jg, kg) = slot.global_position(&self.layouts, pos);
                for (a, b) in [(slot.front, Boundary::Output(jg)), (slot.end, Boundary::Input(kg))] {
                    if !needed[a].contains(&b) {
                        needed[a].push(b);
                    }
                }
                grams.entry((slot.front, jg)).or_insert_with(|| NormalEquations::new(slot.in_channels));
                crosses.push((s, (slot.front, jg), slot.end, kg, Mat::zeros(slot.in_channels + 1, slot.out_channels)));
            }
        }
        let mut start = 0;
        let mut seconds_forward = 0.0;
        while start < total {
            let end = (start + chunk).min(total);
            let batch = images.clone().narrow(0, start, end - start);
            if !is_finite(&batch) {
                return Err(Error::NonFinite(format!("calibration images {start}..{end}")));
            }
            let mut feats: HashMap<(usize, Boundary), Vec<f32>> = HashMap::new();
            let t_forward = Instant::now();
            for (a, wanted) in needed.iter().enumerate() {
                if !wanted.is_empty() {
                    self.check_input(&batch, a)?;
                    self.collect_features(a, batch.clone(), wanted, &mut feats)?;
                }
            }
            seconds_forward += t_forward.elapsed().as_secs_f64();
            for (&(a, jg), normal) in grams.iter_mut() {
                let xa = normal.add_rows(&feats[&(a, Boundary::Output(jg))]);
                for (_, front, e, kg, cross) in crosses.iter_mut() {
                    if *front == (a, jg) {
                        accumulate_cross(cross, &xa, &feats[&(*e, Boundary::Input(*kg))]);
                    }
                }
            }
            start = end;
            progress(LsProgress { images_done: end, images_total: total });
        }
        let seconds_features = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut layers = Vec::new();
        for (s, slot) in self.space.layers.iter().enumerate() {
            let mine: Vec<_> = crosses.iter().filter(|c| c.0 == s).collect();
            if mine.is_empty() {
                continue;
            }
            let (cin, cout) = (slot.in_channels, slot.out_channels);
            let (mut w, mut b) = (vec![0f64; cout * cin], vec![0f64; cout]);
            let (mut min_rank, mut max_condition) = (usize::MAX, 0f64);
            for (_, front, _, _, cross) in &mine {
                let sol = solve(&grams[front], cross).map_err(|e| Error::LeastSquares(format!("stitching layer `{}`: {e}", slot.key())))?;
                w.iter_mut().zip(&sol.weight).for_each(|(a, v)| *a += v);
                b.iter_mut().zip(&sol.bias).for_each(|(a, v)| *a += v);
                min_rank = min_rank.min(sol.rank);
                max_condition = max_condition.max(sol.condition);
            }
            let n = mine.len() as f64;
            let w: Vec<f32> = w.iter().map(|v| (v / n) as f32).collect();
            let b: Vec<f32> = b.iter().map(|v| (v / n) as f32).collect();
            self.stitch_layers[s].set_affine(&w, &b);
            layers.push(LsLayerReport { key: slot.key(), positions: mine.len(), min_rank, max_condition });
        }
        Ok(LsReport { images: total, seconds_features, seconds_forward, seconds_solve: t1.elapsed().as_secs_f64(), layers })
    }

    /// Runs anchor `a` on `images` and stores the rows of every wanted boundary.
    fn collect_features(
        &self,
        a: usize,
        images: Tensor<B, 4>,
        wanted: &[Boundary],
        out: &mut HashMap<(usize, Boundary), Vec<f32>>,
    ) -> Result<()> {
        let anchor = &self.anchors[a];
        let layout = &self.layouts[a];
        let last = wanted
            .iter()
            .map(|b| match *b {
                Boundary::Input(i) => i,
                Boundary::Output(i) => i,
            })
            .max()
            .unwrap_or(0);
        let mut store = |b: Boundary, x: &Features<B>| -> Result<()> {
            if wanted.contains(&b) {
                let rows = x.clone().into_rows();
                let data = rows
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| Error::LeastSquares(format!("cannot read features of anchor {a}: {e:?}")))?;
                if data.iter().any(|v| !v.is_finite()) {
                    return Err(Error::NonFinite(format!("features of anchor {a} (`{}`) at {b:?}", layout.name)));
                }
                out.insert((a, b), data);
            }
            Ok(())
        };
        let mut x = anchor.embed(images);
        for i in 0..=last {
            if i > 0 && layout.stage_of(i) != layout.stage_of(i - 1) {
                x = anchor.transition(x, layout.stage_of(i));
            }
            store(Boundary::Input(i), &x)?;
            x = anchor.block(x, i);
            store(Boundary::Output(i), &x)?;
        }
        Ok(())
    }

    /// The official key (`stitch_layers.{pair}.{layer}.…`, `anchors.{i}.…`) of a parameter given
    /// by its key under burn's module path (stitching layers are numbered by slot there).
    pub fn official_key(&self, module_key: &str) -> String {
        official_key_of(&self.space, module_key)
    }

    /// The description stored in weight files.
    pub fn description(&self) -> NetworkDescription {
        NetworkDescription { anchors: self.layouts.clone(), space: self.space.settings.clone(), behaviour: self.behaviour.clone() }
    }

    /// Every parameter under its official key, in PyTorch orientation (1×1 conv shape for
    /// stitching layers on maps).
    pub fn named_tensors(&self) -> Vec<(String, crate::weights::NamedTensor)> {
        let mut tensors = export_tensors::<B, _>(self, &|p| official_key_of(&self.space, p));
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
    pub fn save(&self, path: &Path, extra: HashMap<String, String>) -> Result<()> {
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
        self.check_description(&loaded.metadata, &shown)?;
        let before = loaded.tensors.len();
        let net = self.load_state(&mut loaded.tensors, StatePart::All, &shown)?;
        Ok((net, loaded, before))
    }

    /// Refuses metadata written for another network or another format version.
    fn check_description(&self, meta: &HashMap<String, String>, shown: &str) -> Result<()> {
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
        if let Some(anchor) = self.anchors.get(index) {
            own = anchor.adapt_checkpoint(own);
        }
        let mut tensors: TensorMap = own.into_iter().map(|(k, v)| (format!("anchors.{index}.{k}"), v)).collect();
        let net = self.load_state(&mut tensors, StatePart::Anchor(index), &shown)?;
        Ok((net, loaded))
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

/// Forces lazily initialised parameters into existence.
struct Materialize;

impl<B: Backend> burn::module::ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Maps burn's path of a stitching layer (`stitch_layers.{slot}.…`) to its official key.
fn official_key_of(space: &StitchSpace, path: &str) -> String {
    if let Some(rest) = path.strip_prefix("stitch_layers.") {
        if let Some((slot, tail)) = rest.split_once('.') {
            if let Some(layer) = slot.parse::<usize>().ok().and_then(|s| space.layers.get(s)) {
                return format!("{}.{tail}", layer.key());
            }
        }
    }
    path.to_string()
}

fn is_finite<B: Backend>(t: &Tensor<B, 4>) -> bool {
    let bad = t.clone().is_nan().int().sum() + t.clone().is_inf().int().sum();
    bad.into_scalar().elem::<i64>() == 0
}
