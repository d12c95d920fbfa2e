//! The stitch space: every route through a family of anchors and the stitching layers they share.
//!
//! Pure data, no tensors. Built by the official strategies in the official order so that route ids
//! (`cfg_id`) and stitching-layer keys match the official SN-Net implementation exactly.

mod strategies;
mod two_way;

use std::ops::Range;

use serde::{Deserialize, Serialize};

pub use strategies::{combinations, nearest_map, paired_stitching, unpaired_stitching, PairedStitching, PairedVariant, Position};
pub use two_way::TwoWayStitching;

use crate::{
    error::{Error, Result},
    layout::{AnchorLayout, FeatureKind},
};

/// Which enumeration builds the space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpaceKind {
    /// SN-Net's spaces: from each anchor to the next (or to every later one), through the paired
    /// window or stage by stage — the official spaces of the four v1 families.
    #[default]
    OneWay,
    /// SN-Netv2's two-way space (spec §11.2): two single-stage anchors, the shallower first (the
    /// deeper one of equal or twice its depth); routes S→L, L→S, L→S→L and S→L→S, and the end
    /// anchor's final norm on every route.
    TwoWay,
}

impl SpaceKind {
    fn is_one_way(&self) -> bool {
        *self == SpaceKind::OneWay
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How the space is enumerated. The defaults are the official DeiT settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpaceSettings {
    /// One-way (SN-Net, the default) or two-way (SN-Netv2). The window settings below belong to
    /// the one-way spaces; a two-way space takes them at their defaults.
    #[serde(skip_serializing_if = "SpaceKind::is_one_way")]
    pub kind: SpaceKind,
    /// Rank of SN-Netv2's low-rank (LoRA) update in every stitching layer (spec §11.5); 0 (the
    /// default): the plain affine layer. At most the narrower width of every layer.
    #[serde(skip_serializing_if = "is_zero")]
    pub lora_rank: usize,
    /// Window size of the paired sliding window (official 2).
    pub kernel_size: usize,
    /// Window stride (official 1).
    pub stride: usize,
    /// Stitch only consecutive anchors, one stitch per route (official `true`). `false` adds every
    /// anchor pair and the multi-anchor chains (DeiT-Ti/S/B: 732 routes).
    pub nearest_stitching: bool,
    /// `None`: stitch across all blocks (DeiT). `Some(stages)`: stage-wise stitching of the listed
    /// stages (Swin `[0, 1, 2]`, ResNet `[1, 2]`, LeViT `[0, 1]`).
    pub stitched_stages: Option<Vec<usize>>,
    /// Which positions the paired window keeps (DeiT `all`, Swin/LeViT `forward`, ResNet
    /// `forward_no_entry`).
    pub paired_variant: PairedVariant,
}

impl Default for SpaceSettings {
    /// Stitching across all blocks (the official DeiT settings): kernel 2, stride 1, nearest
    /// stitching, every paired position.
    fn default() -> Self {
        Self {
            kind: SpaceKind::OneWay,
            lora_rank: 0,
            kernel_size: 2,
            stride: 1,
            nearest_stitching: true,
            stitched_stages: None,
            paired_variant: PairedVariant::All,
        }
    }
}

impl SpaceSettings {
    /// SN-Netv2's two-way space (spec §11.2).
    pub fn two_way() -> Self {
        Self { kind: SpaceKind::TwoWay, ..Self::default() }
    }

    /// Stage-wise stitching of `stages`, keeping the paired positions of `paired_variant`
    /// (kernel 2, stride 1, nearest stitching, as every official space).
    pub fn stage_wise(stages: Vec<usize>, paired_variant: PairedVariant) -> Self {
        Self { stitched_stages: Some(stages), paired_variant, ..Self::default() }
    }

    fn validate(&self) -> Result<()> {
        let bad = |setting: &str, reason: &str| Err(Error::InvalidSettings { setting: setting.into(), reason: reason.into() });
        if self.kernel_size == 0 {
            return bad("kernel_size", "must be at least 1");
        }
        if self.kernel_size > crate::limits::MAX_KERNEL_SIZE {
            let reason = format!(
                "{} is over the limit of {} (the window enumerates kernel_size² pairs at every position)",
                self.kernel_size,
                crate::limits::MAX_KERNEL_SIZE
            );
            return bad("kernel_size", &reason);
        }
        if self.stride == 0 {
            return bad("stride", "must be at least 1");
        }
        if self.kind == SpaceKind::TwoWay {
            let one_way = Self::default();
            let window = [
                ("kernel_size", self.kernel_size != one_way.kernel_size),
                ("stride", self.stride != one_way.stride),
                ("nearest_stitching", self.nearest_stitching != one_way.nearest_stitching),
                ("stitched_stages", self.stitched_stages.is_some()),
                ("paired_variant", self.paired_variant != one_way.paired_variant),
            ];
            if let Some((setting, _)) = window.iter().find(|(_, set)| *set) {
                return bad(
                    setting,
                    "belongs to the one-way spaces; a two-way space (`kind: two_way`) stitches across all blocks of two single-stage anchors, without a window",
                );
            }
        }
        if self.stitched_stages.is_some() && !self.nearest_stitching {
            return bad(
                "nearest_stitching",
                "stage-wise stitching only joins consecutive anchors; `false` is not supported with `stitched_stages`",
            );
        }
        Ok(())
    }
}

/// A contiguous run of one anchor's blocks inside a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The anchor.
    pub anchor: usize,
    /// Global block indices run.
    pub blocks: Range<usize>,
}

/// One route (the official "stitch config").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Official id, dense in enumeration order.
    pub cfg_id: usize,
    /// Anchors traversed front to end.
    pub comb_id: Vec<usize>,
    /// Stage of the stitch for stage-wise spaces.
    pub stage_id: Option<usize>,
    /// Stitch positions `(j, k)` (within the stage for stage-wise spaces).
    pub stitch_cfgs: Vec<Position>,
    /// Official stitching-layer id of each stitch (within its pair and stage).
    pub stitch_layers: Vec<usize>,
    /// Index into [`StitchSpace::layers`] of each stitch.
    pub slots: Vec<usize>,
    /// The blocks each anchor runs, in order.
    pub segments: Vec<Segment>,
    /// Whether joint training samples the route. Every route but one of a two-way space: the
    /// official code keeps the S→L route from the last small block out of training (spec §11.2).
    #[serde(default = "always")]
    pub trained: bool,
}

