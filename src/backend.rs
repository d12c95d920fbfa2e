//! Choosing a burn backend and its float precision at run time by name
//! (`flex`, `cuda`, `wgpu`, `vulkan`, `metal`; `f32`, `f16`, `bf16`).
//!
//! Each backend exists only when its cargo feature is enabled; asking for one that was not compiled
//! in, for a precision it cannot run, or for a GPU backend on a machine without a usable adapter is
//! an error that says which.
//!
//! Nothing here changes process-wide state on its own. Two settings are the program's to opt into,
//! once at start ([`program_settings`] makes both; the `snnet` binary, the examples and the benches
//! call it): [`keep_freed_memory`] (or [`keep_freed_memory_for`] the chosen backend), glibc's
//! allocator tuning that the CPU backend runs faster with, and [`quiet_probe_panics`], a panic hook
//! that keeps the adapter probe's panic off stderr (the error returned names it anyway).

use snnet_core::{AutodiffKernels, Kernels};
use std::{fmt, str::FromStr};

use burn::tensor::Tensor;

/// Backend names accepted by [`run_on`].
pub const BACKENDS: [&str; 5] = ["flex", "cuda", "wgpu", "vulkan", "metal"];

/// Float precision of a backend's tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// IEEE single precision (every backend).
    #[default]
    F32,
    /// IEEE half precision (cuda, wgpu, vulkan, metal).
    F16,
    /// bfloat16 (cuda).
    BF16,
}

impl Precision {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::BF16 => 2,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(Precision::F32),
            "f16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::BF16),
            other => Err(BackendError::UnknownPrecision(other.to_string())),
        }
    }
}

/// Work to run on whichever backend is chosen at run time.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs on backend `B`, on `device`. `name` is the backend's name.
    fn run<B: Kernels>(self, device: B::Device, name: &'static str) -> Self::Output;
}

/// A backend that was asked for but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Not one of [`BACKENDS`].
    #[error("unknown device `{0}`; choose one of flex, cuda, wgpu, vulkan, metal")]
    Unknown(String),
    /// Not one of f32, f16, bf16.
    #[error("unknown precision `{0}`; choose one of f32, f16, bf16")]
    UnknownPrecision(String),
    /// Known, but this binary was built without its cargo feature.
    #[error("device `{0}` is not compiled into this binary; rebuild with `--features {0}`")]
    NotCompiled(&'static str),
    /// The backend has no kernels for this precision.
    #[error("device `{device}` does not run {precision}; it runs {supported}")]
    UnsupportedPrecision {
        /// Backend name.
        device: &'static str,
        /// What was asked for.
        precision: Precision,
        /// What it runs.
        supported: &'static str,
    },
    /// The backend is compiled in but could not run a first operation (no GPU, no driver, no adapter).
    #[error("device `{device}` is compiled in but could not run a first operation (is there a GPU, a driver, an adapter?): {reason}")]
    NoAdapter {
        /// Backend name.
        device: &'static str,
        /// What the backend reported.
        reason: String,
    },
}

