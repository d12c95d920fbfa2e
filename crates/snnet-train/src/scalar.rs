//! Scalars that stay on the device until somebody reads them.
//!
//! A training step's loss and gradient norm are computed on the device; reading one back waits
//! for every queued kernel (on a GPU, a pipeline stall). The step returns them as
//! [`DeviceScalar`]s instead, and the loop reads them together, once per logging interval, with
//! [`DeviceScalar::read_all`]: one transfer for many steps.

use burn::tensor::{backend::Backend, Tensor};

/// A scalar held on the device (a one-element tensor) until read.
#[derive(Clone)]
pub struct DeviceScalar<B: Backend> {
    value: Tensor<B, 1>,
}

impl<B: Backend> DeviceScalar<B> {
    /// The value of a one-element tensor.
    pub fn new(value: Tensor<B, 1>) -> Self {
        debug_assert_eq!(value.dims()[0], 1, "a device scalar holds one value");
        Self { value }
    }

    /// The one-element tensor, still on the device.
    pub fn tensor(&self) -> Tensor<B, 1> {
        self.value.clone()
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
        let all = Tensor::cat(scalars.iter().map(|s| s.value.clone()).collect(), 0);
        let host: Vec<f32> = all.into_data().convert::<f32>().to_vec().expect("a float tensor converts to f32");
        host.into_iter().map(f64::from).collect()
    }
}

impl<B: Backend> std::fmt::Debug for DeviceScalar<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Formatting must not read the device: only the shape is shown.
        write!(f, "DeviceScalar(unread)")
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
    fn reading_many_gives_each_its_own_value() {
        let values = DeviceScalar::read_all(&[scalar(4.0), scalar(2.0), scalar(f32::NAN)]);
        assert_eq!(&values[..2], &[4.0, 2.0]);
        assert!(values[2].is_nan());
        assert!(DeviceScalar::<B>::read_all(&[]).is_empty());
    }
}