fn always() -> bool {
    true
}

impl Route {
    /// A plain anchor (no stitch).
    pub fn is_anchor(&self) -> bool {
        self.comb_id.len() == 1
    }

    /// SN-Netv2's `stitch_layer_ids`: the layer after each segment, `-1` (its identity) after the
    /// last; empty for an anchor.
    pub fn official_stitch_layer_ids(&self) -> Vec<i64> {
        if self.is_anchor() {
            return Vec::new();
        }
        self.stitch_layers.iter().map(|&l| l as i64).chain([-1]).collect()
    }

    /// SN-Netv2's `route`: each segment's first and last block (inclusive), the last segment's end
    /// written as its anchor's depth, as the official code writes it; empty for an anchor.
    pub fn official_segments(&self) -> Vec<[usize; 2]> {
        if self.is_anchor() {
            return Vec::new();
        }
        let last = self.segments.len() - 1;
        self.segments
            .iter()
            .enumerate()
            .map(|(n, seg)| [seg.blocks.start, if n == last { seg.blocks.end } else { seg.blocks.end - 1 }])
            .collect()
    }
}

/// One stitching layer of the space and the positions that share it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSlot {
    /// Position of the stage in the stitched-stage list (the key's stage level), stage-wise only.
    pub stage_key: Option<usize>,
    /// The stage itself, stage-wise only.
    pub stage_id: Option<usize>,
    /// Index of the anchor pair in the key.
    pub pair_key: usize,
    /// Front anchor.
    pub front: usize,
    /// End anchor.
    pub end: usize,
    /// Official layer id within the pair (and stage).
    pub layer: usize,
    /// Input channels (front width).
    pub in_channels: usize,
    /// Output channels (end width).
    pub out_channels: usize,
    /// Feature kind on the front side.
    pub in_kind: FeatureKind,
    /// Feature kind on the end side (a map→tokens layer reshapes, as ResNet → Swin does).
    pub out_kind: FeatureKind,
    /// Rows per image (tokens or `h·w`) at the stitch.
    pub rows_per_image: usize,
    /// Positions `(j, k)` that use this layer, in order of first use; least squares averages them.
    pub positions: Vec<Position>,
    /// Rank of the layer's low-rank update ([`SpaceSettings::lora_rank`]; 0: none).
    pub lora_rank: usize,
}

