//! Keeping a latency target while the machine's load changes: [`RouteController`] runs the most
//! accurate route predicted to meet the target and moves between routes as the load does.
//!
//! Each route's latency is measured once on an idle machine (`snnet bench`). After every forward
//! the caller reports how long it took ([`RouteController::observe`]), or lets
//! [`RouteController::run`] time it with a [`Clock`]. The controller keeps the slowdown ratios
//! (observed / idle latency of the route that ran) of the last few forwards; the target's
//! percentile of them is the load estimate, and a route's predicted latency is its idle latency
//! times the estimate, so what one route shows applies to every route. It moves down as soon as the
//! running route is predicted over the target (to the most accurate route predicted to fit), and up
//! one step of the frontier at a time, only when the next route is predicted to fit with headroom
//! for a sustained run of forwards. Load does not slow every route alike (on a busy CPU the longer
//! forwards suffer more), so predictions across routes are rough: after a switch the window starts
//! again on the new route, and a move up that proves over the target soon after (a failed probe)
//! doubles the wait before the next one. The decisions are pure logic: no clock is read outside
//! [`RouteController::run`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::error::{Error as CoreError, Result as CoreResult};
use crate::select::{merge_metrics, pareto_frontier, parse_metric_lines, Goal, RouteMetrics};

/// Bytes in the MiB of the bench tables' `*_mb` fields.
const BYTES_PER_MB: f64 = (1u64 << 20) as f64;

/// One route the controller may run, with what is known of it on an idle machine.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteCandidate {
    /// Route id.
    pub cfg_id: usize,
    /// Latency of one forward on an idle machine, milliseconds.
    pub latency_ms: f64,
    /// Accuracy (or any quality score): higher is better.
    pub accuracy: f64,
    /// Memory the route needs, bytes, if known.
    pub memory_bytes: Option<u64>,
    /// FLOPs of one forward, if known.
    pub flops: Option<u64>,
}

impl RouteCandidate {
    /// A candidate without memory or FLOPs figures.
    pub fn new(cfg_id: usize, latency_ms: f64, accuracy: f64) -> Self {
        Self { cfg_id, latency_ms, accuracy, memory_bytes: None, flops: None }
    }

    /// The candidate in a metrics table row (see [`candidates_from_jsonl`]): latency from
    /// `latency_ms`, accuracy from the metric named `accuracy` (e.g. `acc1`), FLOPs from `flops`,
    /// memory from the weights (`weight_mb`, as `snnet bench` writes it, or `memory_mb`) plus the
    /// activations' peak (`peak_activation_mb`, where measured), in MiB. `None` when the row lacks
    /// the latency or the accuracy; their values are checked by [`RouteController::new`].
    pub fn from_metrics(route: &RouteMetrics, accuracy: &str) -> Option<Self> {
        let weights_mb = route.get("weight_mb").or_else(|| route.get("memory_mb"));
        let memory_mb = weights_mb.map(|w| w + route.get("peak_activation_mb").unwrap_or(0.0));
        let whole = |v: f64| (v >= 0.0).then(|| v.round() as u64);
        Some(Self {
            cfg_id: route.cfg_id,
            latency_ms: *route.values.get("latency_ms")?,
            accuracy: *route.values.get(accuracy)?,
            memory_bytes: memory_mb.and_then(|mb| whole(mb * BYTES_PER_MB)),
            flops: route.get("flops").and_then(whole),
        })
    }
}

/// Candidates from a latency table (`snnet bench --output`: JSON lines with `cfg_id`, `batch`,
/// `latency_ms`, `flops`, `weight_mb`, …) and an evaluation results table (JSON lines with `cfg_id`
/// and the `accuracy` metric, e.g. `acc1`), read with [`parse_metric_lines`]. Only the latency
/// lines of `batch` are read (every line when `None`); routes missing from either table are left
/// out. `*_source` names each text in errors (e.g. its path).
pub fn candidates_from_jsonl(
    latency: &str,
    latency_source: &str,
    batch: Option<usize>,
    results: &str,
    results_source: &str,
    accuracy: &str,
) -> CoreResult<Vec<RouteCandidate>> {
    let of_batch = |line: &serde_json::Value| batch.is_none_or(|b| line["batch"].as_u64() == Some(b as u64));
    let timings = parse_metric_lines(latency, latency_source, &of_batch)?;
    let mut scores = parse_metric_lines(results, results_source, &|_| true)?;
    // Only the accuracy: a results file may repeat costs that the latency table also holds.
    for row in &mut scores {
        row.values.retain(|name, _| name == accuracy);
    }
    let candidates: Vec<RouteCandidate> =
        merge_metrics(&timings, &[scores]).iter().filter_map(|route| RouteCandidate::from_metrics(route, accuracy)).collect();
    if candidates.is_empty() {
        let of_batch = batch.map(|b| format!(" (batch {b})")).unwrap_or_default();
        return Err(CoreError::Metric(format!(
            "no route has both `latency_ms` in {latency_source}{of_batch} and `{accuracy}` in {results_source}"
        )));
    }
    Ok(candidates)
}

/// What the controller must keep: `latency_ms` at `percentile`, within optional caps.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyTarget {
    /// Largest allowed latency at `percentile`, milliseconds.
    pub latency_ms: f64,
    /// Which percentile of forwards must stay within `latency_ms`, in (0, 100] (95: p95).
    pub percentile: f64,
    /// Candidates needing more memory (bytes), or whose memory is unknown, are dropped.
    pub max_memory_bytes: Option<u64>,
    /// Candidates with more FLOPs, or whose FLOPs are unknown, are dropped.
    pub max_flops: Option<u64>,
    /// When no route is predicted to meet the target: run the fastest and report the target as not
    /// met ([`RouteController::target_met`]) instead of refusing to start.
    pub best_effort: bool,
}

