//! `snnet train`: joint training of every route (or the listed ones) on a dataset folder, with
//! checkpoints and exact resume.

use burn::{backend::Autodiff, module::AutodiffModule, tensor::Tensor};
use snnet::{
    train::{
        data::Split, AdamWConfig, Augment, Cluster, Distillation, FlopsGroupedSampler, ListSampler, RoutePolicy, RouteSampler, RunOptions,
        StepConfig, Stepping, Teacher, TrainConfig,
    },
    workflow::{median_after, open_dataset, train_with_progress},
    Description,
};
use snnet::{AutodiffKernels, Kernels};

use crate::{
    args::{NetworkArgs, TrainArgs},
    commands::{build_net_with_metadata, BoxError},
};

/// `snnet train`.
pub struct Train<'a> {
    /// The network.
    pub desc: Description,
    /// Shared flags.
    pub net: &'a NetworkArgs,
    /// Training flags.
    pub args: &'a TrainArgs,
}

impl Train<'_> {
    /// This process's place in a multi-machine run: all four flags, or none.
    fn cluster(&self) -> Result<Option<Cluster>, BoxError> {
        let a = self.args;
        match (a.num_nodes, a.node_id, &a.orchestrator, &a.node_address) {
            (None, None, None, None) => Ok(None),
            (Some(nodes), Some(node), Some(orchestrator), Some(node_address)) => {
                Ok(Some(Cluster { node, nodes, orchestrator: orchestrator.clone(), node_address: node_address.clone() }))
            }
            _ => {
                let missing: Vec<&str> = [
                    ("--num-nodes", a.num_nodes.is_none()),
                    ("--node-id", a.node_id.is_none()),
                    ("--orchestrator", a.orchestrator.is_none()),
                    ("--node-address", a.node_address.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, absent)| absent.then_some(flag))
                .collect();
                Err(format!(
                    "a multi-machine run needs --num-nodes, --node-id, --orchestrator and --node-address; missing {}",
                    missing.join(", ")
                )
                .into())
            }
        }
    }

    /// The run's settings from the flags.
    fn config(&self) -> TrainConfig {
        let a = self.args;
        TrainConfig {
            epochs: a.epochs,
            batch_size: a.batch,
            peers: a.devices * a.num_nodes.unwrap_or(1),
            route_policy: if a.route_policy == "shared" { RoutePolicy::Shared } else { RoutePolicy::PerPeer },
            lr: a.lr,
            warmup_lr: a.warmup_lr,
            min_lr: a.min_lr,
            warmup_epochs: a.warmup_epochs,
            stepping: if a.lr_stepping == "epoch" { Stepping::PerEpoch } else { Stepping::PerStep },
            step: StepConfig {
                label_smoothing: a.smoothing,
                anchor_lr_scale: if a.freeze_anchors { 0.0 } else { a.anchor_lr_scale },
                stitch_lr_scale: a.stitch_lr_scale,
            },
            adamw: AdamWConfig { weight_decay: a.weight_decay, clip_grad_norm: a.clip_grad, ..Default::default() },
            augment: (!a.no_augment).then(Augment::default),
            seed: a.train_seed,
        }
    }

    fn distillation(&self) -> Option<Distillation> {
        match self.args.distill.as_deref() {
            Some("hard") => Some(Distillation::Hard { alpha: self.args.distill_alpha }),
            Some(_) => Some(Distillation::Soft { alpha: self.args.distill_alpha, tau: self.args.distill_tau }),
            None => None,
        }
    }

    fn train<B: AutodiffKernels>(self, device: B::Device) -> Result<(), BoxError> {
        let (mut net, mut meta) = build_net_with_metadata::<B>(&self.desc, self.net, &device)?;
        if let Some(rate) = self.args.drop_path {
            for anchor in &mut net.anchors {
                anchor.set_drop_path_rate(rate)?;
            }
        }
        let dataset = open_dataset(&self.args.data.data, Split::Train, &net.layouts()[0])?;
        if let Some(routes) = &self.args.routes {
            for &id in routes {
                net.route(id)?;
            }
        }
        let seed = self.args.train_seed;
        // `--routes`, or every route joint training samples (all but the one a two-way space
        // leaves out, as officially).
        let routes = self.args.routes.clone().unwrap_or_else(|| net.space().trained_routes());
        let mut sampler: Box<dyn RouteSampler> = match self.args.sampler.as_str() {
            "flops-grouped" => {
                let sampler = FlopsGroupedSampler::over_routes(&net, &routes, self.args.flops_gap, self.args.flops_sampling_k, seed)?;
                eprintln!(
                    "FLOPs-grouped sampling: {} groups ({})",
                    sampler.groups().len(),
                    sampler.groups().iter().map(|g| g.len().to_string()).collect::<Vec<_>>().join(", ")
                );
                Box::new(sampler)
            }
            _ => Box::new(ListSampler::new(routes, seed)),
        };
        // The teacher is a frozen copy of the starting weights (the same file on resume).
        let teacher_route = self.args.teacher_route.unwrap_or(net.anchors.len().saturating_sub(1));
        net.route(teacher_route)?;
        let teacher_net = net.valid();
        let teacher_logits = move |x: Tensor<B::InnerBackend, 4>| teacher_net.forward(x, teacher_route);
        let teacher = self.distillation().map(|kind| Teacher::<B> { logits: &teacher_logits, kind });
        let config = self.config();
        let options = RunOptions {
            checkpoint_dir: self.args.checkpoint_dir.clone(),
            checkpoint_every: self.args.checkpoint_every,
            resume: self.args.resume,
            stop_after_steps: self.args.max_steps,
            log_every: self.args.log_every as usize,
            peer_timeout: std::time::Duration::from_secs_f64(self.args.peer_timeout.max(0.001)),
            cluster: self.cluster()?,
        };
        if options.cluster.is_some() {
            eprintln!(
                "warning: burn-collective 0.21 completes only the first exchange between processes and then waits \
                 (docs/design.md, \"Data parallel\"); this run will stop with an error after --peer-timeout"
            );
        }
        eprintln!(
            "training {} routes on {} images: {} epoch(s) of {} steps, batch {} over {} peer(s){}",
            self.args.routes.as_ref().map_or(net.num_routes(), Vec::len),
            dataset.len(),
            config.epochs,
            config.steps_per_epoch(dataset.len()),
            config.batch_size,
            config.peers,
            match (config.peers, config.route_policy) {
                (1, _) => "",
                (_, RoutePolicy::PerPeer) => ", a route per peer",
                (_, RoutePolicy::Shared) => ", one route per step",
            }
        );
        let (net, report, step_seconds) =
            train_with_progress(net, dataset.as_ref(), sampler.as_mut(), &config, teacher.as_ref(), &options)?;
        if report.resumed_from > 0 {
            eprintln!("resumed from step {}", report.resumed_from);
        }
        for (i, loss) in report.epoch_losses.iter().enumerate() {
            eprintln!("epoch loss {}: {loss:.4}", i + 1);
        }
        eprintln!("{} steps, {:.0} images/s over {:.1} s", report.steps, report.images_per_s, report.seconds);
        if let Some(median) = median_after(&step_seconds, 5) {
            // The figure tools/compare_train.sh reads: steps after 5 warm-up steps, data loading excluded.
            eprintln!(
                "{}",
                serde_json::json!({"impl": "snnet", "batch": config.batch_size, "steps": step_seconds.len() - 5,
                                   "step_ms_median": median * 1e3, "images_per_s": config.batch_size as f64 / median})
            );
        }
        meta.retain(|k, _| !k.starts_with("format") && k != "snnet.network");
        meta.insert("snnet.stitching".into(), "trained".into());
        meta.insert("snnet.train".into(), serde_json::to_string(&config).expect("serialisable"));
        net.save(&self.args.output, meta)?;
        eprintln!("wrote {}", self.args.output.display());
        Ok(())
    }
}

impl snnet::backend::BackendTask for Train<'_> {
    type Output = Result<(), BoxError>;

    fn run<B: Kernels>(self, device: B::Device, _name: &'static str) -> Self::Output {
        self.train::<Autodiff<B>>(device)
    }
}
