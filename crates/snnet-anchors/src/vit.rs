//! Vision Transformer (ViT/DeiT) with timm's structure and parameter names.

use burn::{
    module::{Module, Param},
    nn::{conv::Conv2d, conv::Conv2dConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig},
    tensor::{backend::Backend, Tensor},
};
use serde::{Deserialize, Serialize};
use snnet_core::{
    drop_path, ops::linear_rows, weights::TensorMap, Anchor, AnchorCosts, AnchorLayout, FeatureKind, Features, Kernels, NoiseSeed,
    PartCost, StageLayout,
};

use crate::error::Result;

/// Architecture of a ViT, with timm's constructor argument names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Input resolution (square).
    #[serde(default = "crate::config::img_size_224")]
    pub img_size: usize,
    /// Patch size (square).
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "crate::config::in_chans_3")]
    pub in_chans: usize,
    /// Width.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `embed_dim` (timm: `int(embed_dim * mlp_ratio)`).
    #[serde(default = "crate::config::mlp_ratio_4")]
    pub mlp_ratio: f64,
    /// Bias on the qkv projection.
    #[serde(default = "crate::config::yes")]
    pub qkv_bias: bool,
    /// Classes of the head.
    #[serde(default = "crate::config::num_classes_1000")]
    pub num_classes: usize,
    /// LayerNorm epsilon (timm ViT: 1e-6).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Stochastic depth: block `i` drops its branches with probability `drop_path_rate · i / (depth − 1)`
    /// during training (timm's linear rule); 0 disables it. Not part of the weights or the layout.
    #[serde(default)]
    pub drop_path_rate: f64,
    /// LayerScale (DeiT-3, CaiT): each residual branch multiplied by a learned per-channel scale
    /// (`blocks.{i}.ls1.gamma`, `ls2.gamma`) initialised to this value; absent or null: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_values: Option<f64>,
    /// The position embedding covers the patches only and is added before the class token is
    /// prepended (DeiT-3; timm's `no_embed_class`): `pos_embed` is `[1, patches, C]`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_embed_class: bool,
}

fn default_patch_size() -> usize {
    16
}
fn default_eps() -> f64 {
    1e-6
}

/// ViTs stitch across all blocks (the default space).
impl crate::family::Family for VitConfig {
    const ARCH: &'static str = "vit";
    const PRESETS: &'static [(&'static str, fn() -> Self)] = &[
        ("deit_tiny_patch16_224", Self::deit_tiny_patch16_224),
        ("deit_small_patch16_224", Self::deit_small_patch16_224),
        ("deit_base_patch16_224", Self::deit_base_patch16_224),
        ("deit3_small_patch16_224", Self::deit3_small_patch16_224),
        ("deit3_medium_patch16_224", Self::deit3_medium_patch16_224),
        ("deit3_base_patch16_224", Self::deit3_base_patch16_224),
        ("deit3_large_patch16_224", Self::deit3_large_patch16_224),
        ("deit_tiny_patch16_LS", Self::deit_tiny_patch16_ls),
        ("deit_small_patch16_LS", Self::deit_small_patch16_ls),
        ("deit_medium_patch16_LS", Self::deit_medium_patch16_ls),
        ("deit_base_patch16_LS", Self::deit_base_patch16_ls),
        ("deit_large_patch16_LS", Self::deit_large_patch16_ls),
    ];

    fn short_name(&self) -> String {
        let c = self;
        format!("vit(dim={}, depth={}, heads={}, img={}, patch={})", c.embed_dim, c.depth, c.num_heads, c.img_size, c.patch_size)
    }
}

