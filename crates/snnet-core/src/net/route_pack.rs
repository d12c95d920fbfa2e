//! Route packs: weight files that hold only what some routes use, for deployment.
//!
//! Which tensors a route uses is not restated per family: it is observed. A copy of the network
//! whose parameters are lazy (declared, never initialised) runs the route once on a blank image,
//! and the parameters that forward initialised are the route's. BatchNorm's running statistics,
//! which are buffers rather than parameters, go with their layer's weight.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
};

use burn::{
    module::{Module, ModuleMapper, ModuleVisitor, Param},
    tensor::Tensor,
};

use super::{weight_io::official_key_of, StitchedNet, FORMAT_VERSION};
use crate::{
    anchor::Anchor,
    error::{Error, Result},
    stitch::Stitch,
    weights::{read_weights, write_safetensors, KeyPath},
    Kernels,
};

/// The metadata entry of a route pack that lists its route ids (a JSON array).
pub const ROUTES_METADATA: &str = "snnet.routes";

/// What a route pack holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackSummary {
    /// Its route ids, ascending.
    pub routes: Vec<usize>,
    /// Tensors stored.
    pub tensors: usize,
    /// Parameter values stored (every tensor but BatchNorm's running statistics).
    pub parameters: u64,
    /// Buffer values stored (BatchNorm's running statistics).
    pub buffers: u64,
    /// Bytes of tensor data (f32).
    pub bytes: u64,
    /// Bytes of one pack per route, summed: what separate exports of the routes would take.
    pub separate_bytes: u64,
    /// Bytes of the whole network the pack is cut from (stitching layers merged), every parameter
    /// and buffer, counted from their declared shapes (a network opened from a pack included).
    pub network_bytes: u64,
}

/// Whether `key` names a buffer that travels with its layer's weight rather than a parameter.
fn is_running_statistic(key: &str) -> bool {
    key.ends_with(".running_mean") || key.ends_with(".running_var")
}

impl<B: Kernels, A: Anchor<B>, L: Stitch<B>> StitchedNet<B, A, L> {
    /// The official keys of every tensor the forwards of `routes` read, as a route pack stores
    /// them. Nothing of this network is read or initialised: the forwards run on a lazy copy.
    ///
    /// The network must be an inference one: with an autodiff backend, a forward moves BatchNorm
    /// statistics (shared with this network's), so that is an error (take `valid()` first).
    pub fn route_tensor_keys(&self, routes: &[usize]) -> Result<BTreeSet<String>> {
        Ok(self.tensor_keys_of_each(routes)?.into_iter().flatten().collect())
    }

    /// [`route_tensor_keys`](Self::route_tensor_keys) of each route on its own, in order.
    fn tensor_keys_of_each(&self, routes: &[usize]) -> Result<Vec<BTreeSet<String>>> {
        let device = parameter_device(self);
        if B::ad_enabled(&device) {
            return Err(Error::InvalidSettings {
                setting: "backend".into(),
                reason: "route packs are made from an inference network: take the training network's `valid()` first".into(),
            });
        }
        let lazy = self.clone().map(&mut Lazify::default());
        routes
            .iter()
            .map(|&id| {
                let route = self.runnable_route(id)?;
                // A fresh lazy copy per route (cloning keeps parameters lazy): what this forward
                // initialises is this route's.
                let copy = lazy.clone();
                let [c, h, w] = self.layouts[route.comb_id[0]].input;
                copy.forward(Tensor::zeros([1, c, h, w], &device), id)?;
                let seen = ParameterFacts::of(&copy, &self.space);
                let used: BTreeSet<&str> = seen.iter().filter(|p| p.initialised).map(|p| p.key.as_str()).collect();
                // A running statistic goes with its layer's weight.
                let taken = |p: &ParameterFact| match is_running_statistic(&p.key) {
                    true => p.key.rsplit_once('.').is_some_and(|(layer, _)| used.contains(format!("{layer}.weight").as_str())),
                    false => p.initialised,
                };
                Ok(seen.iter().filter(|p| taken(p)).map(|p| p.key.clone()).collect())
            })
            .collect()
    }

