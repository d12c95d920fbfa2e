//! LeViT with the module layout and parameter names of the original LeViT code, which the official
//! SN-Net LeViT checkpoints and timm 0.6 share: `patch_embed.{0,2,4,6}.{c,bn}` (four strided
//! convolutions with BatchNorm and Hardswish between them), one flat `blocks` list —
//! `Residual(Attention)`, `Residual(MLP)` pairs, and after every stage but the last an
//! `AttentionSubsample` and a `Residual(MLP)` — and the two classifiers `head.{bn,l}`,
//! `head_dist.{bn,l}` whose logits are averaged.
//!
//! The positions of parameter-free layers in PyTorch's `nn.Sequential`s (activations, the query
//! subsampling) are kept as empty slots (`None`), so indices, hence keys, match: `m.0` and `m.2` of
//! an MLP, `proj.1`, `q.1`. As an [`Anchor`], block `b` of stage `s` is its attention/MLP pair;
//! the subsampling pair is the transition into stage `s + 1`.

use burn::{
    module::{Module, Param},
    nn::{
        conv::{Conv2d, Conv2dConfig},
        BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d,
    },
    tensor::{activation::hard_swish, backend::Backend, Int, Tensor},
};
use serde::{Deserialize, Serialize};
use snnet_core::{
    drop_path, ops::linear_rows, weights::TensorMap, Anchor, AnchorCosts, AnchorLayout, FeatureKind, Features, Kernels, NoiseSeed, PartCost,
};

use crate::{error::Result, norm::batch_norm};

/// Architecture of a LeViT, with the original (and timm's) argument names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevitConfig {
    /// Input resolution (square).
    #[serde(default = "crate::config::img_size_224")]
    pub img_size: usize,
    /// Total stride of the convolutional stem (four stride-2 convolutions: 16).
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "crate::config::in_chans_3")]
    pub in_chans: usize,
    /// Classes of both heads.
    #[serde(default = "crate::config::num_classes_1000")]
    pub num_classes: usize,
    /// Width per stage.
    pub embed_dim: Vec<usize>,
    /// Query/key width per head.
    #[serde(default = "default_key_dim")]
    pub key_dim: usize,
    /// Attention/MLP pairs per stage.
    pub depth: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Value width over key width in the blocks' attention.
    #[serde(default = "default_ratio")]
    pub attn_ratio: usize,
    /// MLP hidden width over the stage width.
    #[serde(default = "default_ratio")]
    pub mlp_ratio: usize,
    /// Drop path of every residual branch in training (LeViT uses one rate for all).
    #[serde(default)]
    pub drop_path_rate: f64,
}

fn default_patch_size() -> usize {
    16
}
fn default_key_dim() -> usize {
    32
}
fn default_ratio() -> usize {
    2
}

/// The subsampling attention between stages: value width 4·key, MLP ratio 2, stride 2 (LeViT's `down_ops`).
const DOWN_ATTN_RATIO: usize = 4;
const DOWN_MLP_RATIO: usize = 2;
const BN_EPS: f64 = 1e-5;

/// A LeViT leading the network stitches every stage but the last (spec §5.2).
impl crate::family::Family for LevitConfig {
    const ARCH: &'static str = "levit";
    const PRESETS: &'static [(&'static str, fn() -> Self)] = &[("levit_192", Self::levit_192), ("levit_256", Self::levit_256)];

    fn short_name(&self) -> String {
        let c = self;
        format!("levit(dims={:?}, depth={:?}, heads={:?}, img={})", c.embed_dim, c.depth, c.num_heads, c.img_size)
    }

    fn leading_space(&self) -> Option<snnet_core::SpaceSettings> {
        let stages = (0..self.num_stages().saturating_sub(1)).collect();
        Some(snnet_core::SpaceSettings::stage_wise(stages, snnet_core::PairedVariant::Forward))
    }
}

