//! The commands, each a small function over the library.

use snnet::Kernels;
use std::{collections::HashMap, path::Path};

use burn::tensor::Distribution;
use burn::tensor::{Tensor, TensorData};
use snnet::{
    backend::{run_on_with, BackendTask, Precision},
    latency::{prewarm, time_route, TimingOptions},
    plot::{write_frontier_plot, FrontierPlot, PlotRoute},
    select::{merge_metrics, pareto_frontier, parse_metric_lines, select, Budget, Goal, RouteMetrics},
    weights::{read_input_tensors, write_safetensors, NamedTensor},
    workflow::progress_bar,
    Description, Route, RouteCost, SpaceKind,
};

use crate::{
    args::{Cli, Command, NetworkArgs, TableArgs},
    evaluate::{Eval, Init},
};

/// Errors of the commands, shown to the user.
pub(crate) type BoxError = Box<dyn std::error::Error>;

/// `println!` that ends the program quietly when stdout is closed (e.g. `snnet space | head`)
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), BoxError> {
    if let Command::Orchestrator { port } = cli.command {
        eprintln!("orchestrator listening on port {port} (every interface); stop it with Ctrl-C");
        return Ok(snnet::train::run_orchestrator(port)?);
    }
    let desc = description(&cli.network)?;
    let precision: Precision = cli.network.dtype.parse()?;
    let device = cli.network.device.as_str();
    match cli.command {
        Command::Space { json } => space(&desc, json),
        Command::Infer { route, input, output } => {
            let task = Infer { desc, net: &cli.network, route, input: &input, output: &output };
            run_on_with(device, precision, task)?
        }
        Command::Init { data, images, chunk, output } => {
            let task = Init { desc, net: &cli.network, data: &data, images, chunk, output: &output };
            run_on_with(device, precision, task)?
        }
        Command::Eval { data, routes, batch, workers, limit, output, plot } => {
            let task = Eval { desc, net: &cli.network, data: &data, routes, batch, workers, limit, output: &output, plots: &plot };
            run_on_with(device, precision, task)?
        }
        Command::Orchestrator { .. } => unreachable!("handled before the network is built"),
        Command::Train(args) => run_on_with(device, precision, crate::train::Train { desc, net: &cli.network, args: &args })?,
        Command::Import { from, output } => run_on_with(device, precision, Import { desc, net: &cli.network, from, output })?,
        Command::Bench { routes, batch, warmup, repeats, min_seconds, json, output } => {
            let options = TimingOptions { warmup, repeats, min_seconds, max_repeats: 200 };
            let task = Bench { desc, net: &cli.network, precision, routes, batches: batch, options, json, output };
            run_on_with(device, precision, task)?
        }
        Command::Parity { reference, routes, batch } => parity(desc, &cli.network, precision, &reference, routes, batch),
        Command::Select { tables, max_gflops, max_params, max_memory_mb, max_latency_ms, json } => {
            let budgets = [("gflops", max_gflops), ("params", max_params), ("memory_mb", max_memory_mb), ("latency_ms", max_latency_ms)];
            select_route(&desc, &tables, &budgets, json)
        }
        Command::Frontier { tables, x, y, json, plot } => frontier(&desc, &tables, &x, &y, json, &plot),
        Command::Export { routes, tables, x, output } => {
            let routes = export_routes(&desc, &routes, &tables, &x)?;
            run_on_with(device, precision, Export { desc, net: &cli.network, routes, output: &output })?
        }
    }
}

/// The routes `snnet export --routes` names: ids, or `frontier` (of `--results` against `x`).
fn export_routes(desc: &Description, routes: &str, tables: &TableArgs, x: &str) -> Result<Vec<usize>, BoxError> {
    if routes != "frontier" {
        return routes
            .split(',')
            .map(|id| {
                id.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("--routes: `{id}` is not a route id (ids, comma separated, or `frontier`)").into())
            })
            .collect();
    }
    if tables.results.is_none() {
        return Err("--routes frontier needs the accuracies: give --results FILE (from `snnet eval`)".into());
    }
    let table = route_table(desc, tables)?;
    if !table.iter().any(|r| r.get(x).is_some()) {
        return Err(format!("no route has the metric `{x}` for the frontier; give --latency for latency_ms").into());
    }
    Ok(pareto_frontier(&table, (x, Goal::Minimize), ("acc1", Goal::Maximize)))
}

