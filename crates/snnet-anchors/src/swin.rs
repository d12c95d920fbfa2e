//! Swin Transformer with the module layout and parameter names of Microsoft's Swin code, which
//! timm 0.6 and the official SN-Net Swin checkpoints share: `patch_embed.{proj,norm}`,
//! `layers.{s}.blocks.{b}` (shifted-window attention with a relative position bias),
//! `layers.{s}.downsample` (patch merging at the *end* of every stage but the last), `norm`, `head`.
//! Checkpoints in current timm's layout (≥ 0.9: downsample at the start of the next stage,
//! `head.fc`) are remapped on import ([`remap_timm_v09`]).
//!
//! As an [`Anchor`], stage `s`'s patch merging is the transition *into* stage `s + 1`; blocks are
//! numbered globally across the stages.

use burn::{
    module::{Module, Param},
    nn::{conv::Conv2d, conv::Conv2dConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig},
    tensor::{backend::Backend, Int, Tensor, TensorData},
};
use serde::{Deserialize, Serialize};
use snnet_core::{
    drop_path, ops::linear_rows, weights::TensorMap, Anchor, AnchorCosts, AnchorLayout, FeatureKind, Features, Kernels, NoiseSeed, PartCost,
};

use crate::{error::Result, vit::Mlp};

/// Architecture of a Swin Transformer, with timm's constructor argument names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwinConfig {
    /// Input resolution (square).
    #[serde(default = "crate::config::img_size_224")]
    pub img_size: usize,
    /// Patch size of the stem (square).
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "crate::config::in_chans_3")]
    pub in_chans: usize,
    /// Width of stage 0; stage `s` has `embed_dim · 2^s`.
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Attention window (square); a stage whose grid is no larger uses the whole grid, unshifted.
    #[serde(default = "default_window_size")]
    pub window_size: usize,
    /// MLP hidden width as a multiple of the stage width.
    #[serde(default = "crate::config::mlp_ratio_4")]
    pub mlp_ratio: f64,
    /// Bias on the qkv projections.
    #[serde(default = "crate::config::yes")]
    pub qkv_bias: bool,
    /// Classes of the head.
    #[serde(default = "crate::config::num_classes_1000")]
    pub num_classes: usize,
    /// LayerNorm epsilon (PyTorch's default, 1e-5, as Swin uses).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Stochastic depth: global block `i` of `n` drops its branches with probability
    /// `drop_path_rate · i / (n − 1)` in training (timm's rule); 0 disables it.
    #[serde(default)]
    pub drop_path_rate: f64,
}

fn default_patch_size() -> usize {
    4
}
fn default_window_size() -> usize {
    7
}
fn default_eps() -> f64 {
    1e-5
}

/// Wherever a Swin is, the official space stitches every stage but the last (spec §3.2), and a
/// stitched route ending in a Swin runs its final norm, as the official Swin `forward_from` does.
impl crate::family::Family for SwinConfig {
    const ARCH: &'static str = "swin";
    const PRESETS: &'static [(&'static str, fn() -> Self)] = &[
        ("swin_tiny_patch4_window7_224", Self::swin_tiny_patch4_window7_224),
        ("swin_small_patch4_window7_224", Self::swin_small_patch4_window7_224),
        ("swin_base_patch4_window7_224", Self::swin_base_patch4_window7_224),
    ];

    fn short_name(&self) -> String {
        let c = self;
        format!("swin(dim={}, depths={:?}, window={}, img={}, patch={})", c.embed_dim, c.depths, c.window_size, c.img_size, c.patch_size)
    }

    fn space_anywhere(&self) -> Option<snnet_core::SpaceSettings> {
        let stages = (0..self.num_stages().saturating_sub(1)).collect();
        Some(snnet_core::SpaceSettings::stage_wise(stages, snnet_core::PairedVariant::Forward))
    }

    fn final_norm_on_stitched(&self) -> bool {
        true
    }
}

impl SwinConfig {
    /// A Swin at 224×224, patch 4, window 7, MLP ratio 4, 1000 classes.
    pub fn new(embed_dim: usize, depths: Vec<usize>, num_heads: Vec<usize>) -> Self {
        Self {
            img_size: 224,
            patch_size: 4,
            in_chans: 3,
            embed_dim,
            depths,
            num_heads,
            window_size: 7,
            mlp_ratio: 4.0,
            qkv_bias: true,
            num_classes: 1000,
            layer_norm_eps: 1e-5,
            drop_path_rate: 0.0,
        }
    }