impl LevitConfig {
    /// A LeViT at 224×224 (key width 32, ratios 2).
    pub fn new(embed_dim: Vec<usize>, num_heads: Vec<usize>, depth: Vec<usize>) -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            num_classes: 1000,
            embed_dim,
            key_dim: 32,
            depth,
            num_heads,
            attn_ratio: 2,
            mlp_ratio: 2,
            drop_path_rate: 0.0,
        }
    }

    /// `levit_192`.
    pub fn levit_192() -> Self {
        Self::new(vec![192, 288, 384], vec![3, 5, 6], vec![4, 4, 4])
    }

    /// `levit_256`.
    pub fn levit_256() -> Self {
        Self::new(vec![256, 384, 512], vec![4, 6, 8], vec![4, 4, 4])
    }

    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.embed_dim.len()
    }

    /// Side of stage `s`'s token grid (`(r − 1) / 2 + 1` per subsampling).
    pub fn resolution(&self, s: usize) -> usize {
        (0..s).fold(self.img_size / self.patch_size, |r, _| (r - 1) / 2 + 1)
    }

    /// Heads of the subsampling attention that leaves stage `s`.
    fn down_heads(&self, s: usize) -> usize {
        self.embed_dim[s] / self.key_dim
    }

    /// Index in `blocks` of the first module of stage `s`.
    fn stage_module_start(&self, s: usize) -> usize {
        (0..s).map(|t| 2 * self.depth[t] + 2).sum()
    }

    /// Checks every field, naming the first bad one, and the anchor's size against the
    /// [`limits`](crate::limits).
    pub fn validate(&self) -> Result<()> {
        let bad = crate::config::invalid::<()>;
        use crate::limits::{MAX_CLASSES, MAX_IMG_SIZE, MAX_RATIO, MAX_WIDTH};
        crate::limits::require_at_most(&[
            ("img_size", self.img_size, MAX_IMG_SIZE),
            ("in_chans", self.in_chans, MAX_WIDTH),
            ("num_classes", self.num_classes, MAX_CLASSES),
            ("key_dim", self.key_dim, MAX_WIDTH),
            ("attn_ratio", self.attn_ratio, MAX_RATIO),
            ("mlp_ratio", self.mlp_ratio, MAX_RATIO),
        ])?;
        crate::limits::require_blocks("depth", &self.depth)?;
        crate::limits::require_each_at_most("embed_dim", &self.embed_dim, MAX_WIDTH)?;
        crate::limits::require_each_at_most("num_heads", &self.num_heads, MAX_WIDTH)?;
        let n = self.embed_dim.len();
        if n == 0 {
            return bad("embed_dim", "needs at least one stage".into());
        }
        for (field, len) in [("depth", self.depth.len()), ("num_heads", self.num_heads.len())] {
            if len != n {
                return bad(field, format!("has {len} entries but `embed_dim` has {n}"));
            }
        }
        crate::config::require_positive(&[
            ("img_size", self.img_size),
            ("in_chans", self.in_chans),
            ("num_classes", self.num_classes),
            ("key_dim", self.key_dim),
            ("attn_ratio", self.attn_ratio),
            ("mlp_ratio", self.mlp_ratio),
        ])?;
        if self.patch_size != 16 {
            return bad("patch_size", format!("{}: LeViT's stem has four stride-2 convolutions (16)", self.patch_size));
        }
        if self.img_size % 16 != 0 {
            return bad("img_size", format!("{} is not a multiple of the stem's stride 16", self.img_size));
        }
        for s in 0..n {
            if self.embed_dim[s] == 0 || self.depth[s] == 0 || self.num_heads[s] == 0 {
                return bad("embed_dim", format!("stage {s} has no width, blocks or heads"));
            }
            if s + 1 < n && self.embed_dim[s] % self.key_dim != 0 {
                return bad("key_dim", format!("{} does not divide stage {s}'s width {}", self.key_dim, self.embed_dim[s]));
            }
        }
        if self.embed_dim[0] % 8 != 0 {
            return bad("embed_dim", format!("stage 0's width {} is not a multiple of 8 (the stem's widths)", self.embed_dim[0]));
        }
        crate::config::require_rate(self.drop_path_rate)?;
        crate::limits::require_budgets(&self.layout(""), self.costs().total(), self.index_entries())
    }

    /// Entries of the attention-bias index tables: `n²` for every attention block of a stage of
    /// `n` positions, `⌈r/2⌉²·r²` for every subsampling attention.
    fn index_entries(&self) -> u128 {
        (0..self.num_stages())
            .map(|s| {
                let r = self.resolution(s) as u128;
                let subsample = if s + 1 < self.num_stages() { r.div_ceil(2).pow(2) * r * r } else { 0 };
                self.depth[s] as u128 * r.pow(4) + subsample
            })
            .sum()
    }

    /// The anchor layout: one token stage per entry of `embed_dim`.
    pub fn layout(&self, name: &str) -> AnchorLayout {
        let stages = (0..self.num_stages()).map(|s| (self.depth[s], self.embed_dim[s], self.resolution(s)));
        crate::config::square_layout(name, [self.in_chans, self.img_size, self.img_size], self.num_classes, FeatureKind::Tokens, stages)
    }

    /// Per-part costs by fvcore's convention (spec §8): Linear/conv/matmul multiply-accumulates,
    /// 2 per element for BatchNorm, Hardswish, softmax and the token mean not counted.
    pub fn costs(&self) -> AnchorCosts {
        // In 128 bits, saturating into the u64 costs (the fields are bounded by `validate`).
        let u = |v: usize| v as u128;
        // Linear_BN / Conv_BN producing `b` channels at `n` positions from `a·k²` inputs each.
        let linear_bn = |n: usize, a: usize, b: usize| PartCost::saturating(u(n) * u(a) * u(b) + 2 * u(n) * u(b), u(a) * u(b) + 2 * u(b));
        let conv_bn = |side: usize, a: usize, b: usize| {
            let positions = u(side) * u(side);
            PartCost::saturating(positions * u(b) * u(a) * 9 + 2 * positions * u(b), u(b) * u(a) * 9 + 2 * u(b))
        };
        let (d, c0) = (self.key_dim, self.embed_dim[0]);
        let mut side = self.img_size;
        let mut embed = PartCost::default();
        for (a, b) in [(self.in_chans, c0 / 8), (c0 / 8, c0 / 4), (c0 / 4, c0 / 2), (c0 / 2, c0)] {
            side /= 2;
            embed = embed + conv_bn(side, a, b);
        }
        let mlp = |n: usize, c: usize, ratio: usize| linear_bn(n, c, c * ratio) + linear_bn(n, c * ratio, c);
        let mut blocks = Vec::new();
        let mut transitions = vec![PartCost::default()];
        for s in 0..self.num_stages() {
            let (r, c, h) = (self.resolution(s), self.embed_dim[s], self.num_heads[s]);
            let n = r * r;
            let v = self.attn_ratio * d;
            let attention = linear_bn(n, c, h * (2 * d + v))
                + PartCost::saturating(u(h) * u(n) * u(n) * (u(d) + u(v)), u(h) * u(n))
                + linear_bn(n, h * v, c);
            blocks.extend(std::iter::repeat_n(attention + mlp(n, c, self.mlp_ratio), self.depth[s]));
            if s + 1 < self.num_stages() {
                let (hd, next) = (self.down_heads(s), self.embed_dim[s + 1]);
                let r2 = self.resolution(s + 1);
                let n2 = r2 * r2;
                let vd = DOWN_ATTN_RATIO * d;
                let down = linear_bn(n, c, hd * (d + vd))
                    + linear_bn(n2, c, hd * d)
                    + PartCost::saturating(u(hd) * u(n2) * u(n) * (u(d) + u(vd)), u(hd) * u(n))
                    + linear_bn(n2, hd * vd, next);
                transitions.push(down + mlp(n2, next, DOWN_MLP_RATIO));
            }
        }
        let (c, k) = (u(self.embed_dim[self.num_stages() - 1]), u(self.num_classes));
        let one_head = PartCost::saturating(2 * c + c * k, 2 * c + c * k + k);
        AnchorCosts {
            embed,
            blocks,
            transitions,
            head: one_head + one_head,
            final_norm: PartCost::default(),
            official_omits_front_transitions: false,
        }
    }

    /// Builds the model with random weights (PyTorch's default convolutions, std-0.02 normal
    /// Linear weights, unit BatchNorms, zero attention biases).
    pub fn init<B: Backend>(&self, name: &str, device: &B::Device) -> Result<Levit<B>> {
        self.validate()?;
        let bn = |c: usize| BatchNormConfig::new(c).with_epsilon(BN_EPS).with_momentum(0.1).init::<B>(device);
        let linear_bn = |a: usize, b: usize| LinearBn {
            c: LinearConfig::new(a, b).with_bias(false).with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 }).init(device),
            bn: bn(b),
        };
        let conv_bn = |a: usize, b: usize| ConvBn {
            c: Conv2dConfig::new([a, b], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            bn: bn(b),
        };
        let mlp = |c: usize, ratio: usize| {
            LevitModule::Mlp(ResidualMlp { m: vec![Some(linear_bn(c, c * ratio)), None, Some(linear_bn(c * ratio, c))] })
        };
        let biases = |heads: usize, positions: usize| Initializer::Zeros.init([heads, positions], device);
        let d = self.key_dim;
        let mut blocks = Vec::new();
        for s in 0..self.num_stages() {
            let (r, c, h) = (self.resolution(s), self.embed_dim[s], self.num_heads[s]);
            let v = self.attn_ratio * d;
            for _ in 0..self.depth[s] {
                blocks.push(LevitModule::Attention(ResidualAttention {
                    m: LevitAttention {
                        qkv: linear_bn(c, h * (2 * d + v)),
                        proj: vec![None, Some(linear_bn(h * v, c))],
                        attention_biases: biases(h, r * r),
                        num_heads: h,
                        key_dim: d,
                        bias_index: crate::config::constant_index(bias_index(r, 1), device),
                    },
                }));
                blocks.push(mlp(c, self.mlp_ratio));
            }
            if s + 1 < self.num_stages() {
                let (hd, next) = (self.down_heads(s), self.embed_dim[s + 1]);
                let vd = DOWN_ATTN_RATIO * d;
                blocks.push(LevitModule::Subsample(AttentionSubsample {
                    kv: linear_bn(c, hd * (d + vd)),
                    q: vec![None, Some(linear_bn(c, hd * d))],
                    proj: vec![None, Some(linear_bn(hd * vd, next))],
                    attention_biases: biases(hd, r * r),
                    num_heads: hd,
                    key_dim: d,
                    resolution: r,
                    bias_index: crate::config::constant_index(bias_index(r, 2), device),
                }));
                blocks.push(mlp(next, DOWN_MLP_RATIO));
            }
        }
        let c0 = self.embed_dim[0];
        let last = self.embed_dim[self.num_stages() - 1];
        let head = || NormLinear {
            bn: bn(last),
            l: LinearConfig::new(last, self.num_classes).with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 }).init(device),
        };
        Ok(Levit {
            patch_embed: vec![
                Some(conv_bn(self.in_chans, c0 / 8)),
                None,
                Some(conv_bn(c0 / 8, c0 / 4)),
                None,
                Some(conv_bn(c0 / 4, c0 / 2)),
                None,
                Some(conv_bn(c0 / 2, c0)),
            ],
            blocks,
            head: head(),
            head_dist: head(),
            layout: self.layout(name),
            config: self.clone(),
            noise: NoiseSeed::default(),
        })
    }
}

