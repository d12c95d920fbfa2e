//! Scalars that stay on the device until somebody reads them.
//!
//! A training step's loss and gradient norm are computed on the device; reading one back waits
//! for every queued kernel (on a GPU, a pipeline stall). The step returns them as
//! [`DeviceScalar`]s instead, and the loop reads them together, once per logging interval, with
//! [`DeviceScalar::read_all`]: one transfer for many steps.

use burn::tensor::{backend::Backend, Tensor};

/// `Σ wᵢ·xᵢ` over a few scalars `xᵢ` held on the device (one tensor of them) with host weights
/// `wᵢ`; reading it transfers the `xᵢ` and sums in f64 on the host, so the value is the same as
/// if each `xᵢ` had been read on its own.
#[derive(Clone)]
pub struct DeviceScalar<B: Backend> {
    values: Tensor<B, 1>,
    weights: Vec<f64>,
}

impl<B: Backend> DeviceScalar<B> {
    /// The value of a one-element tensor.
    pub fn new(value: Tensor<B, 1>) -> Self {
        let n = value.dims()[0];
        Self { values: value, weights: vec![1.0; n] }
    }

    /// `Σ wⱼ·sⱼ` over `parts` (e.g. the losses of the workers sharing one batch, weighted by their
    /// shares); nothing is read. `None` for no parts.
    pub fn weighted_sum(parts: Vec<(DeviceScalar<B>, f64)>) -> Option<Self> {
        let mut weights = Vec::new();
        let mut values = Vec::with_capacity(parts.len());
        for (part, weight) in parts {
            weights.extend(part.weights.iter().map(|w| w * weight));
            values.push(part.values);
        }
        (!values.is_empty()).then(|| Self { values: Tensor::cat(values, 0), weights })
    }

    /// Reads the value: one transfer from the device.
    pub fn value(&self) -> f64 {
        Self::read_all(std::slice::from_ref(self))[0]
    }

    /// Reads every scalar of `scalars` in one transfer (they share a device).
    pub fn read_all(scalars: &[Self]) -> Vec<f64> {
        if scalars.is_empty() {
            return Vec::new();
        }
        let all = Tensor::cat(scalars.iter().map(|s| s.values.clone()).collect(), 0);
        let host: Vec<f32> = all.into_data().convert::<f32>().to_vec().expect("a float tensor converts to f32");
        let mut terms = host.into_iter();
        scalars.iter().map(|s| s.weights.iter().zip(terms.by_ref()).map(|(w, x)| w * f64::from(x)).sum()).collect()
    }
}

impl<B: Backend> std::fmt::Debug for DeviceScalar<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Formatting must not read the device: only the shape is shown.
        write!(f, "DeviceScalar({} term(s), unread)", self.weights.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn scalar(x: f32) -> DeviceScalar<B> {
        DeviceScalar::new(Tensor::from_data(TensorData::new(vec![x], [1]), &Default::default()))
    }

    #[test]
    fn a_weighted_sum_reads_as_the_host_sum_of_its_parts() {
        let (a, b) = (0.1_f32, 2.7_f32);
        let sum = DeviceScalar::weighted_sum(vec![(scalar(a), 0.25), (scalar(b), 0.75)]).unwrap();
        assert_eq!(sum.value(), 0.25 * f64::from(a) + 0.75 * f64::from(b));
        assert!(DeviceScalar::<B>::weighted_sum(Vec::new()).is_none());
    }

    #[test]
    fn reading_many_gives_each_its_own_value() {
        let two = DeviceScalar::weighted_sum(vec![(scalar(1.0), 0.5), (scalar(3.0), 0.5)]).unwrap();
        let values = DeviceScalar::read_all(&[scalar(4.0), two, scalar(f32::NAN)]);
        assert_eq!(&values[..2], &[4.0, 2.0]);
        assert!(values[2].is_nan());
        assert!(DeviceScalar::<B>::read_all(&[]).is_empty());
    }
}