    /// `swin_tiny_patch4_window7_224`.
    pub fn swin_tiny_patch4_window7_224() -> Self {
        Self::new(96, vec![2, 2, 6, 2], vec![3, 6, 12, 24])
    }

    /// `swin_small_patch4_window7_224`.
    pub fn swin_small_patch4_window7_224() -> Self {
        Self::new(96, vec![2, 2, 18, 2], vec![3, 6, 12, 24])
    }

    /// `swin_base_patch4_window7_224`.
    pub fn swin_base_patch4_window7_224() -> Self {
        Self::new(128, vec![2, 2, 18, 2], vec![4, 8, 16, 32])
    }

    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.depths.len()
    }

    /// Width of stage `s`.
    pub fn stage_dim(&self, s: usize) -> usize {
        self.embed_dim << s
    }

    /// Side of stage `s`'s token grid.
    pub fn grid(&self, s: usize) -> usize {
        (self.img_size / self.patch_size) >> s
    }

    /// The window stage `s` attends in: the configured one, or the whole grid when that is no larger.
    pub fn window(&self, s: usize) -> usize {
        self.window_size.min(self.grid(s))
    }

    /// Cyclic shift of block `b` of stage `s`: half a window on odd blocks, none where the window
    /// covers the whole grid.
    pub fn shift(&self, s: usize, b: usize) -> usize {
        if self.grid(s) <= self.window_size || b % 2 == 0 {
            0
        } else {
            self.window_size / 2
        }
    }

    fn hidden(&self, s: usize) -> usize {
        (self.stage_dim(s) as f64 * self.mlp_ratio) as usize
    }

    fn total_blocks(&self) -> usize {
        self.depths.iter().sum()
    }

    /// Drop-path probability of global block `i` (timm: `torch.linspace(0, rate, sum(depths))`).
    pub fn block_drop_path(&self, i: usize) -> f64 {
        crate::config::linear_drop_path(self.drop_path_rate, i, self.total_blocks())
    }

    /// Checks every field, naming the first bad one, and the anchor's size against the
    /// [`limits`](crate::limits).
    pub fn validate(&self) -> Result<()> {
        let bad = crate::config::invalid::<()>;
        use crate::limits::{MAX_CLASSES, MAX_IMG_SIZE, MAX_WIDTH};
        crate::limits::require_at_most(&[
            ("img_size", self.img_size, MAX_IMG_SIZE),
            ("in_chans", self.in_chans, MAX_WIDTH),
            ("embed_dim", self.embed_dim, MAX_WIDTH),
            ("num_classes", self.num_classes, MAX_CLASSES),
        ])?;
        crate::limits::require_blocks("depths", &self.depths)?;
        crate::limits::require_each_at_most("num_heads", &self.num_heads, MAX_WIDTH)?;
        crate::config::require_positive(&[
            ("img_size", self.img_size),
            ("patch_size", self.patch_size),
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
            ("window_size", self.window_size),
            ("num_classes", self.num_classes),
        ])?;
        if self.depths.is_empty() {
            return bad("depths", "needs at least one stage".into());
        }
        if self.num_heads.len() != self.depths.len() {
            return bad("num_heads", format!("has {} entries but `depths` has {}", self.num_heads.len(), self.depths.len()));
        }
        if let Some(s) = self.depths.iter().position(|&d| d == 0) {
            return bad("depths", format!("stage {s} has no blocks"));
        }
        if self.img_size % self.patch_size != 0 {
            return bad("patch_size", format!("{} does not divide img_size {}", self.patch_size, self.img_size));
        }
        for s in 0..self.num_stages() {
            let (g, h) = (self.grid(s), self.num_heads[s]);
            if h == 0 || self.stage_dim(s) % h != 0 {
                return bad("num_heads", format!("{h} heads do not divide stage {s}'s width {}", self.stage_dim(s)));
            }
            if s + 1 < self.num_stages() && (g == 0 || g % 2 != 0) {
                return bad("img_size", format!("stage {s}'s grid {g}×{g} cannot be merged into the next stage (needs an even side)"));
            }
            if g == 0 || g % self.window(s) != 0 {
                return bad("window_size", format!("window {} does not tile stage {s}'s grid {g}×{g}", self.window(s)));
            }
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio.is_finite()) || self.hidden(0) == 0 {
            return bad("mlp_ratio", format!("{} gives no hidden units", self.mlp_ratio));
        }
        let last = self.num_stages() - 1;
        if self.stage_dim(last) > MAX_WIDTH || self.hidden(last) > MAX_WIDTH {
            return bad(
                "embed_dim",
                format!(
                    "{} doubled over {} stages gives width {} and MLP width {}, over the limit of {MAX_WIDTH}",
                    self.embed_dim,
                    self.num_stages(),
                    self.stage_dim(last),
                    self.hidden(last)
                ),
            );
        }
        crate::config::require_rate(self.drop_path_rate)?;
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return bad("layer_norm_eps", format!("{} is not a positive number", self.layer_norm_eps));
        }
        crate::limits::require_budgets(&self.layout(""), self.costs().total(), self.index_entries())
    }

    /// Entries of the index tables and masks the blocks precompute: the relative-position index
    /// (`w⁴`) of every block and the attention mask (`h·w·w²`) of every shifted one.
    fn index_entries(&self) -> u128 {
        (0..self.num_stages())
            .map(|s| {
                let (g, w) = (self.grid(s) as u128, self.window(s) as u128);
                let shifted = (0..self.depths[s]).filter(|&b| self.shift(s, b) > 0).count() as u128;
                self.depths[s] as u128 * w.pow(4) + shifted * g * g * w * w
            })
            .sum()
    }

    /// The anchor layout: one stage per entry of `depths`.
    pub fn layout(&self, name: &str) -> AnchorLayout {
        let stages = (0..self.num_stages()).map(|s| (self.depths[s], self.stage_dim(s), self.grid(s)));
        crate::config::square_layout(name, [self.in_chans, self.img_size, self.img_size], self.num_classes, FeatureKind::Tokens, stages)
    }

    /// Per-part costs by fvcore's convention (spec §8): Linear and attention matmuls as
    /// multiply-accumulates, 5 per element for LayerNorm, the average pool not counted.
    pub fn costs(&self) -> AnchorCosts {
        // In 128 bits, saturating into the u64 costs (the fields are bounded by `validate`).
        let patch_in = (self.in_chans * self.patch_size * self.patch_size) as u128;
        let (n0, c0) = ((self.grid(0) * self.grid(0)) as u128, self.embed_dim as u128);
        let embed = PartCost::saturating(n0 * patch_in * c0 + 5 * n0 * c0, patch_in * c0 + c0 + 2 * c0);
        let qkv_bias = |c: u128| if self.qkv_bias { 3 * c } else { 0 };
        let mut blocks = Vec::new();
        let mut transitions = vec![PartCost::default()];
        for s in 0..self.num_stages() {
            let (n, c, h) = ((self.grid(s) * self.grid(s)) as u128, self.stage_dim(s) as u128, self.hidden(s) as u128);
            let w = self.window(s) as u128;
            let table = (2 * w - 1) * (2 * w - 1) * self.num_heads[s] as u128;
            let block = PartCost::saturating(
                10 * n * c + 4 * n * c * c + 2 * n * c * h + 2 * n * w * w * c,
                4 * c + 3 * c * c + qkv_bias(c) + c * c + c + 2 * c * h + h + c + table,
            );
            blocks.extend(std::iter::repeat_n(block, self.depths[s]));
            if s + 1 < self.num_stages() {
                // Patch merging of stage s: LayerNorm over 4C at n/4 tokens, then 4C → 2C without bias.
                transitions.push(PartCost::saturating(5 * n * c + 2 * n * c * c, 8 * c * c + 8 * c));
            }
        }
        let last = self.num_stages() - 1;
        let (n3, c3, k) = ((self.grid(last) * self.grid(last)) as u128, self.stage_dim(last) as u128, self.num_classes as u128);
        AnchorCosts {
            embed,
            blocks,
            transitions,
            head: PartCost::saturating(c3 * k, c3 * k + k),
            final_norm: PartCost::saturating(5 * n3 * c3, 2 * c3),
            official_omits_front_transitions: true,
        }
    }

    /// Builds the model with random weights (timm's scheme: std-0.02 normal Linear weights and
    /// position-bias tables, zero biases, unit LayerNorms; PyTorch's default for the stem conv).
    pub fn init<B: Backend>(&self, name: &str, device: &B::Device) -> Result<Swin<B>> {
        self.validate()?;
        let std = Initializer::Normal { mean: 0.0, std: 0.02 };
        let linear =
            |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).with_initializer(std.clone()).init::<B>(device);
        let norm = |c: usize| LayerNormConfig::new(c).with_epsilon(self.layer_norm_eps).init::<B>(device);
        let mut global = 0;
        let mut layers = Vec::new();
        for s in 0..self.num_stages() {
            let (c, w) = (self.stage_dim(s), self.window(s));
            let mut blocks = Vec::new();
            for b in 0..self.depths[s] {
                let shift = self.shift(s, b);
                blocks.push(SwinBlock {
                    norm1: norm(c),
                    attn: WindowAttention {
                        qkv: linear(c, 3 * c, self.qkv_bias),
                        proj: linear(c, c, true),
                        relative_position_bias_table: std.init([(2 * w - 1) * (2 * w - 1), self.num_heads[s]], device),
                        num_heads: self.num_heads[s],
                        relative_position_index: crate::config::constant_index(relative_position_index(w), device),
                    },
                    norm2: norm(c),
                    mlp: Mlp { fc1: linear(c, self.hidden(s), true), fc2: linear(self.hidden(s), c, true) },
                    drop_path: self.block_drop_path(global),
                    grid: self.grid(s),
                    window: w,
                    shift,
                    attn_mask: (shift > 0).then(|| {
                        let windows = (self.grid(s) / w).pow(2);
                        let mask = TensorData::new(shifted_window_mask(self.grid(s), w, shift), [windows, w * w, w * w]);
                        Tensor::from_data(mask, device)
                    }),
                });
                global += 1;
            }
            let downsample = (s + 1 < self.num_stages()).then(|| PatchMerging {
                norm: norm(4 * c),
                reduction: linear(4 * c, 2 * c, false),
                grid: self.grid(s),
            });
            layers.push(SwinStage { blocks, downsample });
        }
        let last = self.stage_dim(self.num_stages() - 1);
        Ok(Swin {
            patch_embed: SwinPatchEmbed {
                proj: Conv2dConfig::new([self.in_chans, self.embed_dim], [self.patch_size, self.patch_size])
                    .with_stride([self.patch_size, self.patch_size])
                    .init(device),
                norm: norm(self.embed_dim),
            },
            layers,
            norm: norm(last),
            head: linear(last, self.num_classes, true),
            layout: self.layout(name),
            config: self.clone(),
            noise: NoiseSeed::default(),
        })
    }
}