/// For each query (the grid subsampled by `stride`) and key of an `r×r` grid, the column of the
/// attention-bias table it reads: `|Δy|·r + |Δx|` (LeViT's `attention_bias_idxs`, row-major).
fn bias_index(r: usize, stride: usize) -> Vec<i64> {
    let queries: Vec<(usize, usize)> = (0..r).step_by(stride).flat_map(|y| (0..r).step_by(stride).map(move |x| (y, x))).collect();
    let mut index = Vec::with_capacity(queries.len() * r * r);
    for &(qy, qx) in &queries {
        for ky in 0..r {
            for kx in 0..r {
                index.push((qy.abs_diff(ky) * r + qx.abs_diff(kx)) as i64);
            }
        }
    }
    index
}

/// A Linear without bias followed by BatchNorm over its outputs (`c`, `bn`).
#[derive(Module, Debug)]
pub struct LinearBn<B: Backend> {
    /// The projection.
    pub c: Linear<B>,
    /// BatchNorm1d over all tokens.
    pub bn: BatchNorm<B>,
}

impl<B: Kernels> LinearBn<B> {
    /// `[b, n, a] → [b, n, out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let y = linear_rows(&self.c, x);
        let [b, n, c] = y.dims();
        batch_norm(&self.bn, y.reshape([b * n, c])).reshape([b, n, c])
    }
}

