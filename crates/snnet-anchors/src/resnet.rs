//! ResNet (basic and bottleneck blocks) with timm's module structure and parameter names:
//! `conv1`, `bn1`, `layer{1..4}.{b}.{conv1,bn1,conv2,bn2[,conv3,bn3]}`, `downsample.{0,1}`, `fc`.
//!
//! BatchNorm keeps running statistics as PyTorch does ([`crate::norm::batch_norm`]). As an
//! [`Anchor`], the features are maps
//! `[batch, C, H, W]`; each stage's first block downsamples itself, so there are no transitions.

use burn::{
    module::Module,
    nn::{
        conv::{Conv2d, Conv2dConfig},
        BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d,
    },
    tensor::{activation::relu, backend::Backend, module::max_pool2d, Tensor},
};
use serde::{Deserialize, Serialize};
use snnet_core::{drop_path, Anchor, AnchorCosts, AnchorLayout, FeatureKind, Features, Kernels, NoiseSeed, PartCost};

use crate::{error::Result, norm::batch_norm};

/// The residual block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1×1, 3×3, 1×1 convolutions (ResNet-50 and up), expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `channels` entry.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Architecture of a ResNet, with timm's argument names (`channels` is the per-stage planes list
/// timm's `make_blocks` takes; `stem_width` the stem's output channels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// Block type.
    pub block: BlockKind,
    /// Blocks per stage (four stages).
    pub layers: Vec<usize>,
    /// Planes per stage; a stage outputs `channels[s] · expansion`.
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    /// Output channels of the 7×7 stem convolution.
    #[serde(default = "default_stem_width")]
    pub stem_width: usize,
    /// Input channels.
    #[serde(default = "crate::config::in_chans_3")]
    pub in_chans: usize,
    /// Input resolution (square) the layout and costs are given for.
    #[serde(default = "crate::config::img_size_224")]
    pub img_size: usize,
    /// Classes of the head.
    #[serde(default = "crate::config::num_classes_1000")]
    pub num_classes: usize,
    /// Stochastic depth on the residual branch: block `i` of `n` with `rate · i / (n − 1)` (timm).
    #[serde(default)]
    pub drop_path_rate: f64,
}

fn default_channels() -> Vec<usize> {
    vec![64, 128, 256, 512]
}
fn default_stem_width() -> usize {
    64
}

/// BatchNorm epsilon (PyTorch's default).
const BN_EPS: f64 = 1e-5;

/// A ResNet leading the network (ResNet-18/50, ResNet-18 → Swin-T) stitches stages 1 and 2, without
/// the stage entries (spec §4.2).
impl crate::family::Family for ResNetConfig {
    const ARCH: &'static str = "resnet";
    const PRESETS: &'static [(&'static str, fn() -> Self)] = &[("resnet18", Self::resnet18), ("resnet50", Self::resnet50)];

    fn short_name(&self) -> String {
        let c = self;
        format!("resnet({:?}, layers={:?}, channels={:?}, img={})", c.block, c.layers, c.channels, c.img_size)
    }

    fn leading_space(&self) -> Option<snnet_core::SpaceSettings> {
        Some(snnet_core::SpaceSettings::stage_wise(vec![1, 2], snnet_core::PairedVariant::ForwardNoEntry))
    }
}

impl ResNetConfig {
    /// timm `resnet18`.
    pub fn resnet18() -> Self {
        Self::new(BlockKind::Basic, vec![2, 2, 2, 2])
    }

    /// timm `resnet50`.
    pub fn resnet50() -> Self {
        Self::new(BlockKind::Bottleneck, vec![3, 4, 6, 3])
    }

    /// A ResNet at 224×224 with the standard widths.
    pub fn new(block: BlockKind, layers: Vec<usize>) -> Self {
        Self {
            block,
            layers,
            channels: default_channels(),
            stem_width: 64,
            in_chans: 3,
            img_size: 224,
            num_classes: 1000,
            drop_path_rate: 0.0,
        }
    }

    /// Output channels of stage `s`.
    pub fn stage_dim(&self, s: usize) -> usize {
        self.channels[s] * self.block.expansion()
    }

    /// Side of stage `s`'s maps (the stem and max pool divide by 4, each later stage by 2).
    pub fn grid(&self, s: usize) -> usize {
        (self.img_size / 4) >> s
    }

    fn total_blocks(&self) -> usize {
        self.layers.iter().sum()
    }