/// For every (query, key) pair of a `w×w` window, the row of the relative-position table it reads
/// (timm's `get_relative_position_index`, flattened row-major).
fn relative_position_index(w: usize) -> Vec<i64> {
    let n = w * w;
    let mut index = Vec::with_capacity(n * n);
    for a in 0..n {
        for b in 0..n {
            let dy = (a / w) as i64 - (b / w) as i64 + w as i64 - 1;
            let dx = (a % w) as i64 - (b % w) as i64 + w as i64 - 1;
            index.push(dy * (2 * w as i64 - 1) + dx);
        }
    }
    index
}

/// The additive mask of shifted-window attention, `[windows, w², w²]` flattened: 0 between tokens
/// of the same region of the rolled grid, −100 between tokens of different regions (timm's values).
fn shifted_window_mask(grid: usize, w: usize, shift: usize) -> Vec<f32> {
    let region = |i: usize| usize::from(i >= grid - w) + usize::from(i >= grid - shift);
    let per_side = grid / w;
    let mut mask = Vec::with_capacity(per_side * per_side * w.pow(4));
    for wy in 0..per_side {
        for wx in 0..per_side {
            let label = |t: usize| region(wy * w + t / w) * 3 + region(wx * w + t % w);
            for a in 0..w * w {
                for b in 0..w * w {
                    mask.push(if label(a) == label(b) { 0.0 } else { -100.0 });
                }
            }
        }
    }
    mask
}

