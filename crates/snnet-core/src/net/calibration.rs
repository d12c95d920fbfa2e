//! Least-squares initialisation of the stitching layers (spec §1.4).

use std::{collections::HashMap, time::Instant};

use burn::tensor::{backend::Backend, ElementConversion, Tensor};
use faer::Mat;
use serde::Serialize;

use super::StitchedNet;
use crate::{
    anchor::Anchor,
    error::{Error, Result},
    features::Features,
    lstsq::{accumulate_cross, solve, NormalEquations},
    stitch::{LeastSquaresFit, Stitch},
    Kernels,
};

/// Where a feature is taken inside an anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Boundary {
    /// Input of a block (after any stage transition).
    Input(usize),
    /// Output of a block.
    Output(usize),
}

/// Progress of least-squares initialisation.
#[derive(Clone, Copy, Debug)]
pub struct LsProgress {
    /// Calibration images processed.
    pub images_done: usize,
    /// Calibration images in total.
    pub images_total: usize,
}

/// What least-squares initialisation did, per stitching layer.
#[derive(Clone, Debug, Serialize)]
pub struct LsLayerReport {
    /// Official key of the layer.
    pub key: String,
    /// Positions averaged.
    pub positions: usize,
    /// Smallest number of singular values kept over its positions.
    pub min_rank: usize,
    /// Largest condition number (of the kept part) over its positions.
    pub max_condition: f64,
}

/// Summary of a least-squares initialisation.
#[derive(Clone, Debug, Serialize)]
pub struct LsReport {
    /// Calibration images used.
    pub images: usize,
    /// Seconds spent running anchors and accumulating normal equations.
    pub seconds_features: f64,
    /// Of `seconds_features`, the part spent running anchors and reading features back.
    pub seconds_forward: f64,
    /// Seconds spent solving.
    pub seconds_solve: f64,
    /// Per-layer details.
    pub layers: Vec<LsLayerReport>,
}

impl<B: Kernels, A: Anchor<B>, L: Stitch<B>> StitchedNet<B, A, L> {
    /// Least-squares initialisation of every fittable stitching layer ([`Stitch::fittable`]) from a
    /// calibration batch (spec §1.4); the others keep their own initialisation.
    ///
    /// Each anchor runs once over the images (in chunks of `chunk` images, bounding memory); the
    /// normal equations of every position are accumulated in f64; each layer is set to the mean of
    /// the pseudo-inverse solutions of the positions that share it. Features are taken in inference
    /// mode (no drop-path), a deliberate, documented deviation from the official training-mode init.
    pub fn init_least_squares(&mut self, images: Tensor<B, 4>, chunk: usize, mut progress: impl FnMut(LsProgress)) -> Result<LsReport> {
        let total = images.dims()[0];
        if total == 0 {
            return Err(Error::LeastSquares("the calibration batch is empty".into()));
        }
        let chunk = chunk.max(1);
        let t0 = Instant::now();
        // What each anchor must provide, and the normal equations to accumulate.
        let mut needed: Vec<Vec<Boundary>> = vec![Vec::new(); self.anchors.len()];
        let mut grams: HashMap<(usize, usize), NormalEquations> = HashMap::new();
        // (slot, position index) -> (front key, end anchor, end block, cross)
        let mut crosses: Vec<(usize, (usize, usize), usize, usize, Mat<f64>)> = Vec::new();
        for (s, slot) in self.space.layers.iter().enumerate() {
            if !self.stitch_layers[s].fittable() {
                continue;
            }
            for &pos in &slot.positions {
                let (jg, kg) = slot.global_position(&self.layouts, pos);
                for (a, b) in [(slot.front, Boundary::Output(jg)), (slot.end, Boundary::Input(kg))] {
                    if !needed[a].contains(&b) {
                        needed[a].push(b);
                    }
                }
                grams.entry((slot.front, jg)).or_insert_with(|| NormalEquations::new(slot.in_channels));
                crosses.push((s, (slot.front, jg), slot.end, kg, Mat::zeros(slot.in_channels + 1, slot.out_channels)));
            }
        }
        let mut start = 0;
        let mut seconds_forward = 0.0;
        while start < total {
            let end = (start + chunk).min(total);
            let batch = images.clone().narrow(0, start, end - start);
            if !is_finite(&batch) {
                return Err(Error::NonFinite(format!("calibration images {start}..{end}")));
            }
            let mut feats: HashMap<(usize, Boundary), Vec<f32>> = HashMap::new();
            let t_forward = Instant::now();
            for (a, wanted) in needed.iter().enumerate() {
                if !wanted.is_empty() {
                    self.check_input(&batch, a)?;
                    self.collect_features(a, batch.clone(), wanted, &mut feats)?;
                }
            }
            seconds_forward += t_forward.elapsed().as_secs_f64();
            for (&(a, jg), normal) in grams.iter_mut() {
                let xa = normal.add_rows(&feats[&(a, Boundary::Output(jg))]);
                for (_, front, e, kg, cross) in crosses.iter_mut() {
                    if *front == (a, jg) {
                        accumulate_cross(cross, &xa, &feats[&(*e, Boundary::Input(*kg))]);
                    }
                }
            }
            start = end;
            progress(LsProgress { images_done: end, images_total: total });
        }
        let seconds_features = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut layers = Vec::new();
        for (s, slot) in self.space.layers.iter().enumerate() {
            let mine: Vec<_> = crosses.iter().filter(|c| c.0 == s).collect();
            if mine.is_empty() {
                continue;
            }
            let (cin, cout) = (slot.in_channels, slot.out_channels);
            let (mut w, mut b) = (vec![0f64; cout * cin], vec![0f64; cout]);
            let (mut min_rank, mut max_condition) = (usize::MAX, 0f64);
            for (_, front, _, _, cross) in &mine {
                let sol = solve(&grams[front], cross).map_err(|e| Error::LeastSquares(format!("stitching layer `{}`: {e}", slot.key())))?;
                w.iter_mut().zip(&sol.weight).for_each(|(a, v)| *a += v);
                b.iter_mut().zip(&sol.bias).for_each(|(a, v)| *a += v);
                min_rank = min_rank.min(sol.rank);
                max_condition = max_condition.max(sol.condition);
            }
            let n = mine.len() as f64;
            let w: Vec<f32> = w.iter().map(|v| (v / n) as f32).collect();
            let b: Vec<f32> = b.iter().map(|v| (v / n) as f32).collect();
            self.stitch_layers[s].fit(&LeastSquaresFit { weight: w, bias: b, in_channels: cin, out_channels: cout });
            layers.push(LsLayerReport { key: slot.key(), positions: mine.len(), min_rank, max_condition });
        }
        Ok(LsReport { images: total, seconds_features, seconds_forward, seconds_solve: t1.elapsed().as_secs_f64(), layers })
    }

