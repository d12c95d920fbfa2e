//! `StitchedNet`: a family of anchors, the stitching layers between them, and every route through them.
//!
//! This module holds the network and its routing; `calibration` its least-squares initialisation,
//! `weight_io` its weight files.

use std::marker::PhantomData;

use burn::{
    module::Module,
    tensor::{backend::Backend, Tensor},
};
use serde::{Deserialize, Serialize};

use crate::{
    anchor::Anchor,
    cost::{route_cost, RouteCost},
    error::{Error, Result},
    features::Features,
    layout::{AnchorCosts, AnchorLayout},
    space::{Route, SpaceKind, SpaceSettings, StitchSpace},
    stitch::{Stitch, StitchingLayer},
    Kernels,
};

mod calibration;
mod route_pack;
mod weight_io;

pub use calibration::{LsLayerReport, LsProgress, LsReport};
pub use route_pack::{PackSummary, ROUTES_METADATA};
pub use weight_io::{StatePart, FORMAT_VERSION};

/// Switches between the official implementation's behaviour and our corrections (docs/design.md,
/// "Official behaviour"). The defaults reproduce what released checkpoints depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Apply the end anchor's final norm on stitched routes. Official DeiT skips it (spec §9 B1):
    /// `false` (default) reproduces that; `true` corrects it (then retrain).
    pub final_norm_on_stitched: bool,
}

impl Behaviour {
    /// Whether stitched routes of a space built with `settings` apply the end anchor's final norm:
    /// as [`final_norm_on_stitched`](Self::final_norm_on_stitched) says, and always in a two-way
    /// space (SN-Netv2 applies it on every route, spec §11.3).
    pub fn stitched_final_norm(&self, settings: &SpaceSettings) -> bool {
        self.final_norm_on_stitched || settings.kind == SpaceKind::TwoWay
    }
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

/// Anchors stitched into one network with many routes, switchable at run time. `L` is the
/// stitching layer ([`Stitch`]), the official affine one unless another is named.
#[derive(Module, Debug)]
pub struct StitchedNet<B: Backend, A, L = StitchingLayer<B>> {
    /// The anchors, in order (`anchors.{i}.…` in weight files).
    pub anchors: Vec<A>,
    /// Stitching layers in [`StitchSpace::layers`] order (`stitch_layers.…` in weight files).
    pub stitch_layers: Vec<L>,
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
    /// The routes a route pack holds (`None`: every route of the space).
    #[module(skip)]
    pack_routes: Option<Vec<usize>>,
    #[module(skip)]
    backend: PhantomData<B>,
}

impl<B: Kernels, A: Anchor<B>, L: Stitch<B>> StitchedNet<B, A, L> {
    /// Stitches `anchors` with fresh stitching layers ([`Stitch::for_slot`]; for the affine layer,
    /// PyTorch's default Linear init).
    pub fn new(anchors: Vec<A>, settings: &SpaceSettings, behaviour: Behaviour, device: &B::Device) -> Result<Self> {
        let net = Self::unmaterialized(anchors, settings, behaviour, device)?;
        // burn initialises parameters lazily, drawing from the backend's RNG on first use; touching
        // them all now, in module order, makes a seeded network independent of which route runs first.
        net.visit(&mut Materialize);
        Ok(net)
    }

    /// [`new`](Self::new) without initialising the parameters that the anchors and stitching
    /// layers declare lazily: they take memory only when something reads them. For a network whose
    /// weights are about to be loaded, above all a route pack
    /// ([`load_route_pack`](Self::load_route_pack)), whose unused parts are never read.
    pub fn unmaterialized(anchors: Vec<A>, settings: &SpaceSettings, behaviour: Behaviour, device: &B::Device) -> Result<Self> {
        let layouts: Vec<AnchorLayout> = anchors.iter().map(|a| a.layout().clone()).collect();
        let space = StitchSpace::build(&layouts, settings)?;
        let stitch_layers = space.layers.iter().map(|slot| L::for_slot(slot, device)).collect::<Result<Vec<_>>>()?;
        let costs: Vec<AnchorCosts> = anchors.iter().map(|a| a.costs()).collect();
        let final_norm = behaviour.stitched_final_norm(settings);
        let route_costs = space.routes.iter().map(|r| route_cost(r, &layouts, &costs, &space.layers, final_norm)).collect();
        Ok(Self { anchors, stitch_layers, space, layouts, route_costs, behaviour, selected: 0, pack_routes: None, backend: PhantomData })
    }

    /// The network as inference runs it: every stitching layer in its merged form
    /// ([`Stitch::merged`]: SN-Netv2's LoRA updates folded into their dense maps, the official
    /// `eval()`), so a route costs what it costs with plain affine layers. The space's `lora_rank`
    /// becomes 0: the merged network's weight files are those of the affine network. Training
    /// keeps the unmerged layers (their factors are what trains).
    pub fn merged_for_inference(mut self) -> Self {
        if self.space.settings.lora_rank == 0 {
            return self;
        }
        self.space.settings.lora_rank = 0;
        self.space.layers.iter_mut().for_each(|slot| slot.lora_rank = 0);
        let stitch_layers = self.stitch_layers.into_iter().map(Stitch::merged).collect();
        Self { stitch_layers, ..self }
    }

    /// Seeds every anchor's stochastic layers (drop path) for the next training forward; a
    /// training loop calls it once per step with a seed derived from the step.
    pub fn reseed(&self, seed: u64) {
        for (i, anchor) in self.anchors.iter().enumerate() {
            anchor.reseed(crate::rng::SplitMix64::stream(seed, i as u64, 0x9E37_79B9_7F4A_7C15).next_u64());
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

    /// The ids of the routes this network can run: every route of the space, or those of the
    /// route pack it was loaded from.
    pub fn available_routes(&self) -> Vec<usize> {
        match &self.pack_routes {
            Some(routes) => routes.clone(),
            None => (0..self.num_routes()).collect(),
        }
    }

    /// Route `id` if this network can run it: it exists and, for a route pack, the pack holds it.
    fn runnable_route(&self, id: usize) -> Result<&Route> {
        let route = self.space.route(id)?;
        match &self.pack_routes {
            Some(routes) if !routes.contains(&id) => Err(Error::RouteNotInPack { id, available: routes.clone() }),
            _ => Ok(route),
        }
    }

    /// Selects the route used by [`forward_selected`](Self::forward_selected) (the official
    /// `reset_stitch_id`). Switching is free: nothing is reloaded or allocated.
    pub fn select(&mut self, id: usize) -> Result<()> {
        self.runnable_route(id)?;
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
        let route = self.runnable_route(id)?;
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
        self.anchors[last].head(x.expect("a route runs blocks"), self.behaviour.stitched_final_norm(&self.space.settings))
    }
}

/// Forces lazily initialised parameters into existence.
struct Materialize;

impl<B: Backend> burn::module::ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}