/// The stem: a strided convolution and a LayerNorm (`patch_embed.proj`, `patch_embed.norm`).
#[derive(Module, Debug)]
pub struct SwinPatchEmbed<B: Backend> {
    /// `Conv2d(in_chans, embed_dim, patch, stride=patch)`.
    pub proj: Conv2d<B>,
    /// Norm over the patch tokens.
    pub norm: LayerNorm<B>,
}

/// Window attention with a learned relative position bias (`attn.qkv`, `attn.proj`,
/// `attn.relative_position_bias_table`).
#[derive(Module, Debug)]
pub struct WindowAttention<B: Backend> {
    /// `[C] → [3C]` projection.
    pub qkv: Linear<B>,
    /// Output projection.
    pub proj: Linear<B>,
    /// Bias per relative offset and head, `[(2w−1)², heads]`.
    pub relative_position_bias_table: Param<Tensor<B, 2>>,
    /// Number of heads.
    pub num_heads: usize,
    /// timm's `relative_position_index`, flattened `[w⁴]`: a constant built once per device.
    relative_position_index: Tensor<B, 1, Int>,
}

impl<B: Kernels> WindowAttention<B> {
    /// The bias added to every window's attention logits, `[heads, w², w²]`.
    fn relative_bias(&self, tokens: usize) -> Tensor<B, 3> {
        let table = self.relative_position_bias_table.val();
        table.select(0, self.relative_position_index.clone()).reshape([tokens, tokens, self.num_heads]).permute([2, 0, 1])
    }

