//! Which route a training step trains. The official recipe draws one route uniformly at random per
//! step; the trait leaves room for other policies (e.g. FLOPs-grouped sampling as in SN-Netv2).

use crate::rng::SplitMix64;

/// Chooses the route of each training step; its state can be saved and restored for `--resume`.
pub trait RouteSampler {
    /// The route id for the next step.
    fn next_route(&mut self) -> usize;
    /// The state to save in a checkpoint.
    fn state(&self) -> u64;
    /// Continues from a saved state.
    fn restore(&mut self, state: u64);
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
}