impl VitConfig {
    /// A ViT at 224×224, patch 16, MLP ratio 4, 1000 classes (the DeiT recipe).
    pub fn new(embed_dim: usize, depth: usize, num_heads: usize) -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            num_classes: 1000,
            layer_norm_eps: 1e-6,
            drop_path_rate: 0.0,
            init_values: None,
            no_embed_class: false,
        }
    }

    /// A DeiT-3 ViT (timm's `deit3_*`): LayerScale initialised to `init_values`, no class
    /// position, LayerNorm eps 1e-6.
    pub fn deit3(embed_dim: usize, depth: usize, num_heads: usize, init_values: f64) -> Self {
        Self { init_values: Some(init_values), no_embed_class: true, ..Self::new(embed_dim, depth, num_heads) }
    }

    /// timm `deit3_small_patch16_224`.
    pub fn deit3_small_patch16_224() -> Self {
        Self::deit3(384, 12, 6, 1e-6)
    }

    /// timm `deit3_medium_patch16_224`.
    pub fn deit3_medium_patch16_224() -> Self {
        Self::deit3(512, 12, 8, 1e-6)
    }

    /// timm `deit3_base_patch16_224`.
    pub fn deit3_base_patch16_224() -> Self {
        Self::deit3(768, 12, 12, 1e-6)
    }

    /// timm `deit3_large_patch16_224`.
    pub fn deit3_large_patch16_224() -> Self {
        Self::deit3(1024, 24, 16, 1e-6)
    }

    /// SN-Netv2's `deit_tiny_patch16_LS` (no timm twin; LayerScale initialised to 1e-4, as
    /// SN-Netv2's `vit_models`, which matters only without a checkpoint).
    pub fn deit_tiny_patch16_ls() -> Self {
        Self::deit3(192, 12, 3, 1e-4)
    }

    /// SN-Netv2's `deit_small_patch16_LS` (timm's `deit3_small_patch16_224`, LayerScale init 1e-4).
    pub fn deit_small_patch16_ls() -> Self {
        Self::deit3(384, 12, 6, 1e-4)
    }

    /// SN-Netv2's `deit_medium_patch16_LS` (timm's `deit3_medium_patch16_224`, LayerScale init 1e-4).
    pub fn deit_medium_patch16_ls() -> Self {
        Self::deit3(512, 12, 8, 1e-4)
    }

    /// SN-Netv2's `deit_base_patch16_LS` (timm's `deit3_base_patch16_224`, LayerScale init 1e-4).
    pub fn deit_base_patch16_ls() -> Self {
        Self::deit3(768, 12, 12, 1e-4)
    }

    /// SN-Netv2's `deit_large_patch16_LS` (timm's `deit3_large_patch16_224`, LayerScale init 1e-4).
    pub fn deit_large_patch16_ls() -> Self {
        Self::deit3(1024, 24, 16, 1e-4)
    }

    /// timm `deit_tiny_patch16_224`.
    pub fn deit_tiny_patch16_224() -> Self {
        Self::new(192, 12, 3)
    }

    /// timm `deit_small_patch16_224`.
    pub fn deit_small_patch16_224() -> Self {
        Self::new(384, 12, 6)
    }

    /// timm `deit_base_patch16_224`.
    pub fn deit_base_patch16_224() -> Self {
        Self::new(768, 12, 12)
    }

    /// Checks every field, naming the first bad one, and the anchor's size against the
    /// [`limits`](crate::limits).
    pub fn validate(&self) -> Result<()> {
        let bad = crate::config::invalid::<()>;
        use crate::limits::{MAX_BLOCKS, MAX_CLASSES, MAX_IMG_SIZE, MAX_WIDTH};
        crate::limits::require_at_most(&[
            ("img_size", self.img_size, MAX_IMG_SIZE),
            ("in_chans", self.in_chans, MAX_WIDTH),
            ("embed_dim", self.embed_dim, MAX_WIDTH),
            ("depth", self.depth, MAX_BLOCKS),
            ("num_heads", self.num_heads, MAX_WIDTH),
            ("num_classes", self.num_classes, MAX_CLASSES),
        ])?;
        crate::config::require_positive(&[
            ("img_size", self.img_size),
            ("patch_size", self.patch_size),
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("num_classes", self.num_classes),
        ])?;
        if self.img_size % self.patch_size != 0 {
            return bad("patch_size", format!("{} does not divide img_size {}", self.patch_size, self.img_size));
        }
        if self.embed_dim % self.num_heads != 0 {
            return bad("num_heads", format!("{} does not divide embed_dim {}", self.num_heads, self.embed_dim));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio.is_finite()) || self.hidden() == 0 {
            return bad("mlp_ratio", format!("{} gives no hidden units", self.mlp_ratio));
        }
        if self.hidden() > MAX_WIDTH {
            return bad("mlp_ratio", format!("{} gives {} hidden units, over the limit of {MAX_WIDTH}", self.mlp_ratio, self.hidden()));
        }
        crate::config::require_rate(self.drop_path_rate)?;
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return bad("layer_norm_eps", format!("{} is not a positive number", self.layer_norm_eps));
        }
        if let Some(v) = self.init_values.filter(|v| !v.is_finite()) {
            return bad("init_values", format!("{v} is not a number"));
        }
        crate::limits::require_budgets(&self.layout(""), self.costs().total(), 0)
    }

    /// Drop-path probability of block `i` (timm: `torch.linspace(0, drop_path_rate, depth)`).
    pub fn block_drop_path(&self, i: usize) -> f64 {
        crate::config::linear_drop_path(self.drop_path_rate, i, self.depth)
    }

    fn hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Tokens per image, class token included.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// The anchor layout: one stage of `depth` blocks at width `embed_dim`.
    pub fn layout(&self, name: &str) -> AnchorLayout {
        AnchorLayout {
            name: name.to_string(),
            input: [self.in_chans, self.img_size, self.img_size],
            num_classes: self.num_classes,
            stages: vec![StageLayout {
                depth: self.depth,
                channels: self.embed_dim,
                rows_per_image: self.tokens(),
                grid: [self.grid(), self.grid()],
                kind: FeatureKind::Tokens,
            }],
        }
    }

    /// Per-part costs by fvcore's convention (spec §8).
    pub fn costs(&self) -> AnchorCosts {
        // In 128 bits, saturating into the u64 costs (the fields are bounded by `validate`).
        let (c, n, h) = (self.embed_dim as u128, self.tokens() as u128, self.hidden() as u128);
        let patch_in = (self.in_chans * self.patch_size * self.patch_size) as u128;
        let patches = n - 1;
        let conv_params = c * patch_in + c;
        let positions = if self.no_embed_class { patches } else { n };
        let embed = PartCost {
            params_official: PartCost::saturating(0, conv_params).params,
            ..PartCost::saturating(patches * patch_in * c, conv_params + c + positions * c)
        };
        let qkv_bias = if self.qkv_bias { 3 * c } else { 0 };
        // LayerScale: two `[C]` scales; fvcore counts no elementwise multiply, so no FLOPs.
        let layer_scale = if self.init_values.is_some() { 2 * c } else { 0 };
        let block = PartCost::saturating(
            10 * n * c + 3 * n * c * c + 2 * n * n * c + n * c * c + 2 * n * c * h,
            4 * c + 3 * c * c + qkv_bias + c * c + c + 2 * c * h + h + c + layer_scale,
        );
        let k = self.num_classes as u128;
        AnchorCosts {
            embed,
            blocks: vec![block; self.depth],
            transitions: vec![PartCost::default()],
            head: PartCost::saturating(c * k, c * k + k),
            final_norm: PartCost::saturating(5 * n * c, 2 * c),
            official_omits_front_transitions: false,
        }
    }

    /// Builds the model with random weights (timm's scheme: truncated-normal-like std 0.02 for
    /// tokens and Linear weights, zero biases, unit LayerNorms).
    pub fn init<B: Backend>(&self, name: &str, device: &B::Device) -> Result<Vit<B>> {
        self.validate()?;
        let c = self.embed_dim;
        let std = Initializer::Normal { mean: 0.0, std: 0.02 };
        let linear =
            |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).with_initializer(std.clone()).init::<B>(device);
        let norm = || LayerNormConfig::new(c).with_epsilon(self.layer_norm_eps).init::<B>(device);
        let rate = |i: usize| self.block_drop_path(i);
        let layer_scale = || self.init_values.map(|v| LayerScale { gamma: Initializer::Constant { value: v }.init([c], device) });
        let blocks = (0..self.depth)
            .map(|i| Block {
                norm1: norm(),
                attn: Attention { qkv: linear(c, 3 * c, self.qkv_bias), proj: linear(c, c, true), num_heads: self.num_heads },
                ls1: layer_scale(),
                norm2: norm(),
                mlp: Mlp { fc1: linear(c, self.hidden(), true), fc2: linear(self.hidden(), c, true) },
                ls2: layer_scale(),
                drop_path: rate(i),
            })
            .collect();
        let positions = if self.no_embed_class { self.tokens() - 1 } else { self.tokens() };
        Ok(Vit {
            cls_token: std.init([1, 1, c], device),
            pos_embed: std.init([1, positions, c], device),
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([self.in_chans, c], [self.patch_size, self.patch_size])
                    .with_stride([self.patch_size, self.patch_size])
                    .init(device),
            },
            blocks,
            norm: norm(),
            head: linear(c, self.num_classes, true),
            layout: self.layout(name),
            config: self.clone(),
            noise: NoiseSeed::default(),
        })
    }
}

