//! A backend that counts host transfers: burn's router over one inner backend, with a runner client
//! that counts every tensor read back to the host and every tensor uploaded from host data.
//!
//! `Counted<B>` runs every operation on `B` (any backend with burn's intermediate representation:
//! `Flex`, and the cubecl backends with fusion) through burn-router's `Runner`, so what it counts
//! is what a program on `B` asks of the device: each `into_data`/`into_scalar` (ours or burn's)
//! is one read, each `from_data` one upload. Counts are kept per thread, so tests running at the
//! same time do not mix their counts.

use std::{cell::Cell, marker::PhantomData};

use burn::backend::{
    ir::{BackendIr, OperationIr, TensorHandle, TensorId, TensorIr},
    router::{BackendRouter, MultiBackendBridge, RouterTensor, Runner, RunnerChannel, RunnerClient},
};
use burn_backend::{backend::ExecutionError, DType, DTypeUsageSet, Shape, TensorData};
use burn_std::future::DynFut;

/// `B` with its host reads and uploads counted.
pub type Counted<B> = BackendRouter<CountingChannel<B>>;

thread_local! {
    static READS: Cell<usize> = const { Cell::new(0) };
    static UPLOADS: Cell<usize> = const { Cell::new(0) };
}

/// Host transfers made by this thread so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Tensors read back to the host.
    pub reads: usize,
    /// Tensors created from host data.
    pub uploads: usize,
}

impl Transfers {
    /// This thread's counts now.
    pub fn now() -> Self {
        Self { reads: READS.get(), uploads: UPLOADS.get() }
    }

    /// The transfers made since `earlier`.
    pub fn since(earlier: Self) -> Self {
        let now = Self::now();
        Self { reads: now.reads - earlier.reads, uploads: now.uploads - earlier.uploads }
    }
}

/// The router channel: one inner backend, reached directly.
pub struct CountingChannel<B>(PhantomData<B>);

impl<B> Clone for CountingChannel<B> {
    fn clone(&self) -> Self {
        Self(PhantomData)
    }
}

/// The runner of `B`, counting as it reads and uploads.
#[derive(Clone)]
pub struct CountingClient<B: BackendIr>(Runner<B>);

impl<B: BackendIr> RunnerClient for CountingClient<B> {
    type Device = B::Device;

    fn register_op(&self, op: OperationIr) {
        self.0.register_op(op)
    }

    fn read_tensor_async(&self, tensor: TensorIr) -> DynFut<Result<TensorData, ExecutionError>> {
        READS.set(READS.get() + 1);
        self.0.read_tensor_async(tensor)
    }

    fn sync(&self) -> Result<(), ExecutionError> {
        self.0.sync()
    }

    fn create_empty_handle(&self) -> TensorId {
        self.0.create_empty_handle()
    }

    fn register_tensor_data(&self, data: TensorData) -> RouterTensor<Self> {
        UPLOADS.set(UPLOADS.get() + 1);
        let ir = self.0.register_tensor_data_desc(data);
        RouterTensor::new(ir.id, ir.shape, ir.dtype, self.clone())
    }

    fn device(&self) -> Self::Device {
        self.0.device()
    }

    fn seed(&self, seed: u64) {
        self.0.seed(seed)
    }

    fn dtype_usage(&self, dtype: DType) -> DTypeUsageSet {
        self.0.dtype_usage(dtype)
    }
}

/// No other backend to move tensors to: a move stays on `B` (to another of its devices).
pub struct SameBackend<B>(PhantomData<B>);

impl<B: BackendIr> MultiBackendBridge for SameBackend<B> {
    type TensorHandle = B::Handle;
    type Device = B::Device;

    fn change_backend_float(tensor: Self::TensorHandle, shape: Shape, device: &Self::Device) -> Self::TensorHandle {
        let moved = B::float_to_device(B::float_tensor(TensorHandle { handle: tensor, shape }), device);
        B::float_tensor_handle(moved)
    }

    fn change_backend_int(tensor: Self::TensorHandle, shape: Shape, device: &Self::Device) -> Self::TensorHandle {
        let moved = B::int_to_device(B::int_tensor(TensorHandle { handle: tensor, shape }), device);
        B::int_tensor_handle(moved)
    }

    fn change_backend_bool(tensor: Self::TensorHandle, shape: Shape, device: &Self::Device) -> Self::TensorHandle {
        let moved = B::bool_to_device(B::bool_tensor(TensorHandle { handle: tensor, shape }), device);
        B::bool_tensor_handle(moved)
    }
}

impl<B: BackendIr> RunnerChannel for CountingChannel<B> {
    type Device = B::Device;
    type Bridge = SameBackend<B>;
    type Client = CountingClient<B>;
    type FloatElem = B::FloatElem;
    type IntElem = B::IntElem;
    type BoolElem = B::BoolElem;

    fn name(device: &Self::Device) -> String {
        format!("counted<{}>", B::name(device))
    }

    fn init_client(device: &Self::Device) -> Self::Client {
        CountingClient(Runner::new(device.clone()))
    }

    fn get_tensor_handle(tensor: &TensorIr, client: &Self::Client) -> B::Handle {
        client.0.get_tensor_handle(tensor)
    }

    fn register_tensor(client: &Self::Client, handle: B::Handle, shape: Shape, dtype: DType) -> RouterTensor<Self::Client> {
        client.0.register_tensor(handle, shape, dtype, client.clone())
    }
}