impl LatencyTarget {
    /// `percentile` of forwards within `latency_ms`; no caps, not best effort.
    pub fn new(latency_ms: f64, percentile: f64) -> Self {
        Self { latency_ms, percentile, max_memory_bytes: None, max_flops: None, best_effort: false }
    }

    /// Whether `candidate` is within the memory and FLOPs caps.
    fn admits(&self, candidate: &RouteCandidate) -> bool {
        let within = |cap: Option<u64>, value: Option<u64>| cap.is_none_or(|cap| value.is_some_and(|v| v <= cap));
        within(self.max_memory_bytes, candidate.memory_bytes) && within(self.max_flops, candidate.flops)
    }
}

/// How quickly the controller reacts. The defaults suit forwards of a few to a few hundred
/// milliseconds: a down move after two slow forwards out of 32 at p95, an up move after 16.
#[derive(Clone, Debug, PartialEq)]
pub struct ControllerSettings {
    /// Slowdown ratios kept: those of the most recent forwards.
    pub window: usize,
    /// Ratios the window must hold before any switch (at least 1, at most `window`).
    pub min_samples: usize,
    /// Moving up needs the more accurate route predicted within `target × (1 − headroom)`; in [0, 1).
    pub headroom: f64,
    /// Consecutive forwards that must predict a more accurate route to fit with headroom before
    /// moving up to it (at least 1).
    pub up_after: usize,
    /// Forwards of a newly chosen route before the next switch.
    pub cooldown: usize,
    /// A route taken up that proves over the target within `window` forwards was a failed probe:
    /// the wait before the next move up doubles, up to `max_backoff` × `up_after` (at least 1);
    /// a route taken up that holds for `window` forwards resets the wait to `up_after`.
    pub max_backoff: usize,
    /// Switches remembered ([`RouteController::switches`]): the most recent ones.
    pub history: usize,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self { window: 32, min_samples: 4, headroom: 0.15, up_after: 16, cooldown: 8, max_backoff: 8, history: 256 }
    }
}

/// Why the controller switched routes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SwitchReason {
    /// The route it left was predicted over the target.
    OverTarget {
        /// That route's predicted latency, milliseconds.
        predicted_ms: f64,
    },
    /// The more accurate route it took was predicted to fit with headroom for long enough.
    Headroom {
        /// That route's predicted latency, milliseconds.
        predicted_ms: f64,
    },
}

/// One switch between routes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouteSwitch {
    /// The observation after which it switched, counted from 0.
    pub request: u64,
    /// Route id it left.
    pub from: usize,
    /// Route id it took.
    pub to: usize,
    /// Why.
    pub reason: SwitchReason,
}

/// Why a controller cannot be built or an observation is refused. Each variant names its culprit.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum ControllerError {
    /// An empty candidate list.
    #[error("no candidate routes")]
    NoCandidates,
    /// An idle latency that is not a positive finite number.
    #[error("route {cfg_id}: latency {latency_ms} ms is not a positive finite number")]
    InvalidLatency {
        /// The route.
        cfg_id: usize,
        /// Its latency.
        latency_ms: f64,
    },
    /// An accuracy that is not a finite number.
    #[error("route {cfg_id}: accuracy {accuracy} is not a finite number")]
    InvalidAccuracy {
        /// The route.
        cfg_id: usize,
        /// Its accuracy.
        accuracy: f64,
    },
    /// A route listed twice.
    #[error("route {cfg_id} is listed twice among the candidates")]
    DuplicateRoute {
        /// The route.
        cfg_id: usize,
    },
    /// A percentile outside (0, 100].
    #[error("percentile {percentile} is outside (0, 100]")]
    InvalidPercentile {
        /// The percentile given.
        percentile: f64,
    },
    /// A target latency that is not a positive finite number.
    #[error("target latency {latency_ms} ms is not a positive finite number")]
    InvalidTarget {
        /// The target given.
        latency_ms: f64,
    },
    /// A setting the controller cannot work with.
    #[error("controller setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The field of [`ControllerSettings`].
        setting: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// Caps that every candidate exceeds (or whose figure it lacks).
    #[error("every route is over the caps: {}", caps_text(*.max_memory_bytes, *.smallest_memory_bytes, *.max_flops, *.smallest_flops))]
    AllOverCaps {
        /// The memory cap, bytes.
        max_memory_bytes: Option<u64>,
        /// The least memory of any candidate, bytes.
        smallest_memory_bytes: Option<u64>,
        /// The FLOPs cap.
        max_flops: Option<u64>,
        /// The fewest FLOPs of any candidate.
        smallest_flops: Option<u64>,
    },
    /// Not even the fastest route meets the target on an idle machine (and not best effort).
    #[error(
        "no route meets p{percentile} ≤ {target_ms} ms: the fastest, route {fastest}, takes {fastest_ms} ms on an idle machine \
         (best-effort mode runs it anyway)"
    )]
    NoRouteMeetsTarget {
        /// The fastest route within the caps.
        fastest: usize,
        /// Its idle latency, milliseconds.
        fastest_ms: f64,
        /// The target, milliseconds.
        target_ms: f64,
        /// The target's percentile.
        percentile: f64,
    },
    /// An observation of a route that is not among the candidates.
    #[error("observed route {cfg_id} is not among the candidates")]
    UnknownRoute {
        /// The route.
        cfg_id: usize,
    },
    /// An observed duration that is negative or not finite.
    #[error("observed duration {elapsed_ms} ms of route {cfg_id} is negative or not finite")]
    InvalidObservation {
        /// The route.
        cfg_id: usize,
        /// The duration reported.
        elapsed_ms: f64,
    },
}

