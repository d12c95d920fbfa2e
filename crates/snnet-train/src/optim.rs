//! AdamW as timm builds it for the official recipes, over any burn module on an autodiff backend:
//! decoupled weight decay except on biases, norms and other 1-D parameters, `cls_token` and
//! `pos_embed`; a learning-rate scale per parameter (e.g. 0.1 for anchors as the Swin recipe);
//! frozen parameters; gradient clipping by global norm. PyTorch's defaults are stated explicitly:
//! betas (0.9, 0.999), eps 1e-8, weight decay 0.05 (timm's recipe; PyTorch's own default is 0.01).
//!
//! Only parameters that received a gradient in the step are touched — moments, step counts and
//! decay included — so a step on one route leaves every other route's parameters exactly as they
//! were (the official run under torch 1.x let momentum and decay move them; corrected here).
//! State is kept by parameter key, so it can be saved and matched by name on resume.

use std::collections::HashMap;

use burn::{
    module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId},
    tensor::{
        backend::{AutodiffBackend, Backend},
        Tensor, TensorData,
    },
};
use snnet_core::weights::KeyPath;

use crate::scalar::DeviceScalar;

/// Hyper-parameters of [`AdamW`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay (PyTorch default 0.9).
    pub beta1: f64,
    /// Second-moment decay (PyTorch default 0.999).
    pub beta2: f64,
    /// Added to the denominator (PyTorch default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay (timm recipes 0.05).
    pub weight_decay: f64,
    /// Clip the global gradient norm of each step to this value (`None`: no clipping).
    pub clip_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05, clip_grad_norm: None }
    }
}

/// How one parameter is treated, decided from its key and rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamRule {
    /// Multiplies the step's learning rate (0 freezes the parameter).
    pub lr_scale: f64,
    /// Whether weight decay applies.
    pub decay: bool,
}

/// timm's rule: no decay on 1-D parameters (biases, norm weights), on `*.bias`, `cls_token` and
/// `pos_embed`.
pub fn timm_decays(key: &str, rank: usize) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    !(rank <= 1 || last == "bias" || last == "cls_token" || last == "pos_embed")
}

/// The gradients of a step, flattened, by parameter: from one backward pass, or summed over the
/// peers of a data-parallel step.
pub struct Grads<B: AutodiffBackend> {
    by_param: HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> Grads<B> {
    /// The gradients `backward` left for the parameters of `module`.
    pub fn from_backward<M: Module<B>>(grads: &B::Gradients, module: &M) -> Self {
        struct Collect<'a, B: AutodiffBackend> {
            grads: &'a B::Gradients,
            by_param: HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some(g) = param.val().grad(self.grads) {
                    let n = g.shape().num_elements();
                    self.by_param.insert(param.id, g.reshape([n]));
                }
            }
        }
        let mut collect = Collect::<B> { grads, by_param: HashMap::new() };
        module.visit(&mut collect);
        Self { by_param: collect.by_param }
    }

    /// Gradients given by parameter (flattened), e.g. as the peers of a data-parallel step
    /// summed them.
    pub fn from_flat(by_param: HashMap<ParamId, Tensor<B::InnerBackend, 1>>) -> Self {
        Self { by_param }
    }

    /// The flattened gradient of parameter `id`, if it received one.
    pub fn get(&self, id: &ParamId) -> Option<&Tensor<B::InnerBackend, 1>> {
        self.by_param.get(id)
    }
}

/// Moments and step count of one parameter, on the inner backend, flattened.
#[derive(Clone)]
struct Moments<B: Backend> {
    step: u64,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// AdamW with per-parameter state kept by key (a clone shares nothing mutable: every peer of a
/// data-parallel run steps its own copy).
#[derive(Clone)]
pub struct AdamW<B: AutodiffBackend> {
    config: AdamWConfig,
    state: HashMap<String, Moments<B::InnerBackend>>,
}

/// What one optimiser step did; `B` is the inner (non-autodiff) backend.
#[derive(Clone, Debug)]
pub struct StepReport<B: Backend> {
    /// Parameters updated (those with a gradient and a non-zero learning-rate scale).
    pub updated: usize,
    /// Global gradient norm before clipping, left on the device until read.
    pub grad_norm: DeviceScalar<B>,
}

impl<B: AutodiffBackend> AdamW<B> {
    /// A fresh optimiser.
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, state: HashMap::new() }
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The same state on `device` (for a peer on another device).
    pub fn to_device(&self, device: &burn::tensor::Device<B::InnerBackend>) -> Self {
        let state = self
            .state
            .iter()
            .map(|(key, s)| (key.clone(), Moments { step: s.step, m: s.m.clone().to_device(device), v: s.v.clone().to_device(device) }))
            .collect();
        Self { config: self.config.clone(), state }
    }

    /// Keys of the parameters that have optimiser state.
    pub fn state_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.state.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Moments and step of parameter `key` as host values (`exp_avg`, `exp_avg_sq`, step), for
    /// checkpoints.
    pub fn export_state(&self, key: &str) -> Option<(Vec<f32>, Vec<f32>, u64)> {
        let s = self.state.get(key)?;
        let host = |t: &Tensor<B::InnerBackend, 1>| t.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        Some((host(&s.m), host(&s.v), s.step))
    }

