//! The user's workflow end to end, shared by the `snnet` command line and the examples: datasets
//! by folder, progress bars, joint training with a live bar, the evaluation of every route into a
//! resumable results file, the route table and the accuracy-vs-FLOPs plot.

use snnet_core::{AutodiffKernels, Kernels};
use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use serde::Serialize;
use snnet_core::{
    select::{pareto_frontier, parse_metric_lines, Goal, RouteMetrics},
    Anchor, AnchorLayout, StitchedNet,
};
use snnet_train::{
    append_result,
    data::{Dataset, FashionMnist, ImageFolder, Split},
    done_routes, evaluate_routes_parallel, RouteSampler, RunOptions, Teacher, TrainConfig, TrainReport, TrainResult,
};

use crate::plot::{write_comparison_plot, write_frontier_plot, ComparisonPlot, FrontierPlot, PlotRoute, PlotSeries};

/// Errors of the workflow helpers, shown to the user as they are.
pub type BoxError = Box<dyn std::error::Error>;

/// A progress bar on stderr with position, rate and ETA. Without a terminal (logs, CI) it prints
/// its line at most every 10 seconds instead of redrawing ([`LogLines`]).
pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::term_like(Box::new(LogLines::every(Duration::from_secs(10)))));
    }
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}").expect("valid template").progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A progress bar's draw target for logs: each drawn line goes to stderr as a plain line, at most
/// one per `interval`; cursor moves and clears are ignored.
#[derive(Debug)]
pub struct LogLines {
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

impl LogLines {
    /// At most one line per `interval`.
    pub fn every(interval: Duration) -> Self {
        Self { interval, last: Mutex::new(None) }
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, line: &str) -> std::io::Result<()> {
        self.write_str(line)
    }
    fn write_str(&self, text: &str) -> std::io::Result<()> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_none_or(|t| t.elapsed() >= self.interval) {
            eprintln!("{text}");
            *last = Some(Instant::now());
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The split of the dataset in `dir` for a network whose first anchor is `layout`: Fashion-MNIST
/// IDX files (plain or gzipped) if the folder holds them, else an ImageFolder tree (`train/` and
/// `val/` sub-folders if present, else the folder itself) converted to the network's channels
/// (RGB with timm's evaluation preprocessing, or the luminance for one-channel networks;
/// [`ImageFolder::open_for_input`]). Images of another shape than the network's input, or more
/// classes than its head, are errors.
pub fn open_dataset(dir: &Path, split: Split, layout: &AnchorLayout) -> Result<Box<dyn Dataset>, BoxError> {
    let input = layout.input;
    let idx = |prefix: &str| ["-images-idx3-ubyte", "-images-idx3-ubyte.gz"].iter().any(|s| dir.join(format!("{prefix}{s}")).is_file());
    let dataset: Box<dyn Dataset> = if idx("train") || idx("t10k") {
        Box::new(FashionMnist::load(dir, split)?)
    } else {
        let sub = match split {
            Split::Train => "train",
            Split::Test => "val",
        };
        let root = if dir.join(sub).is_dir() { dir.join(sub) } else { dir.to_path_buf() };
        Box::new(ImageFolder::open_for_input(&root, input)?)
    };
    if dataset.shape() != input {
        return Err(format!("{}: images are {:?}, the network takes {input:?}", dir.display(), dataset.shape()).into());
    }
    if dataset.num_classes() > layout.num_classes {
        return Err(format!("{}: the data has {} classes, the network {}", dir.display(), dataset.num_classes(), layout.num_classes).into());
    }
    Ok(dataset)
}

/// [`snnet_train::train`](fn@snnet_train::train) with a progress bar showing the epoch, loss, learning rate, images/s and
/// ETA, its [`TrainConfig::peers`] on [`peer_devices`](crate::backend::peer_devices) of the
/// network's device. Also returns the seconds of each step (forward, backward, update).
pub fn train_with_progress<B: AutodiffKernels, A: Anchor<B>>(
    net: StitchedNet<B, A>,
    dataset: &dyn Dataset,
    sampler: &mut dyn RouteSampler,
    config: &TrainConfig,
    teacher: Option<&Teacher<'_, B>>,
    options: &RunOptions,
) -> TrainResult<(StitchedNet<B, A>, TrainReport, Vec<f64>)> {
    let mut step_seconds = Vec::new();
    let total = config.steps_per_epoch(dataset.len()) * config.epochs;
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:25}] {pos}/{len} steps, eta {eta}").expect("valid template").progress_chars("=> "),
    );
    // Without a terminal (logs, CI) the bar is hidden: print a line every 5 % of the run instead.
    let every = (total / 20).max(1);
    // The step's and the epoch's mean loss as last read (the loop reads them every
    // `options.log_every` steps); none before the first read.
    let mut last_read: Option<(f64, f64)> = None;
    let device = burn::module::Module::devices(&net).into_iter().next().unwrap_or_default();
    // This process's peers: all of them, or its share of a run over several processes.
    let local_peers = config.peers / options.cluster.as_ref().map_or(1, |c| c.nodes.max(1));
    let devices = crate::backend::peer_devices(&device, local_peers.max(1));
    let result = snnet_train::train_on(&devices, net, dataset, sampler, config, teacher, options, |p| {
        if let (Some(l), Some(mean)) = (p.loss, p.epoch_loss) {
            last_read = Some((l, mean));
        }
        let (loss, epoch_loss) = match last_read {
            Some((loss, mean)) => (format!("{loss:.4}"), format!("{mean:.4}")),
            None => ("–".to_string(), "–".to_string()),
        };
        let message =
            format!("epoch {}/{} loss {loss} (epoch mean {epoch_loss}) lr {:.2e} {:.1} img/s", p.epoch + 1, p.epochs, p.lr, p.images_per_s);
        if pb.is_hidden() && (p.step % every == 0 || p.step == p.total_steps) {
            eprintln!("step {}/{}: {message}", p.step, p.total_steps);
        }
        pb.set_position(p.step as u64);
        pb.set_message(message);
        step_seconds.push(p.step_seconds);
    });
    pb.finish_and_clear();
    result.map(|(net, report)| (net, report, step_seconds))
}

