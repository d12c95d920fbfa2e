//! Vision Transformer (ViT/DeiT) with timm's structure and parameter names.

use burn::{
    module::{Module, Param},
    nn::{conv::Conv2d, conv::Conv2dConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig},
    tensor::{backend::Backend, Tensor},
};
use serde::{Deserialize, Serialize};
use snnet_core::{
    drop_path, ops::linear_rows, Anchor, AnchorCosts, AnchorLayout, FeatureKind, Features, Kernels, NoiseSeed, PartCost, StageLayout,
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
        }
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
        let embed = PartCost {
            params_official: PartCost::saturating(0, conv_params).params,
            ..PartCost::saturating(patches * patch_in * c, conv_params + c + n * c)
        };
        let qkv_bias = if self.qkv_bias { 3 * c } else { 0 };
        let block = PartCost::saturating(
            10 * n * c + 3 * n * c * c + 2 * n * n * c + n * c * c + 2 * n * c * h,
            4 * c + 3 * c * c + qkv_bias + c * c + c + 2 * c * h + h + c,
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
        let blocks = (0..self.depth)
            .map(|i| Block {
                norm1: norm(),
                attn: Attention { qkv: linear(c, 3 * c, self.qkv_bias), proj: linear(c, c, true), num_heads: self.num_heads },
                norm2: norm(),
                mlp: Mlp { fc1: linear(c, self.hidden(), true), fc2: linear(self.hidden(), c, true) },
                drop_path: rate(i),
            })
            .collect();
        Ok(Vit {
            cls_token: std.init([1, 1, c], device),
            pos_embed: std.init([1, self.tokens(), c], device),
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

/// A pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub norm1: LayerNorm<B>,
    /// Attention.
    pub attn: Attention<B>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<B>,
    /// MLP.
    pub mlp: Mlp<B>,
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
        let x = x.clone() + drop_path(self.attn.forward(self.norm1.forward(x)), self.drop_path, seeds[0]);
        let y = drop_path(self.mlp.forward(self.norm2.forward(x.clone())), self.drop_path, seeds[1]);
        x + y
    }
}

/// A ViT anchor. Field names are timm's state-dict keys.
#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    /// Class token `[1, 1, C]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// Position embedding `[1, N, C]`.
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
        Features::Tokens(B::patch_tokens(images, &self.patch_embed.proj, self.cls_token.val(), self.pos_embed.val()))
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

    fn head(&self, x: Features<B>, final_norm: bool) -> Tensor<B, 2> {
        let x = x.into_tokens();
        let [b, _, c] = x.dims();
        // LayerNorm is per token, so normalising only the class token equals timm's norm-then-slice.
        let cls = x.narrow(1, 0, 1);
        let cls = if final_norm { self.norm.forward(cls) } else { cls };
        self.head.forward(cls.reshape([b, c]))
    }
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::Flex,
        tensor::{activation, Distribution, Tensor},
    };

    use super::*;

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