    /// Attention inside each window: `windows` is `[batch·nW, w², C]`; `mask` (shifted windows)
    /// is `[nW, w², w²]`, added per window.
    pub fn forward(&self, windows: Tensor<B, 3>, mask: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let [bw, n, c] = windows.dims();
        let (h, d) = (self.num_heads, c / self.num_heads);
        let heads = linear_rows(&self.qkv, windows).reshape([bw, n, 3 * h, d]).swap_dims(1, 2);
        let q = heads.clone().narrow(1, 0, h);
        let k = heads.clone().narrow(1, h, h);
        let v = heads.narrow(1, 2 * h, h);
        let logits = q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5) + self.relative_bias(n).unsqueeze_dim::<4>(0);
        let logits = match mask {
            Some(mask) => {
                let nw = mask.dims()[0];
                (logits.reshape([bw / nw, nw, h, n, n]) + mask.unsqueeze_dims::<5>(&[0, 2])).reshape([bw, h, n, n])
            }
            None => logits,
        };
        let attn = B::softmax_scaled(logits, 1.0);
        // (attn v) with heads merged as timm's transpose(1, 2).reshape: see `vit::Attention::core`.
        let merged = v.swap_dims(2, 3).matmul(attn.swap_dims(2, 3)).reshape([bw, c, n]).swap_dims(1, 2);
        linear_rows(&self.proj, merged)
    }
}

/// A Swin block: (shifted) window attention and an MLP, pre-norm, with residuals.
#[derive(Module, Debug)]
pub struct SwinBlock<B: Backend> {
    /// Norm before attention.
    pub norm1: LayerNorm<B>,
    /// Window attention.
    pub attn: WindowAttention<B>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<B>,
    /// MLP.
    pub mlp: Mlp<B>,
    /// Drop-path probability of both branches in training.
    pub drop_path: f64,
    #[module(skip)]
    grid: usize,
    #[module(skip)]
    window: usize,
    #[module(skip)]
    shift: usize,
    /// The shifted-window mask `[nW, w², w²]` (shifted blocks only): a constant built once per device.
    attn_mask: Option<Tensor<B, 3>>,
}

impl<B: Kernels> SwinBlock<B> {
    /// `[b, g², C] → [b, g², C]`; drop path (training only) draws its two masks from `seeds`.
    pub fn forward(&self, x: Tensor<B, 3>, seeds: [u64; 2]) -> Tensor<B, 3> {
        let [b, l, c] = x.dims();
        let (g, w, shift) = (self.grid, self.window, self.shift);
        let y = self.norm1.forward(x.clone()).reshape([b, g, g, c]);
        let y = torch_roll(y, -(shift as isize));
        // Partition into windows: [b, g/w, w, g/w, w, C] → [b·nW, w², C].
        let p = g / w;
        let windows = y.reshape([b, p, w, p, w, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b * p * p, w * w, c]);
        let out = self.attn.forward(windows, self.attn_mask.clone());
        let y = out.reshape([b, p, p, w, w, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b, g, g, c]);
        let y = torch_roll(y, shift as isize);
        let x = x + drop_path(y.reshape([b, l, c]), self.drop_path, seeds[0]);
        let y = drop_path(self.mlp.forward(self.norm2.forward(x.clone())), self.drop_path, seeds[1]);
        x + y
    }
}