/// `snnet export`.
struct Export<'a> {
    desc: Description,
    net: &'a NetworkArgs,
    routes: Vec<usize>,
    output: &'a Path,
}

impl BackendTask for Export<'_> {
    type Output = Result<(), BoxError>;

    fn run<B: Kernels>(self, device: B::Device, _name: &'static str) -> Self::Output {
        let (net, _) = build_net_with_metadata::<B>(&self.desc, self.net, &device)?;
        let summary = self.desc.save_route_pack(&net, &self.routes, self.output, HashMap::new())?;
        let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
        out!(
            "wrote {}: routes {:?}, {} tensors, {} parameters{}, {:.2} MiB",
            self.output.display(),
            summary.routes,
            summary.tensors,
            summary.parameters,
            if summary.buffers > 0 { format!(" and {} BatchNorm statistics", summary.buffers) } else { String::new() },
            mib(summary.bytes)
        );
        out!(
            "the whole network: {:.2} MiB; {} separate export(s) of these routes: {:.2} MiB",
            mib(summary.network_bytes),
            summary.routes.len(),
            mib(summary.separate_bytes)
        );
        Ok(())
    }
}

/// Every route's costs (`flops`, `gflops`, `params`, `params_exact`, `memory_mb`) with the values
/// of the results and latency tables merged in.
fn route_table(desc: &Description, tables: &TableArgs) -> Result<Vec<RouteMetrics>, BoxError> {
    let (space, costs) = desc.space_with_costs()?;
    let base: Vec<RouteMetrics> = space
        .routes
        .iter()
        .zip(&costs)
        .map(|(r, c)| RouteMetrics {
            cfg_id: r.cfg_id,
            values: [
                ("flops".to_string(), c.flops as f64),
                ("gflops".to_string(), c.flops as f64 / 1e9),
                ("params".to_string(), c.params as f64),
                ("params_exact".to_string(), c.params_exact as f64),
                ("memory_mb".to_string(), (c.params_exact * 4) as f64 / (1u64 << 20) as f64),
            ]
            .into(),
        })
        .collect();
    let read = |path: &Path| {
        let bytes = snnet::core::read_regular_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8 text: {e}", path.display()))
    };
    let mut others = Vec::new();
    if let Some(path) = &tables.results {
        let mut rows = parse_metric_lines(&read(path)?, &path.display().to_string(), &|_| true)?;
        for row in &mut rows {
            // The official results file repeats the costs; the network's own are authoritative.
            for key in ["flops", "params", "params_exact"] {
                row.values.remove(key);
            }
        }
        others.push(rows);
    }
    if let Some(path) = &tables.latency {
        let batch = tables.batch;
        let keep = move |v: &serde_json::Value| batch.is_none_or(|b| v["batch"].as_u64() == Some(b as u64));
        let mut rows = parse_metric_lines(&read(path)?, &path.display().to_string(), &keep)?;
        if rows.is_empty() {
            return Err(format!("{}: no rows{}", path.display(), batch.map(|b| format!(" for batch {b}")).unwrap_or_default()).into());
        }
        for row in &mut rows {
            if let Some(mb) = row.values.remove("weight_mb") {
                row.values.insert("memory_mb".into(), mb);
            }
            row.values.retain(|k, _| matches!(k.as_str(), "latency_ms" | "min_ms" | "memory_mb" | "batch"));
        }
        others.push(rows);
    }
    Ok(merge_metrics(&base, &others))
}