/// The caps of [`ControllerError::AllOverCaps`] and the smallest figures available.
fn caps_text(max_memory: Option<u64>, smallest_memory: Option<u64>, max_flops: Option<u64>, smallest_flops: Option<u64>) -> String {
    let cap = |name: &str, max: Option<u64>, smallest: Option<u64>| {
        max.map(|max| match smallest {
            Some(s) => format!("{name} ≤ {max} (smallest route: {s})"),
            None => format!("{name} ≤ {max} (no route states it)"),
        })
    };
    [cap("memory bytes", max_memory, smallest_memory), cap("FLOPs", max_flops, smallest_flops)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
}

/// A source of monotonic time for [`RouteController::run`].
pub trait Clock {
    /// Time since an arbitrary fixed origin; never decreases.
    fn now(&self) -> Duration;
}

/// The system's monotonic clock ([`Instant`]).
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Keeps a latency target under a changing load by switching between routes of the Pareto frontier
/// (latency against accuracy); see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct RouteController {
    target: LatencyTarget,
    settings: ControllerSettings,
    /// Within the caps and not dominated, by idle latency; each strictly more accurate than the last.
    frontier: Vec<RouteCandidate>,
    /// Idle latency of every candidate, for observations of routes off the frontier.
    idle_ms: BTreeMap<usize, f64>,
    /// Index into `frontier` of the route to run.
    current: usize,
    /// Slowdown ratios of the most recent observations.
    ratios: VecDeque<f64>,
    /// The target's percentile of `ratios` (1 before any observation).
    estimate: f64,
    /// Observations so far.
    requests: u64,
    /// Observations of the current route since it was chosen.
    on_current: usize,
    /// Consecutive observations predicting a more accurate route to fit with headroom.
    up_streak: usize,
    /// Consecutive such observations a move up needs now (`up_after`, doubled per failed probe).
    up_wait: usize,
    /// When the current route was taken by a move up still on probation (its request index).
    probe: Option<u64>,
    switches: Vec<RouteSwitch>,
}

impl RouteController {
    /// A controller with the default [`ControllerSettings`].
    pub fn new(candidates: &[RouteCandidate], target: LatencyTarget) -> Result<Self, ControllerError> {
        Self::with_settings(candidates, target, ControllerSettings::default())
    }

    /// A controller over `candidates` keeping `target`. It drops the candidates over the caps and
    /// those dominated (slower and no more accurate than another), and starts on the most accurate
    /// route that meets the target on an idle machine; where none does, it fails, or in best-effort
    /// mode starts on the fastest.
    pub fn with_settings(
        candidates: &[RouteCandidate],
        target: LatencyTarget,
        settings: ControllerSettings,
    ) -> Result<Self, ControllerError> {
        check_target(&target)?;
        check_settings(&settings)?;
        let idle_ms = check_candidates(candidates)?;
        let admitted: Vec<&RouteCandidate> = candidates.iter().filter(|c| target.admits(c)).collect();
        if admitted.is_empty() {
            let smallest = |figure: fn(&RouteCandidate) -> Option<u64>| candidates.iter().filter_map(figure).min();
            return Err(ControllerError::AllOverCaps {
                max_memory_bytes: target.max_memory_bytes,
                smallest_memory_bytes: smallest(|c| c.memory_bytes),
                max_flops: target.max_flops,
                smallest_flops: smallest(|c| c.flops),
            });
        }
        let frontier = pareto_candidates(&admitted);
        let current = match most_accurate_within(&frontier, 1.0, target.latency_ms) {
            Some(index) => index,
            None if target.best_effort => 0,
            None => {
                return Err(ControllerError::NoRouteMeetsTarget {
                    fastest: frontier[0].cfg_id,
                    fastest_ms: frontier[0].latency_ms,
                    target_ms: target.latency_ms,
                    percentile: target.percentile,
                })
            }
        };
        Ok(Self {
            // The first route is a choice, not a switch: no cool-down.
            on_current: settings.cooldown,
            target,
            frontier,
            idle_ms,
            current,
            ratios: VecDeque::new(),
            estimate: 1.0,
            requests: 0,
            up_streak: 0,
            up_wait: settings.up_after,
            probe: None,
            settings,
            switches: Vec::new(),
        })
    }

    /// The route to run next.
    pub fn current(&self) -> usize {
        self.frontier[self.current].cfg_id
    }

    /// The routes it chooses from: within the caps, not dominated, by idle latency.
    pub fn frontier(&self) -> &[RouteCandidate] {
        &self.frontier
    }

    /// The load estimate: how many times slower than idle forwards run, at the target's
    /// percentile of the window (1 before any observation).
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// Predicted latency of route `cfg_id` under the current load, milliseconds (`None` for a route
    /// that is not a candidate).
    pub fn predicted_ms(&self, cfg_id: usize) -> Option<f64> {
        self.idle_ms.get(&cfg_id).map(|idle| idle * self.estimate)
    }

