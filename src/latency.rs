//! Measured latency of routes on the running device (warm-up, then the median of repeats).

use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};
use snnet_core::{Anchor, Result, StitchedNet};

/// Median wall-clock milliseconds of `repeats` forwards of route `id` on `images`, after `warmup`
/// untimed forwards. Each timed forward ends with a device sync, so GPU timings are complete.
pub fn route_latency_ms<B: Backend, A: Anchor<B>>(
    net: &StitchedNet<B, A>,
    id: usize,
    images: &Tensor<B, 4>,
    warmup: usize,
    repeats: usize,
) -> Result<f64> {
    let device = images.device();
    for _ in 0..warmup {
        net.forward(images.clone(), id)?;
        let _ = B::sync(&device);
    }
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            let out = net.forward(images.clone(), id);
            let _ = B::sync(&device);
            out.map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