    /// Drop-path probability of global block `i`.
    pub fn block_drop_path(&self, i: usize) -> f64 {
        crate::config::linear_drop_path(self.drop_path_rate, i, self.total_blocks())
    }

    /// Input channels of block `b` of stage `s`.
    fn block_in(&self, s: usize, b: usize) -> usize {
        match (s, b) {
            (0, 0) => self.stem_width,
            (s, 0) => self.stage_dim(s - 1),
            (s, _) => self.stage_dim(s),
        }
    }

    /// Checks every field, naming the first bad one, and the anchor's size against the
    /// [`limits`](crate::limits).
    pub fn validate(&self) -> Result<()> {
        let bad = crate::config::invalid::<()>;
        use crate::limits::{MAX_CLASSES, MAX_IMG_SIZE, MAX_WIDTH};
        crate::limits::require_at_most(&[
            ("img_size", self.img_size, MAX_IMG_SIZE),
            ("in_chans", self.in_chans, MAX_WIDTH),
            ("stem_width", self.stem_width, MAX_WIDTH),
            ("num_classes", self.num_classes, MAX_CLASSES),
        ])?;
        crate::limits::require_blocks("layers", &self.layers)?;
        // A stage outputs `channels · expansion` (4 for bottlenecks).
        crate::limits::require_each_at_most("channels", &self.channels, MAX_WIDTH / 4)?;
        if self.layers.len() != 4 {
            return bad("layers", format!("needs 4 stages, got {}", self.layers.len()));
        }
        if self.channels.len() != 4 {
            return bad("channels", format!("needs 4 entries, got {}", self.channels.len()));
        }
        if let Some(s) = self.layers.iter().position(|&d| d == 0) {
            return bad("layers", format!("stage {s} has no blocks"));
        }
        if let Some(s) = self.channels.iter().position(|&c| c == 0) {
            return bad("channels", format!("stage {s} has no channels"));
        }
        crate::config::require_positive(&[
            ("stem_width", self.stem_width),
            ("in_chans", self.in_chans),
            ("num_classes", self.num_classes),
        ])?;
        if self.img_size % 32 != 0 || self.img_size == 0 {
            return bad("img_size", format!("{} is not a multiple of 32 (the network's total stride)", self.img_size));
        }
        crate::config::require_rate(self.drop_path_rate)?;
        crate::limits::require_budgets(&self.layout(""), self.costs().total(), 0)
    }

    /// The anchor layout: four map stages.
    pub fn layout(&self, name: &str) -> AnchorLayout {
        let stages = (0..4).map(|s| (self.layers[s], self.stage_dim(s), self.grid(s)));
        crate::config::square_layout(name, [self.in_chans, self.img_size, self.img_size], self.num_classes, FeatureKind::Map, stages)
    }

    /// Per-part costs by fvcore's convention (spec §8): convolutions as multiply-accumulates at
    /// their output resolution, 2 per element for BatchNorm, the global average pool as its input's
    /// size, ReLU and max pooling not counted.
    pub fn costs(&self) -> AnchorCosts {
        // In 128 bits, saturating into the u64 costs (the fields are bounded by `validate`).
        let u = |v: usize| v as u128;
        let conv = |cin: usize, cout: usize, k: usize, out_side: usize| {
            PartCost::saturating(u(out_side) * u(out_side) * u(cout) * u(cin) * u(k * k), u(cout) * u(cin) * u(k * k))
        };
        let bn = |c: usize, side: usize| PartCost::saturating(2 * u(side) * u(side) * u(c), 2 * u(c));
        let stem_side = self.img_size / 2;
        let embed = conv(self.in_chans, self.stem_width, 7, stem_side) + bn(self.stem_width, stem_side);
        let mut blocks = Vec::new();
        for s in 0..4 {
            let (g, out) = (self.grid(s), self.stage_dim(s));
            for b in 0..self.layers[s] {
                let cin = self.block_in(s, b);
                let g_in = if b == 0 && s > 0 { 2 * g } else { g };
                let planes = self.channels[s];
                let mut cost = match self.block {
                    BlockKind::Basic => conv(cin, planes, 3, g) + bn(planes, g) + conv(planes, planes, 3, g) + bn(planes, g),
                    BlockKind::Bottleneck => {
                        conv(cin, planes, 1, g_in)
                            + bn(planes, g_in)
                            + conv(planes, planes, 3, g)
                            + bn(planes, g)
                            + conv(planes, out, 1, g)
                            + bn(out, g)
                    }
                };
                if b == 0 && (s > 0 || cin != out) {
                    cost = cost + conv(cin, out, 1, g) + bn(out, g);
                }
                blocks.push(cost);
            }
        }
        let (c, k, g) = (u(self.stage_dim(3)), u(self.num_classes), u(self.grid(3)));
        AnchorCosts {
            embed,
            blocks,
            transitions: vec![PartCost::default(); 4],
            head: PartCost::saturating(g * g * c + c * k, c * k + k),
            final_norm: PartCost::default(),
            official_omits_front_transitions: false,
        }
    }