fn select_route(desc: &Description, tables: &TableArgs, limits: &[(&str, Option<f64>)], json: bool) -> Result<(), BoxError> {
    if limits.iter().any(|(m, v)| *m == "latency_ms" && v.is_some()) && tables.latency.is_none() {
        return Err("--max-latency-ms needs a latency table: measure one with `snnet bench --output FILE` and pass --latency FILE".into());
    }
    let routes = route_table(desc, tables)?;
    let budgets: Vec<Budget> = limits.iter().filter_map(|(m, v)| v.map(|max| Budget { metric: m.to_string(), max })).collect();
    let objective = if tables.results.is_some() { ("acc1", Goal::Maximize) } else { ("flops", Goal::Maximize) };
    let id = select(&routes, &budgets, objective)?;
    let chosen = &routes[id];
    if json {
        let mut v = serde_json::json!({ "cfg_id": id });
        for (k, x) in &chosen.values {
            v[k] = serde_json::json!(x);
        }
        out!("{v}");
    } else {
        let values: Vec<String> = chosen.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out!("route {id}: {}", values.join(", "));
    }
    Ok(())
}

fn frontier(desc: &Description, tables: &TableArgs, x: &str, y: &str, json: bool, plots: &[std::path::PathBuf]) -> Result<(), BoxError> {
    let routes = route_table(desc, tables)?;
    for metric in [x, y] {
        if !routes.iter().any(|r| r.get(metric).is_some()) {
            return Err(format!("no route has the metric `{metric}`; give --results (accuracy) or --latency (latency) tables").into());
        }
    }
    let front = pareto_frontier(&routes, (x, Goal::Minimize), (y, Goal::Maximize));
    if !json {
        out!("{} of {} routes on the frontier of {y} (higher is better) against {x} (lower is better)", front.len(), routes.len());
        out!("{:>6}  {:>14}  {:>14}", "cfg_id", x, y);
    }
    for &id in &front {
        let r = &routes[id];
        let (vx, vy) = (r.get(x).unwrap_or(f64::NAN), r.get(y).unwrap_or(f64::NAN));
        if json {
            out!("{}", serde_json::json!({ "cfg_id": id, x: vx, y: vy }));
        } else {
            out!("{id:>6}  {vx:>14.4}  {vy:>14.4}");
        }
    }
    if !plots.is_empty() {
        let (space, _) = desc.space_with_costs()?;
        let points: Vec<PlotRoute> = routes
            .iter()
            .filter_map(|r| {
                let route = &space.routes[r.cfg_id];
                Some(PlotRoute {
                    cfg_id: r.cfg_id,
                    x: r.get(x)?,
                    y: r.get(y)?,
                    size: r.get("params").unwrap_or(0.0) / 1e6,
                    anchor: route.is_anchor().then(|| desc.anchors[route.comb_id[0]].name()),
                })
            })
            .collect();
        let title = format!("{} routes: {y} against {x}", routes.len());
        let plot = FrontierPlot { title: &title, x_label: x, y_label: y, routes: &points, frontier: &front };
        for path in plots {
            write_frontier_plot(&plot, path)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The description from `--config`, with `--anchors` and space flags applied on top.
fn description(args: &NetworkArgs) -> Result<Description, BoxError> {
    let mut desc = match (&args.config, &args.anchors, &args.weights) {
        (Some(path), _, _) => Description::from_file(path)?,
        (None, Some(names), _) => Description::from_names(names),
        // Route packs (`snnet export`) carry their description.
        (None, None, Some(weights)) => Description::from_weight_file(weights)?,
        (None, None, None) => {
            return Err("give the network with --config FILE or --anchors NAME,NAME,… (or a route pack with --weights)".into())
        }
    };
    if let (Some(_), Some(names)) = (&args.config, &args.anchors) {
        desc.anchors = Description::from_names(names).anchors;
    }
    if let Some(k) = args.kernel_size {
        desc.space.kernel_size = k;
    }
    if let Some(s) = args.stride {
        desc.space.stride = s;
    }
    if let Some(n) = args.nearest_stitching {
        desc.space.nearest_stitching = n;
    }
    if args.two_way {
        desc.space.kind = SpaceKind::TwoWay;
    }
    if let Some(rank) = args.lora_rank {
        desc.space.lora_rank = rank;
    }
    Ok(desc)
}

/// One route as a JSON line: the official fields (SN-Netv2's `stitch_layer_ids` and `route` in a
/// two-way space), its costs, and `"trained": false` for a route joint training leaves out.
fn route_json(route: &Route, cost: &RouteCost, kind: SpaceKind) -> serde_json::Value {
    let mut v = serde_json::json!({
        "cfg_id": route.cfg_id,
        "comb_id": route.comb_id,
        "stitch_cfgs": route.stitch_cfgs,
        "stitch_layers": route.stitch_layers,
        "flops": cost.flops,
        "params": cost.params,
        "params_exact": cost.params_exact,
    });
    if let Some(stage) = route.stage_id {
        v["stage_id"] = stage.into();
    }
    if kind == SpaceKind::TwoWay && !route.is_anchor() {
        v["stitch_layer_ids"] = route.official_stitch_layer_ids().into();
        v["route"] = serde_json::json!(route.official_segments());
    }
    if !route.trained {
        v["trained"] = false.into();
    }
    v
}

fn space(desc: &Description, json: bool) -> Result<(), BoxError> {
    let (space, costs) = desc.space_with_costs()?;
    if json {
        for (r, c) in space.routes.iter().zip(&costs) {
            out!("{}", route_json(r, c, space.settings.kind));
        }
        return Ok(());
    }
    out!("{} anchors, {} routes, {} stitching layers", desc.anchors.len(), space.num_routes(), space.layers.len());
    for (i, a) in desc.anchors.iter().enumerate() {
        out!("  anchor {i}: {}", a.name());
    }
    out!(
        "{:>6}  {:<10} {:>5}  {:<16} {:>7}  {:>10}  {:>12}  {:>12}",
        "cfg_id",
        "comb",
        "stage",
        "stitch (j,k)",
        "layers",
        "GFLOPs",
        "params",
        "params_exact"
    );
    for (r, c) in space.routes.iter().zip(&costs) {
        let comb = r.comb_id.iter().map(|a| a.to_string()).collect::<Vec<_>>().join("→");
        let stitches = r.stitch_cfgs.iter().map(|(j, k)| format!("({j},{k})")).collect::<Vec<_>>().join(" ");
        let layers = r.stitch_layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",");
        let stage = r.stage_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        out!(
            "{:>6}  {:<10} {:>5}  {:<16} {:>7}  {:>10.4}  {:>12}  {:>12}",
            r.cfg_id,
            comb,
            stage,
            stitches,
            layers,
            c.flops as f64 / 1e9,
            c.params,
            c.params_exact
        );
    }
    let untrained: Vec<String> = space.routes.iter().filter(|r| !r.trained).map(|r| r.cfg_id.to_string()).collect();
    if !untrained.is_empty() {
        out!("left out of joint training, as officially: route {}", untrained.join(", "));
    }
    Ok(())
}

type Net<B> = snnet::StitchedNet<B, snnet::AnyAnchor<B>>;

/// Builds the network on `device`, from `--weights` or seeded random weights.
fn build_net<B: Kernels>(desc: &Description, args: &NetworkArgs, device: &B::Device) -> Result<Net<B>, BoxError> {
    Ok(build_net_with_metadata(desc, args, device)?.0)
}

/// [`build_net_with_metadata`] for commands that only run routes: the stitching layers merged as
/// inference runs them (SN-Netv2's LoRA updates folded in, `StitchedNet::merged_for_inference`).
pub(crate) fn build_inference_net<B: Kernels>(
    desc: &Description,
    args: &NetworkArgs,
    device: &B::Device,
) -> Result<(Net<B>, HashMap<String, String>), BoxError> {
    let (net, metadata) = build_net_with_metadata::<B>(desc, args, device)?;
    Ok((net.merged_for_inference(), metadata))
}

/// [`build_net`], also returning the weight file's metadata (empty without `--weights`).
pub(crate) fn build_net_with_metadata<B: Kernels>(
    desc: &Description,
    args: &NetworkArgs,
    device: &B::Device,
) -> Result<(Net<B>, HashMap<String, String>), BoxError> {
    B::seed(device, args.seed);
    Ok(match &args.weights {
        // A route pack: only what its routes use is built and loaded.
        Some(w) if is_route_pack(w) => desc.build_unmaterialized::<B>(device)?.load_route_pack(w)?,
        Some(w) => desc.build::<B>(device)?.load(w)?,
        None => (desc.build::<B>(device)?, HashMap::new()),
    })
}

/// Whether `path` is a route pack (safetensors whose metadata lists its routes).
fn is_route_pack(path: &Path) -> bool {
    snnet::weights::read_weights_metadata(path).is_ok_and(|meta| meta.contains_key(snnet::ROUTES_METADATA))
}

struct Bench<'a> {
    desc: Description,
    net: &'a NetworkArgs,
    precision: Precision,
    routes: Option<Vec<usize>>,
    batches: Vec<usize>,
    options: TimingOptions,
    json: bool,
    output: Option<std::path::PathBuf>,
}

impl BackendTask for Bench<'_> {
    type Output = Result<(), BoxError>;

    fn run<B: Kernels>(self, device: B::Device, name: &'static str) -> Self::Output {
        let (net, _) = build_inference_net::<B>(&self.desc, self.net, &device)?;
        let routes = match &self.routes {
            Some(r) => {
                for &id in r {
                    net.route(id)?;
                }
                r.clone()
            }
            None => net.available_routes(),
        };
        let [c, h, w] = net.layouts()[0].input;
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut lines = Vec::new();
        for &batch in &self.batches {
            let images = Tensor::<B, 4>::random([batch, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let pb = progress_bar(routes.len(), &format!("batch {batch}"));
            let cold = prewarm(&net, &routes[..1], &images)?;
            for (i, &id) in routes.iter().enumerate() {
                let first_ms = if i == 0 { cold[0] } else { snnet::latency::forward_ms(&net, id, &images)? };
                let timing = time_route(&net, id, &images, self.options)?;
                // Host heap growth during one forward: the activations, on the CPU backend.
                let peak_activation_mb = (name == "flex").then(|| {
                    let base = crate::ALLOCATOR.reset_peak();
                    snnet::latency::forward_ms(&net, id, &images).map(|_| (crate::ALLOCATOR.peak() - base) as f64 / (1u64 << 20) as f64)
                });
                let peak_activation_mb = peak_activation_mb.transpose()?;
                let cost = &net.costs()[id];
                let line = serde_json::json!({
                    "impl": "snnet", "version": env!("CARGO_PKG_VERSION"), "device": name, "dtype": self.precision.to_string(),
                    "threads": threads, "workload": "forward", "batch": batch, "cfg_id": id,
                    "latency_ms": timing.latency_ms, "min_ms": timing.min_ms, "repeats": timing.repeats,
                    "first_forward_ms": first_ms, "flops": cost.flops, "params": cost.params, "params_exact": cost.params_exact,
                    "weight_mb": (cost.params_exact * self.precision.bytes() as u64) as f64 / (1u64 << 20) as f64,
                    "peak_activation_mb": peak_activation_mb,
                });
                if self.json {
                    pb.suspend(|| out!("{line}"));
                }
                lines.push(line);
                pb.inc(1);
            }
            pb.finish_and_clear();
        }
        if !self.json {
            out!(
                "{:>6} {:>6}  {:>12} {:>10} {:>12} {:>10} {:>10} {:>12}",
                "cfg_id",
                "batch",
                "latency ms",
                "min ms",
                "first ms",
                "GFLOPs",
                "weights MB",
                "act. peak MB"
            );
            for l in &lines {
                out!(
                    "{:>6} {:>6}  {:>12.3} {:>10.3} {:>12.1} {:>10.3} {:>10.1} {:>12}",
                    l["cfg_id"].as_u64().unwrap_or_default(),
                    l["batch"].as_u64().unwrap_or_default(),
                    l["latency_ms"].as_f64().unwrap_or(f64::NAN),
                    l["min_ms"].as_f64().unwrap_or(f64::NAN),
                    l["first_forward_ms"].as_f64().unwrap_or(f64::NAN),
                    l["flops"].as_f64().unwrap_or(f64::NAN) / 1e9,
                    l["weight_mb"].as_f64().unwrap_or(f64::NAN),
                    l["peak_activation_mb"].as_f64().map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
                );
            }
        }
        if let Some(path) = &self.output {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {} measurements to {}", lines.len(), path.display());
        }
        Ok(())
    }
}

/// Metadata key recording whether the stitching layers hold trained or initialised values.
const STITCHING_KEY: &str = "snnet.stitching";

struct Import<'a> {
    desc: Description,
    net: &'a NetworkArgs,
    from: Vec<std::path::PathBuf>,
    output: std::path::PathBuf,
}

/// One line about what a checkpoint held and what was done with it.
fn import_summary(path: &Path, loaded: &snnet::weights::LoadedWeights, used: usize) -> String {
    let format = match loaded.format {
        snnet::weights::Format::Safetensors => "safetensors",
        snnet::weights::Format::TorchZip => "PyTorch .pth (zip)",
        snnet::weights::Format::TorchLegacy => "PyTorch .pth (legacy, before 1.6)",
    };
    let mut parts = vec![format.to_string()];
    if let Some(entry) = &loaded.state_dict_entry {
        parts.push(format!("state dict under `{entry}`"));
    }
    parts.push(format!("{used} tensors loaded"));
    if !loaded.cast.is_empty() {
        let cast: Vec<String> = loaded.cast.iter().map(|(t, n)| format!("{n} from {t}")).collect();
        parts.push(format!("cast to f32: {}", cast.join(", ")));
    }
    if !loaded.skipped.is_empty() {
        let shown: Vec<&str> = loaded.skipped.iter().take(3).map(String::as_str).collect();
        let more = if loaded.skipped.len() > 3 { format!(", … ({} in all)", loaded.skipped.len()) } else { String::new() };
        parts.push(format!("skipped recomputed buffers: {}{more}", shown.join(", ")));
    }
    if !loaded.other_entries.is_empty() {
        parts.push(format!("not read: {}", loaded.other_entries.join(", ")));
    }
    format!("{}: {}", path.display(), parts.join("; "))
}

impl BackendTask for Import<'_> {
    type Output = Result<(), BoxError>;

    fn run<B: Kernels>(self, device: B::Device, _name: &'static str) -> Self::Output {
        let mut net = build_net::<B>(&self.desc, self.net, &device)?;
        let anchors = self.desc.anchors.len();
        let pb = progress_bar(self.from.len(), "import");
        let mut summaries = Vec::new();
        let stitching = if self.from.len() == 1 && anchors > 1 {
            let path = &self.from[0];
            let shown = path.display().to_string();
            let mut loaded = snnet::weights::read_weights(path)?;
            if !loaded.tensors.keys().any(|k| k.starts_with("anchors.") || k.starts_with("module.anchors.")) {
                return Err(format!(
                    "{shown} is not an SN-Net checkpoint (no `anchors.*` keys): give one checkpoint per anchor ({anchors} files, in anchor order)"
                )
                .into());
            }
            let total = loaded.tensors.len();
            net = net.load_state(&mut loaded.tensors, snnet::StatePart::All, &shown)?;
            summaries.push(import_summary(path, &loaded, total));
            pb.inc(1);
            "imported"
        } else if self.from.len() == anchors {
            for (i, path) in self.from.iter().enumerate() {
                let (next, loaded) = net.load_anchor(i, path)?;
                net = next;
                summaries.push(import_summary(path, &loaded, loaded.tensors.len()));
                pb.inc(1);
            }
            if anchors > 1 {
                "uninitialised"
            } else {
                "none"
            }
        } else {
            return Err(format!(
                "--from has {} file(s): give one official SN-Net checkpoint, or one checkpoint per anchor ({anchors}, in anchor order)",
                self.from.len()
            )
            .into());
        };
        pb.finish_and_clear();
        let sources: Vec<String> = self.from.iter().map(|p| p.display().to_string()).collect();
        let meta = HashMap::from([
            (STITCHING_KEY.to_string(), stitching.to_string()),
            ("snnet.imported_from".to_string(), serde_json::to_string(&sources)?),
        ]);
        net.save(&self.output, meta)?;
        for line in summaries {
            eprintln!("{line}");
        }
        let note = if stitching == "uninitialised" { " (stitching layers not initialised yet: run least-squares init)" } else { "" };
        eprintln!("wrote {}{note}", self.output.display());
        Ok(())
    }
}