/// Patch embedding: a strided convolution (`patch_embed.proj`).
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// `Conv2d(in_chans, embed_dim, patch, stride=patch)`.
    pub proj: Conv2d<B>,
}

/// Multi-head self-attention with a fused qkv projection (`attn.qkv`, `attn.proj`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[C] → [3C]` projection.
    pub qkv: Linear<B>,
    /// Output projection.
    pub proj: Linear<B>,
    /// Number of heads.
    pub num_heads: usize,
}

impl<B: Kernels> Attention<B> {
    /// `[b, n, c] → [b, n, c]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear_rows(&self.proj, self.core(linear_rows(&self.qkv, x)))
    }

    /// The attention proper, from the qkv projection `[b, n, 3c]` to the merged heads `[b, n, c]`.
    pub fn core(&self, qkv: Tensor<B, 3>) -> Tensor<B, 3> {
        B::self_attention(qkv, self.num_heads)
    }
}

/// The MLP (`mlp.fc1`, GELU, `mlp.fc2`).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Expansion.
    pub fc1: Linear<B>,
    /// Projection back.
    pub fc2: Linear<B>,
}

impl<B: Kernels> Mlp<B> {
    /// `fc2(gelu(fc1(x)))`, with timm's exact (erf) GELU.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear_rows(&self.fc2, B::exact_gelu(linear_rows(&self.fc1, x)))
    }
}