impl LayerSlot {
    /// Key prefix in the official state dict, e.g. `stitch_layers.1.6` or `stitch_layers.2.0.5`.
    pub fn key(&self) -> String {
        match self.stage_key {
            Some(s) => format!("stitch_layers.{s}.{}.{}", self.pair_key, self.layer),
            None => format!("stitch_layers.{}.{}", self.pair_key, self.layer),
        }
    }

    /// Global block index of the front anchor's block `j` and end anchor's block `k` of a position.
    pub fn global_position(&self, layouts: &[AnchorLayout], (j, k): Position) -> (usize, usize) {
        match self.stage_id {
            Some(s) => (layouts[self.front].stage_start(s) + j, layouts[self.end].stage_start(s) + k),
            None => (j, k),
        }
    }
}

/// All routes and stitching layers of a family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StitchSpace {
    /// The settings it was built with.
    pub settings: SpaceSettings,
    /// Routes, indexed by `cfg_id`.
    pub routes: Vec<Route>,
    /// Stitching layers in key order.
    pub layers: Vec<LayerSlot>,
}

impl StitchSpace {
    /// Enumerates the space of `anchors` (in the order given; it matters, spec §9 B5/B6). The
    /// routes are counted first ([`count_routes`]): more than the limit in force
    /// ([`limits::max_routes`](crate::limits::max_routes): 100,000 unless `SNNET_MAX_ROUTES` says
    /// otherwise) is [`Error::TooManyRoutes`], before anything is built.
    pub fn build(anchors: &[AnchorLayout], settings: &SpaceSettings) -> Result<Self> {
        Self::build_with_limit(anchors, settings, crate::limits::max_routes()?)
    }

    /// [`StitchSpace::build`] with an explicit route limit instead of the environment's.
    pub fn build_with_limit(anchors: &[AnchorLayout], settings: &SpaceSettings, max_routes: u64) -> Result<Self> {
        let count = count_routes(anchors, settings)?;
        if count > max_routes {
            return Err(Error::TooManyRoutes { count, limit: max_routes });
        }
        let mut builder = Builder { anchors, lora_rank: settings.lora_rank, routes: Vec::new(), layers: Vec::new() };
        for a in 0..anchors.len() {
            let n = anchors[a].num_blocks();
            builder.push_route(vec![a], None, vec![], vec![], vec![], vec![Segment { anchor: a, blocks: 0..n }]);
        }
        match (settings.kind, &settings.stitched_stages) {
            (SpaceKind::TwoWay, _) => builder.two_way()?,
            (SpaceKind::OneWay, None) => builder.global(settings)?,
            (SpaceKind::OneWay, Some(stages)) => builder.stagewise(settings, stages)?,
        }
        Ok(StitchSpace { settings: settings.clone(), routes: builder.routes, layers: builder.layers })
    }

    /// Number of routes.
    pub fn num_routes(&self) -> usize {
        self.routes.len()
    }

    /// The route with official id `cfg_id`.
    pub fn route(&self, cfg_id: usize) -> Result<&Route> {
        self.routes.get(cfg_id).ok_or(Error::UnknownRoute { id: cfg_id, num_routes: self.routes.len() })
    }

    /// Ids of the routes joint training samples ([`Route::trained`]): all but, in a two-way space,
    /// the one the official code keeps out.
    pub fn trained_routes(&self) -> Vec<usize> {
        self.routes.iter().filter(|r| r.trained).map(|r| r.cfg_id).collect()
    }
}

struct Builder<'a> {
    anchors: &'a [AnchorLayout],
    lora_rank: usize,
    routes: Vec<Route>,
    layers: Vec<LayerSlot>,
}