    /// Whether the current route is predicted to meet the target.
    pub fn target_met(&self) -> bool {
        self.predicted(self.current) <= self.target.latency_ms
    }

    /// The target it keeps.
    pub fn target(&self) -> &LatencyTarget {
        &self.target
    }

    /// Its settings.
    pub fn settings(&self) -> &ControllerSettings {
        &self.settings
    }

    /// Observations so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The most recent switches (at most [`ControllerSettings::history`]), oldest first.
    pub fn switches(&self) -> &[RouteSwitch] {
        &self.switches
    }

    /// Reports that a forward of route `cfg_id` took `elapsed_ms` (for GPU backends, up to the
    /// device sync); returns the switch it caused, if any. Any candidate may be reported, not only
    /// the current route: its slowdown applies to every route.
    pub fn observe(&mut self, cfg_id: usize, elapsed_ms: f64) -> Result<Option<RouteSwitch>, ControllerError> {
        let idle = *self.idle_ms.get(&cfg_id).ok_or(ControllerError::UnknownRoute { cfg_id })?;
        if !(elapsed_ms.is_finite() && elapsed_ms >= 0.0) {
            return Err(ControllerError::InvalidObservation { cfg_id, elapsed_ms });
        }
        Ok(self.record(cfg_id, elapsed_ms / idle))
    }

    /// Runs `forward` on the current route, timed with `clock`, observes its duration and returns
    /// its output. `forward` must return only once its work is done (for GPU backends, after a
    /// device sync). A failed forward is not observed: its error is returned as it is.
    pub fn run<T, E, C: Clock + ?Sized>(&mut self, clock: &C, forward: impl FnOnce(usize) -> Result<T, E>) -> Result<T, E> {
        let route = &self.frontier[self.current];
        let (cfg_id, idle) = (route.cfg_id, route.latency_ms);
        let started = clock.now();
        let output = forward(cfg_id)?;
        let elapsed_ms = clock.now().saturating_sub(started).as_secs_f64() * 1e3;
        self.record(cfg_id, elapsed_ms / idle);
        Ok(output)
    }

    /// Adds one slowdown ratio of route `cfg_id` and decides whether to switch.
    fn record(&mut self, cfg_id: usize, ratio: f64) -> Option<RouteSwitch> {
        let request = self.requests;
        self.requests += 1;
        if self.ratios.len() == self.settings.window {
            self.ratios.pop_front();
        }
        self.ratios.push_back(ratio);
        self.estimate = nearest_rank(&self.ratios, self.target.percentile);
        if cfg_id == self.current() {
            self.on_current = self.on_current.saturating_add(1);
        }
        let on_probation = |entered: u64| request - entered <= self.settings.window as u64;
        if self.probe.is_some_and(|entered| !on_probation(entered)) {
            // The route taken up has held: the next move up waits the normal time again.
            self.probe = None;
            self.up_wait = self.settings.up_after;
        }
        if self.ratios.len() < self.settings.min_samples {
            return None;
        }
        let target = self.target.latency_ms;
        let (to, reason) = if !self.target_met() {
            self.up_streak = 0;
            let to = self.most_accurate_within(target).unwrap_or(0);
            (to, SwitchReason::OverTarget { predicted_ms: self.predicted(self.current) })
        } else {
            // Up one step of the frontier at a time: how much slower a more accurate route runs
            // under this load is a prediction from another route's forwards.
            let next = self.current + 1;
            let roomy = target * (1.0 - self.settings.headroom);
            if next >= self.frontier.len() || self.predicted(next) > roomy {
                self.up_streak = 0;
                return None;
            }
            self.up_streak += 1;
            if self.up_streak < self.up_wait {
                return None;
            }
            (next, SwitchReason::Headroom { predicted_ms: self.predicted(next) })
        };
        if to == self.current || self.on_current < self.settings.cooldown {
            return None;
        }
        let switch = RouteSwitch { request, from: self.current(), to: self.frontier[to].cfg_id, reason };
        match reason {
            SwitchReason::OverTarget { .. } => {
                if self.probe.is_some_and(on_probation) {
                    // A failed probe: the route taken up did not hold under this load.
                    self.up_wait = (self.up_wait * 2).min(self.settings.up_after * self.settings.max_backoff);
                }
                self.probe = None;
            }
            SwitchReason::Headroom { .. } => self.probe = Some(request),
        }
        self.current = to;
        self.on_current = 0;
        self.up_streak = 0;
        // The window starts again on the new route: ratios seen on another route predict it only
        // roughly (load slows routes unevenly).
        self.ratios.clear();
        if self.settings.history > 0 {
            if self.switches.len() == self.settings.history {
                self.switches.remove(0);
            }
            self.switches.push(switch);
        }
        Some(switch)
    }

    /// Predicted latency of the frontier's route `index`, milliseconds.
    fn predicted(&self, index: usize) -> f64 {
        self.frontier[index].latency_ms * self.estimate
    }

    /// Index of the most accurate frontier route predicted within `limit_ms`.
    fn most_accurate_within(&self, limit_ms: f64) -> Option<usize> {
        most_accurate_within(&self.frontier, self.estimate, limit_ms)
    }
}

/// Checks the percentile and the target latency.
fn check_target(target: &LatencyTarget) -> Result<(), ControllerError> {
    if !(target.percentile > 0.0 && target.percentile <= 100.0) {
        return Err(ControllerError::InvalidPercentile { percentile: target.percentile });
    }
    if !(target.latency_ms.is_finite() && target.latency_ms > 0.0) {
        return Err(ControllerError::InvalidTarget { latency_ms: target.latency_ms });
    }
    Ok(())
}