/// LayerScale: a learned per-channel scale of a residual branch (`ls1.gamma`).
#[derive(Module, Debug)]
pub struct LayerScale<B: Backend> {
    /// Scale per channel `[C]`.
    pub gamma: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerScale<B> {
    /// `x · gamma` over the last dimension of `[b, n, C]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let c = x.dims()[2];
        x * self.gamma.val().reshape([1, 1, c])
    }
}

/// A pre-norm transformer block, with LayerScale on both branches when configured (DeiT-3).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub norm1: LayerNorm<B>,
    /// Attention.
    pub attn: Attention<B>,
    /// Scale of the attention branch (DeiT-3).
    pub ls1: Option<LayerScale<B>>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<B>,
    /// MLP.
    pub mlp: Mlp<B>,
    /// Scale of the MLP branch (DeiT-3).
    pub ls2: Option<LayerScale<B>>,
    /// Drop-path probability of both branches in training.
    pub drop_path: f64,
}

impl<B: Kernels> Block<B> {
    /// `x + attn(norm1(x))`, then `x + mlp(norm2(x))` (in training, drop path with fixed seeds:
    /// use [`forward_seeded`](Self::forward_seeded) for fresh masks).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_seeded(x, [0, 1])
    }

    /// `x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`; drop path acts only in
    /// training (an autodiff backend), its two masks drawn from `seeds`.
    pub fn forward_seeded(&self, x: Tensor<B, 3>, seeds: [u64; 2]) -> Tensor<B, 3> {
        let scaled = |scale: &Option<LayerScale<B>>, y: Tensor<B, 3>| match scale {
            Some(scale) => scale.forward(y),
            None => y,
        };
        let y = scaled(&self.ls1, self.attn.forward(self.norm1.forward(x.clone())));
        let x = x + drop_path(y, self.drop_path, seeds[0]);
        let y = scaled(&self.ls2, self.mlp.forward(self.norm2.forward(x.clone())));
        x + drop_path(y, self.drop_path, seeds[1])
    }
}

