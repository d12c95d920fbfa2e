//! FLOPs and parameters of every route, from the anchors' per-part costs (spec §8).

use serde::{Deserialize, Serialize};

use crate::{
    layout::{AnchorCosts, AnchorLayout, PartCost},
    space::{LayerSlot, Route},
};

/// Cost of one route at the anchors' native resolution, batch 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCost {
    /// Multiply-accumulates by fvcore's convention (the paper's "FLOPs").
    pub flops: u64,
    /// Parameters as the official `get_model_size` counts them (for comparison with published tables).
    pub params: u64,
    /// Parameters the route actually uses.
    pub params_exact: u64,
}

/// Cost of a stitching layer: `rows · Cin · Cout` MACs, `Cin·Cout + Cout` parameters.
pub fn stitch_cost(slot: &LayerSlot) -> PartCost {
    let (i, o, n) = (slot.in_channels as u128, slot.out_channels as u128, slot.rows_per_image as u128);
    PartCost::saturating(n * i * o, i * o + o)
}

/// Cost of `route`. Plain anchors cost their whole forward; stitched routes sum the stem of the
/// first anchor, the blocks (and stage transitions) each anchor runs, the stitching layers and the
/// last anchor's head, whose final norm runs only if `final_norm_on_stitched` (the official DeiT
/// path skips it but its `get_model_size` still counts it, spec §9 B1/B4).
pub fn route_cost(
    route: &Route,
    layouts: &[AnchorLayout],
    costs: &[AnchorCosts],
    slots: &[LayerSlot],
    final_norm_on_stitched: bool,
) -> RouteCost {
    if route.is_anchor() {
        let total = costs[route.comb_id[0]].total();
        return RouteCost { flops: total.flops, params: total.params, params_exact: total.params };
    }
    let mut run = costs[route.segments[0].anchor].embed;
    let last_segment = route.segments.len() - 1;
    for (n, seg) in route.segments.iter().enumerate() {
        let (layout, c) = (&layouts[seg.anchor], &costs[seg.anchor]);
        for i in seg.blocks.clone() {
            if i > seg.blocks.start && layout.stage_of(i) != layout.stage_of(i - 1) {
                let mut transition = c.transitions[layout.stage_of(i)];
                if n < last_segment && c.official_omits_front_transitions {
                    transition.params_official = 0;
                }
                run = run + transition;
            }
            run = run + c.blocks[i];
        }
    }
    run = run + route.slots.iter().map(|&s| stitch_cost(&slots[s])).sum();
    let last = &costs[route.segments.last().expect("a route has segments").anchor];
    run = run + last.head;
    let norm = last.final_norm;
    let (flops, params_exact) = if final_norm_on_stitched {
        (run.flops.saturating_add(norm.flops), run.params.saturating_add(norm.params))
    } else {
        (run.flops, run.params)
    };
    RouteCost { flops, params: run.params_official.saturating_add(norm.params_official), params_exact }
}