/// A 3×3 stride-2 convolution without bias followed by BatchNorm (`c`, `bn`).
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    /// The convolution.
    pub c: Conv2d<B>,
    /// BatchNorm2d.
    pub bn: BatchNorm<B>,
}

/// BatchNorm then a Linear classifier (`bn`, `l`).
#[derive(Module, Debug)]
pub struct NormLinear<B: Backend> {
    /// BatchNorm1d over the pooled features.
    pub bn: BatchNorm<B>,
    /// The classifier.
    pub l: Linear<B>,
}

/// The one layer a `Sequential` of parameter-free slots and one Linear_BN holds.
fn only_layer<T>(slots: &[Option<T>]) -> &T {
    slots.iter().flatten().next().expect("a Sequential slot holds its layer")
}

/// Multi-head attention with a learned bias per head and relative offset.
#[derive(Module, Debug)]
pub struct LevitAttention<B: Backend> {
    /// Fused query/key/value projection.
    pub qkv: LinearBn<B>,
    /// Hardswish (empty slot 0) and the output projection (`proj.1`).
    pub proj: Vec<Option<LinearBn<B>>>,
    /// Bias per head and offset `[heads, r²]`.
    pub attention_biases: Param<Tensor<B, 2>>,
    /// Heads.
    pub num_heads: usize,
    /// Query/key width per head.
    pub key_dim: usize,
    /// Index of each (query, key) pair's offset into `attention_biases`: a constant built once per device.
    bias_index: Tensor<B, 1, Int>,
}

