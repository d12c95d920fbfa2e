//! The commands, each a small function over the library.

use std::{collections::HashMap, path::Path};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use snnet::{
    backend::{run_on, BackendTask},
    weights::{read_safetensors, write_safetensors, NamedTensor},
    Description, Route, RouteCost,
};

use crate::args::{Cli, Command, NetworkArgs};

type BoxError = Box<dyn std::error::Error>;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), BoxError> {
    let desc = description(&cli.network)?;
    match cli.command {
        Command::Space { json } => space(&desc, json),
        Command::Infer { route, input, output } => {
            let task = Infer { desc, net: &cli.network, route, input: &input, output: &output };
            run_on(&cli.network.device, task)?
        }
    }
}

/// The description from `--config`, with `--anchors` and space flags applied on top.
fn description(args: &NetworkArgs) -> Result<Description, BoxError> {
    let mut desc = match (&args.config, &args.anchors) {
        (Some(path), _) => Description::from_file(path)?,
        (None, Some(names)) => Description::from_names(names),
        (None, None) => return Err("give the network with --config FILE or --anchors NAME,NAME,…".into()),
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
    Ok(desc)
}

fn route_json(route: &Route, cost: &RouteCost) -> serde_json::Value {
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
    v
}

fn space(desc: &Description, json: bool) -> Result<(), BoxError> {
    let (space, costs) = desc.space_with_costs()?;
    if json {
        for (r, c) in space.routes.iter().zip(&costs) {
            println!("{}", route_json(r, c));
        }
        return Ok(());
    }
    println!("{} anchors, {} routes, {} stitching layers", desc.anchors.len(), space.num_routes(), space.layers.len());
    for (i, a) in desc.anchors.iter().enumerate() {
        println!("  anchor {i}: {}", a.name());
    }
    println!("{:>6}  {:<10} {:>5}  {:<16} {:>7}  {:>10}  {:>12}  {:>12}", "cfg_id", "comb", "stage", "stitch (j,k)", "layers", "GFLOPs", "params", "params_exact");
    for (r, c) in space.routes.iter().zip(&costs) {
        let comb = r.comb_id.iter().map(|a| a.to_string()).collect::<Vec<_>>().join("→");
        let stitches = r.stitch_cfgs.iter().map(|(j, k)| format!("({j},{k})")).collect::<Vec<_>>().join(" ");
        let layers = r.stitch_layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",");
        let stage = r.stage_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:>6}  {:<10} {:>5}  {:<16} {:>7}  {:>10.4}  {:>12}  {:>12}",
            r.cfg_id, comb, stage, stitches, layers, c.flops as f64 / 1e9, c.params, c.params_exact
        );
    }
    Ok(())
}

struct Infer<'a> {
    desc: Description,
    net: &'a NetworkArgs,
    route: String,
    input: &'a Path,
    output: &'a Path,
}

impl BackendTask for Infer<'_> {
    type Output = Result<(), BoxError>;

    fn run<B: Backend>(self, device: B::Device, _name: &'static str) -> Self::Output {
        B::seed(&device, self.net.seed);
        let mut net = self.desc.build::<B>(&device)?;
        if let Some(w) = &self.net.weights {
            net = net.load(w)?.0;
        }
        let routes: Vec<usize> = if self.route == "all" {
            (0..net.num_routes()).collect()
        } else {
            let id = self.route.parse::<usize>().map_err(|_| format!("--route must be a route id or `all`, got `{}`", self.route))?;
            net.route(id)?;
            vec![id]
        };
        let (mut tensors, _) = read_safetensors(self.input)?;
        let shown = self.input.display();
        let input = match tensors.remove("input") {
            Some(t) => t,
            None if tensors.len() == 1 => tensors.into_values().next().expect("one tensor"),
            None => return Err(format!("{shown}: no tensor named `input` and {} tensors to choose from", tensors.len()).into()),
        };
        let [c, h, w] = net.layouts()[0].input;
        if input.shape.len() != 4 || input.shape[1..] != [c, h, w] {
            return Err(format!("{shown}: input has shape {:?}, the network takes [batch, {c}, {h}, {w}]", input.shape).into());
        }
        let images = Tensor::<B, 4>::from_data(TensorData::new(input.data, [input.shape[0], c, h, w]), &device);
        let mut out = Vec::new();
        for &id in &routes {
            let logits = net.forward(images.clone(), id)?;
            let shape = logits.dims().to_vec();
            let data = logits.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
            let key = if routes.len() == 1 && self.route != "all" { "logits".to_string() } else { format!("logits.{id}") };
            out.push((key, NamedTensor { shape, data, stored_as: "F32" }));
        }
        write_safetensors(self.output, &out, HashMap::from([("snnet.description".to_string(), self.desc.to_json())]))?;
        eprintln!("wrote {} logits tensor(s) to {}", out.len(), self.output.display());
        Ok(())
    }
}