/// The median of `values` after skipping the first `skip` (warm-up), or `None` if none are left.
pub fn median_after(values: &[f64], skip: usize) -> Option<f64> {
    let mut rest: Vec<f64> = values.iter().skip(skip).copied().collect();
    if rest.is_empty() {
        return None;
    }
    rest.sort_by(f64::total_cmp);
    Some(rest[rest.len() / 2])
}

/// Evaluates the `routes` not yet in `results` (a JSON-lines file, created or appended to) on
/// `dataset` with a progress bar, the routes shared among `workers` threads, then returns every
/// row of the file with `gflops` added.
pub fn evaluate_into<B: Kernels, A: Anchor<B>>(
    net: &StitchedNet<B, A>,
    dataset: &dyn Dataset,
    routes: &[usize],
    batch: usize,
    workers: usize,
    results: &Path,
) -> Result<Vec<RouteMetrics>, BoxError> {
    let done = done_routes(results)?;
    let todo: Vec<usize> = routes.iter().copied().filter(|id| !done.contains(id)).collect();
    if todo.len() < routes.len() {
        eprintln!("{} route(s) already in {}; evaluating {}", routes.len() - todo.len(), results.display(), todo.len());
    }
    if !todo.is_empty() {
        let pb = progress_bar(dataset.len(), &format!("{} routes", todo.len()));
        let rows = evaluate_routes_parallel(net, dataset, &todo, batch, workers, |n| pb.set_position(n as u64))?;
        pb.finish_and_clear();
        for r in &rows {
            append_result(results, r)?;
        }
    }
    read_results(results)
}

/// Every row of a results file, with `gflops` (= `flops` / 1e9) added.
pub fn read_results(results: &Path) -> Result<Vec<RouteMetrics>, BoxError> {
    let text = std::fs::read_to_string(results).map_err(|e| format!("cannot read {}: {e}", results.display()))?;
    let mut rows = parse_metric_lines(&text, &results.display().to_string(), &|_| true)?;
    for r in &mut rows {
        if let Some(f) = r.get("flops") {
            r.values.insert("gflops".into(), f / 1e9);
        }
    }
    rows.sort_by_key(|r| r.cfg_id);
    Ok(rows)
}

/// The accuracy-vs-FLOPs Pareto frontier of result rows (route ids).
pub fn accuracy_frontier(rows: &[RouteMetrics]) -> Vec<usize> {
    pareto_frontier(rows, ("gflops", Goal::Minimize), ("acc1", Goal::Maximize))
}

/// The route table as text: id, route, GFLOPs, parameters, top-1, top-5, frontier mark.
pub fn route_table<B: Kernels, A: Anchor<B>>(net: &StitchedNet<B, A>, rows: &[RouteMetrics], anchor_names: &[String]) -> String {
    let front = accuracy_frontier(rows);
    let mut out = format!("{:>6}  {:<22} {:>9}  {:>10}  {:>7}  {:>7}  frontier\n", "cfg_id", "route", "GFLOPs", "params", "acc1", "acc5");
    for r in rows {
        let v = |k: &str| r.get(k).unwrap_or(f64::NAN);
        let mark = if front.contains(&r.cfg_id) { "*" } else { "" };
        out += &format!(
            "{:>6}  {:<22} {:>9.4}  {:>10}  {:>7.2}  {:>7.2}  {mark}\n",
            r.cfg_id,
            route_name(net, r.cfg_id, anchor_names),
            v("gflops"),
            v("params"),
            v("acc1"),
            v("acc5")
        );
    }
    out
}

