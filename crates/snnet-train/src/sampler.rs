//! Which route a training step trains. The official recipe draws one route uniformly at random per
//! step ([`UniformSampler`], or [`ListSampler`] over chosen routes); SN-Netv2 draws a FLOPs group
//! first, then a route in it ([`FlopsGroupedSampler`]).

use snnet_core::{Anchor, Kernels, Stitch, StitchedNet};

use crate::error::{TrainError, TrainResult};
use crate::rng::SplitMix64;

/// Chooses the route of each training step; its state can be saved and restored for `--resume`.
pub trait RouteSampler {
    /// The route id for the next step.
    fn next_route(&mut self) -> usize;
    /// The state to save in a checkpoint.
    fn state(&self) -> u64;
    /// Continues from a saved state.
    fn restore(&mut self, state: u64);
    /// A copy in the same state, for another peer of a data-parallel run.
    fn fork(&self) -> Box<dyn RouteSampler + Send>;
}

/// Every route with the same probability, from a seeded generator (reproducible).
#[derive(Clone, Debug)]
pub struct UniformSampler {
    num_routes: usize,
    rng: SplitMix64,
}

impl UniformSampler {
    /// Uniform over `0..num_routes` (at least one route).
    pub fn new(num_routes: usize, seed: u64) -> Self {
        assert!(num_routes > 0, "a network has at least one route");
        Self { num_routes, rng: SplitMix64::new(seed) }
    }
}

impl RouteSampler for UniformSampler {
    fn next_route(&mut self) -> usize {
        self.rng.below(self.num_routes)
    }

    fn state(&self) -> u64 {
        self.rng.state()
    }

    fn restore(&mut self, state: u64) {
        self.rng = SplitMix64::new(state);
    }

    fn fork(&self) -> Box<dyn RouteSampler + Send> {
        Box::new(self.clone())
    }
}

/// Uniform over a fixed list of routes (e.g. only the anchors, to pretrain them in one run).
#[derive(Clone, Debug)]
pub struct ListSampler {
    routes: Vec<usize>,
    rng: SplitMix64,
}

impl ListSampler {
    /// Uniform over `routes` (at least one).
    pub fn new(routes: Vec<usize>, seed: u64) -> Self {
        assert!(!routes.is_empty(), "a sampler needs at least one route");
        Self { routes, rng: SplitMix64::new(seed) }
    }
}

impl RouteSampler for ListSampler {
    fn next_route(&mut self) -> usize {
        self.routes[self.rng.below(self.routes.len())]
    }

    fn state(&self) -> u64 {
        self.rng.state()
    }

    fn restore(&mut self, state: u64) {
        self.rng = SplitMix64::new(state);
    }

    fn fork(&self) -> Box<dyn RouteSampler + Send> {
        Box::new(self.clone())
    }
}

/// How far apart in FLOPs routes may lie and still share a group of [`FlopsGroupedSampler`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FlopsGap {
    /// In GFLOPs (SN-Netv2's `--flops_gap`, 1.0 by default).
    Giga(f64),
    /// A fraction of the largest route's FLOPs: for small networks, whose routes may all lie
    /// within one GFLOP of each other (one group, uniform sampling again).
    Relative(f64),
}

impl std::str::FromStr for FlopsGap {
    type Err = String;

    /// GFLOPs (`1.0`) or, with `%`, a share of the largest route (`5%`).
    fn from_str(text: &str) -> Result<Self, String> {
        let number = |t: &str| t.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
        match text.trim().strip_suffix('%') {
            Some(share) => number(share).map(|p| FlopsGap::Relative(p / 100.0)),
            None => number(text).map(FlopsGap::Giga),
        }
        .ok_or_else(|| format!("`{text}` is neither GFLOPs (e.g. 1.0) nor a share of the largest route (e.g. 5%)"))
    }
}

/// SN-Netv2's resource-constrained sampling: the routes, sorted by FLOPs, are cut into groups,
/// and each step draws a group, then a route uniformly inside it — so the many routes of similar
/// cost (most of a two-way space) do not crowd out the few cheap or expensive ones.
///
/// Grouping, as the official `group_subnets_by_flops`: walking the routes by increasing FLOPs
/// (ties in the order given), with `reference` = the FLOPs of the current group's first route
/// (0 before the first), a route more than `gap` away from `reference` starts a new group (and
/// becomes its reference); otherwise it joins the current group. Groups are drawn uniformly, or
/// with a linear ramp `k`: the `g`-th group (0-based, by FLOPs) with weight `g / k + 1 / G`,
/// normalised (`--flops_sampling_k`).
#[derive(Clone, Debug)]
pub struct FlopsGroupedSampler {
    groups: Vec<Vec<usize>>,
    /// Cumulative probabilities of the groups (the last is 1).
    cumulative: Vec<f64>,
    rng: SplitMix64,
}