/// `torch.roll(x, (shift, shift), dims=(1, 2))` on `[b, g, g, C]`: element `i` moves to `i + shift`
/// (mod g) along both grid axes.
fn torch_roll<B: Backend>(x: Tensor<B, 4>, shift: isize) -> Tensor<B, 4> {
    if shift == 0 {
        return x;
    }
    let g = x.dims()[1];
    let split = (-shift).rem_euclid(g as isize) as usize;
    let roll = |x: Tensor<B, 4>, dim: usize| Tensor::cat(vec![x.clone().narrow(dim, split, g - split), x.narrow(dim, 0, split)], dim);
    roll(roll(x, 1), 2)
}

/// Patch merging: each 2×2 neighbourhood concatenated (`x0, x1, x2, x3` as timm orders them),
/// normalised and projected to twice the width (`downsample.norm`, `downsample.reduction`).
#[derive(Module, Debug)]
pub struct PatchMerging<B: Backend> {
    /// Norm over the 4C concatenation.
    pub norm: LayerNorm<B>,
    /// `4C → 2C`, no bias.
    pub reduction: Linear<B>,
    #[module(skip)]
    grid: usize,
}

impl<B: Kernels> PatchMerging<B> {
    /// `[b, g², C] → [b, (g/2)², 2C]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, _, c] = x.dims();
        let h = self.grid / 2;
        // [b, h, dy, h, dx, C] → [b, h, h, dx, dy, C]: channel block dx·2 + dy is timm's x0, x1, x2, x3.
        let x = x.reshape([b, h, 2, h, 2, c]).permute([0, 1, 3, 4, 2, 5]).reshape([b, h * h, 4 * c]);
        linear_rows(&self.reduction, self.norm.forward(x))
    }
}

/// One stage (`layers.{s}`): its blocks and the patch merging that ends it (all but the last).
#[derive(Module, Debug)]
pub struct SwinStage<B: Backend> {
    /// Blocks.
    pub blocks: Vec<SwinBlock<B>>,
    /// Patch merging into the next stage.
    pub downsample: Option<PatchMerging<B>>,
}

/// A Swin Transformer anchor. Field names are the official state-dict keys.
#[derive(Module, Debug)]
pub struct Swin<B: Backend> {
    /// Stem.
    pub patch_embed: SwinPatchEmbed<B>,
    /// Stages.
    pub layers: Vec<SwinStage<B>>,
    /// Final norm.
    pub norm: LayerNorm<B>,
    /// Classifier over the averaged tokens.
    pub head: Linear<B>,
    #[module(skip)]
    layout: AnchorLayout,
    #[module(skip)]
    config: SwinConfig,
    #[module(skip)]
    noise: NoiseSeed,
}

impl<B: Kernels> Swin<B> {
    /// The architecture.
    pub fn config(&self) -> &SwinConfig {
        &self.config
    }

    /// Sets the stochastic depth rate (timm's linear rule over all blocks); outside `[0, 1)` is an error.
    pub fn set_drop_path_rate(&mut self, rate: f64) -> Result<()> {
        let config = SwinConfig { drop_path_rate: rate, ..self.config.clone() };
        config.validate()?;
        for (i, block) in self.layers.iter_mut().flat_map(|s| s.blocks.iter_mut()).enumerate() {
            block.drop_path = config.block_drop_path(i);
        }
        self.config = config;
        Ok(())
    }
}

impl<B: Kernels> Anchor<B> for Swin<B> {
    fn layout(&self) -> &AnchorLayout {
        &self.layout
    }

    fn costs(&self) -> AnchorCosts {
        self.config.costs()
    }

    fn embed(&self, images: Tensor<B, 4>) -> Features<B> {
        let x = self.patch_embed.proj.forward(images);
        let [b, c, gh, gw] = x.dims();
        Features::Tokens(self.patch_embed.norm.forward(x.reshape([b, c, gh * gw]).swap_dims(1, 2)))
    }