/// Runs routes on a fixed probe batch and returns their logits; optionally saves the weights first.
struct Logits<'a> {
    desc: Description,
    net: &'a NetworkArgs,
    weights: Option<std::path::PathBuf>,
    save_to: Option<std::path::PathBuf>,
    routes: Vec<usize>,
    images: Vec<f32>,
    shape: [usize; 4],
}

impl BackendTask for Logits<'_> {
    type Output = Result<Vec<Vec<f32>>, BoxError>;

    fn run<B: Kernels>(self, device: B::Device, _name: &'static str) -> Self::Output {
        let mut net = build_net::<B>(&self.desc, self.net, &device)?;
        if let Some(w) = &self.weights {
            net = net.load(w)?.0;
        }
        if let Some(path) = &self.save_to {
            net.save(path, Default::default())?;
        }
        let images = Tensor::<B, 4>::from_data(TensorData::new(self.images, self.shape), &device);
        let mut out = Vec::new();
        for &id in &self.routes {
            let logits = net.forward(images.clone(), id)?;
            out.push(logits.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?);
        }
        Ok(out)
    }
}

/// Logits of `--device`/`--dtype` against the reference backend on the same weights and images:
/// the weights are made (or loaded) on the reference, saved, and loaded on the device.
fn parity(
    desc: Description,
    args: &NetworkArgs,
    precision: Precision,
    reference: &str,
    routes: Option<Vec<usize>>,
    batch: usize,
) -> Result<(), BoxError> {
    let (space, _) = desc.space_with_costs()?;
    let routes = routes.unwrap_or_else(|| (0..space.num_routes()).collect());
    if let Some(bad) = routes.iter().find(|&&id| id >= space.num_routes()) {
        return Err(format!("unknown route {bad}: this network has routes 0..{}", space.num_routes() - 1).into());
    }
    let [c, h, w] = desc.layouts()?[0].input;
    let shape = [batch, c, h, w];
    let images: Vec<f32> = (0..batch * c * h * w).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 4.0).collect();
    let file = std::env::temp_dir().join(format!("snnet-parity-{}.safetensors", std::process::id()));
    let run = |weights: Option<std::path::PathBuf>, save_to: Option<std::path::PathBuf>| Logits {
        desc: desc.clone(),
        net: args,
        weights,
        save_to,
        routes: routes.clone(),
        images: images.clone(),
        shape,
    };
    let expected = run_on_with(reference, Precision::F32, run(args.weights.clone(), Some(file.clone())));
    let got = expected.and_then(|e| Ok((e, run_on_with(&args.device, precision, run(Some(file.clone()), None))?)));
    let _ = std::fs::remove_file(&file);
    let (expected, got) = got?;
    let (expected, got) = (expected?, got?);
    let mut worst: f64 = 0.0;
    for ((id, a), b) in routes.iter().zip(&expected).zip(&got) {
        let scale = a.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(f64::MIN_POSITIVE);
        let max_abs = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
        let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
        let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().max(f64::MIN_POSITIVE);
        let rel_l2 = (num / den).sqrt();
        worst = worst.max(rel_l2);
        out!(
            "{}",
            serde_json::json!({"check": "logits", "reference": reference, "device": args.device, "dtype": precision.to_string(),
                "batch": batch, "cfg_id": id, "rel_l2": rel_l2, "max_abs_over_max_logit": max_abs / scale})
        );
    }
    eprintln!("{} {precision} against {reference}: worst relative L2 error over {} routes = {worst:.3e}", args.device, routes.len());
    Ok(())
}

