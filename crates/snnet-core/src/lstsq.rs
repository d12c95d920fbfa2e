//! Affine least squares with the official pseudo-inverse cutoff (spec §1.4).
//!
//! The official `ps_inv` solves `A = pinv([X, 1]) · Y` with `torch.linalg.pinv`, which drops singular
//! values of `[X, 1]` below `max(rows, cols) · ε_f32 · σ_max`. We accumulate the normal equations
//! `[X,1]ᵀ[X,1]` and `[X,1]ᵀY` in f64 (streamed over calibration chunks, so the features never need
//! to be held at once), then apply the pseudo-inverse through the eigendecomposition of the Gram
//! matrix with the same cutoff on `σ = √λ`. In f64 this resolves singular values down to ~1e-8·σ_max,
//! far below the cutoff for any realistic row count.

use faer::{linalg::matmul::matmul, Accum, Mat, Par, Side};

use crate::error::{Error, Result};

/// `[X, 1]` as an f64 matrix (column-major) from row-major f32 rows.
fn augmented(x: &[f32], rows: usize, cols: usize) -> Mat<f64> {
    Mat::from_fn(rows, cols + 1, |i, j| if j < cols { x[i * cols + j] as f64 } else { 1.0 })
}

fn to_f64(y: &[f32], rows: usize, cols: usize) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| y[i * cols + j] as f64)
}

/// Streams rows of `[X, 1]` into its Gram matrix and into cross products with any number of targets.
#[derive(Clone, Debug)]
pub struct NormalEquations {
    in_dim: usize,
    rows: usize,
    gram: Mat<f64>,
}

impl NormalEquations {
    /// Empty accumulator for `in_dim` input channels.
    pub fn new(in_dim: usize) -> Self {
        Self { in_dim, rows: 0, gram: Mat::zeros(in_dim + 1, in_dim + 1) }
    }

    /// Adds a chunk of rows (row-major `[rows, in_dim]`); returns `[X,1]` of the chunk so the
    /// caller can accumulate cross products against it with [`accumulate_cross`].
    pub fn add_rows(&mut self, x: &[f32]) -> Mat<f64> {
        let rows = x.len() / self.in_dim;
        let xa = augmented(x, rows, self.in_dim);
        matmul(self.gram.as_mut(), Accum::Add, xa.transpose(), xa.as_ref(), 1.0, Par::rayon(0));
        self.rows += rows;
        xa
    }

    /// Rows seen so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input channels.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }
}

/// Adds `[X,1]ᵀ Y` of a chunk to `cross` (`[in_dim+1, out_dim]`); `y` is row-major `[rows, out_dim]`.
pub fn accumulate_cross(cross: &mut Mat<f64>, xa: &Mat<f64>, y: &[f32]) {
    let out_dim = cross.ncols();
    let ym = to_f64(y, xa.nrows(), out_dim);
    matmul(cross.as_mut(), Accum::Add, xa.transpose(), ym.as_ref(), 1.0, Par::rayon(0));
}

/// An affine map `y = W x + b` in PyTorch orientation.
#[derive(Clone, Debug, PartialEq)]
pub struct AffineSolution {
    /// `W`, row-major `[out_dim, in_dim]`.
    pub weight: Vec<f64>,
    /// `b`, `[out_dim]`.
    pub bias: Vec<f64>,
    /// Singular values of `[X, 1]` kept by the cutoff.
    pub rank: usize,
    /// `σ_max / σ_min` over the kept singular values.
    pub condition: f64,
}