/// The bias `[heads, queries, keys]` gathered from `table` `[heads, r²]`.
fn gathered_bias<B: Backend>(table: Tensor<B, 2>, index: Tensor<B, 1, Int>, queries: usize, keys: usize) -> Tensor<B, 3> {
    let heads = table.dims()[0];
    table.select(1, index).reshape([heads, queries, keys])
}

impl<B: Kernels> LevitAttention<B> {
    /// `[b, n, C] → [b, n, C]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, _] = x.dims();
        let (h, d) = (self.num_heads, self.key_dim);
        let per_head = self.qkv.c.weight.dims()[1] / h;
        let v_dim = per_head - 2 * d;
        // timm: qkv.view(b, n, h, -1).split([d, d, v]): per head, q then k then v.
        let qkv = self.qkv.forward(x).reshape([b, n, h, per_head]).swap_dims(1, 2);
        let q = qkv.clone().narrow(3, 0, d);
        let k = qkv.clone().narrow(3, d, d);
        let v = qkv.narrow(3, 2 * d, v_dim);
        let bias = gathered_bias(self.attention_biases.val(), self.bias_index.clone(), n, n).unsqueeze_dim::<4>(0);
        let attn = B::softmax_scaled(q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5) + bias, 1.0);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, n, h * v_dim]);
        only_layer(&self.proj).forward(hard_swish(out))
    }
}

/// Attention whose queries come from the grid subsampled by 2, changing width and resolution.
#[derive(Module, Debug)]
pub struct AttentionSubsample<B: Backend> {
    /// Key/value projection.
    pub kv: LinearBn<B>,
    /// Subsampling (empty slot 0) and the query projection (`q.1`).
    pub q: Vec<Option<LinearBn<B>>>,
    /// Hardswish (empty slot 0) and the output projection (`proj.1`).
    pub proj: Vec<Option<LinearBn<B>>>,
    /// Bias per head and offset `[heads, r²]`.
    pub attention_biases: Param<Tensor<B, 2>>,
    /// Heads.
    pub num_heads: usize,
    /// Query/key width per head.
    pub key_dim: usize,
    /// Side of the input grid.
    pub resolution: usize,
    /// Index of each (query, key) pair's offset into `attention_biases`: a constant built once per device.
    bias_index: Tensor<B, 1, Int>,
}

