//! The learning-rate schedule of the official recipes: timm's `CosineLRScheduler` (linear warmup,
//! then half a cosine from the base rate to the minimum, then the minimum), as a pure function of
//! the step index `t`, and the three ways the official scripts step it.

/// Cosine schedule with linear warmup (timm `CosineLRScheduler`, `cycle_limit = 1`).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineSchedule {
    /// Rate after warmup, at the start of the cosine.
    pub base_lr: f64,
    /// Rate at `t = 0` of the warmup.
    pub warmup_lr: f64,
    /// Rate at and after the end of the cosine.
    pub min_lr: f64,
    /// Warmup length `W` (steps or epochs, as the caller counts `t`).
    pub warmup_t: f64,
    /// Cosine length `T`.
    pub t_initial: f64,
    /// With a prefix the cosine starts after the warmup (`t' = t − W`); without, it starts at 0.
    pub warmup_prefix: bool,
}

impl CosineSchedule {
    /// The rate at `t`: `wlr + t·(base − wlr)/W` for `t < W`, else
    /// `min + ½(base − min)(1 + cos(π t'/T))` while `t' < T`, then `min`.
    pub fn lr_at(&self, t: f64) -> f64 {
        if self.warmup_t > 0.0 && t < self.warmup_t {
            return self.warmup_lr + t * (self.base_lr - self.warmup_lr) / self.warmup_t;
        }
        let t = if self.warmup_prefix { t - self.warmup_t } else { t };
        if t < self.t_initial {
            self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t / self.t_initial).cos())
        } else {
            self.min_lr
        }
    }

    /// DeiT/LeViT stepping (`step(epoch)` after each epoch): epochs 0 and 1 run at the warmup
    /// rate, epoch `e ≥ 1` at `f(e − 1)`.
    pub fn deit_epoch_lr(&self, epoch: usize) -> f64 {
        if epoch == 0 {
            if self.warmup_t > 0.0 {
                self.warmup_lr
            } else {
                self.lr_at(0.0)
            }
        } else {
            self.lr_at((epoch - 1) as f64)
        }
    }

    /// Swin stepping (`step_update` after each optimiser step): global step `n` runs at
    /// `f(n − 1)` (step 0 at the warmup rate).
    pub fn swin_step_lr(&self, step: usize) -> f64 {
        if step == 0 {
            if self.warmup_t > 0.0 {
                self.warmup_lr
            } else {
                self.lr_at(0.0)
            }
        } else {
            self.lr_at((step - 1) as f64)
        }
    }
}
