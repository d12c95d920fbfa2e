//! Choosing a burn backend at run time by name (`flex`, `cuda`, `wgpu`, `vulkan`, `metal`).
//!
//! Each backend exists only when its cargo feature is enabled; asking for one that was not compiled
//! in is an error that names the feature.

use burn::tensor::backend::Backend;

/// Backend names accepted by [`run_on`].
pub const BACKENDS: [&str; 5] = ["flex", "cuda", "wgpu", "vulkan", "metal"];

/// Work to run on whichever backend is chosen at run time.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs on backend `B`, on `device`. `name` is the backend's name.
    fn run<B: Backend>(self, device: B::Device, name: &'static str) -> Self::Output;
}

/// A backend that was asked for but is unknown or not compiled in.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Not one of [`BACKENDS`].
    #[error("unknown device `{0}`; choose one of flex, cuda, wgpu, vulkan, metal")]
    Unknown(String),
    /// Known, but this binary was built without its cargo feature.
    #[error("device `{0}` is not compiled into this binary; rebuild with `--features {0}`")]
    NotCompiled(&'static str),
}

/// Runs `task` on the backend called `name`.
pub fn run_on<T: BackendTask>(name: &str, task: T) -> Result<T::Output, BackendError> {
    match name {
        "flex" | "cpu" => {
            #[cfg(feature = "flex")]
            return Ok(task.run::<burn::backend::Flex>(Default::default(), "flex"));
            #[cfg(not(feature = "flex"))]
            return Err(BackendError::NotCompiled("flex"));
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            return Ok(task.run::<burn::backend::Cuda>(Default::default(), "cuda"));
            #[cfg(not(feature = "cuda"))]
            return Err(BackendError::NotCompiled("cuda"));
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return Ok(task.run::<burn::backend::Wgpu>(Default::default(), "wgpu"));
            #[cfg(not(feature = "wgpu"))]
            return Err(BackendError::NotCompiled("wgpu"));
        }
        "vulkan" => {
            #[cfg(feature = "vulkan")]
            return Ok(task.run::<burn::backend::Vulkan>(Default::default(), "vulkan"));
            #[cfg(not(feature = "vulkan"))]
            return Err(BackendError::NotCompiled("vulkan"));
        }
        "metal" => {
            #[cfg(feature = "metal")]
            return Ok(task.run::<burn::backend::Metal>(Default::default(), "metal"));
            #[cfg(not(feature = "metal"))]
            return Err(BackendError::NotCompiled("metal"));
        }
        other => Err(BackendError::Unknown(other.to_string())),
    }
}