struct Infer<'a> {
    desc: Description,
    net: &'a NetworkArgs,
    route: String,
    input: &'a [std::path::PathBuf],
    output: &'a Path,
}

/// The input batch of `snnet infer`: one safetensors file (tensor `input`, or its only tensor), or
/// image files (PNG/JPEG), one image each, preprocessed for the network's input `[c, h, w]`.
fn read_input(paths: &[std::path::PathBuf], [c, h, w]: [usize; 3]) -> Result<NamedTensor, BoxError> {
    let is_image = |p: &std::path::PathBuf| {
        p.extension().and_then(|e| e.to_str()).is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
    };
    if !paths.is_empty() && paths.iter().all(is_image) {
        let mut data = Vec::new();
        for path in paths {
            data.extend(snnet_train::data::load_image_file(path, [c, h, w])?);
        }
        return Ok(NamedTensor { shape: vec![paths.len(), c, h, w], data, stored_as: "U8" });
    }
    let [path] = paths else {
        return Err(format!("--input takes one safetensors file or image files (.png, .jpg), got {} files", paths.len()).into());
    };
    let mut tensors = read_input_tensors(path)?;
    match tensors.remove("input") {
        Some(t) => Ok(t),
        None if tensors.len() == 1 => Ok(tensors.into_values().next().expect("one tensor")),
        None => Err(format!("{}: no tensor named `input` and {} tensors to choose from", path.display(), tensors.len()).into()),
    }
}