/// Solves `pinv([X,1]) · Y` from accumulated normal equations with torch's default cutoff.
pub fn solve(normal: &NormalEquations, cross: &Mat<f64>) -> Result<AffineSolution> {
    let (n, out_dim) = (normal.in_dim + 1, cross.ncols());
    if normal.rows == 0 {
        return Err(Error::LeastSquares("no calibration rows".into()));
    }
    if normal.gram.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) || cross.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) {
        return Err(Error::NonFinite("least-squares normal equations".into()));
    }
    let eig = normal.gram.self_adjoint_eigen(Side::Lower).map_err(|e| Error::LeastSquares(format!("eigendecomposition failed: {e:?}")))?;
    let (u, s) = (eig.U(), eig.S());
    let lambdas: Vec<f64> = (0..n).map(|i| s[i]).collect();
    let lambda_max = lambdas.iter().cloned().fold(0.0f64, f64::max);
    if lambda_max <= 0.0 {
        return Err(Error::LeastSquares("calibration features are all zero".into()));
    }
    let sigma_max = lambda_max.sqrt();
    let cutoff = normal.rows.max(n) as f64 * f32::EPSILON as f64 * sigma_max;
    let kept: Vec<usize> = (0..n).filter(|&i| lambdas[i].max(0.0).sqrt() >= cutoff).collect();
    // T = U_kᵀ · cross, scaled by 1/λ, then A = U_k · T.
    let uk = Mat::from_fn(n, kept.len(), |i, c| u[(i, kept[c])]);
    let mut t = Mat::<f64>::zeros(kept.len(), out_dim);
    matmul(t.as_mut(), Accum::Replace, uk.transpose(), cross.as_ref(), 1.0, Par::Seq);
    for (r, &i) in kept.iter().enumerate() {
        let inv = 1.0 / lambdas[i];
        for c in 0..out_dim {
            t[(r, c)] *= inv;
        }
    }
    let mut a = Mat::<f64>::zeros(n, out_dim);
    matmul(a.as_mut(), Accum::Replace, uk.as_ref(), t.as_ref(), 1.0, Par::Seq);
    let in_dim = normal.in_dim;
    let weight = (0..out_dim).flat_map(|o| (0..in_dim).map(move |i| (o, i))).map(|(o, i)| a[(i, o)]).collect();
    let bias = (0..out_dim).map(|o| a[(in_dim, o)]).collect();
    let sigma_min = kept.iter().map(|&i| lambdas[i].sqrt()).fold(f64::INFINITY, f64::min);
    Ok(AffineSolution { weight, bias, rank: kept.len(), condition: sigma_max / sigma_min })
}

/// One-shot affine least squares: `x` `[rows, in_dim]`, `y` `[rows, out_dim]`, both row-major.
pub fn fit_affine(x: &[f32], y: &[f32], in_dim: usize, out_dim: usize) -> Result<AffineSolution> {
    if in_dim == 0 || out_dim == 0 || x.len() % in_dim != 0 || y.len() % out_dim != 0 {
        return Err(Error::LeastSquares(format!(
            "bad dimensions: {} inputs for width {in_dim}, {} targets for width {out_dim}",
            x.len(),
            y.len()
        )));
    }
    if x.len() / in_dim != y.len() / out_dim {
        return Err(Error::LeastSquares(format!("row counts differ: {} input rows, {} target rows", x.len() / in_dim, y.len() / out_dim)));
    }
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("least-squares inputs".into()));
    }
    let mut normal = NormalEquations::new(in_dim);
    let xa = normal.add_rows(x);
    let mut cross = Mat::zeros(in_dim + 1, out_dim);
    accumulate_cross(&mut cross, &xa, y);
    solve(&normal, &cross)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_exact_affine_map() {
        let (rows, cin, cout) = (64, 5, 3);
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let w: Vec<f64> = (0..cout * cin).map(|_| rnd()).collect();
        let b: Vec<f64> = (0..cout).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..rows * cin).map(|_| rnd() as f32).collect();
        let y: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let (x, w, b) = (&x, &w, &b);
                (0..cout).map(move |o| (b[o] + (0..cin).map(|i| w[o * cin + i] * x[r * cin + i] as f64).sum::<f64>()) as f32)
            })
            .collect();
        let sol = fit_affine(&x, &y, cin, cout).unwrap();
        for (a, e) in sol.weight.iter().zip(&w) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        for (a, e) in sol.bias.iter().zip(&b) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        assert_eq!(sol.rank, cin + 1);
    }

    #[test]
    fn rejects_non_finite_and_mismatched_rows() {
        assert!(matches!(fit_affine(&[f32::NAN, 1.0], &[1.0, 2.0], 1, 1), Err(Error::NonFinite(_))));
        assert!(matches!(fit_affine(&[1.0, 2.0, 3.0], &[1.0, 2.0], 1, 1), Err(Error::LeastSquares(_))));
    }
}
