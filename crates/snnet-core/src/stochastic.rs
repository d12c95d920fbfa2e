//! Seeded stochastic depth (drop path), so a training run is reproducible and resumes exactly.
//!
//! burn's own random tensors draw from one process-wide generator per backend, which any other
//! code (or test) running at the same time also draws from. Drop path here instead takes its
//! per-sample masks from a [`SplitMix64`] seeded by the training step ([`NoiseSeed`], set through
//! [`Anchor::reseed`](crate::Anchor::reseed)) and by the position of the branch in the network, so
//! the masks of step `n` are the same however the run got to step `n`.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::rng::SplitMix64;

/// The seed of an anchor's stochastic layers for the next forward, shared by the anchor's clones
/// (burn modules are moved and cloned through every optimiser step).
#[derive(Clone, Debug, Default)]
pub struct NoiseSeed(Arc<AtomicU64>);

impl NoiseSeed {
    /// Sets the seed.
    pub fn set(&self, seed: u64) {
        self.0.store(seed, Ordering::Relaxed);
    }

    /// The seed of the branch numbered `branch` (e.g. `2·block + 0` for attention, `+ 1` for the MLP).
    pub fn for_branch(&self, branch: usize) -> u64 {
        let mut rng = SplitMix64::stream(self.0.load(Ordering::Relaxed), branch as u64 + 1, 0xD1B5_4A32_D192_ED03);
        rng.next_u64()
    }
}

/// Drop path (timm `DropPath`): during training (an autodiff backend) each sample's branch output
/// is zeroed with probability `rate` and the kept ones are scaled by `1 / (1 − rate)`; at
/// inference, or with `rate = 0`, `x` is returned as it is. `x` is `[batch, …]`; the masks come
/// from `seed` (see [`NoiseSeed::for_branch`]).
pub fn drop_path<B: Backend, const D: usize>(x: Tensor<B, D>, rate: f64, seed: u64) -> Tensor<B, D> {
    let device = x.device();
    if rate <= 0.0 || !B::ad_enabled(&device) {
        return x;
    }
    let batch = x.dims()[0];
    let keep = 1.0 - rate;
    let mut rng = SplitMix64::new(seed);
    let mask: Vec<f32> = (0..batch).map(|_| if rng.unit() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
    let mut shape = [1usize; D];
    shape[0] = batch;
    let mask = Tensor::<B, D>::from_data(TensorData::new(mask, shape), &device);
    x * mask
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};

    use super::*;

    #[test]
    fn drop_path_is_identity_at_inference_and_seeded_in_training() {
        let device = Default::default();
        let x = Tensor::<NdArray, 3>::ones([64, 2, 3], &device);
        assert_eq!(drop_path(x.clone(), 0.5, 7).into_data(), x.into_data());

        let x = Tensor::<Autodiff<NdArray>, 3>::ones([64, 2, 3], &device);
        let a = drop_path(x.clone(), 0.25, 7).into_data().to_vec::<f32>().unwrap();
        let b = drop_path(x.clone(), 0.25, 7).into_data().to_vec::<f32>().unwrap();
        let c = drop_path(x, 0.25, 8).into_data().to_vec::<f32>().unwrap();
        assert_eq!(a, b, "same seed, same mask");
        assert_ne!(a, c, "another seed, another mask");
        // Whole samples are kept (scaled by 1/0.75) or dropped.
        for sample in a.chunks(6) {
            assert!(sample.iter().all(|&v| v == sample[0]));
            assert!(sample[0] == 0.0 || (sample[0] - 1.0 / 0.75).abs() < 1e-6);
        }
        let dropped = a.chunks(6).filter(|s| s[0] == 0.0).count();
        assert!((4..=30).contains(&dropped), "{dropped} of 64 dropped at rate 0.25");
    }

    #[test]
    fn branch_seeds_differ_and_follow_the_shared_seed() {
        let seed = NoiseSeed::default();
        let copy = seed.clone();
        seed.set(3);
        assert_eq!(copy.for_branch(0), seed.for_branch(0), "clones share the seed");
        assert_ne!(seed.for_branch(0), seed.for_branch(1));
        let before = seed.for_branch(5);
        seed.set(4);
        assert_ne!(before, seed.for_branch(5));
    }
}
