//! Choosing routes: Pareto frontiers and the best route under a budget. Pure Rust over metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Metrics of one route, by name (`flops`, `params`, `acc1`, `latency_ms`, …).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteMetrics {
    /// Route id.
    pub cfg_id: usize,
    /// Named values; a route may lack some.
    pub values: BTreeMap<String, f64>,
}

impl RouteMetrics {
    /// The value of `metric`, if the route has a finite one.
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.values.get(metric).copied().filter(|v| v.is_finite())
    }
}

/// Whether larger or smaller is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Goal {
    /// Smaller is better (FLOPs, latency, params).
    Minimize,
    /// Larger is better (accuracy).
    Maximize,
}

impl Goal {
    /// `a` is at least as good as `b`.
    fn no_worse(self, a: f64, b: f64) -> bool {
        match self {
            Goal::Minimize => a <= b,
            Goal::Maximize => a >= b,
        }
    }
}

/// The routes not dominated on the two objectives, sorted by the first. Routes lacking either
/// metric are left out; of routes with identical values, the lowest id is kept.
pub fn pareto_frontier(routes: &[RouteMetrics], x: (&str, Goal), y: (&str, Goal)) -> Vec<usize> {
    let points: Vec<(usize, f64, f64)> = routes.iter().filter_map(|r| Some((r.cfg_id, r.get(x.0)?, r.get(y.0)?))).collect();
    let mut front: Vec<(usize, f64, f64)> = points
        .iter()
        .copied()
        .filter(|&(id, px, py)| {
            !points.iter().any(|&(other, qx, qy)| {
                let no_worse = x.1.no_worse(qx, px) && y.1.no_worse(qy, py);
                let strictly = qx != px || qy != py;
                no_worse && (strictly || other < id)
            })
        })
        .collect();
    front.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    front.into_iter().map(|p| p.0).collect()
}

/// An upper bound on one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Metric name.
    pub metric: String,
    /// Largest allowed value.
    pub max: f64,
}

/// The best route by `objective` among those within every budget.
///
/// Routes lacking a budgeted metric or the objective are not eligible. Ties on the objective go
/// to the route with the smaller value of the first budget metric, then the lower id. With no
/// eligible route the error names the tightest budget and the smallest value available.
pub fn select(routes: &[RouteMetrics], budgets: &[Budget], objective: (&str, Goal)) -> Result<usize> {
    for b in budgets {
        if !b.max.is_finite() {
            return Err(Error::Metric(format!("budget on `{}` is not a finite number", b.metric)));
        }
    }
    let tie_metric = budgets.first().map(|b| b.metric.as_str());
    let mut best: Option<(&RouteMetrics, f64)> = None;
    for r in routes {
        let Some(score) = r.get(objective.0) else { continue };
        if !budgets.iter().all(|b| r.get(&b.metric).is_some_and(|v| v <= b.max)) {
            continue;
        }
        let better = match best {
            None => true,
            Some((cur, cur_score)) => {
                if score != cur_score {
                    objective.1.no_worse(score, cur_score)
                } else {
                    let tie = |m: &RouteMetrics| tie_metric.and_then(|t| m.get(t)).unwrap_or(0.0);
                    (tie(r), r.cfg_id) < (tie(cur), cur.cfg_id)
                }
            }
        };
        if better {
            best = Some((r, score));
        }
    }
    best.map(|(r, _)| r.cfg_id).ok_or_else(|| {
        let detail: Vec<String> = budgets
            .iter()
            .map(|b| {
                let min = routes.iter().filter_map(|r| r.get(&b.metric)).fold(f64::INFINITY, f64::min);
                if min.is_finite() {
                    format!("`{}` ≤ {} (smallest route: {min})", b.metric, b.max)
                } else {
                    format!("`{}` ≤ {} (no route has this metric)", b.metric, b.max)
                }
            })
            .collect();
        Error::NoRouteWithinBudget(if detail.is_empty() {
            format!("no route has the objective `{}`", objective.0)
        } else {
            detail.join(", ")
        })
    })
}

