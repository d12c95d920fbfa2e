//! A stitching layer added through the seam alone (`Stitch`): a learned scale times the identity,
//! built, skipped by least squares and trained by the existing training step — with no change to
//! the network, least squares or the optimiser.

use burn::{
    backend::{Autodiff, Flex},
    module::{Module, Param},
    tensor::{backend::Backend, Distribution, Int, Tensor, TensorData},
};
use snnet::{
    core::{space::LayerSlot, Error},
    train::{train_step, AdamW, AdamWConfig, StepConfig},
    AnyAnchor, Architecture, Features, Kernels, Stitch, StitchedNet,
};

use super::common::mini_vit;

type A = Autodiff<Flex>;

/// `y = s·x` with one learned scale `s` (starting at 1): for anchors of equal width.
#[derive(Module, Debug)]
struct ScaledIdentity<B: Backend> {
    scale: Param<Tensor<B, 1>>,
}

impl<B: Kernels> Stitch<B> for ScaledIdentity<B> {
    fn for_slot(slot: &LayerSlot, device: &B::Device) -> snnet::core::Result<Self> {
        if slot.in_channels != slot.out_channels || slot.in_kind != slot.out_kind {
            return Err(Error::IncompatibleAnchors(format!("a scaled identity cannot serve `{}`", slot.key())));
        }
        Ok(Self { scale: Param::from_tensor(Tensor::ones([1], device)) })
    }

    fn forward(&self, x: Features<B>) -> Features<B> {
        match x {
            Features::Tokens(t) => Features::Tokens(t * self.scale.val().unsqueeze()),
            Features::Map(m) => Features::Map(m * self.scale.val().unsqueeze()),
        }
    }
}

fn scale_of(net: &StitchedNet<A, AnyAnchor<A>, ScaledIdentity<A>>, slot: usize) -> f32 {
    net.stitch_layers[slot].scale.val().into_scalar()
}

#[test]
fn a_toy_stitching_layer_joins_through_the_seam_alone_and_trains() {
    let device = Default::default();
    A::seed(&device, 3);
    // Two ViTs of the same width (32), so every stitch maps 32 channels to 32.
    let anchors: Vec<AnyAnchor<A>> = [mini_vit(32, 2, 3), mini_vit(32, 4, 3)]
        .into_iter()
        .enumerate()
        .map(|(i, c)| Architecture::Vit(c).init::<A>(&format!("vit{i}"), &device).unwrap())
        .collect();
    let mut net =
        StitchedNet::<A, AnyAnchor<A>, ScaledIdentity<A>>::new(anchors, &Default::default(), Default::default(), &device).unwrap();
    assert!(!net.stitch_layers.is_empty());

    // Least squares leaves a layer that does not take its solution alone.
    let images = Tensor::<A, 4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let report = net.init_least_squares(images.clone(), 2, |_| {}).unwrap();
    assert!(report.layers.is_empty(), "{:?}", report.layers);

    // A stitched route, trained with the anchors frozen: only its scale moves, downhill.
    let id = (0..net.num_routes()).find(|&id| !net.route(id).unwrap().is_anchor()).unwrap();
    let slot = net.route(id).unwrap().slots[0];
    let labels = Tensor::<A, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3], [4]), &device);
    let config = StepConfig { anchor_lr_scale: 0.0, stitch_lr_scale: 1.0, ..Default::default() };
    let mut optimizer = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() });
    let anchor_weight = |net: &StitchedNet<A, AnyAnchor<A>, ScaledIdentity<A>>| match &net.anchors[0] {
        AnyAnchor::Vit(v) => v.head.weight.val().into_data().to_vec::<f32>().unwrap(),
        _ => unreachable!("ViT anchors"),
    };
    let frozen = anchor_weight(&net);
    let mut losses = Vec::new();
    for _ in 0..5 {
        let (next, outcome) = train_step(net, &mut optimizer, images.clone(), labels.clone(), None, id, 0.01, &config).unwrap();
        net = next;
        assert_eq!(outcome.optimizer.updated, 1, "the route's one scale, nothing else");
        losses.push(outcome.loss.value());
    }
    assert_ne!(scale_of(&net, slot), 1.0, "the scale trained");
    assert_eq!(anchor_weight(&net), frozen, "the anchors stayed frozen");
    assert!(losses[4] < losses[0], "the loss went down: {losses:?}");
    // Every other slot's scale is untouched.
    for other in (0..net.stitch_layers.len()).filter(|&s| s != slot) {
        assert_eq!(scale_of(&net, other), 1.0, "slot {other}");
    }
}