/// Checks the settings the decisions rely on.
fn check_settings(settings: &ControllerSettings) -> Result<(), ControllerError> {
    let invalid = |setting, reason| Err(ControllerError::InvalidSetting { setting, reason });
    if settings.window == 0 {
        return invalid("window", "must be at least 1");
    }
    if settings.min_samples == 0 || settings.min_samples > settings.window {
        return invalid("min_samples", "must be at least 1 and at most `window`");
    }
    if !(settings.headroom >= 0.0 && settings.headroom < 1.0) {
        return invalid("headroom", "must be in [0, 1)");
    }
    if settings.up_after == 0 {
        return invalid("up_after", "must be at least 1");
    }
    if settings.max_backoff == 0 {
        return invalid("max_backoff", "must be at least 1");
    }
    Ok(())
}

/// Checks every candidate; returns each one's idle latency by route id.
fn check_candidates(candidates: &[RouteCandidate]) -> Result<BTreeMap<usize, f64>, ControllerError> {
    if candidates.is_empty() {
        return Err(ControllerError::NoCandidates);
    }
    let mut idle_ms = BTreeMap::new();
    for c in candidates {
        if !(c.latency_ms.is_finite() && c.latency_ms > 0.0) {
            return Err(ControllerError::InvalidLatency { cfg_id: c.cfg_id, latency_ms: c.latency_ms });
        }
        if !c.accuracy.is_finite() {
            return Err(ControllerError::InvalidAccuracy { cfg_id: c.cfg_id, accuracy: c.accuracy });
        }
        if idle_ms.insert(c.cfg_id, c.latency_ms).is_some() {
            return Err(ControllerError::DuplicateRoute { cfg_id: c.cfg_id });
        }
    }
    Ok(idle_ms)
}

/// Index of the most accurate route of `frontier` whose idle latency times `estimate` is within
/// `limit_ms`.
fn most_accurate_within(frontier: &[RouteCandidate], estimate: f64, limit_ms: f64) -> Option<usize> {
    frontier.iter().rposition(|route| route.latency_ms * estimate <= limit_ms)
}

/// The candidates on the Pareto frontier of latency (lower is better) against accuracy, by latency.
fn pareto_candidates(candidates: &[&RouteCandidate]) -> Vec<RouteCandidate> {
    const LATENCY: &str = "latency_ms";
    const ACCURACY: &str = "accuracy";
    let table: Vec<RouteMetrics> = candidates
        .iter()
        .map(|c| RouteMetrics { cfg_id: c.cfg_id, values: BTreeMap::from([(LATENCY.into(), c.latency_ms), (ACCURACY.into(), c.accuracy)]) })
        .collect();
    let ids = pareto_frontier(&table, (LATENCY, Goal::Minimize), (ACCURACY, Goal::Maximize));
    ids.iter().filter_map(|&id| candidates.iter().find(|c| c.cfg_id == id).map(|&c| c.clone())).collect()
}