/// A route in words: `name` for an anchor, `front→end (j,k)` for a stitched route (`a→b→c (j,k)
/// (j',k')` for two stitches).
pub fn route_name<B: Kernels, A: Anchor<B>>(net: &StitchedNet<B, A>, id: usize, anchor_names: &[String]) -> String {
    let Ok(route) = net.route(id) else { return "?".into() };
    let name = |a: usize| anchor_names.get(a).cloned().unwrap_or_else(|| a.to_string());
    let comb = route.comb_id.iter().map(|&a| name(a)).collect::<Vec<_>>().join("→");
    if route.is_anchor() {
        return comb;
    }
    let stitches: Vec<String> = route.stitch_cfgs.iter().map(|(j, k)| format!("({j},{k})")).collect();
    format!("{comb} {}", stitches.join(" "))
}

/// The accuracy-vs-FLOPs points of `rows`: each route's GFLOPs, top-1, parameters (millions) and,
/// for an anchor, its name.
pub fn accuracy_points<B: Kernels, A: Anchor<B>>(
    net: &StitchedNet<B, A>,
    rows: &[RouteMetrics],
    anchor_names: &[String],
) -> Vec<PlotRoute> {
    rows.iter()
        .filter_map(|r| {
            let route = net.route(r.cfg_id).ok()?;
            Some(PlotRoute {
                cfg_id: r.cfg_id,
                x: r.get("gflops")?,
                y: r.get("acc1")?,
                size: r.get("params").unwrap_or(0.0) / 1e6,
                anchor: route.is_anchor().then(|| anchor_names.get(route.comb_id[0]).cloned().unwrap_or_default()),
            })
        })
        .collect()
}

