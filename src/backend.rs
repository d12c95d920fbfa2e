//! Choosing a burn backend and its float precision at run time by name
//! (`flex`, `cuda`, `wgpu`, `vulkan`, `metal`; `f32`, `f16`, `bf16`).
//!
//! Each backend exists only when its cargo feature is enabled; asking for one that was not compiled
//! in, for a precision it cannot run, or for a GPU backend on a machine without a usable adapter is
//! an error that says which.

use snnet_core::Kernels;
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
                Precision::F32 => {
                    keep_freed_memory();
                    launch::<burn::backend::Flex, T>("flex", task)
                }
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

/// Makes the C allocator keep freed blocks of up to 32 MiB for reuse instead of handing them back
/// to the operating system; returns whether the setting took effect (Linux with glibc; elsewhere it
/// does nothing and returns `false`). Called once per process, by [`run_on_with`] for `flex`.
///
/// burn-flex allocates a fresh buffer for every operation's output. glibc serves large blocks
/// from `mmap` and returns them on free, so each op's output faults in its 4 KiB pages again —
/// expensive in virtual machines (a `[1576, 384] × [384, 1536]` matmul, DeiT-S fc1 at batch 8:
/// 1,416 faults per call with glibc's defaults, 472 with this; the integration test measures it,
/// docs/benchmarks.md has the forward timings). Programs that build
/// [`burn::backend::Flex`] networks themselves should call this first. The cost: the process keeps
/// its peak heap resident instead of trimming it.
pub fn keep_freed_memory() -> bool {
    static APPLIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *APPLIED.get_or_init(glibc_malloc::keep_freed_blocks)
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
    let message = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let previous = std::panic::take_hook();
    let sink = message.clone();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut m) = sink.lock() {
            *m = info.to_string();
        }
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let one = Tensor::<B, 1>::ones([1], device).sum().into_scalar();
        (B::sync(device), one)
    }));
    std::panic::set_hook(previous);
    let reason = |m: &std::sync::Mutex<String>| m.lock().map(|s| s.clone()).unwrap_or_default();
    match outcome {
        Ok((Ok(()), _)) => Ok(()),
        Ok((Err(e), _)) => Err(BackendError::NoAdapter { device: name, reason: format!("{e:?}") }),
        Err(_) => Err(BackendError::NoAdapter { device: name, reason: reason(&message) }),
    }
}