impl BackendTask for Infer<'_> {
    type Output = Result<(), BoxError>;

    fn run<B: Kernels>(self, device: B::Device, _name: &'static str) -> Self::Output {
        let (net, metadata) = build_inference_net::<B>(&self.desc, self.net, &device)?;
        let uninitialised = metadata.get(STITCHING_KEY).is_some_and(|s| s == "uninitialised");
        let routes: Vec<usize> = if self.route == "all" {
            net.available_routes()
        } else {
            let id = self.route.parse::<usize>().map_err(|_| format!("--route must be a route id or `all`, got `{}`", self.route))?;
            net.route(id)?;
            vec![id]
        };
        let [c, h, w] = net.layouts()[0].input;
        let input = read_input(self.input, [c, h, w])?;
        let shown = self.input.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",");
        if input.shape.len() != 4 || input.shape[1..] != [c, h, w] {
            return Err(format!("{shown}: input has shape {:?}, the network takes [batch, {c}, {h}, {w}]", input.shape).into());
        }
        let images = Tensor::<B, 4>::from_data(TensorData::new(input.data, [input.shape[0], c, h, w]), &device);
        if uninitialised && routes.iter().any(|&id| !net.space().routes[id].is_anchor()) {
            eprintln!("warning: the stitching layers of this weight file were never initialised; stitched routes give meaningless logits");
        }
        let mut out = Vec::new();
        for &id in &routes {
            let logits = net.forward(images.clone(), id)?;
            let shape = logits.dims().to_vec();
            let data = logits.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
            let classes: Vec<usize> = data
                .chunks(shape[1].max(1))
                .map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i))
                .collect();
            out!("route {id}: predicted classes {classes:?}");
            let key = if routes.len() == 1 && self.route != "all" { "logits".to_string() } else { format!("logits.{id}") };
            out.push((key, NamedTensor { shape, data, stored_as: "F32" }));
        }
        write_safetensors(self.output, &out, HashMap::from([(snnet::anchors::DESCRIPTION_METADATA.to_string(), self.desc.to_json())]))?;
        eprintln!("wrote {} logits tensor(s) to {}", out.len(), self.output.display());
        Ok(())
    }
}