/// Parses a metrics table: JSON lines, one object per route with an integer `cfg_id` and numeric
/// fields (the official results format, `snnet bench --json`, `snnet eval`). Non-numeric fields are
/// ignored; lines for which `keep` is false are skipped (e.g. another batch size). A route listed
/// twice among the kept lines, a malformed line or a missing `cfg_id` is an error naming the line.
pub fn parse_metric_lines(text: &str, source: &str, keep: &dyn Fn(&serde_json::Value) -> bool) -> Result<Vec<RouteMetrics>> {
    let mut out: Vec<RouteMetrics> = Vec::new();
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::Metric(format!("{source}:{line_no}: not a JSON object: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(Error::Metric(format!("{source}:{line_no}: not a JSON object")));
        };
        if !keep(&value) {
            continue;
        }
        let cfg_id = object
            .get("cfg_id")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::Metric(format!("{source}:{line_no}: no integer `cfg_id`")))? as usize;
        if let Some(first) = seen.insert(cfg_id, line_no) {
            return Err(Error::Metric(format!(
                "{source}: route {cfg_id} appears on lines {first} and {line_no}; choose one (e.g. by batch size)"
            )));
        }
        let values = object.iter().filter(|(k, _)| k.as_str() != "cfg_id").filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect();
        out.push(RouteMetrics { cfg_id, values });
    }
    Ok(out)
}

/// Merges tables by route id: every route of `base` gets the values the other tables hold for it
/// (a later table's value replaces an earlier one's). Routes absent from `base` are ignored.
pub fn merge_metrics(base: &[RouteMetrics], others: &[Vec<RouteMetrics>]) -> Vec<RouteMetrics> {
    let mut merged: Vec<RouteMetrics> = base.to_vec();
    for table in others {
        for row in table {
            if let Some(target) = merged.iter_mut().find(|m| m.cfg_id == row.cfg_id) {
                target.values.extend(row.values.iter().map(|(k, v)| (k.clone(), *v)));
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: usize, flops: f64, acc: Option<f64>) -> RouteMetrics {
        let mut values = BTreeMap::from([("flops".to_string(), flops)]);
        if let Some(a) = acc {
            values.insert("acc1".into(), a);
        }
        RouteMetrics { cfg_id: id, values }
    }

    #[test]
    fn frontier_drops_dominated_and_duplicates() {
        let rs = [m(0, 1.0, Some(70.0)), m(1, 2.0, Some(69.0)), m(2, 3.0, Some(80.0)), m(3, 3.0, Some(80.0)), m(4, 2.5, None)];
        assert_eq!(pareto_frontier(&rs, ("flops", Goal::Minimize), ("acc1", Goal::Maximize)), vec![0, 2]);
    }

    #[test]
    fn metric_lines_filter_merge_and_errors() {
        let text = "{\"cfg_id\": 0, \"batch\": 1, \"latency_ms\": 3.5, \"device\": \"cuda\"}\n\n{\"cfg_id\": 0, \"batch\": 8, \"latency_ms\": 9.0}\n";
        let batch1 = parse_metric_lines(text, "t", &|v| v["batch"] == 1).unwrap();
        assert_eq!(batch1.len(), 1);
        assert_eq!(batch1[0].get("latency_ms"), Some(3.5));
        assert!(batch1[0].get("device").is_none());
        let err = parse_metric_lines(text, "t", &|_| true).unwrap_err().to_string();
        assert!(err.contains("lines 1 and 3"), "{err}");
        let err = parse_metric_lines("{\"acc1\": 1}", "r.jsonl", &|_| true).unwrap_err().to_string();
        assert!(err.contains("r.jsonl:1") && err.contains("cfg_id"), "{err}");
        let err = parse_metric_lines("not json", "r.jsonl", &|_| true).unwrap_err().to_string();
        assert!(err.contains("r.jsonl:1"), "{err}");
        let merged = merge_metrics(&[m(0, 1.0, None), m(1, 2.0, None)], &[batch1]);
        assert_eq!(merged[0].get("latency_ms"), Some(3.5));
        assert_eq!(merged[1].get("latency_ms"), None);
    }

    #[test]
    fn select_under_budget_with_ties_and_missing() {
        let rs = [m(0, 1.0, Some(70.0)), m(1, 2.0, Some(75.0)), m(2, 1.5, Some(75.0)), m(3, 0.5, None)];
        let budget = [Budget { metric: "flops".into(), max: 2.0 }];
        assert_eq!(select(&rs, &budget, ("acc1", Goal::Maximize)).unwrap(), 2);
        let tight = [Budget { metric: "flops".into(), max: 0.1 }];
        let err = select(&rs, &tight, ("acc1", Goal::Maximize)).unwrap_err().to_string();
        assert!(err.contains("smallest route: 0.5"), "{err}");
    }
}