    fn block(&self, x: Features<B>, index: usize) -> Features<B> {
        let stage = self.layout.stage_of(index);
        let local = index - self.layout.stage_start(stage);
        let seeds = [self.noise.for_branch(2 * index), self.noise.for_branch(2 * index + 1)];
        Features::Tokens(self.layers[stage].blocks[local].forward(x.into_tokens(), seeds))
    }

    fn transition(&self, x: Features<B>, into_stage: usize) -> Features<B> {
        match into_stage.checked_sub(1).and_then(|s| self.layers[s].downsample.as_ref()) {
            Some(merge) => Features::Tokens(merge.forward(x.into_tokens())),
            None => x,
        }
    }

    fn head(&self, x: Features<B>, final_norm: bool) -> Tensor<B, 2> {
        let x = x.into_tokens();
        let x = if final_norm { self.norm.forward(x) } else { x };
        let [b, _, c] = x.dims();
        self.head.forward(x.mean_dim(1).reshape([b, c]))
    }

    fn adapt_checkpoint(&self, tensors: TensorMap) -> TensorMap {
        remap_timm_v09(tensors, self.config.num_stages())
    }

    fn reseed(&self, seed: u64) {
        self.noise.set(seed);
    }

    fn isolate_noise(&mut self) {
        self.noise = NoiseSeed::default();
    }
}

/// Maps a Swin state dict in current timm's layout (≥ 0.9) onto the official one: the patch
/// merging stored at the start of stage `s + 1` (`layers.{s+1}.downsample.*`) moves to the end of
/// stage `s`, and `head.fc.*` becomes `head.*`. A dict already in the official layout (a
/// `head.weight` key and no patch merging in the last stage) is returned unchanged.
pub fn remap_timm_v09(tensors: TensorMap, num_stages: usize) -> TensorMap {
    // The official layout has no merging in the last stage; current timm has one there (and none in stage 0).
    let last_stage_downsample = format!("layers.{}.downsample.", num_stages.saturating_sub(1));
    let is_new =
        tensors.contains_key("head.fc.weight") || (num_stages > 1 && tensors.keys().any(|k| k.starts_with(&last_stage_downsample)));
    if !is_new {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(key, t)| {
            if let Some(rest) = key.strip_prefix("head.fc.") {
                return (format!("head.{rest}"), t);
            }
            if let Some((stage, rest)) = key.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
                if let (Ok(s), true) = (stage.parse::<usize>(), rest.starts_with("downsample.")) {
                    if s > 0 {
                        return (format!("layers.{}.{rest}", s - 1), t);
                    }
                }
            }
            (key, t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_matches_timm_for_a_2x2_window() {
        // timm get_relative_position_index(2, 2).
        let expected = [4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4];
        assert_eq!(relative_position_index(2), expected);
    }

    #[test]
    fn shifted_mask_separates_the_rolled_regions() {
        // grid 4, window 2, shift 1: the last window (bottom right) mixes four regions.
        let mask = shifted_window_mask(4, 2, 1);
        assert_eq!(mask.len(), 4 * 16);
        assert!(mask[..16].iter().all(|&v| v == 0.0), "the top-left window lies in one region");
        let last = &mask[48..];
        assert_eq!(last.iter().filter(|&&v| v == 0.0).count(), 4, "each token only sees itself");
    }

    #[test]
    fn v09_layout_is_remapped() {
        let t = || snnet_core::weights::NamedTensor { shape: vec![1], data: vec![0.0], stored_as: "F32" };
        let new: TensorMap = ["layers.0.blocks.0.norm1.weight", "layers.1.downsample.reduction.weight", "head.fc.weight"]
            .into_iter()
            .map(|k| (k.to_string(), t()))
            .collect();
        let keys: Vec<String> = remap_timm_v09(new, 2).into_keys().collect();
        assert_eq!(keys, ["head.weight", "layers.0.blocks.0.norm1.weight", "layers.0.downsample.reduction.weight"]);
        let old: TensorMap = ["layers.0.downsample.reduction.weight", "head.weight"].into_iter().map(|k| (k.to_string(), t())).collect();
        assert_eq!(remap_timm_v09(old.clone(), 2), old);
    }
}