/// For programs: runs `task` on the backend called `name` (f32) and exits the process with a
/// message on stderr if the backend cannot be used (status 2) or the task fails (status 1).
pub fn run_or_exit<T, E>(name: &str, task: T)
where
    T: BackendTask<Output = Result<(), E>>,
    E: fmt::Display,
{
    match run_on(name, task) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// For a program's `main`: its process settings ([`program_settings`]) for the backend called
/// `name`, then `task` on that backend, exiting as [`run_or_exit`] does. The examples' whole `main`.
pub fn main_on<T, E>(name: &str, task: T)
where
    T: BackendTask<Output = Result<(), E>>,
    E: fmt::Display,
{
    program_settings(name);
    run_or_exit(name, task);
}

/// Work that trains, to run on the autodiff backend over whichever backend is chosen at run time:
/// every `TrainingTask` is a [`BackendTask`] that runs [`TrainingTask::train`] on `Autodiff<B>`.
pub trait TrainingTask {
    /// What the task returns.
    type Output;
    /// Runs on the autodiff backend `B`, on `device`.
    fn train<B: AutodiffKernels>(self, device: B::Device) -> Self::Output;
}

impl<T: TrainingTask> BackendTask for T {
    type Output = T::Output;

    fn run<B: Kernels>(self, device: B::Device, _name: &'static str) -> Self::Output {
        self.train::<burn::backend::Autodiff<B>>(device)
    }
}

/// Runs `task` on the backend called `name`, in f32.
pub fn run_on<T: BackendTask>(name: &str, task: T) -> Result<T::Output, BackendError> {
    run_on_with(name, Precision::F32, task)
}

/// Runs `task` on the backend called `name` with float elements of `precision`.
pub fn run_on_with<T: BackendTask>(name: &str, precision: Precision, task: T) -> Result<T::Output, BackendError> {
    match name {
        "flex" | "cpu" => {
            #[cfg(feature = "flex")]
            return match precision {
                Precision::F32 => launch::<burn::backend::Flex, T>("flex", task),
                p => Err(BackendError::UnsupportedPrecision { device: "flex", precision: p, supported: "f32" }),
            };
            #[cfg(not(feature = "flex"))]
            return Err(BackendError::NotCompiled("flex"));
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            return match precision {
                Precision::F32 => launch::<burn::backend::Cuda<f32>, T>("cuda", task),
                Precision::F16 => launch::<burn::backend::Cuda<half::f16>, T>("cuda", task),
                Precision::BF16 => launch::<burn::backend::Cuda<half::bf16>, T>("cuda", task),
            };
            #[cfg(not(feature = "cuda"))]
            return Err(BackendError::NotCompiled("cuda"));
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return wgpu_family::<burn::backend::Wgpu<f32>, burn::backend::Wgpu<half::f16>, T>("wgpu", precision, task);
            #[cfg(not(feature = "wgpu"))]
            return Err(BackendError::NotCompiled("wgpu"));
        }
        "vulkan" => {
            #[cfg(feature = "vulkan")]
            return wgpu_family::<burn::backend::Vulkan<f32>, burn::backend::Vulkan<half::f16>, T>("vulkan", precision, task);
            #[cfg(not(feature = "vulkan"))]
            return Err(BackendError::NotCompiled("vulkan"));
        }
        "metal" => {
            #[cfg(feature = "metal")]
            return wgpu_family::<burn::backend::Metal<f32>, burn::backend::Metal<half::f16>, T>("metal", precision, task);
            #[cfg(not(feature = "metal"))]
            return Err(BackendError::NotCompiled("metal"));
        }
        other => Err(BackendError::Unknown(other.to_string())),
    }
}

/// Worker threads that should share independent forwards (e.g. routes being evaluated) on the
/// backend called `name`: one per CPU thread on `flex` (`RAYON_NUM_THREADS`, else the available
/// parallelism), whose small-tensor work keeps a core busy each, and one on GPU backends, which
/// run one forward's kernels across the whole device.
pub fn default_workers(name: &str) -> usize {
    match name {
        "flex" | "cpu" => snnet_core::kernels::cpu_threads(),
        _ => 1,
    }
}

/// The devices of `peers` data-parallel peers on the backend of `device`: its devices
/// `0..peers` on GPU backends with numbered devices (`cuda` 0, 1, …), `device` itself for every
/// peer where there is no number: the CPU backend, which has one device (the peers are threads
/// sharing it), and wgpu's default device, where training refuses the shared device
/// (`snnet_train::train_on`: burn-fusion 0.21 is not safe for it).
pub fn peer_devices<D: burn::tensor::backend::DeviceOps>(device: &D, peers: usize) -> Vec<D> {
    use burn::tensor::backend::DeviceId;
    if peers <= 1 {
        return vec![device.clone()];
    }
    let kind = device.to_id().type_id;
    (0..peers).map(|index| D::from_id(DeviceId { type_id: kind, index_id: index as u16 })).collect()
}

/// Makes the C allocator keep freed blocks of up to 32 MiB for reuse instead of handing them back
/// to the operating system; returns whether the setting took effect (Linux with glibc; elsewhere it
/// does nothing and returns `false`). A process-wide setting, so the library never makes it: a
/// program opts in, once, at start — the `snnet` binary and the examples do, through
/// [`keep_freed_memory_for`] when the backend is `flex`. Later calls change nothing.
///
/// burn-flex allocates a fresh buffer for every operation's output. glibc serves large blocks
/// from `mmap` and returns them on free, so each op's output faults in its 4 KiB pages again —
/// expensive in virtual machines. Measured here (docs/benchmarks.md, "CPU forward against
/// PyTorch", second run of 2026-12-01): a `[1576, 384] × [384, 1536]` matmul (DeiT-S fc1 at batch
/// 8) took 29 ms with 4,699 faults per call under glibc's defaults, 18 ms with 469 with this;
/// `snnet bench` of DeiT-Ti and DeiT-S at batch 8 went from 567 / 1,456 ms to 340 / 1,049 ms
/// (≈1.4–1.7×); batch 1 and training did not change measurably. The integration test
/// `op_outputs_reuse_freed_memory_instead_of_faulting_in_new_pages` checks the fault counts (1,416
/// per matmul with the defaults, 472 with this, when written) and that [`run_on`] alone leaves the
/// allocator as it was. The cost: the process keeps its peak heap resident instead of trimming it,
/// and threads share one arena.
pub fn keep_freed_memory() -> bool {
    static APPLIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *APPLIED.get_or_init(glibc_malloc::keep_freed_blocks)
}

/// [`keep_freed_memory`] if the backend called `name` is the CPU backend (`flex`, `cpu`), whose
/// per-op buffers it serves; nothing for the GPU backends. For programs, at start, with the
/// backend the user chose; returns whether the setting took effect.
pub fn keep_freed_memory_for(name: &str) -> bool {
    matches!(name, "flex" | "cpu") && keep_freed_memory()
}

/// For programs, once at start, before other threads: the two process-wide settings the `snnet`
/// binary, the examples and the benches opt into — [`keep_freed_memory_for`] the backend called
/// `name` and [`quiet_probe_panics`]. The library itself makes neither.
pub fn program_settings(name: &str) {
    keep_freed_memory_for(name);
    quiet_probe_panics();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc_malloc {
    use std::ffi::c_int;

    /// `mallopt` parameters (glibc's `malloc.h`).
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;
    const M_ARENA_MAX: c_int = -8;
    /// The largest threshold glibc accepts on 64-bit targets (`HEAP_MAX_SIZE / 2`).
    const LARGEST_MMAP_THRESHOLD: c_int = 32 << 20;

    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }

    /// Blocks below 32 MiB come from the heap, the heap is never trimmed, and threads that have not
    /// allocated yet share the main heap (a thread's own arena is unmapped whenever it empties,
    /// trim threshold or not).
    pub fn keep_freed_blocks() -> bool {
        // SAFETY: mallopt only changes allocator tunables; glibc returns 0 for a value it rejects.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD) == 1
                && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
                && mallopt(M_ARENA_MAX, 1) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc_malloc {
    pub fn keep_freed_blocks() -> bool {
        false
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_family<F32: Kernels, F16: Kernels, T: BackendTask>(
    name: &'static str,
    precision: Precision,
    task: T,
) -> Result<T::Output, BackendError> {
    match precision {
        Precision::F32 => launch::<F32, T>(name, task),
        Precision::F16 => launch::<F16, T>(name, task),
        p => Err(BackendError::UnsupportedPrecision { device: name, precision: p, supported: "f32, f16" }),
    }
}

/// Checks that the backend can run one operation (GPU backends panic deep inside their runtime when
/// there is no driver or adapter), then runs the task.
fn launch<B: Kernels, T: BackendTask>(name: &'static str, task: T) -> Result<T::Output, BackendError> {
    let device = B::Device::default();
    probe::<B>(name, &device)?;
    Ok(task.run::<B>(device, name))
}

fn probe<B: Kernels>(name: &'static str, device: &B::Device) -> Result<(), BackendError> {
    first_operation(name, || {
        let _one = Tensor::<B, 1>::ones([1], device).sum().into_scalar();
        B::sync(device).map_err(|e| format!("{e:?}"))
    })
}

/// Runs a backend's first operation, turning an error or a panic into [`BackendError::NoAdapter`].
/// The panic is caught where it happens, on this thread; the panic hook is left as the program set
/// it — swapping it here would silence, or capture, panics of the program's other threads too. The
/// hook of [`quiet_probe_panics`], where the program installed it, hands this thread's panic
/// message (with its location) to the error instead of printing it.
fn first_operation(name: &'static str, op: impl FnOnce() -> Result<(), String>) -> Result<(), BackendError> {
    PROBE_PANIC.with(|p| *p.borrow_mut() = Some(None));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(op));
    let recorded = PROBE_PANIC.with(|p| p.borrow_mut().take()).flatten();
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(BackendError::NoAdapter { device: name, reason }),
        Err(payload) => {
            let reason = recorded.unwrap_or_else(|| {
                let message = payload.downcast_ref::<&str>().map(|s| s.to_string());
                message.or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic without a message".into())
            });
            Err(BackendError::NoAdapter { device: name, reason })
        }
    }
}

thread_local! {
    /// `Some` while this thread runs a backend's first operation: where [`quiet_probe_panics`]'s
    /// hook leaves the message of a panic instead of printing it.
    static PROBE_PANIC: std::cell::RefCell<Option<Option<String>>> = const { std::cell::RefCell::new(None) };
}

/// Installs, once, a panic hook that keeps the panic of a GPU backend's failed first operation
/// (no driver, no adapter) off stderr — [`run_on`] returns [`BackendError::NoAdapter`] with the
/// message — and passes every other panic, of any thread, to the hook that was installed before.
/// A process-wide setting, so the library never makes it: a program opts in at start, before it
/// starts threads (the `snnet` binary and the examples do). Without it, a failed probe prints the
/// usual `panicked at` lines to stderr and returns the same error.
pub fn quiet_probe_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let kept = PROBE_PANIC
                .try_with(|p| match p.try_borrow_mut() {
                    Ok(mut slot) if slot.is_some() => {
                        *slot = Some(Some(info.to_string()));
                        true
                    }
                    _ => false,
                })
                .unwrap_or(false);
            if !kept {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test of this binary that touches the panic hook (it is process-wide).
    #[test]
    fn a_failed_first_operation_is_an_error_and_the_panic_hook_stays_the_programs() {
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = seen.clone();
        std::panic::set_hook(Box::new(move |info| sink.lock().unwrap().push(info.to_string())));
        let saw = |text: &str| seen.lock().unwrap().iter().any(|m| m.contains(text));

        assert!(first_operation("fake", || Ok(())).is_ok());
        let err = first_operation("fake", || Err("no queue".into())).unwrap_err();
        assert!(matches!(&err, BackendError::NoAdapter { device: "fake", reason } if reason == "no queue"), "{err}");
        // Without the quiet hook the program's own hook sees the panic; the error names it.
        let err = first_operation("fake", || panic!("no adapter found")).unwrap_err();
        assert!(err.to_string().contains("no adapter found"), "{err}");
        assert!(saw("no adapter found"), "the program's hook was left in place");

        quiet_probe_panics();
        quiet_probe_panics();
        let err = first_operation("fake", || panic!("no driver loaded")).unwrap_err();
        assert!(err.to_string().contains("no driver loaded") && err.to_string().contains("src/backend.rs"), "{err}");
        assert!(!saw("no driver loaded"), "the quiet hook kept the probe's panic");
        // Every other panic still reaches the program's hook.
        let _ = std::panic::catch_unwind(|| panic!("the program's own panic"));
        assert!(saw("the program's own panic"));
        let _ = std::thread::spawn(|| panic!("another thread's panic")).join();
        assert!(saw("another thread's panic"));
    }
}
