//! Evaluation of every route on a labelled dataset, written as JSON lines in the official results
//! format (`cfg_id`, `flops`, `params`, `acc1`) plus `acc5`, `params_exact` and, when measured,
//! `latency_ms`. Resumable as the official evaluator: routes already in the results file are
//! skipped, new ones appended one line each.

use snnet_core::Kernels;
use std::{collections::BTreeSet, io::Write, path::Path};

use burn::{
    module::Module,
    tensor::{Tensor, TensorData},
};
use serde::{Deserialize, Serialize};
use snnet_core::{Anchor, Error, Result, StitchedNet};

use crate::data::{load_batch, Dataset};

/// One route's evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteResult {
    /// Route id.
    pub cfg_id: usize,
    /// Multiply-accumulates per image (official convention).
    pub flops: u64,
    /// Parameters (official convention).
    pub params: u64,
    /// Parameters the route really uses.
    pub params_exact: u64,
    /// Top-1 accuracy, percent.
    pub acc1: f64,
    /// Top-5 accuracy, percent (top-k with k = min(5, classes)).
    pub acc5: f64,
    /// Images evaluated (unreadable samples are skipped and not counted).
    pub images: usize,
    /// Median forward latency on the evaluating device, milliseconds, when measured.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub latency_ms: Option<f64>,
}

/// Route ids already present in a results file (none if the file does not exist).
pub fn done_routes(path: &Path) -> Result<BTreeSet<usize>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => return Err(Error::Io { path: path.display().to_string(), source }),
    };
    let rows = snnet_core::select::parse_metric_lines(&text, &path.display().to_string(), &|_| true)?;
    Ok(rows.into_iter().map(|r| r.cfg_id).collect())
}

/// Appends one result line to `path` (created if missing) and flushes it.
pub fn append_result(path: &Path, result: &RouteResult) -> Result<()> {
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    let line = serde_json::to_string(result).expect("serialisable");
    writeln!(file, "{line}").map_err(io)?;
    file.flush().map_err(io)
}

/// Top-1 and top-k correct counts of `logits` `[batch, classes]` against `labels`.
fn correct<B: Kernels>(logits: Tensor<B, 2>, labels: &[usize], k: usize) -> (usize, usize) {
    let [batch, classes] = logits.dims();
    let values = logits.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    let (mut top1, mut topk) = (0, 0);
    for (i, &label) in labels.iter().enumerate().take(batch) {
        let row = &values[i * classes..(i + 1) * classes];
        let target = row[label];
        // Rank of the true class: how many classes score strictly higher (ties count in its favour).
        let higher = row.iter().filter(|&&v| v > target).count();
        top1 += (higher == 0) as usize;
        topk += (higher < k) as usize;
    }
    (top1, topk)
}

/// Evaluates `routes` on every sample of `dataset`, batch by batch (each batch is read once and
/// run through every route). `progress(images_done)` is called after each batch.
pub fn evaluate_routes<B: Kernels, A: Anchor<B>>(
    net: &StitchedNet<B, A>,
    dataset: &dyn Dataset,
    routes: &[usize],
    batch_size: usize,
    progress: impl FnMut(usize),
) -> Result<Vec<RouteResult>> {
    evaluate_routes_parallel(net, dataset, routes, batch_size, 1, progress)
}

/// [`evaluate_routes`] with the routes shared among `workers` threads (each batch is read once;
/// routes are dealt out by FLOPs, largest first, to the least loaded thread). Worth it on the CPU
/// backend, whose small-tensor work runs mostly on one core; results are identical to one worker's.
pub fn evaluate_routes_parallel<B: Kernels, A: Anchor<B>>(
    net: &StitchedNet<B, A>,
    dataset: &dyn Dataset,
    routes: &[usize],
    batch_size: usize,
    workers: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<RouteResult>> {
    if batch_size == 0 {
        return Err(Error::InvalidSettings { setting: "batch_size".into(), reason: "must be at least 1".into() });
    }
    for &id in routes {
        net.route(id)?;
    }
    let device = net.devices().into_iter().next().unwrap_or_default();
    let [c, h, w] = dataset.shape();
    let k = dataset.num_classes().min(5);
    let shares = deal_by_flops(net, routes, workers.clamp(1, routes.len().max(1)));
    let mut counts = vec![(0usize, 0usize); routes.len()];
    let mut seen = 0;
    let indices: Vec<usize> = (0..dataset.len()).collect();
    for chunk in indices.chunks(batch_size) {
        let batch = load_batch(dataset, chunk);
        if let Some((index, err)) = batch.skipped.first() {
            eprintln!("skipping {} unreadable sample(s), e.g. {index}: {err}", batch.skipped.len());
        }
        if batch.is_empty() {
            continue;
        }
        let images = Tensor::<B, 4>::from_data(TensorData::new(batch.images, [batch.labels.len(), c, h, w]), &device);
        let labels = &batch.labels;
        let count = |net: &StitchedNet<B, A>, images: Tensor<B, 4>, slots: &[usize]| -> Result<Vec<(usize, usize, usize)>> {
            slots
                .iter()
                .map(|&slot| {
                    let (t1, tk) = correct(net.forward(images.clone(), routes[slot])?, labels, k);
                    Ok((slot, t1, tk))
                })
                .collect()
        };
        let found: Vec<Result<Vec<(usize, usize, usize)>>> = std::thread::scope(|scope| {
            let others: Vec<_> = shares[1..]
                .iter()
                .map(|slots| {
                    let (net, images) = (net.clone(), images.clone());
                    scope.spawn(move || count(&net, images, slots))
                })
                .collect();
            let mut found = vec![count(net, images.clone(), &shares[0])];
            found.extend(others.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))));
            found
        });
        for part in found {
            for (slot, t1, tk) in part? {
                counts[slot].0 += t1;
                counts[slot].1 += tk;
            }
        }
        seen += batch.labels.len();
        progress(seen);
    }
    if seen == 0 {
        return Err(Error::Metric("no readable sample in the evaluation set".into()));
    }
    Ok(routes
        .iter()
        .zip(counts)
        .map(|(&id, (t1, tk))| {
            let cost = &net.costs()[id];
            RouteResult {
                cfg_id: id,
                flops: cost.flops,
                params: cost.params,
                params_exact: cost.params_exact,
                acc1: 100.0 * t1 as f64 / seen as f64,
                acc5: 100.0 * tk as f64 / seen as f64,
                images: seen,
                latency_ms: None,
            }
        })
        .collect())
}

/// Route slots (indices into `routes`) per worker, balanced by FLOPs: largest first, each to the
/// least loaded worker.
fn deal_by_flops<B: Kernels, A: Anchor<B>>(net: &StitchedNet<B, A>, routes: &[usize], workers: usize) -> Vec<Vec<usize>> {
    let mut slots: Vec<usize> = (0..routes.len()).collect();
    slots.sort_by_key(|&s| std::cmp::Reverse(net.costs()[routes[s]].flops));
    let mut shares = vec![(0u64, Vec::new()); workers];
    for slot in slots {
        let lightest = shares.iter_mut().min_by_key(|(load, _)| *load).expect("at least one worker");
        lightest.0 += net.costs()[routes[slot]].flops;
        lightest.1.push(slot);
    }
    shares.into_iter().map(|(_, s)| s).collect()
}