    /// Runs anchor `a` on `images` and stores the rows of every wanted boundary.
    fn collect_features(
        &self,
        a: usize,
        images: Tensor<B, 4>,
        wanted: &[Boundary],
        out: &mut HashMap<(usize, Boundary), Vec<f32>>,
    ) -> Result<()> {
        let anchor = &self.anchors[a];
        let layout = &self.layouts[a];
        let last = wanted
            .iter()
            .map(|b| match *b {
                Boundary::Input(i) => i,
                Boundary::Output(i) => i,
            })
            .max()
            .unwrap_or(0);
        let mut store = |b: Boundary, x: &Features<B>| -> Result<()> {
            if wanted.contains(&b) {
                let rows = x.clone().into_rows();
                let data = rows
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| Error::LeastSquares(format!("cannot read features of anchor {a}: {e:?}")))?;
                if data.iter().any(|v| !v.is_finite()) {
                    return Err(Error::NonFinite(format!("features of anchor {a} (`{}`) at {b:?}", layout.name)));
                }
                out.insert((a, b), data);
            }
            Ok(())
        };
        let mut x = anchor.embed(images);
        for i in 0..=last {
            if i == layout.num_blocks() {
                // A stitch entering after the last block (SN-Netv2's S→L route from the last
                // small block) takes the last block's output.
                store(Boundary::Input(i), &x)?;
                break;
            }
            if i > 0 && layout.stage_of(i) != layout.stage_of(i - 1) {
                x = anchor.transition(x, layout.stage_of(i));
            }
            store(Boundary::Input(i), &x)?;
            x = anchor.block(x, i);
            store(Boundary::Output(i), &x)?;
        }
        Ok(())
    }
}

fn is_finite<B: Backend>(t: &Tensor<B, 4>) -> bool {
    let bad = t.clone().is_nan().int().sum() + t.clone().is_inf().int().sum();
    bad.into_scalar().elem::<i64>() == 0
}