/// Writes the accuracy-vs-FLOPs plot of `rows` (anchors named, stitched routes as dots, the
/// frontier drawn) to each of `paths` (`.png` or `.svg`).
pub fn write_accuracy_plots<B: Kernels, A: Anchor<B>>(
    net: &StitchedNet<B, A>,
    rows: &[RouteMetrics],
    anchor_names: &[String],
    title: &str,
    paths: &[PathBuf],
) -> Result<(), BoxError> {
    let front = accuracy_frontier(rows);
    let mut points = accuracy_points(net, rows, anchor_names);
    let x_label = flops_axis(&mut points);
    let plot = FrontierPlot { title, x_label, y_label: "Top-1 (%)", routes: &points, frontier: &front };
    for path in paths {
        write_frontier_plot(&plot, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Writes several networks' accuracy-vs-FLOPs points and frontiers in one figure to each of
/// `paths`: `series` holds each network's legend name, points ([`accuracy_points`]) and frontier
/// ([`accuracy_frontier`]).
pub fn write_accuracy_comparison(series: &[(String, Vec<PlotRoute>, Vec<usize>)], title: &str, paths: &[PathBuf]) -> Result<(), BoxError> {
    let mut points: Vec<Vec<PlotRoute>> = series.iter().map(|(_, points, _)| points.clone()).collect();
    let x_label = flops_axis(points.iter_mut().flatten());
    let series: Vec<PlotSeries<'_>> =
        series.iter().zip(&points).map(|((name, _, frontier), points)| PlotSeries { name, routes: points, frontier }).collect();
    let plot = ComparisonPlot { title, x_label, y_label: "Top-1 (%)", series: &series };
    for path in paths {
        write_comparison_plot(&plot, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Scales the GFLOPs of `points` ([`accuracy_points`]) to the unit their axis reads best in and
/// returns its label: MFLOPs when every route costs under one GFLOP (small models), else GFLOPs.
pub fn flops_axis<'a>(points: impl IntoIterator<Item = &'a mut PlotRoute>) -> &'static str {
    let mut points: Vec<&mut PlotRoute> = points.into_iter().collect();
    if points.iter().any(|p| p.x >= 1.0) {
        return "FLOPs (G)";
    }
    for p in &mut points {
        p.x *= 1e3;
    }
    "FLOPs (M)"
}

/// Half-width of the 95 % confidence interval of an accuracy of `acc` percent measured on
/// `images` images (normal approximation), in points.
pub fn accuracy_ci95(acc: f64, images: usize) -> f64 {
    let p = (acc / 100.0).clamp(0.0, 1.0);
    100.0 * 1.96 * (p * (1.0 - p) / images.max(1) as f64).sqrt()
}

/// Whether a trained SN-Net shows what SN-Net promises, from its evaluated routes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StitchingCheck {
    /// Top-1 of each anchor, in anchor order.
    pub anchor_acc1: Vec<f64>,
    /// For each anchor after the first: its lead over the previous anchor, and the larger of the
    /// two accuracies' 95 % confidence half-widths.
    pub anchor_gaps: Vec<(f64, f64)>,
    /// Every anchor beats the previous one by more than that half-width.
    pub anchors_ordered: bool,
    /// Stitched routes whose top-1 lies within `tolerance` points of the range spanned by the two
    /// anchors they join.
    pub stitched_within: usize,
    /// Stitched routes at or above the top-1 of the smaller (less accurate) of the two anchors
    /// they join: routes that fill the space between the anchors instead of falling below it.
    pub stitched_at_or_above_smaller: usize,
    /// Stitched routes evaluated.
    pub stitched_total: usize,
    /// Routes on the accuracy-FLOPs Pareto frontier ([`accuracy_frontier`]), by increasing FLOPs.
    pub frontier: Vec<usize>,
    /// Stitched routes among them.
    pub stitched_on_frontier: usize,
    /// The tolerance, in points.
    pub tolerance: f64,
}

impl StitchingCheck {
    /// Share of stitched routes within the anchors' range (1 when there are none).
    pub fn within_share(&self) -> f64 {
        self.share(self.stitched_within)
    }

    /// Share of stitched routes at or above their smaller anchor (1 when there are none).
    pub fn at_or_above_smaller_share(&self) -> f64 {
        self.share(self.stitched_at_or_above_smaller)
    }

    fn share(&self, count: usize) -> f64 {
        if self.stitched_total == 0 {
            1.0
        } else {
            count as f64 / self.stitched_total as f64
        }
    }
}

/// Checks evaluated `rows` (with `acc1` and `images`) of `net` against SN-Net's promise; every
/// anchor route must be among the rows.
pub fn check_stitching<B: Kernels, A: Anchor<B>>(
    net: &StitchedNet<B, A>,
    rows: &[RouteMetrics],
    tolerance: f64,
) -> Result<StitchingCheck, BoxError> {
    let acc =
        |id: usize| rows.iter().find(|r| r.cfg_id == id).and_then(|r| Some((r.get("acc1")?, r.get("images").unwrap_or(0.0) as usize)));
    // Anchor routes ordered by the anchor they run.
    let mut anchors: Vec<(usize, usize)> =
        (0..net.num_routes()).filter_map(|id| net.route(id).ok().filter(|r| r.is_anchor()).map(|r| (r.comb_id[0], id))).collect();
    anchors.sort();
    let anchors: Vec<usize> = anchors.into_iter().map(|(_, id)| id).collect();
    let mut anchor_acc1 = Vec::new();
    let mut images = Vec::new();
    for &id in &anchors {
        let (a, n) = acc(id).ok_or_else(|| format!("anchor route {id} was not evaluated"))?;
        anchor_acc1.push(a);
        images.push(n);
    }
    let anchor_gaps: Vec<(f64, f64)> = (1..anchor_acc1.len())
        .map(|i| {
            let ci = accuracy_ci95(anchor_acc1[i], images[i]).max(accuracy_ci95(anchor_acc1[i - 1], images[i - 1]));
            (anchor_acc1[i] - anchor_acc1[i - 1], ci)
        })
        .collect();
    let anchors_ordered = anchor_gaps.iter().all(|&(gap, ci)| gap > ci);
    let (mut within, mut above_smaller, mut total) = (0, 0, 0);
    for r in rows {
        let Ok(route) = net.route(r.cfg_id) else { continue };
        let Some(a) = r.get("acc1") else { continue };
        if route.is_anchor() {
            continue;
        }
        let ends: Vec<f64> = route.comb_id.iter().filter_map(|&anchor| anchor_acc1.get(anchor).copied()).collect();
        let smaller = ends.iter().copied().fold(f64::INFINITY, f64::min);
        let larger = ends.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        total += 1;
        within += (smaller - tolerance..=larger + tolerance).contains(&a) as usize;
        above_smaller += (a >= smaller) as usize;
    }
    let frontier = accuracy_frontier(rows);
    let stitched_on_frontier = frontier.iter().filter(|&&id| net.route(id).is_ok_and(|r| !r.is_anchor())).count();
    Ok(StitchingCheck {
        anchor_acc1,
        anchor_gaps,
        anchors_ordered,
        stitched_within: within,
        stitched_at_or_above_smaller: above_smaller,
        stitched_total: total,
        frontier,
        stitched_on_frontier,
        tolerance,
    })
}
