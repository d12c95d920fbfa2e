//! Measured latency of routes on the running device: cold first forwards, pre-warming, and warm
//! medians. Every timed forward ends with a device sync, so GPU timings are complete.

use snnet_core::Kernels;
use std::time::Instant;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use snnet_core::{Anchor, Result, StitchedNet};

/// How many forwards to run and time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimingOptions {
    /// Untimed forwards before timing.
    pub warmup: usize,
    /// Timed forwards (at least this many).
    pub repeats: usize,
    /// Keep repeating until this much time has been spent timing (bounded by `max_repeats`).
    pub min_seconds: f64,
    /// Upper bound on timed forwards.
    pub max_repeats: usize,
}

impl Default for TimingOptions {
    fn default() -> Self {
        Self { warmup: 2, repeats: 5, min_seconds: 0.5, max_repeats: 200 }
    }
}

/// One route's measured latency at one batch size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteTiming {
    /// Route id.
    pub cfg_id: usize,
    /// Images per forward.
    pub batch: usize,
    /// Median of the timed forwards, milliseconds.
    pub latency_ms: f64,
    /// Fastest timed forward, milliseconds.
    pub min_ms: f64,
    /// Timed forwards.
    pub repeats: usize,
}

/// Milliseconds of one forward of route `id`, sync included.
pub fn forward_ms<B: Kernels, A: Anchor<B>>(net: &StitchedNet<B, A>, id: usize, images: &Tensor<B, 4>) -> Result<f64> {
    let device = images.device();
    let t = Instant::now();
    net.forward(images.clone(), id)?;
    let _ = B::sync(&device);
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Runs each route once on `images` so that its kernels are compiled and tuned (GPU backends) and
/// later forwards of these routes at this batch size run warm. Returns each route's cold time (ms).
pub fn prewarm<B: Kernels, A: Anchor<B>>(net: &StitchedNet<B, A>, routes: &[usize], images: &Tensor<B, 4>) -> Result<Vec<f64>> {
    routes.iter().map(|&id| forward_ms(net, id, images)).collect()
}

/// Warm latency of route `id` on `images`: `warmup` untimed forwards, then timed ones (see
/// [`TimingOptions`]); the median and the minimum.
pub fn time_route<B: Kernels, A: Anchor<B>>(
    net: &StitchedNet<B, A>,
    id: usize,
    images: &Tensor<B, 4>,
    options: TimingOptions,
) -> Result<RouteTiming> {
    for _ in 0..options.warmup {
        forward_ms(net, id, images)?;
    }
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < options.repeats.max(1)
        || (started.elapsed().as_secs_f64() < options.min_seconds && times.len() < options.max_repeats.max(1))
    {
        times.push(forward_ms(net, id, images)?);
    }
    times.sort_by(f64::total_cmp);
    Ok(RouteTiming { cfg_id: id, batch: images.dims()[0], latency_ms: median(&times), min_ms: times[0], repeats: times.len() })
}

/// Median wall-clock milliseconds of `repeats` forwards of route `id` on `images`, after `warmup`
/// untimed forwards.
pub fn route_latency_ms<B: Kernels, A: Anchor<B>>(
    net: &StitchedNet<B, A>,
    id: usize,
    images: &Tensor<B, 4>,
    warmup: usize,
    repeats: usize,
) -> Result<f64> {
    let options = TimingOptions { warmup, repeats, min_seconds: 0.0, max_repeats: repeats };
    Ok(time_route(net, id, images, options)?.latency_ms)
}

/// Median of sorted values (mean of the middle two for an even count).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}
