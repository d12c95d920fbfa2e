//! `snnet init` and `snnet eval`: least-squares initialisation from a dataset's images and the
//! evaluation of every route, over Fashion-MNIST folders or ImageFolder trees.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use snnet::{
    plot::{write_frontier_plot, FrontierPlot, PlotRoute},
    select::{pareto_frontier, Goal, RouteMetrics},
    Description,
};
use snnet_train::{
    append_result,
    data::{load_batch, Dataset, FashionMnist, ImageFolder, Preprocess, Split},
    done_routes, evaluate_routes, SplitMix64,
};

use crate::{
    args::{DataArgs, NetworkArgs},
    commands::{build_net_with_metadata, progress_bar, BoxError},
};

/// The dataset split in `dir` that matches the network's input `[c, h, w]`.
fn open_dataset(dir: &Path, split: Split, input: [usize; 3]) -> Result<Box<dyn Dataset>, BoxError> {
    let idx = |prefix: &str| ["-images-idx3-ubyte", "-images-idx3-ubyte.gz"].iter().any(|s| dir.join(format!("{prefix}{s}")).is_file());
    let dataset: Box<dyn Dataset> = if idx("train") || idx("t10k") {
        Box::new(FashionMnist::load(dir, split)?)
    } else {
        let sub = match split {
            Split::Train => "train",
            Split::Test => "val",
        };
        let root = if dir.join(sub).is_dir() { dir.join(sub) } else { dir.to_path_buf() };
        Box::new(ImageFolder::open(&root, Preprocess::imagenet(input[1]))?)
    };
    if dataset.shape() != input {
        return Err(format!("{}: images are {:?}, the network takes {input:?}", dir.display(), dataset.shape()).into());
    }
    Ok(dataset)
}

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

    fn run<B: Backend>(self, device: B::Device, _name: &'static str) -> Self::Output {
        let (mut net, mut meta) = build_net_with_metadata::<B>(&self.desc, self.net, &device)?;
        let input = net.layouts()[0].input;
        let dataset = open_dataset(&self.data.data, Split::Train, input)?;
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
    /// Evaluate only this many images.
    pub limit: Option<usize>,
    /// Results file.
    pub output: &'a Path,
    /// Plots to write.
    pub plots: &'a [std::path::PathBuf],
}

/// A view of the first `len` samples of a dataset.
struct Prefix<'a> {
    inner: &'a dyn Dataset,
    len: usize,
}

impl Dataset for Prefix<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn shape(&self) -> [usize; 3] {
        self.inner.shape()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn get(&self, index: usize) -> Result<snnet_train::Sample, snnet_train::DataError> {
        self.inner.get(index)
    }
}

impl snnet::backend::BackendTask for Eval<'_> {
    type Output = Result<(), BoxError>;

    fn run<B: Backend>(self, device: B::Device, _name: &'static str) -> Self::Output {
        let (net, _) = build_net_with_metadata::<B>(&self.desc, self.net, &device)?;
        let dataset = open_dataset(&self.data.data, Split::Test, net.layouts()[0].input)?;
        if dataset.num_classes() > net.layouts()[0].num_classes {
            return Err(format!("the data has {} classes, the network {}", dataset.num_classes(), net.layouts()[0].num_classes).into());
        }
        let data = Prefix { inner: dataset.as_ref(), len: self.limit.unwrap_or(usize::MAX).min(dataset.len()) };
        let done = done_routes(self.output)?;
        let wanted: Vec<usize> = self.routes.clone().unwrap_or_else(|| (0..net.num_routes()).collect());
        let todo: Vec<usize> = wanted.iter().copied().filter(|id| !done.contains(id)).collect();
        if todo.len() < wanted.len() {
            eprintln!("{} route(s) already in {}; evaluating {}", wanted.len() - todo.len(), self.output.display(), todo.len());
        }
        if !todo.is_empty() {
            let pb = progress_bar(data.len(), &format!("{} routes", todo.len()));
            let results = evaluate_routes(&net, &data, &todo, self.batch, |n| pb.set_position(n as u64))?;
            pb.finish_and_clear();
            for r in &results {
                append_result(self.output, r)?;
            }
        }
        let text = std::fs::read_to_string(self.output).map_err(|e| format!("cannot read {}: {e}", self.output.display()))?;
        let rows = snnet::select::parse_metric_lines(&text, &self.output.display().to_string(), &|_| true)?;
        let rows: Vec<RouteMetrics> = rows
            .into_iter()
            .map(|mut r| {
                if let Some(f) = r.get("flops") {
                    r.values.insert("gflops".into(), f / 1e9);
                }
                r
            })
            .collect();
        let front = pareto_frontier(&rows, ("gflops", Goal::Minimize), ("acc1", Goal::Maximize));
        println!("{:>6}  {:>10}  {:>12}  {:>7}  {:>7}  frontier", "cfg_id", "GFLOPs", "params", "acc1", "acc5");
        let mut sorted = rows.clone();
        sorted.sort_by_key(|r| r.cfg_id);
        for r in &sorted {
            let v = |k: &str| r.get(k).unwrap_or(f64::NAN);
            let mark = if front.contains(&r.cfg_id) { "*" } else { "" };
            println!("{:>6}  {:>10.4}  {:>12}  {:>7.2}  {:>7.2}  {mark}", r.cfg_id, v("gflops"), v("params"), v("acc1"), v("acc5"));
        }
        if !self.plots.is_empty() {
            let points: Vec<PlotRoute> = sorted
                .iter()
                .filter_map(|r| {
                    let route = net.route(r.cfg_id).ok()?;
                    Some(PlotRoute {
                        cfg_id: r.cfg_id,
                        x: r.get("gflops")?,
                        y: r.get("acc1")?,
                        size: r.get("params").unwrap_or(0.0) / 1e6,
                        anchor: route.is_anchor().then(|| self.desc.anchors[route.comb_id[0]].name()),
                    })
                })
                .collect();
            let title = format!("{} routes evaluated on {} images", points.len(), data.len());
            let plot = FrontierPlot { title: &title, x_label: "FLOPs (G)", y_label: "Top-1 (%)", routes: &points, frontier: &front };
            for path in self.plots {
                write_frontier_plot(&plot, path)?;
                eprintln!("wrote {}", path.display());
            }
        }
        Ok(())
    }
}