impl Builder<'_> {
    fn push_route(
        &mut self,
        comb_id: Vec<usize>,
        stage_id: Option<usize>,
        stitch_cfgs: Vec<Position>,
        stitch_layers: Vec<usize>,
        slots: Vec<usize>,
        segments: Vec<Segment>,
    ) -> &mut Route {
        for (&slot, &pos) in slots.iter().zip(&stitch_cfgs) {
            let positions = &mut self.layers[slot].positions;
            if !positions.contains(&pos) {
                positions.push(pos);
            }
        }
        let cfg_id = self.routes.len();
        self.routes.push(Route { cfg_id, comb_id, stage_id, stitch_cfgs, stitch_layers, slots, segments, trained: true });
        self.routes.last_mut().expect("just pushed")
    }

    /// Adds the stitching layers of one anchor pair; returns the slot index of its layer 0.
    fn add_slots(
        &mut self,
        stage: Option<(usize, usize)>,
        pair_key: usize,
        (front, end): (usize, usize),
        num_layers: usize,
    ) -> Result<usize> {
        let (fl, el) = (&self.anchors[front], &self.anchors[end]);
        // Width and grid at the stitch: the stage's (stage-wise) or the first stage's (global;
        // global stitching requires one width per anchor, checked here).
        let (fs, es) = match stage {
            Some((_, s)) => (&fl.stages[s], &el.stages[s]),
            None => {
                for l in [fl, el] {
                    if l.stages.windows(2).any(|w| w[0].channels != w[1].channels || w[0].rows_per_image != w[1].rows_per_image) {
                        return Err(Error::IncompatibleAnchors(format!(
                            "anchor `{}` changes width or resolution between stages; use stage-wise stitching (`stitched_stages`)",
                            l.name
                        )));
                    }
                }
                (&fl.stages[0], &el.stages[0])
            }
        };
        let where_ = stage.map(|(_, s)| format!(" at stage {s}")).unwrap_or_default();
        if fs.rows_per_image != es.rows_per_image {
            return Err(Error::IncompatibleAnchors(format!(
                "anchors {front} (`{}`) and {end} (`{}`) have {} and {} tokens per image{where_}; a stitch cannot change resolution",
                fl.name, el.name, fs.rows_per_image, es.rows_per_image
            )));
        }
        if fs.kind == FeatureKind::Tokens && es.kind == FeatureKind::Map {
            return Err(Error::IncompatibleAnchors(format!(
                "anchor {front} (`{}`) produces tokens but anchor {end} (`{}`) expects maps{where_}; tokens→map stitching is not supported",
                fl.name, el.name
            )));
        }
        if self.lora_rank > fs.channels.min(es.channels) {
            return Err(Error::InvalidSettings {
                setting: "lora_rank".into(),
                reason: format!(
                    "rank {} is larger than the stitching layers from anchor {front} (`{}`, {} channels) to anchor {end} (`{}`, {} channels){where_}",
                    self.lora_rank, fl.name, fs.channels, el.name, es.channels
                ),
            });
        }
        let first = self.layers.len();
        for layer in 0..num_layers {
            self.layers.push(LayerSlot {
                stage_key: stage.map(|(k, _)| k),
                stage_id: stage.map(|(_, s)| s),
                pair_key,
                front,
                end,
                layer,
                in_channels: fs.channels,
                out_channels: es.channels,
                in_kind: fs.kind,
                out_kind: es.kind,
                rows_per_image: fs.rows_per_image,
                positions: Vec::new(),
                lora_rank: self.lora_rank,
            });
        }
        Ok(first)
    }

    /// DeiT-style: paired window over all blocks, anchor combinations (spec §2.2).
    fn global(&mut self, settings: &SpaceSettings) -> Result<()> {
        let n = self.anchors.len();
        let depth = equal_depth(self.anchors)?;
        let paired = paired_stitching(depth, settings.kernel_size, settings.stride, settings.paired_variant);
        let pairs: Vec<(usize, usize)> = if settings.nearest_stitching {
            (1..n).map(|i| (i - 1, i)).collect()
        } else {
            combinations(n, 2).into_iter().map(|c| (c[0], c[1])).collect()
        };
        let mut first_slot = Vec::new();
        for (key, &pair) in pairs.iter().enumerate() {
            first_slot.push(self.add_slots(None, key, pair, paired.num_layers)?);
        }
        let slot_of = |a: usize, b: usize, layer: usize| -> usize {
            let key = pairs.iter().position(|&p| p == (a, b)).expect("pair enumerated");
            first_slot[key] + layer
        };
        let combs: Vec<Vec<usize>> = if settings.nearest_stitching {
            pairs.iter().map(|&(a, b)| vec![a, b]).collect()
        } else {
            (2..=n).flat_map(|r| combinations(n, r)).collect()
        };
        let choices: Vec<(Position, usize)> = paired.positions.iter().copied().zip(paired.layers.iter().copied()).collect();
        for comb in combs {
            for chain in chains(&choices, comb.len() - 1) {
                let stitch_cfgs: Vec<Position> = chain.iter().map(|&(p, _)| p).collect();
                let stitch_layers: Vec<usize> = chain.iter().map(|&(_, l)| l).collect();
                let slots = (0..chain.len()).map(|i| slot_of(comb[i], comb[i + 1], stitch_layers[i])).collect();
                let segments = chain_segments(&comb, &stitch_cfgs, depth);
                self.push_route(comb.clone(), None, stitch_cfgs, stitch_layers, slots, segments);
            }
        }
        Ok(())
    }

    /// Swin/ResNet/LeViT-style: one stitch between consecutive anchors inside each listed stage.
    fn stagewise(&mut self, settings: &SpaceSettings, stages: &[usize]) -> Result<()> {
        let n = self.anchors.len();
        for (stage_key, &s) in stages.iter().enumerate() {
            stage_exists(self.anchors, s)?;
            for i in 1..n {
                let stitching = stage_pair_stitching(self.anchors, settings, s, i)?;
                let first = self.add_slots(Some((stage_key, s)), i - 1, (i - 1, i), stitching.num_layers)?;
                let (front_start, end_start) = (self.anchors[i - 1].stage_start(s), self.anchors[i].stage_start(s));
                let end_blocks = self.anchors[i].num_blocks();
                for (&(j, k), &layer) in stitching.positions.iter().zip(&stitching.layers) {
                    let segments = vec![
                        Segment { anchor: i - 1, blocks: 0..front_start + j + 1 },
                        Segment { anchor: i, blocks: end_start + k..end_blocks },
                    ];
                    self.push_route(vec![i - 1, i], Some(s), vec![(j, k)], vec![layer], vec![first + layer], segments);
                }
            }
        }
        Ok(())
    }
}

