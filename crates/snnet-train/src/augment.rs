//! Light training augmentation on preprocessed batches: random horizontal flips and random
//! translations (edge pixels repeated into the gap). Each image draws from its own generator, seeded
//! by the step and its position in the step's global batch, so a resumed run sees the same images
//! and a peer augmenting only its shard of the batch augments it as a single process would.

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// Which augmentations run, per image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Mirror left–right with probability ½.
    pub horizontal_flip: bool,
    /// Shift by up to this many pixels in each direction (0: none).
    pub max_shift: usize,
}

impl Default for Augment {
    /// Flips and shifts of up to 2 pixels (Fashion-MNIST-sized images).
    fn default() -> Self {
        Self { horizontal_flip: true, max_shift: 2 }
    }
}

impl Augment {
    /// Augments every image of `images` (`[batch, c, h, w]` flattened, `shape = [c, h, w]`) in
    /// place: the `k`-th with the generator of stream `first + k` of `seed`, so the images at
    /// positions `first..` of a batch are augmented alike whether or not the rest of it is present.
    pub fn apply(&self, images: &mut [f32], shape: [usize; 3], seed: u64, first: usize) {
        let [c, h, w] = shape;
        let size = c * h * w;
        if size == 0 {
            return;
        }
        let mut scratch = vec![0.0f32; size];
        for (k, image) in images.chunks_exact_mut(size).enumerate() {
            let rng = &mut SplitMix64::stream(seed, (first + k) as u64, 0xD6E8_FEB8_6659_FD93);
            let flip = self.horizontal_flip && rng.below(2) == 1;
            let span = 2 * self.max_shift + 1;
            let dy = rng.below(span) as isize - self.max_shift as isize;
            let dx = rng.below(span) as isize - self.max_shift as isize;
            if !flip && dx == 0 && dy == 0 {
                continue;
            }
            scratch.copy_from_slice(image);
            let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
            for ch in 0..c {
                let plane = &scratch[ch * h * w..(ch + 1) * h * w];
                let out = &mut image[ch * h * w..(ch + 1) * h * w];
                for y in 0..h {
                    let sy = clamp(y as isize - dy, h);
                    for x in 0..w {
                        let sx = clamp(x as isize - dx, w);
                        let sx = if flip { w - 1 - sx } else { sx };
                        out[y * w + x] = plane[sy * w + sx];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_and_shifts_are_seeded_and_keep_values() {
        let shape = [1, 4, 5];
        let original: Vec<f32> = (0..3 * 20).map(|i| i as f32).collect();
        let aug = Augment { horizontal_flip: true, max_shift: 1 };
        let (mut a, mut b) = (original.clone(), original.clone());
        aug.apply(&mut a, shape, 5, 0);
        aug.apply(&mut b, shape, 5, 0);
        assert_eq!(a, b, "same seed, same augmentation");
        // The last two images alone, at their positions, are augmented as within the whole batch.
        let mut tail = original[20..].to_vec();
        aug.apply(&mut tail, shape, 5, 1);
        assert_eq!(tail, a[20..]);
        assert_ne!(a, original, "something moved");
        // Every output pixel comes from the same image.
        for (img, src) in a.chunks(20).zip(original.chunks(20)) {
            assert!(img.iter().all(|v| src.contains(v)));
        }
        // A flip alone mirrors each row exactly.
        let flip = Augment { horizontal_flip: true, max_shift: 0 };
        let mut flipped = original.clone();
        for seed in 0.. {
            flipped.copy_from_slice(&original);
            flip.apply(&mut flipped[..20], shape, seed, 0);
            if flipped[..20] != original[..20] {
                break;
            }
        }
        assert_eq!(&flipped[..5], &[4.0, 3.0, 2.0, 1.0, 0.0]);
    }
}