/// A ViT anchor. Field names are timm's state-dict keys.
#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    /// Class token `[1, 1, C]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// Position embedding `[1, N, C]` (`[1, N − 1, C]`, patches only, with `no_embed_class`).
    pub pos_embed: Param<Tensor<B, 3>>,
    /// Patch embedding.
    pub patch_embed: PatchEmbed<B>,
    /// Blocks.
    pub blocks: Vec<Block<B>>,
    /// Final norm.
    pub norm: LayerNorm<B>,
    /// Classifier.
    pub head: Linear<B>,
    #[module(skip)]
    layout: AnchorLayout,
    #[module(skip)]
    config: VitConfig,
    #[module(skip)]
    noise: NoiseSeed,
}

impl<B: Kernels> Vit<B> {
    /// The architecture.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Sets the stochastic depth rate (timm's linear rule over the blocks, as
    /// [`VitConfig::drop_path_rate`]); a rate outside `[0, 1)` is an error.
    pub fn set_drop_path_rate(&mut self, rate: f64) -> Result<()> {
        let config = VitConfig { drop_path_rate: rate, ..self.config.clone() };
        config.validate()?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.drop_path = config.block_drop_path(i);
        }
        self.config = config;
        Ok(())
    }
}

impl<B: Kernels> Anchor<B> for Vit<B> {
    fn layout(&self) -> &AnchorLayout {
        &self.layout
    }

    fn costs(&self) -> AnchorCosts {
        self.config.costs()
    }

    fn embed(&self, images: Tensor<B, 4>) -> Features<B> {
        let pos = self.pos_embed.val();
        // Without a class position (DeiT-3), the class token gets a zero position: the same sum.
        let pos = match self.config.no_embed_class {
            true => {
                let c = pos.dims()[2];
                Tensor::cat(vec![Tensor::zeros([1, 1, c], &pos.device()), pos], 1)
            }
            false => pos,
        };
        Features::Tokens(B::patch_tokens(images, &self.patch_embed.proj, self.cls_token.val(), pos))
    }

    fn block(&self, x: Features<B>, index: usize) -> Features<B> {
        let seeds = [self.noise.for_branch(2 * index), self.noise.for_branch(2 * index + 1)];
        Features::Tokens(self.blocks[index].forward_seeded(x.into_tokens(), seeds))
    }

    fn reseed(&self, seed: u64) {
        self.noise.set(seed);
    }

    fn isolate_noise(&mut self) {
        self.noise = NoiseSeed::default();
    }

    fn adapt_checkpoint(&self, tensors: TensorMap) -> TensorMap {
        remap_layer_scale(tensors)
    }

    fn head(&self, x: Features<B>, final_norm: bool) -> Tensor<B, 2> {
        let x = x.into_tokens();
        let [b, _, c] = x.dims();
        // LayerNorm is per token, so normalising only the class token equals timm's norm-then-slice.
        let cls = x.narrow(1, 0, 1);
        let cls = if final_norm { self.norm.forward(cls) } else { cls };
        self.head.forward(cls.reshape([b, c]))
    }
}