impl Builder<'_> {
    /// SN-Netv2: S→L, L→S, L→S→L, S→L→S (spec §11.2). Layer slots: the S→L list
    /// (`stitch_layers.0.{i}`), then the L→S list (`stitch_layers.1.{i}`).
    fn two_way(&mut self) -> Result<()> {
        let stitching = two_way_stitching(self.anchors)?;
        let (d0, d1) = (self.anchors[0].num_blocks(), self.anchors[1].num_blocks());
        let sl_first = self.add_slots(None, 0, (0, 1), stitching.small_to_large.len())?;
        let ls_first = self.add_slots(None, 1, (1, 0), stitching.large_to_small.len())?;
        let sl = |b: usize| (stitching.small_to_large[b], b, sl_first + b);
        let ls = |a: usize| {
            let (pos, layer) = stitching.large_to_small[a];
            (pos, layer, ls_first + layer)
        };
        let depths = [d0, d1];
        let push = |builder: &mut Self, comb_id: Vec<usize>, stitches: Vec<(Position, usize, usize)>| {
            let cfgs: Vec<Position> = stitches.iter().map(|s| s.0).collect();
            let segments = chain_segments(&comb_id, &cfgs, depths[*comb_id.last().expect("a route has anchors")]);
            let layers = stitches.iter().map(|s| s.1).collect();
            let slots = stitches.iter().map(|s| s.2).collect();
            builder.push_route(comb_id, None, cfgs, layers, slots, segments).cfg_id
        };
        for b in 0..stitching.small_to_large.len() {
            let id = push(self, vec![0, 1], vec![sl(b)]);
            self.routes[id].trained = !stitching.leaves_after_last_small_block(stitching.small_to_large[b]);
        }
        for a in 0..stitching.large_to_small.len() {
            push(self, vec![1, 0], vec![ls(a)]);
        }
        for (a, b) in stitching.large_small_large() {
            push(self, vec![1, 0, 1], vec![ls(a), sl(b)]);
        }
        for (b, a) in stitching.small_large_small() {
            push(self, vec![0, 1, 0], vec![sl(b), ls(a)]);
        }
        Ok(())
    }
}