    /// Restores the state of parameter `key` (from [`export_state`](Self::export_state)).
    pub fn import_state(
        &mut self,
        key: &str,
        exp_avg: Vec<f32>,
        exp_avg_sq: Vec<f32>,
        step: u64,
        device: &burn::tensor::Device<B::InnerBackend>,
    ) {
        let (n, n2) = (exp_avg.len(), exp_avg_sq.len());
        let m = Tensor::from_data(TensorData::new(exp_avg, [n]), device);
        let v = Tensor::from_data(TensorData::new(exp_avg_sq, [n2]), device);
        self.state.insert(key.to_string(), Moments { step, m, v });
    }

    /// One step on `module` with `grads` at learning rate `lr`; `rule` gives each parameter's
    /// treatment from its key (`key_of` maps burn's key to the name used for state and rules).
    pub fn step<M: Module<B>>(
        &mut self,
        module: M,
        grads: &Grads<B>,
        lr: f64,
        key_of: &dyn Fn(&str) -> String,
        rule: &dyn Fn(ParamId, &str, usize) -> ParamRule,
    ) -> (M, StepReport<B::InnerBackend>) {
        // The global norm and the clipping factor stay on the device: the step reads nothing back.
        let mut squares = SquaredNorms::<B> { grads, sums: Vec::new() };
        module.visit(&mut squares);
        let grad_norm = match squares.sums.is_empty() {
            true => Tensor::zeros([1], &module.devices().into_iter().next().unwrap_or_default()),
            false => Tensor::cat(squares.sums, 0).sum().sqrt(),
        };
        // torch.nn.utils.clip_grad_norm_: gradients times min(1, max / (norm + 1e-6)).
        let clip = self.config.clip_grad_norm.map(|max| grad_norm.clone().add_scalar(1e-6).recip().mul_scalar(max).clamp_max(1.0));
        let mut mapper = Update { optimizer: self, grads, lr, clip, key_of, rule, path: KeyPath::default(), updated: 0 };
        let module = module.map(&mut mapper);
        let updated = mapper.updated;
        (module, StepReport { updated, grad_norm: DeviceScalar::new(grad_norm) })
    }
}

/// The squared norm of every parameter's gradient, as one-element device tensors.
struct SquaredNorms<'a, B: AutodiffBackend> {
    grads: &'a Grads<B>,
    sums: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorms<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get(&param.id) {
            self.sums.push(g.clone().powi_scalar(2).sum());
        }
    }
}

struct Update<'a, B: AutodiffBackend> {
    optimizer: &'a mut AdamW<B>,
    grads: &'a Grads<B>,
    lr: f64,
    /// The clipping factor `[1]`, on the device (`None`: no clipping).
    clip: Option<Tensor<B::InnerBackend, 1>>,
    key_of: &'a dyn Fn(&str) -> String,
    rule: &'a dyn Fn(ParamId, &str, usize) -> ParamRule,
    path: KeyPath,
    updated: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (module_key, _) = self.path.torch_key();
        let key = (self.key_of)(&module_key);
        let rule = (self.rule)(param.id, &key, D);
        let Some(grad) = self.grads.get(&param.id) else { return param };
        if rule.lr_scale == 0.0 {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let c = &self.optimizer.config;
        let lr = self.lr * rule.lr_scale;
        let dims = tensor.dims();
        let requires_grad = tensor.is_require_grad();
        let numel: usize = dims.iter().product();
        let mut p = tensor.inner();
        let g: Tensor<B::InnerBackend, 1> = match &self.clip {
            Some(clip) => grad.clone().mul(clip.clone().expand([numel])),
            None => grad.clone(),
        };
        let device = p.device();
        let state = self.optimizer.state.entry(key).or_insert_with(|| Moments {
            step: 0,
            m: Tensor::zeros([numel], &device),
            v: Tensor::zeros([numel], &device),
        });
        state.step += 1;
        if rule.decay && c.weight_decay != 0.0 {
            p = p.mul_scalar(1.0 - lr * c.weight_decay);
        }
        state.m = state.m.clone().mul_scalar(c.beta1).add(g.clone().mul_scalar(1.0 - c.beta1));
        state.v = state.v.clone().mul_scalar(c.beta2).add(g.powi_scalar(2).mul_scalar(1.0 - c.beta2));
        let bias1 = 1.0 - c.beta1.powi(state.step as i32);
        let bias2 = 1.0 - c.beta2.powi(state.step as i32);
        // PyTorch: p -= lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps)
        let denom = state.v.clone().sqrt().div_scalar(bias2.sqrt()).add_scalar(c.eps);
        let delta = state.m.clone().div(denom).mul_scalar(lr / bias1);
        let p = p.sub(delta.reshape(dims));
        self.updated += 1;
        let mut value = Tensor::<B, D>::from_inner(p);
        if requires_grad {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}