impl<B: Kernels> AttentionSubsample<B> {
    /// `[b, r², C] → [b, r'², C']`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, c] = x.dims();
        let (h, d, r) = (self.num_heads, self.key_dim, self.resolution);
        let per_head = self.kv.c.weight.dims()[1] / h;
        let v_dim = per_head - d;
        let kv = self.kv.forward(x.clone()).reshape([b, n, h, per_head]).swap_dims(1, 2);
        let k = kv.clone().narrow(3, 0, d);
        let v = kv.narrow(3, d, v_dim);
        // Subsample: every second row and column of the grid (`x[:, ::2, ::2]`).
        let r2 = (r - 1) / 2 + 1;
        let sub = x.reshape([b, r, r, c]);
        let rows: Vec<_> = (0..r2).map(|i| sub.clone().narrow(1, 2 * i, 1)).collect();
        let sub = Tensor::cat(rows, 1);
        let cols: Vec<_> = (0..r2).map(|j| sub.clone().narrow(2, 2 * j, 1)).collect();
        let sub = Tensor::cat(cols, 2).reshape([b, r2 * r2, c]);
        let q = only_layer(&self.q).forward(sub).reshape([b, r2 * r2, h, d]).swap_dims(1, 2);
        let bias = gathered_bias(self.attention_biases.val(), self.bias_index.clone(), r2 * r2, n).unsqueeze_dim::<4>(0);
        let attn = B::softmax_scaled(q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5) + bias, 1.0);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, r2 * r2, h * v_dim]);
        only_layer(&self.proj).forward(hard_swish(out))
    }
}

/// `x + drop_path(attention(x))` (`blocks.{i}.m`).
#[derive(Module, Debug)]
pub struct ResidualAttention<B: Backend> {
    /// The attention.
    pub m: LevitAttention<B>,
}

/// `x + drop_path(mlp(x))`: Linear_BN, Hardswish (empty slot 1), Linear_BN (`blocks.{i}.m.{0,2}`).
#[derive(Module, Debug)]
pub struct ResidualMlp<B: Backend> {
    /// The MLP's layers at their Sequential positions.
    pub m: Vec<Option<LinearBn<B>>>,
}

impl<B: Kernels> ResidualMlp<B> {
    fn branch(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut layers = self.m.iter().flatten();
        let (fc1, fc2) = (layers.next().expect("two layers"), layers.next().expect("two layers"));
        fc2.forward(hard_swish(fc1.forward(x)))
    }
}

/// One entry of LeViT's flat `blocks` list.
#[derive(Module, Debug)]
pub enum LevitModule<B: Backend> {
    /// Residual attention.
    Attention(ResidualAttention<B>),
    /// Residual MLP.
    Mlp(ResidualMlp<B>),
    /// Subsampling attention (no residual).
    Subsample(AttentionSubsample<B>),
}

impl<B: Kernels> LevitModule<B> {
    /// Runs the module; residual branches take drop path (training only) from `seed`.
    pub fn forward(&self, x: Tensor<B, 3>, rate: f64, seed: u64) -> Tensor<B, 3> {
        match self {
            LevitModule::Attention(a) => x.clone() + drop_path(a.m.forward(x), rate, seed),
            LevitModule::Mlp(m) => x.clone() + drop_path(m.branch(x), rate, seed),
            LevitModule::Subsample(s) => s.forward(x),
        }
    }
}

/// A LeViT anchor. Field names are the original state-dict keys.
#[derive(Module, Debug)]
pub struct Levit<B: Backend> {
    /// The convolutional stem at its Sequential positions (Hardswish in the empty slots).
    pub patch_embed: Vec<Option<ConvBn<B>>>,
    /// Every block and subsampling module, in order.
    pub blocks: Vec<LevitModule<B>>,
    /// Classifier.
    pub head: NormLinear<B>,
    /// Distillation classifier (its logits are averaged with the head's).
    pub head_dist: NormLinear<B>,
    #[module(skip)]
    layout: AnchorLayout,
    #[module(skip)]
    config: LevitConfig,
    #[module(skip)]
    noise: NoiseSeed,
}

impl<B: Kernels> Levit<B> {
    /// The architecture.
    pub fn config(&self) -> &LevitConfig {
        &self.config
    }

    /// Sets the drop-path rate of every residual branch; outside `[0, 1)` is an error.
    pub fn set_drop_path_rate(&mut self, rate: f64) -> Result<()> {
        let config = LevitConfig { drop_path_rate: rate, ..self.config.clone() };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    fn run(&self, x: Features<B>, module: usize) -> Features<B> {
        let seed = self.noise.for_branch(module);
        Features::Tokens(self.blocks[module].forward(x.into_tokens(), self.config.drop_path_rate, seed))
    }
}

impl<B: Kernels> Anchor<B> for Levit<B> {
    fn layout(&self) -> &AnchorLayout {
        &self.layout
    }

    fn costs(&self) -> AnchorCosts {
        self.config.costs()
    }