/// The segments of a route through anchors `comb` with stitches `stitch_cfgs`: each anchor runs
/// from where the previous stitch entered it (block 0 for the first) through the block its stitch
/// leaves after; the last anchor runs to its end, `end_depth`.
fn chain_segments(comb: &[usize], stitch_cfgs: &[Position], end_depth: usize) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut start = 0;
    for (&anchor, &(j, k)) in comb.iter().zip(stitch_cfgs) {
        segments.push(Segment { anchor, blocks: start..j + 1 });
        start = k;
    }
    segments.push(Segment { anchor: *comb.last().expect("a route has anchors"), blocks: start..end_depth });
    segments
}

/// The two-way positions of `anchors`, after checking they can form a two-way space: exactly two
/// anchors, the shallower first, the deeper of equal or twice its depth.
fn two_way_stitching(anchors: &[AnchorLayout]) -> Result<TwoWayStitching> {
    let [small, large] = anchors else {
        return Err(Error::IncompatibleAnchors(format!(
            "a two-way space joins exactly two anchors, the shallower first; {} given",
            anchors.len()
        )));
    };
    let (d0, d1) = (small.num_blocks(), large.num_blocks());
    if d0 > d1 {
        return Err(Error::IncompatibleAnchors(format!(
            "a two-way space takes the shallower anchor first: anchor 0 (`{}`) has {d0} blocks, anchor 1 (`{}`) has {d1}; swap them",
            small.name, large.name
        )));
    }
    if d1 != d0 && d1 != 2 * d0 {
        return Err(Error::IncompatibleAnchors(format!(
            "a two-way space needs the deeper anchor to have the shallower's depth or twice it (the official layer numbering, spec §11.2): `{}` has {d0} blocks, `{}` has {d1}",
            small.name, large.name
        )));
    }
    Ok(TwoWayStitching::new(d0, d1))
}

/// The depth every anchor of a global (DeiT-style) space shares.
fn equal_depth(anchors: &[AnchorLayout]) -> Result<usize> {
    let depth = anchors[0].num_blocks();
    match anchors.iter().enumerate().find(|(_, l)| l.num_blocks() != depth) {
        None => Ok(depth),
        Some((i, l)) => Err(Error::IncompatibleAnchors(format!(
            "stitching across all blocks needs anchors of equal depth: anchor 0 (`{}`) has {depth} blocks, anchor {i} (`{}`) has {}; SN-Netv2's two-way space (`\"kind\": \"two_way\"`, `--two-way`) joins two anchors of depths d and 2d (or equal depths)",
            anchors[0].name,
            l.name,
            l.num_blocks()
        ))),
    }
}

/// Stage `s` must exist in every anchor of a stage-wise space.
fn stage_exists(anchors: &[AnchorLayout], s: usize) -> Result<()> {
    match anchors.iter().find(|l| s >= l.stages.len()) {
        None => Ok(()),
        Some(l) => Err(Error::InvalidSettings {
            setting: "stitched_stages".into(),
            reason: format!("stage {s} does not exist in anchor `{}` ({} stages)", l.name, l.stages.len()),
        }),
    }
}

/// The positions between anchors `i - 1` and `i` inside stage `s`: paired for equal depths,
/// unpaired (nearest) for a deeper end anchor.
fn stage_pair_stitching(anchors: &[AnchorLayout], settings: &SpaceSettings, s: usize, i: usize) -> Result<PairedStitching> {
    let (d0, d1) = (anchors[i - 1].stages[s].depth, anchors[i].stages[s].depth);
    match d0.cmp(&d1) {
        std::cmp::Ordering::Equal => Ok(paired_stitching(d0, settings.kernel_size, settings.stride, settings.paired_variant)),
        std::cmp::Ordering::Less => Ok(unpaired_stitching(d0, d1, settings.paired_variant == PairedVariant::ForwardNoEntry)),
        std::cmp::Ordering::Greater => Err(Error::IncompatibleAnchors(format!(
            "stage-wise stitching needs anchors in non-decreasing depth (spec §9 B6): at stage {s}, anchor {} (`{}`) has {d0} blocks but anchor {i} (`{}`) has {d1}",
            i - 1,
            anchors[i - 1].name,
            anchors[i].name
        ))),
    }
}

