//! [`Kernels`] for burn's other backends, with burn's operations throughout (the defaults).

#[cfg(feature = "cubecl")]
impl<R, F, I, BT> crate::Kernels for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
    Self: burn::tensor::backend::Backend,
{
}

#[cfg(feature = "fusion")]
impl<B: burn_fusion::FusionBackend> crate::Kernels for burn_fusion::Fusion<B> {}

#[cfg(feature = "router")]
impl<R: burn_router::RunnerChannel> crate::Kernels for burn_router::BackendRouter<R> {}

#[cfg(feature = "ndarray")]
impl<E, I, Q> crate::Kernels for burn_ndarray::NdArray<E, I, Q>
where
    E: burn_ndarray::FloatNdArrayElement,
    I: burn_ndarray::IntNdArrayElement,
    Q: burn_ndarray::QuantElement,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<E>> + From<burn_ndarray::SharedArray<I>>,
{
}