    /// Writes a route pack: the tensors `routes` use (each shared tensor once), the network's
    /// description, the route ids ([`ROUTES_METADATA`]) and `extra` in the metadata. SN-Netv2's
    /// LoRA stitching layers are stored merged, as inference runs them. Unknown routes, routes
    /// this network does not hold, and an empty list are errors.
    pub fn save_route_pack(&self, routes: &[usize], path: &Path, extra: HashMap<String, String>) -> Result<PackSummary> {
        let (net, summary, keys) = self.planned_pack(routes, &path.display().to_string())?;
        let tensors = net.named_tensors_where(&|k| keys.contains(k));
        let mut meta = extra;
        meta.insert("format".into(), "snnet".into());
        meta.insert("format_version".into(), FORMAT_VERSION.into());
        meta.insert("snnet.network".into(), serde_json::to_string(&net.description()).expect("serialisable"));
        meta.insert(ROUTES_METADATA.into(), serde_json::to_string(&summary.routes).expect("serialisable"));
        write_safetensors(path, &tensors, meta)?;
        Ok(summary)
    }

    /// What [`save_route_pack`](Self::save_route_pack) would write for `routes`, without writing
    /// anything or reading any tensor: e.g. to compare a pack with separate exports.
    pub fn route_pack_summary(&self, routes: &[usize]) -> Result<PackSummary> {
        Ok(self.planned_pack(routes, "route pack")?.1)
    }

    /// The network a pack of `routes` is written from (stitching layers merged), its summary and
    /// its tensors' keys.
    fn planned_pack(&self, routes: &[usize], source: &str) -> Result<(Self, PackSummary, BTreeSet<String>)> {
        let routes = self.pack_route_ids(routes, source)?;
        let net = self.clone().merged_for_inference();
        let each = net.tensor_keys_of_each(&routes)?;
        let keys: BTreeSet<String> = each.iter().flatten().cloned().collect();
        let facts = ParameterFacts::of(&net, &net.space);
        let values = |wanted: &dyn Fn(&str) -> bool| -> u64 { facts.iter().filter(|p| wanted(&p.key)).map(|p| p.values).sum() };
        let parameters = values(&|k| keys.contains(k) && !is_running_statistic(k));
        let buffers = values(&|k| keys.contains(k) && is_running_statistic(k));
        let separate_bytes = each.iter().map(|route_keys| 4 * values(&|k| route_keys.contains(k))).sum();
        let summary = PackSummary {
            routes,
            tensors: keys.len(),
            parameters,
            buffers,
            bytes: 4 * (parameters + buffers),
            separate_bytes,
            network_bytes: 4 * values(&|_| true),
        };
        Ok((net, summary, keys))
    }

    /// Loads a route pack written by [`save_route_pack`](Self::save_route_pack) into this network,
    /// which must have the pack's description (build it unmaterialised,
    /// [`unmaterialized`](Self::unmaterialized), so that the parts no route of the pack uses never
    /// take memory). Afterwards the network runs the pack's routes, under their ids in the whole
    /// space ([`available_routes`](Self::available_routes)); the others are an error. Missing,
    /// mis-shaped and unexpected tensors, and missing or corrupt route lists, are errors naming
    /// the file. Returns the network and the file's metadata.
    pub fn load_route_pack(self, path: &Path) -> Result<(Self, HashMap<String, String>)> {
        let shown = path.display().to_string();
        let fail = |reason: String| Error::WeightFile { path: shown.clone(), reason };
        let mut loaded = read_weights(path)?;
        let listed = loaded
            .metadata
            .get(ROUTES_METADATA)
            .ok_or_else(|| fail(format!("not a route pack: no `{ROUTES_METADATA}` metadata (a whole network's file loads with `load`)")))?;
        let routes: Vec<usize> =
            serde_json::from_str(listed).map_err(|e| fail(format!("corrupt `{ROUTES_METADATA}` metadata {listed:?}: {e}")))?;
        self.check_description(&loaded.metadata, &shown)?;
        let routes = self.pack_route_ids(&routes, &shown)?;
        let keys = self.route_tensor_keys(&routes)?;
        // Missing and mis-shaped tensors of the routes are the importer's errors, naming each.
        let space = self.space.clone();
        let mut net = crate::weights::import_tensors_where::<B, _>(
            self,
            &mut loaded.tensors,
            &|p: &str| official_key_of(&space, p),
            &|k: &str| keys.contains(k),
            &shown,
        )?;
        if !loaded.tensors.is_empty() {
            let some: Vec<String> = loaded.tensors.keys().take(5).map(|k| format!("`{k}`")).collect();
            return Err(fail(format!("{} tensor(s) that none of routes {routes:?} uses, e.g. {}", loaded.tensors.len(), some.join(", "))));
        }
        net.selected = routes[0];
        net.pack_routes = Some(routes);
        Ok((net, loaded.metadata))
    }

