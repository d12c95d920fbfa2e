//! SN-Netv2's two-way stitch positions (spec §11.2, the official `get_stitch_configs_bidirection`).

use super::{nearest_map, Position};

/// The single stitches of a two-way space between a shallower anchor (depth `d0`, "S") and a deeper
/// one (depth `d1 = r·d0`, "L"), in official order. Routes with two stitches chain them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoWayStitching {
    /// Depth of the shallower anchor.
    pub small_depth: usize,
    /// S→L positions `(i, (i + 1)·r)` for every small block `i`; position `i` uses layer `i`.
    pub small_to_large: Vec<Position>,
    /// L→S positions `(i, m[i] + 1)` (`m`: the nearest map of the small blocks onto the large
    /// ones) for the odd large blocks `i < d1 − 1` (every `i < d1 − 1` when the depths are equal),
    /// each with its layer `i / r`.
    pub large_to_small: Vec<(Position, usize)>,
}

impl TwoWayStitching {
    /// The positions for depths `small_depth ≤ large_depth`; the caller checks that
    /// `large_depth` is `small_depth` or twice it (the official layer numbering assumes so).
    pub fn new(small_depth: usize, large_depth: usize) -> Self {
        let (d0, d1) = (small_depth, large_depth);
        let ratio = d1 / d0;
        let small_to_large = (0..d0).map(|i| (i, (i + 1) * ratio)).collect();
        let map = nearest_map(d0, d1);
        let large_to_small = (0..d1.saturating_sub(1)).filter(|i| d1 == d0 || i % 2 == 1).map(|i| ((i, map[i] + 1), i / ratio)).collect();
        Self { small_depth: d0, small_to_large, large_to_small }
    }

    /// Whether the S→L stitch at `position` is the one leaving the small anchor after its last
    /// block: the official code keeps it out of L→S→L routes and out of training (spec §11.2).
    pub fn leaves_after_last_small_block(&self, (j, _): Position) -> bool {
        j + 1 == self.small_depth
    }

    /// L→S→L chains `(a, b)`, in official order: an L→S stitch `a`, then an S→L stitch `b` that
    /// leaves the small anchor no earlier than `a` entered it, `b` not from the last small block.
    pub fn large_small_large(&self) -> Vec<(usize, usize)> {
        let mut chains = Vec::new();
        for (a, &((_, enter), _)) in self.large_to_small.iter().enumerate() {
            for (b, &(leave, back)) in self.small_to_large.iter().enumerate() {
                if !self.leaves_after_last_small_block((leave, back)) && leave >= enter {
                    chains.push((a, b));
                }
            }
        }
        chains
    }

    /// S→L→S chains `(b, a)`, in official order: an S→L stitch `b`, then an L→S stitch `a` that
    /// leaves the large anchor no earlier than `b` entered it.
    pub fn small_large_small(&self) -> Vec<(usize, usize)> {
        let mut chains = Vec::new();
        for (b, &(_, enter)) in self.small_to_large.iter().enumerate() {
            for (a, &((leave, _), _)) in self.large_to_small.iter().enumerate() {
                if leave >= enter {
                    chains.push((b, a));
                }
            }
        }
        chains
    }

    /// Number of routes: the two anchors, every single stitch and every chain.
    pub fn num_routes(&self) -> usize {
        2 + self.small_to_large.len() + self.large_to_small.len() + self.large_small_large().len() + self.small_large_small().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deit3_small_large_and_small_base_have_the_official_counts() {
        let sl = TwoWayStitching::new(12, 24);
        assert_eq!((sl.small_to_large.len(), sl.large_to_small.len()), (12, 11));
        assert_eq!(sl.small_to_large[0], (0, 2));
        assert_eq!(sl.large_to_small[0], ((1, 1), 0));
        assert_eq!(sl.large_to_small[10], ((21, 11), 10));
        assert_eq!((sl.large_small_large().len(), sl.small_large_small().len()), (55, 55));
        assert_eq!(sl.num_routes(), 135);
        let sb = TwoWayStitching::new(12, 12);
        assert_eq!(sb.large_to_small[0], ((0, 1), 0));
        assert_eq!(sb.num_routes(), 135);
    }
}