    fn embed(&self, images: Tensor<B, 4>) -> Features<B> {
        let mut x = images;
        for (i, conv) in self.patch_embed.iter().flatten().enumerate() {
            if i > 0 {
                x = hard_swish(x);
            }
            x = batch_norm(&conv.bn, conv.c.forward(x));
        }
        let [b, c, h, w] = x.dims();
        Features::Tokens(x.reshape([b, c, h * w]).swap_dims(1, 2))
    }

    fn block(&self, x: Features<B>, index: usize) -> Features<B> {
        let stage = self.layout.stage_of(index);
        let module = self.config.stage_module_start(stage) + 2 * (index - self.layout.stage_start(stage));
        self.run(self.run(x, module), module + 1)
    }

    fn transition(&self, x: Features<B>, into_stage: usize) -> Features<B> {
        if into_stage == 0 {
            return x;
        }
        let module = self.config.stage_module_start(into_stage) - 2;
        self.run(self.run(x, module), module + 1)
    }

    fn head(&self, x: Features<B>, _final_norm: bool) -> Tensor<B, 2> {
        let x = x.into_tokens();
        let [b, _, c] = x.dims();
        let pooled = x.mean_dim(1).reshape([b, c]);
        let logits = |h: &NormLinear<B>| h.l.forward(batch_norm(&h.bn, pooled.clone()));
        (logits(&self.head) + logits(&self.head_dist)) / 2.0
    }

    fn adapt_checkpoint(&self, tensors: TensorMap) -> TensorMap {
        remap_timm_v09(tensors, &self.config)
    }

    fn reseed(&self, seed: u64) {
        self.noise.set(seed);
    }

    fn isolate_noise(&mut self) {
        self.noise = NoiseSeed::default();
    }
}

/// Maps a LeViT state dict in current timm's layout (≥ 0.9: `stem.conv{i}`, `stages.{s}.blocks.{b}.{attn,mlp}`,
/// `stages.{s}.downsample` at the start of stage `s`, `.linear` for `.c`/`.l`, named Sequential slots)
/// onto the original flat layout. A dict without `stem.`/`stages.` keys is returned unchanged.
pub fn remap_timm_v09(tensors: TensorMap, config: &LevitConfig) -> TensorMap {
    if !tensors.keys().any(|k| k.starts_with("stem.") || k.starts_with("stages.")) {
        return tensors;
    }
    tensors.into_iter().map(|(key, t)| (remap_v09_key(&key, config).unwrap_or(key), t)).collect()
}

fn remap_v09_key(key: &str, config: &LevitConfig) -> Option<String> {
    let attention = |t: &str| t.replacen(".ln.", ".1.", 1).replacen("linear.", "c.", 1);
    let mlp = |t: &str| t.replacen("ln1.", "0.", 1).replacen("ln2.", "2.", 1).replacen("linear.", "c.", 1);
    let index = |s: &str| s.parse::<usize>().ok();
    if let Some(rest) = key.strip_prefix("stem.conv") {
        let (i, tail) = rest.split_once('.')?;
        return Some(format!("patch_embed.{}.{}", 2 * index(i)?.checked_sub(1)?, tail.replacen("linear.", "c.", 1)));
    }
    for head in ["head.", "head_dist."] {
        if let Some(tail) = key.strip_prefix(head) {
            return Some(format!("{head}{}", tail.replacen("linear.", "l.", 1)));
        }
    }
    let (s, rest) = key.strip_prefix("stages.")?.split_once('.')?;
    let s = index(s)?;
    if s >= config.num_stages() {
        return None;
    }
    if let Some(rest) = rest.strip_prefix("blocks.") {
        let (b, rest) = rest.split_once('.')?;
        let module = config.stage_module_start(s) + 2 * index(b)?;
        if let Some(t) = rest.strip_prefix("attn.") {
            return Some(format!("blocks.{module}.m.{}", attention(t)));
        }
        return Some(format!("blocks.{}.m.{}", module + 1, mlp(rest.strip_prefix("mlp.")?)));
    }
    let rest = rest.strip_prefix("downsample.")?;
    let module = config.stage_module_start(s).checked_sub(2)?;
    if let Some(t) = rest.strip_prefix("attn_downsample.") {
        return Some(format!("blocks.{module}.{}", attention(t)));
    }
    Some(format!("blocks.{}.m.{}", module + 1, mlp(rest.strip_prefix("mlp.")?)))
}