    /// `routes` sorted, without repeats, each one this network can run; at least one.
    fn pack_route_ids(&self, routes: &[usize], source: &str) -> Result<Vec<usize>> {
        if routes.is_empty() {
            return Err(Error::WeightFile { path: source.into(), reason: "a route pack needs at least one route".into() });
        }
        let ids: BTreeSet<usize> = routes.iter().copied().collect();
        for &id in &ids {
            self.runnable_route(id)?;
        }
        Ok(ids.into_iter().collect())
    }
}

/// Replaces every parameter with a lazy one of the same id, shape and device whose
/// initialisation, if a forward ever asks for it, gives zeros. BatchNorm's running statistics are
/// left as they are: burn shares them between a module and its clones, so what a mapper gives
/// them is written into the original too.
#[derive(Default)]
struct Lazify {
    path: KeyPath,
}

impl<B: burn::tensor::backend::Backend> ModuleMapper<B> for Lazify {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if is_running_statistic(&self.path.torch_key().0) {
            return param;
        }
        let (shape, device) = (param.lazy_shape(), param.lazy_device());
        let init_shape = shape.clone();
        Param::uninitialized(param.id, move |device, _| Tensor::zeros(init_shape.clone(), device), device, false, shape)
    }
}

/// What a route pack needs to know of one parameter, read without initialising it.
struct ParameterFact {
    /// Its official key.
    key: String,
    /// Values, from its declared shape.
    values: u64,
    /// Whether it has been initialised.
    initialised: bool,
}

/// Collects a [`ParameterFact`] for every parameter of a network.
struct ParameterFacts<'a> {
    path: KeyPath,
    space: &'a crate::space::StitchSpace,
    facts: Vec<ParameterFact>,
}

impl<'a> ParameterFacts<'a> {
    fn of<B: burn::tensor::backend::Backend, M: Module<B>>(module: &M, space: &'a crate::space::StitchSpace) -> Vec<ParameterFact> {
        let mut visitor = Self { path: KeyPath::default(), space, facts: Vec::new() };
        module.visit(&mut visitor);
        visitor.facts
    }
}

impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for ParameterFacts<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let (key, _) = self.path.torch_key();
        let key = official_key_of(self.space, &key);
        self.facts.push(ParameterFact { key, values: param.lazy_shape().num_elements() as u64, initialised: param.is_initialized() });
    }
}

/// The device of `module`'s first parameter, read without initialising it (burn's `devices()`
/// initialises every parameter); the default device for a module without parameters.
fn parameter_device<B: burn::tensor::backend::Backend, M: Module<B>>(module: &M) -> B::Device {
    struct First<B: burn::tensor::backend::Backend>(Option<B::Device>);
    impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for First<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0.is_none() {
                self.0 = Some(param.lazy_device());
            }
        }
    }
    let mut first = First::<B>(None);
    module.visit(&mut first);
    first.0.unwrap_or_default()
}
