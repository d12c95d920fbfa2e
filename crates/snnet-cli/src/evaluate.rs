//! `snnet init` and `snnet eval`: least-squares initialisation from a dataset's images and the
//! evaluation of every route, over Fashion-MNIST folders or ImageFolder trees.

use snnet::Kernels;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use snnet::{
    workflow::{evaluate_into, open_dataset, progress_bar, route_table, write_accuracy_plots},
    Description,
};
use snnet_train::{
    data::{load_batch, Dataset, Split},
    Prefix, SplitMix64,
};

use crate::{
    args::{DataArgs, NetworkArgs},
    commands::{build_inference_net, build_net_with_metadata, BoxError},
};

/// `snnet init`.
pub struct Init<'a> {
    /// The network.
    pub desc: Description,
    /// Shared flags.
    pub net: &'a NetworkArgs,
    /// Data flags.
    pub data: &'a DataArgs,
    /// Calibration images.
    pub images: usize,
    /// Images per forward.
    pub chunk: usize,
    /// Weight file to write.
    pub output: &'a Path,
}

impl snnet::backend::BackendTask for Init<'_> {
    type Output = Result<(), BoxError>;

    fn run<B: Kernels>(self, device: B::Device, _name: &'static str) -> Self::Output {
        let (mut net, mut meta) = build_net_with_metadata::<B>(&self.desc, self.net, &device)?;
        let input = net.layouts()[0].input;
        let dataset = open_dataset(&self.data.data, Split::Train, &net.layouts()[0])?;
        let mut order: Vec<usize> = (0..dataset.len()).collect();
        SplitMix64::new(self.data.data_seed).shuffle(&mut order);
        // Draw until `images` readable samples are found (unreadable ones are reported and skipped).
        let mut batch = load_batch(dataset.as_ref(), &order[..self.images.min(order.len())]);
        let mut next = self.images.min(order.len());
        while batch.len() < self.images && next < order.len() {
            let more = load_batch(dataset.as_ref(), &order[next..(next + self.images - batch.len()).min(order.len())]);
            next += more.labels.len() + more.skipped.len();
            batch.images.extend(more.images);
            batch.labels.extend(more.labels);
            batch.skipped.extend(more.skipped);
        }
        for (index, err) in &batch.skipped {
            eprintln!("skipped calibration sample {index}: {err}");
        }
        let n = batch.len();
        let [c, h, w] = input;
        let images = Tensor::<B, 4>::from_data(TensorData::new(batch.images, [n, c, h, w]), &device);
        let pb = progress_bar(n, "LS init");
        let report = net.init_least_squares(images, self.chunk, |p| pb.set_position(p.images_done as u64))?;
        pb.finish_and_clear();
        meta.retain(|k, _| !k.starts_with("format") && k != "snnet.network");
        meta.insert("snnet.stitching".into(), "least-squares".into());
        meta.insert("snnet.ls_images".into(), n.to_string());
        net.save(self.output, meta)?;
        eprintln!(
            "least squares over {n} images: {} stitching layers in {:.1} s (forward {:.1} s, solve {:.1} s); wrote {}",
            report.layers.len(),
            report.seconds_features + report.seconds_forward + report.seconds_solve,
            report.seconds_forward,
            report.seconds_solve,
            self.output.display()
        );
        Ok(())
    }
}

/// `snnet eval`.
pub struct Eval<'a> {
    /// The network.
    pub desc: Description,
    /// Shared flags.
    pub net: &'a NetworkArgs,
    /// Data flags.
    pub data: &'a DataArgs,
    /// Routes to evaluate (all when `None`).
    pub routes: Option<Vec<usize>>,
    /// Images per forward.
    pub batch: usize,
    /// Threads sharing the routes (`None`: [`snnet::backend::default_workers`] of the backend).
    pub workers: Option<usize>,
    /// Evaluate only this many images.
    pub limit: Option<usize>,
    /// Results file.
    pub output: &'a Path,
    /// Plots to write.
    pub plots: &'a [std::path::PathBuf],
}

impl snnet::backend::BackendTask for Eval<'_> {
    type Output = Result<(), BoxError>;

    fn run<B: Kernels>(self, device: B::Device, name: &'static str) -> Self::Output {
        let (net, _) = build_inference_net::<B>(&self.desc, self.net, &device)?;
        let dataset = open_dataset(&self.data.data, Split::Test, &net.layouts()[0])?;
        let workers = self.workers.unwrap_or_else(|| snnet::backend::default_workers(name));
        let data = Prefix::new(dataset.as_ref(), self.limit.unwrap_or(usize::MAX));
        let wanted: Vec<usize> = self.routes.clone().unwrap_or_else(|| net.available_routes());
        let rows = evaluate_into(&net, &data, &wanted, self.batch, workers, self.output)?;
        let names: Vec<String> = self.desc.anchors.iter().map(|a| a.name()).collect();
        print!("{}", route_table(&net, &rows, &names));
        if !self.plots.is_empty() {
            let title = format!("{} routes evaluated on {} images", rows.len(), data.len());
            write_accuracy_plots(&net, &rows, &names, &title, self.plots)?;
        }
        Ok(())
    }
}