    /// Builds the model with random weights (PyTorch's default convolutions, unit BatchNorms with
    /// zero running means and unit running variances, a std-0.01 normal classifier).
    pub fn init<B: Backend>(&self, name: &str, device: &B::Device) -> Result<ResNet<B>> {
        self.validate()?;
        let conv = |cin: usize, cout: usize, k: usize, stride: usize| {
            let p = k / 2;
            Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false)
                .init::<B>(device)
        };
        let bn = |c: usize| BatchNormConfig::new(c).with_epsilon(BN_EPS).with_momentum(0.1).init::<B>(device);
        let mut stages: Vec<Vec<ResBlock<B>>> = Vec::new();
        let mut global = 0;
        for s in 0..4 {
            let (planes, out) = (self.channels[s], self.stage_dim(s));
            let mut blocks = Vec::new();
            for b in 0..self.layers[s] {
                let cin = self.block_in(s, b);
                let stride = if b == 0 && s > 0 { 2 } else { 1 };
                let downsample = if b == 0 && (stride != 1 || cin != out) {
                    vec![DownsamplePart::Conv(conv(cin, out, 1, stride)), DownsamplePart::Norm(bn(out))]
                } else {
                    Vec::new()
                };
                let block = match self.block {
                    BlockKind::Basic => ResBlock {
                        conv1: conv(cin, planes, 3, stride),
                        bn1: bn(planes),
                        conv2: conv(planes, planes, 3, 1),
                        bn2: bn(planes),
                        conv3: None,
                        bn3: None,
                        downsample,
                        drop_path: self.block_drop_path(global),
                    },
                    BlockKind::Bottleneck => ResBlock {
                        conv1: conv(cin, planes, 1, 1),
                        bn1: bn(planes),
                        conv2: conv(planes, planes, 3, stride),
                        bn2: bn(planes),
                        conv3: Some(conv(planes, out, 1, 1)),
                        bn3: Some(bn(out)),
                        downsample,
                        drop_path: self.block_drop_path(global),
                    },
                };
                blocks.push(block);
                global += 1;
            }
            stages.push(blocks);
        }
        let mut stages = stages.into_iter();
        let mut next = || stages.next().expect("four stages");
        let stem = Conv2dConfig::new([self.in_chans, self.stem_width], [7, 7])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
            .with_bias(false)
            .init(device);
        Ok(ResNet {
            conv1: stem,
            bn1: bn(self.stem_width),
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            fc: LinearConfig::new(self.stage_dim(3), self.num_classes)
                .with_initializer(Initializer::Normal { mean: 0.0, std: 0.01 })
                .init(device),
            layout: self.layout(name),
            config: self.clone(),
            noise: NoiseSeed::default(),
        })
    }
}

/// One part of a shortcut projection (`downsample.0` convolution, `downsample.1` BatchNorm).
#[derive(Module, Debug)]
pub enum DownsamplePart<B: Backend> {
    /// 1×1 convolution with the block's stride.
    Conv(Conv2d<B>),
    /// Its BatchNorm.
    Norm(BatchNorm<B>),
}

/// A residual block (basic: `conv3`/`bn3` absent).
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    /// First convolution (3×3 basic, 1×1 bottleneck).
    pub conv1: Conv2d<B>,
    /// Its norm.
    pub bn1: BatchNorm<B>,
    /// Second convolution (3×3; carries the stride in a bottleneck).
    pub conv2: Conv2d<B>,
    /// Its norm.
    pub bn2: BatchNorm<B>,
    /// Bottleneck expansion (1×1).
    pub conv3: Option<Conv2d<B>>,
    /// Its norm.
    pub bn3: Option<BatchNorm<B>>,
    /// Shortcut projection (empty: identity).
    pub downsample: Vec<DownsamplePart<B>>,
    /// Drop-path probability of the residual branch in training.
    pub drop_path: f64,
}

