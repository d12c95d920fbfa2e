//! BatchNorm with PyTorch's semantics, for the families that use it (ResNet, LeViT).

use burn::{
    nn::BatchNorm,
    tensor::{backend::Backend, Tensor},
};

/// PyTorch's `BatchNorm1d`/`BatchNorm2d` on `[batch, C, …]`: in training (an autodiff backend)
/// the batch's statistics normalise and the running ones move by the module's momentum, the
/// variance unbiased (burn's own module uses the biased one there); at inference the running
/// statistics normalise.
pub fn batch_norm<B: Backend, const D: usize>(bn: &BatchNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let c = dims[1];
    let device = x.device();
    let (mean, var) = if B::ad_enabled(&device) {
        let n = x.shape().num_elements() / c;
        let rows = x.clone().swap_dims(0, 1).reshape([c, n]);
        let mean = rows.clone().mean_dim(1).reshape([c]);
        let var = (rows - mean.clone().reshape([c, 1])).square().mean_dim(1).reshape([c]);
        let unbiased = var.clone().detach() * if n > 1 { n as f64 / (n - 1) as f64 } else { 1.0 };
        let m = bn.momentum;
        bn.running_mean.update(bn.running_mean.value_sync().to_device(&device) * (1.0 - m) + mean.clone().detach() * m);
        bn.running_var.update(bn.running_var.value_sync().to_device(&device) * (1.0 - m) + unbiased * m);
        // burn keeps updates per thread until read through `value_sync`; reading them now makes the
        // new statistics what the module holds (and what saving or inference sees) at once.
        let _ = (bn.running_mean.value_sync(), bn.running_var.value_sync());
        (mean, var)
    } else {
        (bn.running_mean.value().to_device(&device), bn.running_var.value().to_device(&device))
    };
    let scale = bn.gamma.val() / (var + bn.epsilon).sqrt();
    let shift = bn.beta.val() - mean * scale.clone();
    let mut shape = [1; D];
    shape[1] = c;
    x * scale.reshape(shape) + shift.reshape(shape)
}