impl FlopsGroupedSampler {
    /// Groups `routes` (route id and its FLOPs) by `gap`, groups drawn uniformly or along the
    /// ramp `ramp_k`; draws are seeded by `seed`. An empty route list, FLOPs or a gap that are
    /// negative or not finite, or a ramp that is not positive are errors naming the setting.
    pub fn new(routes: &[(usize, f64)], gap: FlopsGap, ramp_k: Option<f64>, seed: u64) -> TrainResult<Self> {
        let groups = group_by_flops(routes, gap)?;
        let weights: Vec<f64> = match ramp_k {
            None => vec![1.0; groups.len()],
            Some(k) if k > 0.0 && k.is_finite() => (0..groups.len()).map(|g| g as f64 / k + 1.0 / groups.len() as f64).collect(),
            Some(k) => return Err(setting("flops_sampling_k", format!("must be a positive number, got {k}"))),
        };
        let total: f64 = weights.iter().sum();
        let mut sum = 0.0;
        let mut cumulative: Vec<f64> = weights
            .iter()
            .map(|w| {
                sum += w / total;
                sum
            })
            .collect();
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Ok(Self { groups, cumulative, rng: SplitMix64::new(seed) })
    }

    /// [`FlopsGroupedSampler::new`] over `routes` of `net`, each with its FLOPs from the
    /// network's route costs. A route id the network does not have is an error naming it.
    pub fn over_routes<B: Kernels, A: Anchor<B>, L: Stitch<B>>(
        net: &StitchedNet<B, A, L>,
        routes: &[usize],
        gap: FlopsGap,
        ramp_k: Option<f64>,
        seed: u64,
    ) -> TrainResult<Self> {
        let flops = routes.iter().map(|&id| net.route(id).map(|_| (id, net.costs()[id].flops as f64))).collect::<Result<Vec<_>, _>>()?;
        Self::new(&flops, gap, ramp_k, seed)
    }

    /// The groups, by increasing FLOPs, each sorted by route id.
    pub fn groups(&self) -> &[Vec<usize>] {
        &self.groups
    }

    /// The probability of drawing each group.
    pub fn group_probabilities(&self) -> Vec<f64> {
        let mut previous = 0.0;
        self.cumulative
            .iter()
            .map(|&c| {
                let p = c - previous;
                previous = c;
                p
            })
            .collect()
    }
}

impl RouteSampler for FlopsGroupedSampler {
    fn next_route(&mut self) -> usize {
        let u = self.rng.unit();
        let g = self.cumulative.iter().position(|&c| u < c).unwrap_or(self.groups.len() - 1);
        let group = &self.groups[g];
        group[self.rng.below(group.len())]
    }

    fn state(&self) -> u64 {
        self.rng.state()
    }

    fn restore(&mut self, state: u64) {
        self.rng = SplitMix64::new(state);
    }

    fn fork(&self) -> Box<dyn RouteSampler + Send> {
        Box::new(self.clone())
    }
}

/// The groups of [`FlopsGroupedSampler`]: `routes` (id, FLOPs) cut by `gap`, by increasing FLOPs,
/// each group sorted by id.
pub fn group_by_flops(routes: &[(usize, f64)], gap: FlopsGap) -> TrainResult<Vec<Vec<usize>>> {
    if routes.is_empty() {
        return Err(setting("routes", "FLOPs-grouped sampling needs at least one route".into()));
    }
    if let Some(&(id, flops)) = routes.iter().find(|(_, f)| !(f.is_finite() && *f >= 0.0)) {
        return Err(setting("routes", format!("route {id} has FLOPs {flops}")));
    }
    let largest = routes.iter().map(|&(_, f)| f).fold(0.0, f64::max);
    let gap_flops = match gap {
        FlopsGap::Giga(g) if g.is_finite() && g >= 0.0 => g * 1e9,
        FlopsGap::Relative(r) if r.is_finite() && r >= 0.0 => r * largest,
        other => return Err(setting("flops_gap", format!("must be a non-negative number, got {other:?}"))),
    };
    let mut by_flops = routes.to_vec();
    by_flops.sort_by(|a, b| a.1.total_cmp(&b.1)); // stable: ties keep the given order
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut reference = 0.0;
    for (id, flops) in by_flops {
        if (flops - reference).abs() > gap_flops {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            reference = flops;
        }
        current.push(id);
    }
    groups.push(current);
    for group in &mut groups {
        group.sort_unstable();
    }
    Ok(groups)
}

fn setting(setting: &str, reason: String) -> TrainError {
    TrainError::Setting { setting: setting.into(), reason }
}
