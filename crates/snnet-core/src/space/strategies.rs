//! The official enumeration primitives (spec §1.2–1.3), re-derived and kept bit-exact.

use serde::{Deserialize, Serialize};

/// Which `(j, k)` pairs the paired sliding window keeps.
///
/// The official code has three copies of `paired_stitching` that differ only in this filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairedVariant {
    /// DeiT: every ordered pair in the window, including `j == k` and `j > k`.
    All,
    /// Swin, LeViT: only forward stitches `j < k`.
    Forward,
    /// ResNet family: forward stitches that do not enter at block 0 (`j < k`, `k > 0`).
    ForwardNoEntry,
}

/// A stitch position `(j, k)`: leave the front anchor after block `j`, enter the end anchor at block `k`.
pub type Position = (usize, usize);

/// Output of a paired enumeration: positions, the layer each uses, and the number of layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairedStitching {
    /// Positions in official order.
    pub positions: Vec<Position>,
    /// Stitching-layer id of each position.
    pub layers: Vec<usize>,
    /// Number of stitching layers.
    pub num_layers: usize,
}

/// Sliding-window enumeration over two anchors of equal depth (spec §1.2a/b).
///
/// A window of `kernel_size` blocks moves by `stride`; every window that contributes at least one
/// new pair gets a fresh layer id, shared by the pairs it contributed.
pub fn paired_stitching(depth: usize, kernel_size: usize, stride: usize, variant: PairedVariant) -> PairedStitching {
    let mut positions: Vec<Position> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut layers = Vec::new();
    let mut next_layer = 0usize;
    let mut i = 0usize;
    while i < depth {
        let ids = i..i + kernel_size.min(depth - i);
        let mut new = false;
        for j in ids.clone() {
            for k in ids.clone() {
                let keep = match variant {
                    PairedVariant::All => true,
                    PairedVariant::Forward => j < k,
                    PairedVariant::ForwardNoEntry => j < k && k != 0,
                };
                if keep && seen.insert((j, k)) {
                    positions.push((j, k));
                    layers.push(next_layer);
                    new = true;
                }
            }
        }
        if new {
            next_layer += 1;
        }
        i = i.saturating_add(stride.max(1));
    }
    PairedStitching { positions, layers, num_layers: next_layer }
}

/// `torch.nn.functional.interpolate(mode="nearest")` index map from `front` entries to `end`
/// entries, with PyTorch's float32 arithmetic (spec §1.3, §9 B17).
pub fn nearest_map(front: usize, end: usize) -> Vec<usize> {
    (0..end)
        .map(|i| {
            if end == front {
                i
            } else if end == 2 * front {
                i >> 1
            } else {
                let scale = front as f32 / end as f32;
                (((i as f32) * scale).floor() as usize).min(front - 1)
            }
        })
        .collect()
}

/// Enumeration between a shallower front (`front_depth`) and a deeper end anchor (spec §1.2c).
///
/// Layers are assigned by the official positional `zip` of the positions with the nearest map
/// (spec §9 B2), so the layer of position `n` is `map[n]`, not its front block.
pub fn unpaired_stitching(front_depth: usize, end_depth: usize, skip_entry: bool) -> PairedStitching {
    let map = nearest_map(front_depth, end_depth);
    let mut positions = Vec::new();
    for idx in 0..front_depth {
        for (i, &m) in map.iter().enumerate() {
            if m == idx && idx < i && !(skip_entry && i == 0) {
                positions.push((idx, i));
            }
        }
    }
    let layers: Vec<usize> = positions.iter().zip(&map).map(|(_, &m)| m).collect();
    PairedStitching { positions, layers, num_layers: front_depth }
}

/// `itertools.combinations(0..n, r)` in Python's order.
pub fn combinations(n: usize, r: usize) -> Vec<Vec<usize>> {
    fn rec(start: usize, n: usize, r: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == r {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            rec(i + 1, n, r, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(0, n, r, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_counts_match_spec() {
        for (k, s, pairs, layers) in [(1, 1, 12, 12), (2, 1, 34, 11), (3, 1, 54, 10), (2, 2, 24, 6), (3, 2, 44, 6), (4, 2, 64, 5)] {
            let p = paired_stitching(12, k, s, PairedVariant::All);
            assert_eq!((p.positions.len(), p.num_layers), (pairs, layers), "kernel {k} stride {s}");
        }
    }

    #[test]
    fn forward_variant_gives_consecutive_pairs() {
        let p = paired_stitching(4, 2, 1, PairedVariant::Forward);
        assert_eq!(p.positions, vec![(0, 1), (1, 2), (2, 3)]);
        assert_eq!(p.layers, vec![0, 1, 2]);
        assert_eq!(p.num_layers, 3);
    }

    #[test]
    fn nearest_maps_match_torch() {
        assert_eq!(nearest_map(6, 18), vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]);
        assert_eq!(nearest_map(2, 4), vec![0, 0, 1, 1]);
        assert_eq!(nearest_map(2, 6), vec![0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn unpaired_uses_positional_layers() {
        let u = unpaired_stitching(6, 18, false);
        assert_eq!(u.positions.len(), 17);
        assert_eq!(u.positions[2], (1, 3));
        assert_eq!(u.layers[2], 0);
        assert_eq!(u.layers[16], 5);
        assert_eq!(u.num_layers, 6);
    }

    #[test]
    fn combinations_in_python_order() {
        assert_eq!(combinations(3, 2), vec![vec![0, 1], vec![0, 2], vec![1, 2]]);
    }
}
