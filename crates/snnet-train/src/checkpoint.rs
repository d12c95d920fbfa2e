//! Training checkpoints: the network, the optimiser state matched to parameters by name, and the
//! position of the run (epoch, batch, global step, sampler state), written so that a run killed at
//! any moment resumes from the last complete checkpoint.
//!
//! A checkpoint folder holds `checkpoint.json` and the two files it names,
//! `model-{step}.safetensors` (an snnet weight file, loadable with `--weights`) and
//! `optimizer-{step}.safetensors` (`{key}.exp_avg`, `{key}.exp_avg_sq`, step counts in the
//! metadata). The weight files are written first, then `checkpoint.json` is replaced atomically
//! (written aside, renamed), then older generations are removed: a crash leaves either the old or
//! the new checkpoint whole.

use snnet_core::AutodiffKernels;
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use burn::module::Module;
use serde::{Deserialize, Serialize};
use snnet_core::{
    weights::{read_tensors, write_safetensors, NamedTensor},
    Anchor, StitchedNet,
};

use crate::{
    error::{TrainError, TrainResult},
    optim::AdamW,
};

/// Name of the file that says which generation is current.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// Where a run stands, as saved in `checkpoint.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPosition {
    /// Epoch being trained (0-based).
    pub epoch: usize,
    /// Batches of that epoch already trained.
    pub batch_in_epoch: usize,
    /// Optimiser steps done in the whole run.
    pub global_step: usize,
    /// State of the route sampler before the next step.
    pub sampler_state: u64,
}

/// The contents of `checkpoint.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointIndex {
    /// Always `snnet-train-checkpoint`.
    pub format: String,
    /// Position of the run.
    pub position: RunPosition,
    /// The weight file (relative to the folder).
    pub model: String,
    /// The optimiser file (relative to the folder).
    pub optimizer: String,
    /// The run's settings, which a resumed run must repeat.
    pub config: serde_json::Value,
    /// Samples in the training set when the checkpoint was written.
    pub samples: usize,
}

const FORMAT: &str = "snnet-train-checkpoint";

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint { path: path.display().to_string(), reason: e.to_string() }
}

/// Writes a checkpoint of `net` and `optimizer` at `position` into `dir` (created if missing).
pub fn save_checkpoint<B: AutodiffKernels, A: Anchor<B>>(
    dir: &Path,
    net: &StitchedNet<B, A>,
    optimizer: &AdamW<B>,
    position: &RunPosition,
    config: serde_json::Value,
    samples: usize,
) -> TrainResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let generation = format!("{:09}", position.global_step);
    let model = format!("model-{generation}.safetensors");
    let optim = format!("optimizer-{generation}.safetensors");
    let mut extra = HashMap::new();
    extra.insert("snnet.train.global_step".to_string(), position.global_step.to_string());
    net.save(&dir.join(&model), extra)?;

    let mut tensors = Vec::new();
    let mut steps = BTreeMap::new();
    for key in optimizer.state_keys() {
        let (m, v, step) = optimizer.export_state(&key).expect("a listed key has state");
        steps.insert(key.clone(), step);
        let n = m.len();
        tensors.push((format!("{key}.exp_avg"), NamedTensor { shape: vec![n], data: m, stored_as: "F32" }));
        tensors.push((format!("{key}.exp_avg_sq"), NamedTensor { shape: vec![n], data: v, stored_as: "F32" }));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "snnet-adamw".to_string());
    meta.insert("steps".to_string(), serde_json::to_string(&steps).expect("serialisable"));
    meta.insert("adamw".to_string(), format!("{:?}", optimizer.config()));
    write_safetensors(&dir.join(&optim), &tensors, meta)?;

    let index = CheckpointIndex { format: FORMAT.into(), position: position.clone(), model, optimizer: optim, config, samples };
    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.partial"));
    std::fs::write(&tmp, serde_json::to_string_pretty(&index).expect("serialisable")).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;

    // Older generations are no longer referenced.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let old = (name.starts_with("model-") || name.starts_with("optimizer-")) && name.ends_with(".safetensors");
            if old && name != index.model && name != index.optimizer {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// The checkpoint index in `dir`, or `None` when the folder holds no checkpoint.
pub fn read_index(dir: &Path) -> TrainResult<Option<CheckpointIndex>> {
    let path = dir.join(CHECKPOINT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, e)),
    };
    let index: CheckpointIndex = serde_json::from_str(&text).map_err(|e| io_err(&path, format!("corrupt: {e}")))?;
    if index.format != FORMAT {
        return Err(io_err(&path, format!("format `{}`, expected `{FORMAT}`", index.format)));
    }
    Ok(Some(index))
}

/// Loads the network and optimiser state of the checkpoint `index` in `dir`.
pub fn load_checkpoint<B: AutodiffKernels, A: Anchor<B>>(
    dir: &Path,
    index: &CheckpointIndex,
    net: StitchedNet<B, A>,
    optimizer: &mut AdamW<B>,
) -> TrainResult<StitchedNet<B, A>> {
    let model: PathBuf = dir.join(&index.model);
    let (net, _) = net.load(&model)?;
    let optim = dir.join(&index.optimizer);
    let (mut tensors, meta) = read_tensors(&optim)?;
    let steps: BTreeMap<String, u64> = meta
        .get("steps")
        .ok_or_else(|| io_err(&optim, "no `steps` metadata: not an snnet optimiser file"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| io_err(&optim, format!("corrupt `steps` metadata: {e}"))))?;
    let device = net.devices().into_iter().next().unwrap_or_default();
    let sizes: HashMap<String, usize> = net.named_tensors().into_iter().map(|(k, t)| (k, t.data.len())).collect();
    for (key, step) in steps {
        let Some(&numel) = sizes.get(&key) else {
            return Err(io_err(&optim, format!("state for `{key}`, which is not a parameter of this network")));
        };
        let mut take =
            |suffix: &str| tensors.remove(&format!("{key}.{suffix}")).ok_or_else(|| io_err(&optim, format!("`{key}.{suffix}` is missing")));
        let (m, v) = (take("exp_avg")?, take("exp_avg_sq")?);
        if m.data.len() != numel || v.data.len() != numel {
            return Err(io_err(
                &optim,
                format!("`{key}`: moments of {} and {} values for a parameter of {numel}", m.data.len(), v.data.len()),
            ));
        }
        optimizer.import_state(&key, m.data, v.data, step, &device);
    }
    if let Some(key) = tensors.keys().next() {
        return Err(io_err(&optim, format!("`{key}` has no step count")));
    }
    Ok(net)
}