/// Maps the LayerScale keys of the DeiT-III releases and SN-Netv2 (`blocks.{i}.gamma_1`,
/// `gamma_2`) onto timm's (`blocks.{i}.ls1.gamma`, `ls2.gamma`); other keys are unchanged.
pub fn remap_layer_scale(tensors: TensorMap) -> TensorMap {
    tensors
        .into_iter()
        .map(|(key, t)| {
            let renamed = key.strip_prefix("blocks.").and_then(|rest| {
                let (block, name) = rest.split_once('.')?;
                let branch = match name {
                    "gamma_1" => "ls1",
                    "gamma_2" => "ls2",
                    _ => return None,
                };
                Some(format!("blocks.{block}.{branch}.gamma"))
            });
            (renamed.unwrap_or(key), t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::Flex,
        tensor::{activation, Distribution, Tensor},
    };

    use super::*;

    #[test]
    fn deit3_presets_cost_what_sn_netv2_and_timm_count() {
        // FLOPs: the official SN-Netv2 FLOPs file (DeiT3-S/L anchors, cfg 0 and 1); parameters:
        // timm 0.6.13's `deit3_*` models (sum of numel).
        for (config, flops, params) in [
            (VitConfig::deit3_small_patch16_224(), Some(4_608_338_304), 22_059_496),
            (VitConfig::deit3_medium_patch16_224(), None, 38_849_512),
            (VitConfig::deit3_large_patch16_224(), Some(61_604_135_936), 304_374_760),
        ] {
            let total = config.costs().total();
            assert_eq!(total.params, params, "{config:?}");
            if let Some(flops) = flops {
                assert_eq!(total.flops, flops, "{config:?}");
            }
        }
        // SN-Netv2's names: the same architectures, LayerScale initialised to 1e-4.
        let ls = VitConfig::deit_small_patch16_ls();
        assert_eq!(VitConfig { init_values: Some(1e-6), ..ls.clone() }, VitConfig::deit3_small_patch16_224());
        assert_eq!(ls.init_values, Some(1e-4));
    }

    #[test]
    fn layer_scale_keys_of_the_deit3_releases_map_to_timms() {
        let t = |v: f32| snnet_core::weights::NamedTensor { shape: vec![1], data: vec![v], stored_as: "F32" };
        let map: TensorMap = [("blocks.3.gamma_1", 1.0), ("blocks.3.gamma_2", 2.0), ("blocks.3.norm1.weight", 3.0), ("gamma_1", 4.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), t(v)))
            .collect();
        let keys: Vec<String> = remap_layer_scale(map).into_keys().collect();
        assert_eq!(keys, ["blocks.3.ls1.gamma", "blocks.3.ls2.gamma", "blocks.3.norm1.weight", "gamma_1"]);
    }

    #[test]
    fn attention_matches_timm_formulation() {
        let device = Default::default();
        for (c, heads, b) in [(192, 3, 1), (384, 6, 2)] {
            let vit = VitConfig::new(c, 1, heads).init::<Flex>("t", &device).unwrap();
            let attn = &vit.blocks[0].attn;
            let x = Tensor::<Flex, 3>::random([b, 197, c], Distribution::Normal(0.0, 1.0), &device);
            // timm 0.6: qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4); softmax(q kᵀ · scale) v.
            let d = c / heads;
            let qkv = attn.qkv.forward(x.clone()).reshape([b, 197, 3, heads, d]).permute([2, 0, 3, 1, 4]);
            let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, heads, 197, d]);
            let p = activation::softmax(part(0).matmul(part(1).swap_dims(2, 3)) * (d as f64).powf(-0.5), 3);
            let expected = attn.proj.forward(p.matmul(part(2)).swap_dims(1, 2).reshape([b, 197, c]));
            let got = attn.forward(x);
            let diff = (got - expected.clone()).abs().max().into_scalar();
            let scale = expected.abs().max().into_scalar();
            assert!(diff <= 1e-5 * scale, "max diff {diff} (scale {scale})");
        }
    }
}
