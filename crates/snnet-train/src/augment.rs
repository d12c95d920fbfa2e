//! Light training augmentation on preprocessed batches: random horizontal flips and random
//! translations (edge pixels repeated into the gap), drawn from a seeded generator so a resumed run
//! sees the same images.

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
    /// place, drawing from `rng`.
    pub fn apply(&self, images: &mut [f32], shape: [usize; 3], rng: &mut SplitMix64) {
        let [c, h, w] = shape;
        let size = c * h * w;
        if size == 0 {
            return;
        }
        let mut scratch = vec![0.0f32; size];
        for image in images.chunks_exact_mut(size) {
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
        aug.apply(&mut a, shape, &mut SplitMix64::new(5));
        aug.apply(&mut b, shape, &mut SplitMix64::new(5));
        assert_eq!(a, b, "same seed, same augmentation");
        assert_ne!(a, original, "something moved");
        // Every output pixel comes from the same image.
        for (img, src) in a.chunks(20).zip(original.chunks(20)) {
            assert!(img.iter().all(|v| src.contains(v)));
        }
        // A flip alone mirrors each row exactly.
        let flip = Augment { horizontal_flip: true, max_shift: 0 };
        let mut rng = SplitMix64::new(0);
        let mut flipped = original.clone();
        loop {
            flipped.copy_from_slice(&original);
            flip.apply(&mut flipped[..20], shape, &mut rng);
            if flipped[..20] != original[..20] {
                break;
            }
        }
        assert_eq!(&flipped[..5], &[4.0, 3.0, 2.0, 1.0, 0.0]);
    }
}