/// The number of routes [`StitchSpace::build`] enumerates for `anchors` and `settings`, counted
/// without building any (saturating at `u64::MAX`): the time and memory of this count grow with
/// the anchors' depth and number, not with the routes. Settings and anchors that cannot be
/// stitched are the errors `build` gives.
pub fn count_routes(anchors: &[AnchorLayout], settings: &SpaceSettings) -> Result<u64> {
    settings.validate()?;
    if anchors.is_empty() {
        return Err(Error::IncompatibleAnchors("no anchors given".into()));
    }
    if settings.kind == SpaceKind::TwoWay {
        return Ok(two_way_stitching(anchors)?.num_routes() as u64);
    }
    let n = anchors.len() as u64;
    let stitched = match &settings.stitched_stages {
        None => {
            let depth = equal_depth(anchors)?;
            let paired = paired_stitching(depth, settings.kernel_size, settings.stride, settings.paired_variant);
            if settings.nearest_stitching {
                (n - 1).saturating_mul(paired.positions.len() as u64)
            } else {
                count_chained_routes(n, &paired.positions)
            }
        }
        Some(stages) => {
            let mut total = 0u64;
            for &s in stages {
                stage_exists(anchors, s)?;
                for i in 1..anchors.len() {
                    total = total.saturating_add(stage_pair_stitching(anchors, settings, s, i)?.positions.len() as u64);
                }
            }
            total
        }
    };
    Ok(n.saturating_add(stitched))
}

/// Stitched routes of a global space with every anchor combination: for each combination of `r`
/// anchors (`C(n, r)` of them) every chain of `r − 1` stitches ([`chains`]), counted by dynamic
/// programming over the positions instead of enumerated; stops once the count saturates.
fn count_chained_routes(n: u64, positions: &[Position]) -> u64 {
    // Chains of length 1 end at each position once; a chain extends by a position whose `j` is
    // at least the last position's `k`.
    let mut by_k: Vec<usize> = (0..positions.len()).collect();
    by_k.sort_by_key(|&p| positions[p].1);
    let sorted_k: Vec<usize> = by_k.iter().map(|&p| positions[p].1).collect();
    let mut ending_at = vec![1u64; positions.len()];
    let mut total = 0u64;
    let mut combinations = n as u128; // C(n, 1)
    for r in 2..=n {
        combinations = combinations.saturating_mul((n - r + 1) as u128) / r as u128;
        let chains = ending_at.iter().fold(0u64, |a, &c| a.saturating_add(c));
        if chains == 0 || combinations == 0 {
            break;
        }
        let per_combination = u64::try_from(combinations).unwrap_or(u64::MAX);
        total = total.saturating_add(per_combination.saturating_mul(chains));
        if total == u64::MAX {
            break;
        }
        // Chains one longer: prefix sums over the previous ends, ordered by their `k`.
        let mut prefix = vec![0u64; by_k.len() + 1];
        for (i, &p) in by_k.iter().enumerate() {
            prefix[i + 1] = prefix[i].saturating_add(ending_at[p]);
        }
        ending_at = positions.iter().map(|&(j, _)| prefix[sorted_k.partition_point(|&k| k <= j)]).collect();
    }
    total
}

/// Sequences of `len` stitches where each next stitch leaves its anchor no earlier than it was
/// entered (`j_next >= k_prev`: the middle anchor runs at least one block), in official order.
fn chains(choices: &[(Position, usize)], len: usize) -> Vec<Vec<(Position, usize)>> {
    fn rec(choices: &[(Position, usize)], len: usize, cur: &mut Vec<(Position, usize)>, out: &mut Vec<Vec<(Position, usize)>>) {
        if cur.len() == len {
            out.push(cur.clone());
            return;
        }
        for &c in choices {
            if cur.last().is_none_or(|&((_, k), _)| c.0 .0 >= k) {
                cur.push(c);
                rec(choices, len, cur, out);
                cur.pop();
            }
        }
    }
    let mut out = Vec::new();
    rec(choices, len, &mut Vec::new(), &mut out);
    out
}