impl<B: Kernels> ResBlock<B> {
    /// `relu(branch(x) + shortcut(x))`, drop path on the branch drawn from `seed`.
    pub fn forward(&self, x: Tensor<B, 4>, seed: u64) -> Tensor<B, 4> {
        let y = relu(batch_norm(&self.bn1, B::convolve(x.clone(), &self.conv1)));
        let y = batch_norm(&self.bn2, B::convolve(y, &self.conv2));
        let y = match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => batch_norm(bn3, B::convolve(relu(y), conv3)),
            _ => y,
        };
        let mut shortcut = x;
        for part in &self.downsample {
            shortcut = match part {
                DownsamplePart::Conv(conv) => B::convolve(shortcut, conv),
                DownsamplePart::Norm(bn) => batch_norm(bn, shortcut),
            };
        }
        relu(drop_path(y, self.drop_path, seed) + shortcut)
    }
}

/// A ResNet anchor. Field names are timm's state-dict keys.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// Stem convolution (7×7, stride 2).
    pub conv1: Conv2d<B>,
    /// Stem norm.
    pub bn1: BatchNorm<B>,
    /// Stage 0.
    pub layer1: Vec<ResBlock<B>>,
    /// Stage 1.
    pub layer2: Vec<ResBlock<B>>,
    /// Stage 2.
    pub layer3: Vec<ResBlock<B>>,
    /// Stage 3.
    pub layer4: Vec<ResBlock<B>>,
    /// Classifier over the average-pooled maps.
    pub fc: Linear<B>,
    #[module(skip)]
    layout: AnchorLayout,
    #[module(skip)]
    config: ResNetConfig,
    #[module(skip)]
    noise: NoiseSeed,
}

impl<B: Kernels> ResNet<B> {
    /// The architecture.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Sets the stochastic depth rate (timm's linear rule over all blocks); outside `[0, 1)` is an error.
    pub fn set_drop_path_rate(&mut self, rate: f64) -> Result<()> {
        let config = ResNetConfig { drop_path_rate: rate, ..self.config.clone() };
        config.validate()?;
        let stages = [&mut self.layer1, &mut self.layer2, &mut self.layer3, &mut self.layer4];
        for (i, block) in stages.into_iter().flat_map(|s| s.iter_mut()).enumerate() {
            block.drop_path = config.block_drop_path(i);
        }
        self.config = config;
        Ok(())
    }

    fn stage(&self, s: usize) -> &[ResBlock<B>] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4][s]
    }

    /// The features as a map of stage `s`'s side (tokens, which the stitch space never routes into a
    /// CNN, are laid back out row-major).
    fn map(&self, x: Features<B>, s: usize) -> Tensor<B, 4> {
        match x {
            Features::Map(m) => m,
            Features::Tokens(t) => {
                let [b, _, c] = t.dims();
                let side = self.layout.stages[s].grid;
                t.swap_dims(1, 2).reshape([b, c, side[0], side[1]])
            }
        }
    }
}

impl<B: Kernels> Anchor<B> for ResNet<B> {
    fn layout(&self) -> &AnchorLayout {
        &self.layout
    }

    fn costs(&self) -> AnchorCosts {
        self.config.costs()
    }

    fn embed(&self, images: Tensor<B, 4>) -> Features<B> {
        let x = relu(batch_norm(&self.bn1, B::convolve(images, &self.conv1)));
        Features::Map(max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false))
    }

    fn block(&self, x: Features<B>, index: usize) -> Features<B> {
        let stage = self.layout.stage_of(index);
        let local = index - self.layout.stage_start(stage);
        Features::Map(self.stage(stage)[local].forward(self.map(x, stage), self.noise.for_branch(index)))
    }

    fn head(&self, x: Features<B>, _final_norm: bool) -> Tensor<B, 2> {
        let x = self.map(x, 3);
        let [b, c, _, _] = x.dims();
        self.fc.forward(x.mean_dim(3).mean_dim(2).reshape([b, c]))
    }

    fn reseed(&self, seed: u64) {
        self.noise.set(seed);
    }

    fn isolate_noise(&mut self) {
        self.noise = NoiseSeed::default();
    }
}