/// The nearest-rank `percentile` (in (0, 100]) of `values`: the smallest value with at least
/// `percentile`% of the values at or below it (1, no slowdown, for no values).
fn nearest_rank(values: &VecDeque<f64>, percentile: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let rank = (percentile * sorted.len() as f64 / 100.0).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied().unwrap_or(1.0)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::rng::SplitMix64;

    /// Routes 7, 3, 12, 5 at 10/20/30/40 ms, accuracy rising; route 9 is dominated (slower than
    /// route 3 and less accurate).
    fn ladder() -> Vec<RouteCandidate> {
        let route = |id, ms, acc, mb: u64, gflops: u64| RouteCandidate {
            memory_bytes: Some(mb << 20),
            flops: Some(gflops * 1_000_000_000),
            ..RouteCandidate::new(id, ms, acc)
        };
        vec![
            route(12, 30.0, 78.0, 300, 3),
            route(7, 10.0, 70.0, 100, 1),
            route(9, 25.0, 74.0, 250, 2),
            route(5, 40.0, 80.0, 400, 4),
            route(3, 20.0, 75.0, 200, 2),
        ]
    }

    fn p95(latency_ms: f64) -> LatencyTarget {
        LatencyTarget::new(latency_ms, 95.0)
    }

    /// Forwards needed before a down move from a window of normal ratios: slow ratios must fill the
    /// ranks above the percentile's nearest rank (2 for p95 of 32).
    fn down_bound(settings: &ControllerSettings, percentile: f64) -> usize {
        settings.window - (percentile * settings.window as f64 / 100.0).ceil() as usize + 1
    }

    /// Runs up to `limit` forwards of the current route at `slowdown` × its idle latency, each
    /// times a factor in `1 ± noise`; returns how many ran up to and including the first switch.
    fn until_switch(c: &mut RouteController, rng: &mut SplitMix64, limit: usize, slowdown: f64, noise: f64) -> Option<usize> {
        (1..=limit).find(|_| {
            let route = c.current();
            let idle = c.frontier().iter().find(|r| r.cfg_id == route).unwrap().latency_ms;
            let jitter = 1.0 + noise * (2.0 * rng.unit() - 1.0);
            c.observe(route, idle * slowdown * jitter).unwrap().is_some()
        })
    }

    /// A controller on route 5 (40 ms) under a 50 ms p95 target, warmed up on an idle machine and
    /// then moved down by a ×2 slowdown.
    fn slowed_down(rng: &mut SplitMix64) -> (RouteController, usize) {
        let mut c = RouteController::new(&ladder(), p95(50.0)).unwrap();
        assert_eq!(c.current(), 5);
        assert_eq!(until_switch(&mut c, rng, 100, 1.0, 0.02), None);
        let forwards = until_switch(&mut c, rng, 100, 2.0, 0.02).expect("a ×2 slowdown moves it down");
        (c, forwards)
    }

    #[test]
    fn frontier_is_ordered_and_drops_dominated_routes() {
        let c = RouteController::new(&ladder(), p95(50.0)).unwrap();
        let ids: Vec<usize> = c.frontier().iter().map(|r| r.cfg_id).collect();
        assert_eq!(ids, [7, 3, 12, 5]);
        assert_eq!((c.estimate(), c.requests(), c.target_met()), (1.0, 0, true));
    }

    #[test]
    fn slowdown_moves_down_within_bound() {
        let mut rng = SplitMix64::new(1);
        let (mut c, forwards) = slowed_down(&mut rng);
        let bound = down_bound(c.settings(), 95.0);
        assert_eq!(bound, 2);
        assert!(forwards <= bound, "moved down after {forwards} slow forwards, bound {bound}");
        // 30 ms × 2 is over 50 ms, 20 ms × 2 fits: the most accurate route that fits.
        let switch = c.switches()[0];
        assert_eq!((switch.from, switch.to), (5, 3));
        assert!(matches!(switch.reason, SwitchReason::OverTarget { predicted_ms } if predicted_ms > 50.0));
        assert!(c.target_met());
        // A sustained slowdown keeps it there.
        assert_eq!(until_switch(&mut c, &mut rng, 300, 2.0, 0.02), None);
    }

    #[test]
    fn recovery_moves_back_up_within_bound() {
        let mut rng = SplitMix64::new(2);
        let (mut c, _) = slowed_down(&mut rng);
        let (window, up_after) = (c.settings().window, c.settings().up_after);
        // Up one step at a time, each after `up_after` forwards in a row predicting headroom (the
        // window starts again at each switch, so `min_samples` ratios come first).
        for (from, to) in [(3, 12), (12, 5)] {
            let forwards = until_switch(&mut c, &mut rng, 1000, 1.0, 0.02).expect("recovery moves it up");
            let (min_samples, up_after) = (c.settings().min_samples, c.settings().up_after);
            assert!((up_after..=window.min(min_samples + up_after)).contains(&forwards), "{from} → {to} after {forwards} forwards");
            let switch = *c.switches().last().unwrap();
            assert_eq!((switch.from, switch.to), (from, to));
            assert!(matches!(switch.reason, SwitchReason::Headroom { predicted_ms } if predicted_ms <= 42.5));
        }
        let _ = up_after;
        assert_eq!(until_switch(&mut c, &mut rng, 300, 1.0, 0.02), None);
    }

    /// Under load that slows the longer routes more than the shorter one shows, each move up is a
    /// failed probe: the waits between them double up to `max_backoff` × `up_after`, and once the
    /// load is gone a move up that holds brings the wait back to `up_after`.
    #[test]
    fn failed_probes_back_off_and_a_held_route_resets_the_wait() {
        let mut rng = SplitMix64::new(6);
        let (mut c, _) = slowed_down(&mut rng);
        let settings = c.settings().clone();
        // Route 3 runs at its idle latency, route 12 (30 ms) at ×1.8: 54 ms, over the target.
        let mut probes = Vec::new();
        for n in 0..3000u64 {
            let route = c.current();
            let factor = if route == 12 { 1.8 } else { 1.0 };
            let idle = c.frontier().iter().find(|r| r.cfg_id == route).unwrap().latency_ms;
            if let Some(switch) = c.observe(route, idle * factor).unwrap() {
                if matches!(switch.reason, SwitchReason::Headroom { .. }) {
                    probes.push(n);
                }
            }
        }
        let gaps: Vec<u64> = probes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "waits between probes never shrink: {gaps:?}");
        let longest = (settings.up_after * settings.max_backoff) as u64;
        assert!(gaps.last().is_some_and(|&g| g >= longest && g <= longest + 2 * settings.cooldown as u64 + 2), "{gaps:?}");
        assert!(probes.len() <= 30, "{} probes in 3000 forwards", probes.len());
        // The load goes: the next move up holds, and the one after it waits only `up_after` again.
        let first = until_switch(&mut c, &mut rng, 1000, 1.0, 0.0).expect("moves up");
        assert!(first <= longest as usize + settings.window);
        assert_eq!(c.current(), 12);
        let second = until_switch(&mut c, &mut rng, 1000, 1.0, 0.0).expect("moves up again");
        assert_eq!(c.current(), 5);
        assert!(second <= settings.window + settings.up_after + 1, "the wait is back to normal: {second}");
    }

    #[test]
    fn noise_within_the_band_moves_nothing() {
        // Route 2 at 90 ms is within the 100 ms target with ±5% noise; route 3 at 110 ms is over
        // the 85 ms headroom line even 5% faster.
        let routes = [RouteCandidate::new(1, 50.0, 70.0), RouteCandidate::new(2, 90.0, 75.0), RouteCandidate::new(3, 110.0, 80.0)];
        let mut c = RouteController::new(&routes, p95(100.0)).unwrap();
        let mut rng = SplitMix64::new(3);
        for _ in 0..1000 {
            assert_eq!(until_switch(&mut c, &mut rng, 1, 1.0, 0.05), None);
            assert!(c.target_met());
        }
        assert_eq!((c.current(), c.switches().len(), c.requests()), (2, 0, 1000));
        assert!((0.95..=1.05).contains(&c.estimate()), "{}", c.estimate());
    }

    #[test]
    fn min_samples_and_cooldown_hold_switches() {
        let mut c = RouteController::new(&ladder(), p95(50.0)).unwrap();
        let settings = c.settings().clone();
        let mut rng = SplitMix64::new(4);
        // ×2 from the first forward: no decision before `min_samples` ratios.
        assert_eq!(until_switch(&mut c, &mut rng, 10, 2.0, 0.0), Some(settings.min_samples));
        assert_eq!(c.current(), 3);
        // ×4 right after: route 3 is over at once, but the new route is kept for the cool-down.
        assert_eq!(until_switch(&mut c, &mut rng, 100, 4.0, 0.0), Some(settings.cooldown));
        assert_eq!(c.current(), 7);
        let [first, second] = c.switches() else { panic!("{:?}", c.switches()) };
        assert_eq!(second.request - first.request, settings.cooldown as u64);
        // The fastest route over the target stays (nowhere to go) and says so.
        assert_eq!(until_switch(&mut c, &mut rng, 100, 8.0, 0.0), None);
        assert!(!c.target_met());
    }

    #[test]
    fn unmeetable_target_is_an_error_unless_best_effort() {
        let err = RouteController::new(&ladder(), p95(5.0)).unwrap_err();
        assert_eq!(err, ControllerError::NoRouteMeetsTarget { fastest: 7, fastest_ms: 10.0, target_ms: 5.0, percentile: 95.0 });
        let text = err.to_string();
        assert!(text.contains("p95 ≤ 5 ms") && text.contains("route 7, takes 10 ms"), "{text}");

        let mut c = RouteController::new(&ladder(), LatencyTarget { best_effort: true, ..p95(5.0) }).unwrap();
        assert_eq!(c.current(), 7);
        assert!(!c.target_met());
        assert_eq!(until_switch(&mut c, &mut SplitMix64::new(5), 100, 1.0, 0.0), None);
        assert!(!c.target_met());
    }

    #[test]
    fn caps_drop_candidates() {
        let mut routes = ladder();
        routes.push(RouteCandidate::new(20, 5.0, 90.0)); // no memory or FLOPs figures
        let memory = LatencyTarget { max_memory_bytes: Some(300 << 20), ..p95(50.0) };
        let c = RouteController::new(&routes, memory).unwrap();
        let ids: Vec<usize> = c.frontier().iter().map(|r| r.cfg_id).collect();
        assert_eq!(ids, [7, 3, 12]);
        assert_eq!(c.current(), 12);
        let flops = LatencyTarget { max_flops: Some(2_000_000_000), ..p95(50.0) };
        let ids: Vec<usize> = RouteController::new(&routes, flops).unwrap().frontier().iter().map(|r| r.cfg_id).collect();
        assert_eq!(ids, [7, 3]);
        // Without caps, the route with no figures dominates every other.
        assert_eq!(RouteController::new(&routes, p95(50.0)).unwrap().current(), 20);

        let tight = LatencyTarget { max_memory_bytes: Some(1 << 20), max_flops: Some(10), ..p95(50.0) };
        let err = RouteController::new(&routes, tight).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ControllerError::AllOverCaps { smallest_memory_bytes: Some(b), .. } if b == 100 << 20), "{text}");
        assert!(
            text.contains("memory bytes ≤ 1048576 (smallest route: 104857600)") && text.contains("FLOPs ≤ 10 (smallest route: 1000000000)"),
            "{text}"
        );
    }

    #[test]
    fn construction_errors_name_the_culprit() {
        use ControllerError as E;
        let build = |routes: &[RouteCandidate], target: LatencyTarget| RouteController::new(routes, target).unwrap_err();
        let ok = [RouteCandidate::new(0, 10.0, 70.0)];
        assert_eq!(build(&[], p95(10.0)), E::NoCandidates);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = build(&[ok[0].clone(), RouteCandidate::new(4, bad, 70.0)], p95(10.0));
            assert!(matches!(err, E::InvalidLatency { cfg_id: 4, .. }), "{err}");
        }
        let err = build(&[RouteCandidate::new(4, 10.0, f64::NAN)], p95(10.0));
        assert!(matches!(err, E::InvalidAccuracy { cfg_id: 4, .. }) && err.to_string().contains("route 4"), "{err}");
        let err = build(&[ok[0].clone(), RouteCandidate::new(0, 20.0, 80.0)], p95(10.0));
        assert_eq!(err, E::DuplicateRoute { cfg_id: 0 });
        for bad in [0.0, -5.0, 100.5, f64::NAN] {
            let err = build(&ok, LatencyTarget::new(10.0, bad));
            assert!(matches!(err, E::InvalidPercentile { .. }), "{err}");
        }
        assert!(RouteController::new(&ok, LatencyTarget::new(10.0, 100.0)).is_ok());
        for bad in [0.0, -10.0, f64::NAN, f64::INFINITY] {
            let err = build(&ok, p95(bad));
            assert!(matches!(err, E::InvalidTarget { .. }), "{err}");
        }
        let defaults = ControllerSettings::default();
        for (settings, name) in [
            (ControllerSettings { window: 0, ..defaults.clone() }, "window"),
            (ControllerSettings { min_samples: 0, ..defaults.clone() }, "min_samples"),
            (ControllerSettings { min_samples: 33, ..defaults.clone() }, "min_samples"),
            (ControllerSettings { headroom: 1.0, ..defaults.clone() }, "headroom"),
            (ControllerSettings { headroom: f64::NAN, ..defaults.clone() }, "headroom"),
            (ControllerSettings { up_after: 0, ..defaults.clone() }, "up_after"),
            (ControllerSettings { max_backoff: 0, ..defaults.clone() }, "max_backoff"),
        ] {
            let err = RouteController::with_settings(&ok, p95(10.0), settings).unwrap_err();
            assert!(matches!(err, E::InvalidSetting { setting, .. } if setting == name), "{err}");
        }
        // Through the crate's error type, with the same message.
        let core: CoreError = E::DuplicateRoute { cfg_id: 3 }.into();
        assert_eq!(core.to_string(), "route 3 is listed twice among the candidates");
    }

    #[test]
    fn observations_are_checked_and_transfer_between_routes() {
        let mut c = RouteController::new(&ladder(), p95(50.0)).unwrap();
        assert_eq!(c.observe(99, 10.0), Err(ControllerError::UnknownRoute { cfg_id: 99 }));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(c.observe(5, bad), Err(ControllerError::InvalidObservation { cfg_id: 5, .. })));
        }
        assert_eq!(c.requests(), 0);
        // Ratios 1..=20 from route 7 (10 ms). After the first four (p95: 4), route 5 is predicted
        // at 160 ms and left for route 7; the window starts again, and p95 of ratios 5..=20 is 20.
        for k in 1..=20 {
            c.observe(7, 10.0 * k as f64).unwrap();
        }
        assert_eq!(c.switches()[0].request, 3);
        assert_eq!(c.estimate(), 20.0);
        assert_eq!(c.predicted_ms(5), Some(40.0 * 20.0));
        assert_eq!(c.predicted_ms(99), None);
        // What route 7 showed moved route 5 down, although route 5 never ran.
        assert_eq!(c.current(), 7);
        assert!(!c.target_met());
    }

    /// A clock that forwards advance by hand.
    struct FakeClock(Cell<Duration>);

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.0.get()
        }
    }

    #[test]
    fn run_times_forwards_with_the_clock() {
        let clock = FakeClock(Cell::new(Duration::from_secs(100)));
        let mut c = RouteController::new(&ladder(), p95(50.0)).unwrap();
        let idle: BTreeMap<usize, f64> = ladder().iter().map(|r| (r.cfg_id, r.latency_ms)).collect();
        let forward = |c: &mut RouteController, slowdown: f64| {
            c.run(&clock, |route| {
                clock.0.set(clock.0.get() + Duration::from_secs_f64(idle[&route] * slowdown / 1e3));
                Ok::<_, String>(route)
            })
        };
        for _ in 0..40 {
            assert_eq!(forward(&mut c, 1.0), Ok(5));
        }
        assert!((c.estimate() - 1.0).abs() < 1e-6, "{}", c.estimate());
        let slow: Vec<usize> = (0..3).map(|_| forward(&mut c, 2.0).unwrap()).collect();
        assert_eq!(slow, [5, 5, 3]);
        // A failed forward returns its error and is not observed.
        let requests = c.requests();
        assert_eq!(c.run(&clock, |_| Err::<(), _>("device lost")), Err("device lost"));
        assert_eq!(c.requests(), requests);
    }

    #[test]
    fn candidates_from_bench_and_results_lines() {
        let bench = "\
{\"cfg_id\":0,\"batch\":1,\"latency_ms\":10.0,\"min_ms\":9.5,\"flops\":1000,\"weight_mb\":20.0,\"peak_activation_mb\":null}
{\"cfg_id\":1,\"batch\":1,\"latency_ms\":20.0,\"min_ms\":19.0,\"flops\":3000,\"weight_mb\":60.0,\"peak_activation_mb\":4.0}
{\"cfg_id\":2,\"batch\":1,\"latency_ms\":15.0,\"flops\":2000}
{\"cfg_id\":0,\"batch\":8,\"latency_ms\":70.0}
";
        let results = "{\"cfg_id\":0,\"acc1\":72.1,\"flops\":1}\n{\"cfg_id\":1,\"acc1\":79.8}\n{\"cfg_id\":5,\"acc1\":81.0}\n";
        let candidates = candidates_from_jsonl(bench, "lat.jsonl", Some(1), results, "results.jsonl", "acc1").unwrap();
        // Route 2 has no accuracy, route 5 no latency; the results' `flops` is not taken.
        assert_eq!(
            candidates,
            [
                RouteCandidate { memory_bytes: Some(20 << 20), flops: Some(1000), ..RouteCandidate::new(0, 10.0, 72.1) },
                RouteCandidate { memory_bytes: Some(64 << 20), flops: Some(3000), ..RouteCandidate::new(1, 20.0, 79.8) },
            ]
        );
        let c = RouteController::new(&candidates, p95(25.0)).unwrap();
        assert_eq!(c.current(), 1);

        let err = candidates_from_jsonl(bench, "lat.jsonl", None, results, "results.jsonl", "acc1").unwrap_err().to_string();
        assert!(err.contains("lat.jsonl") && err.contains("lines 1 and 4"), "{err}");
        let err = candidates_from_jsonl(bench, "lat.jsonl", Some(1), results, "results.jsonl", "acc5").unwrap_err().to_string();
        assert!(err.contains("`acc5` in results.jsonl"), "{err}");
    }
}
