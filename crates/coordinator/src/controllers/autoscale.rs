//! The autoscaler: sets each autoscaled service's replica count from a live metric.
//!
//! The rule is Kubernetes' HPA: `desired = ceil(serving × value / target)`, where `value` is
//! the metric per serving replica, left alone within a 10 % tolerance. Up is immediate;
//! down waits out the stabilisation window: the count goes to the highest recommendation
//! made within the window, so a dip does not drop replicas that the next burst needs.
//! Like Knative, a **panic mode** starts when the metric reaches twice what the current
//! replicas are meant to carry: the count jumps straight to what the load needs, and
//! nothing scales down until the panic window (a tenth of the stabilisation window, at
//! least 2 s) has passed without another such burst.
//!
//! `min: 0` scales to zero once the window has seen no load; the gateway then holds the
//! next requests, and held requests count as load: one replica is started at once.
//!
//! It never acts while a rollout is in progress: the rollout works to the count it started
//! with (nomad#14669).
//!
//! Metrics: `concurrency` (in flight plus held at the gateways) and `rps` (requests per
//! second) are totals divided by the serving replicas; `cpu` is the mean CPU % of the nodes
//! running replicas, `gpu` the mean utilisation of the GPUs granted to them (NVML or
//! simulated), and `prometheus:NAME` the mean of a gauge scraped from each replica's
//! `/metrics`.
//!
//! [`Autoscaler::decide`] is pure (time comes in); the loop gathers the observations and
//! proposes `Scale` actions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kiln_api::pb;
use kiln_api::service::{Autoscale, Metric};
use tokio_util::sync::CancellationToken;

use crate::core::{Core, now_ms};
use crate::state::services::Service;
use crate::state::{Command, ServiceAction, ServiceChanged};

/// How often the autoscaler looks.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// No change while `value / target` is within this of 1.
pub const TOLERANCE: f64 = 0.1;

/// What the loop saw of one service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Replicas wanted now.
    pub current: u32,
    /// Replicas serving.
    pub serving: u32,
    /// The metric per serving replica (for totals: the total over `serving.max(1)`).
    pub value: f64,
    /// Requests held at the gateways because nothing serves.
    pub waiting: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The count to set, when it changes.
    pub replicas: Option<u32>,
    /// What the metric asks for now.
    pub recommended: u32,
    pub panic: bool,
    pub reason: String,
}

/// One service's autoscaler memory: its recent recommendations and panic state.
#[derive(Debug, Default)]
pub struct Autoscaler {
    history: VecDeque<(i64, u32)>,
    panic_until: Option<i64>,
    /// The first observation: nothing scales down before a whole window was seen.
    since: Option<i64>,
}

impl Autoscaler {
    pub fn decide(&mut self, policy: &Autoscale, now_ms: i64, obs: Observation) -> Decision {
        let window = policy.window_ms as i64;
        let load = obs.value * f64::from(obs.serving.max(1));
        let capacity = policy.target * f64::from(obs.serving.max(1));
        let mut recommended = if obs.serving == 0 {
            // Nothing serves: held requests wake the service; their count is the load.
            (f64::from(obs.waiting) / policy.target).ceil() as u32
        } else {
            let ratio = obs.value / policy.target;
            if (ratio - 1.0).abs() <= TOLERANCE {
                obs.serving
            } else {
                (f64::from(obs.serving) * ratio).ceil() as u32
            }
        };
        if obs.waiting > 0 {
            recommended = recommended.max(1);
        }
        let recommended = recommended.clamp(policy.min, policy.max);

        let bursting = obs.serving > 0 && load >= 2.0 * capacity;
        if bursting {
            let panic_window = (window / 10).max(2_000);
            self.panic_until = Some(now_ms + panic_window);
        }
        let panic = self.panic_until.is_some_and(|t| now_ms < t);

        self.history.push_back((now_ms, recommended));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now_ms - t > window)
        {
            self.history.pop_front();
        }
        let since = *self.since.get_or_insert(now_ms);
        let target = if recommended >= obs.current {
            // Up: at once.
            recommended
        } else if panic || now_ms - since < window || obs.serving < obs.current {
            // No lower while panicking, before a whole window was seen, or while replicas
            // are still starting.
            obs.current
        } else {
            // Down: to the highest recommendation of the window.
            self.history
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(recommended)
                .min(obs.current)
        };
        let reason = format!(
            "{} {:.2} per replica against a target of {} ({} serving{})",
            if panic { "panic:" } else { "metric" },
            obs.value,
            policy.target,
            obs.serving,
            if obs.waiting > 0 {
                format!(", {} requests held", obs.waiting)
            } else {
                String::new()
            }
        );
        Decision {
            replicas: (target != obs.current).then_some(target),
            recommended,
            panic,
            reason,
        }
    }
}

pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let mut scalers: HashMap<u64, Autoscaler> = HashMap::new();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !core.is_leader() {
            scalers.clear();
            continue;
        }
        let services: Vec<Scaled> = {
            let state = core.state.read();
            state
                .services
                .values()
                // Never against a rollout in progress.
                .filter(|s| s.rollout.is_none())
                .filter_map(|s| {
                    let endpoints = serving_endpoints(s);
                    Some(Scaled {
                        number: s.number,
                        name: s.key(),
                        policy: s.spec().autoscale.clone()?,
                        current: s.desired,
                        serving: endpoints.len() as u32,
                        endpoints,
                    })
                })
                .collect()
        };
        for service in services {
            let Scaled {
                number,
                name,
                policy,
                current,
                serving,
                endpoints,
            } = service;
            let now = now_ms();
            // Nothing serving: only held requests count (they wake a service at zero).
            let value = if serving == 0 {
                Some(0.0)
            } else {
                observe(&core, number, &name, &policy, serving, &endpoints, now).await
            };
            let Some(value) = value else {
                continue;
            };
            let waiting = core.traffic().waiting(&name, now);
            let obs = Observation {
                current,
                serving,
                value,
                waiting,
            };
            let decision = scalers.entry(number).or_default().decide(&policy, now, obs);
            core.traffic().set_autoscale_view(
                &name,
                pb::AutoscaleView {
                    metric: policy.metric.name(),
                    target: policy.target,
                    value,
                    recommended: decision.recommended,
                    panic: decision.panic,
                    reason: decision.reason.clone(),
                },
            );
            let Some(replicas) = decision.replicas else {
                continue;
            };
            tracing::info!(service = %name, from = current, to = replicas, reason = %decision.reason, "autoscaling");
            let command = Command::ServiceActions {
                service: number,
                actions: vec![ServiceAction::Scale {
                    replicas,
                    reason: format!("autoscaler: {}", decision.reason),
                    unless_rolling: true,
                }],
                now_ms: now,
            };
            if let Err(e) = core.write::<ServiceChanged>(command).await {
                tracing::debug!(error = %e, "scale not committed");
            }
        }
    }
}

/// An autoscaled service, as one loop turn sees it.
struct Scaled {
    number: u64,
    name: String,
    policy: Autoscale,
    current: u32,
    serving: u32,
    endpoints: Vec<String>,
}

/// Where each serving replica's metrics are read: its metrics endpoint if it has one apart,
/// else where it serves.
fn serving_endpoints(s: &Service) -> Vec<String> {
    s.replicas
        .values()
        .filter(|r| r.serving())
        .filter_map(|r| r.metrics_endpoint.clone().or_else(|| r.endpoint.clone()))
        .collect()
}

/// The metric per serving replica; `None` when it cannot be read this time.
async fn observe(
    core: &Core,
    service: u64,
    name: &str,
    policy: &Autoscale,
    serving: u32,
    endpoints: &[String],
    now: i64,
) -> Option<f64> {
    let (metric, path) = (&policy.metric, policy.metrics.path.as_str());
    let per = |total: f64| total / f64::from(serving.max(1));
    match metric {
        Metric::Concurrency => Some(per(core.traffic().concurrency(name, now))),
        Metric::Rps => Some(per(core.traffic().rps(name, now))),
        Metric::Cpu | Metric::Gpu => {
            let state = core.state.read();
            let live = core.liveness();
            let s = state.services.get(&service)?;
            let samples: Vec<f64> = s
                .replicas
                .values()
                .filter(|r| r.serving())
                .filter_map(|r| r.task.current())
                .flat_map(|a| {
                    let node = live.get(&a.node);
                    match metric {
                        Metric::Cpu => node.map(|n| n.cpu_percent).into_iter().collect::<Vec<_>>(),
                        _ => a
                            .gpus
                            .iter()
                            .filter_map(|g| {
                                node?
                                    .gpus
                                    .iter()
                                    .find(|s| s.index == g.index)
                                    .map(|s| s.utilization_percent)
                            })
                            .collect(),
                    }
                })
                .collect();
            (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
        }
        Metric::Prometheus(gauge) => {
            let mut values = Vec::new();
            for endpoint in endpoints {
                if let Some(v) = scrape(endpoint, path, gauge).await {
                    values.push(v);
                }
            }
            if endpoints.is_empty() {
                return Some(0.0);
            }
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        }
    }
}

/// `GET PATH` (`/metrics` by default) from a replica, and the sum of the samples of `gauge`.
async fn scrape(endpoint: &str, path: &str, gauge: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(endpoint).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await.ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(1), fetch)
        .await
        .ok()??;
    gauge_value(&text, gauge)
}

/// The sum of every sample of `name` in Prometheus text (`name 3` or `name{l="x"} 3`).
/// A metric declared (`# TYPE name ...`) with no sample yet, as a server shows one it has
/// not counted anything of, is 0.
pub fn gauge_value(text: &str, name: &str) -> Option<f64> {
    let declared = text.lines().any(|l| {
        l.strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_whitespace().next())
            == Some(name)
    });
    let mut found = declared.then_some(0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.chars().next() {
            Some(' ') => rest.trim(),
            Some('{') => rest.rsplit_once('}').map(|(_, v)| v.trim())?,
            _ => continue,
        };
        let number: f64 = value.split_whitespace().next()?.parse().ok()?;
        *found.get_or_insert(0.0) += number;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32, target: f64, window_ms: u64) -> Autoscale {
        Autoscale {
            min,
            max,
            metric: Metric::Concurrency,
            target,
            window_ms,
            metrics: Default::default(),
        }
    }

    fn obs(current: u32, serving: u32, value: f64) -> Observation {
        Observation {
            current,
            serving,
            value,
            waiting: 0,
        }
    }

    #[test]
    fn the_hpa_formula_with_its_tolerance() {
        let p = policy(1, 10, 10.0, 60_000);
        let mut a = Autoscaler::default();
        assert_eq!(
            a.decide(&p, 0, obs(2, 2, 10.9)).replicas,
            None,
            "within 10 %"
        );
        assert_eq!(
            a.decide(&p, 1, obs(2, 2, 15.0)).replicas,
            Some(3),
            "ceil(2 × 1.5)"
        );
        let d = Autoscaler::default().decide(&p, 0, obs(2, 2, 100.0));
        assert_eq!(d.replicas, Some(10), "capped at max");
    }

    #[test]
    fn down_waits_for_the_window_up_does_not() {
        let p = policy(1, 10, 10.0, 10_000);
        let mut a = Autoscaler::default();
        assert_eq!(a.decide(&p, 0, obs(2, 2, 20.0)).replicas, Some(4));
        // Load stops: the high recommendation holds for the window.
        assert_eq!(a.decide(&p, 1_000, obs(4, 4, 0.0)).replicas, None);
        assert_eq!(a.decide(&p, 9_000, obs(4, 4, 0.0)).replicas, None);
        assert_eq!(
            a.decide(&p, 10_001, obs(4, 4, 0.0)).replicas,
            Some(1),
            "then min"
        );
    }

    #[test]
    fn a_burst_panics_and_panic_blocks_scaling_down() {
        let p = policy(1, 20, 10.0, 10_000);
        let mut a = Autoscaler::default();
        let d = a.decide(&p, 0, obs(2, 2, 50.0));
        assert!(d.panic);
        assert_eq!(d.replicas, Some(10));
        // The window would allow nothing lower anyway; after it, panic still holds briefly.
        let d = a.decide(&p, 1_500, obs(10, 10, 1.0));
        assert!(d.panic && d.replicas.is_none(), "{d:?}");
        let d = a.decide(&p, 12_000, obs(10, 10, 1.0));
        assert!(!d.panic);
        assert_eq!(d.replicas, Some(1));
    }

    #[test]
    fn scale_to_zero_and_wake_on_a_held_request() {
        let p = policy(0, 4, 10.0, 2_000);
        let mut a = Autoscaler::default();
        assert_eq!(
            a.decide(&p, 0, obs(1, 1, 0.0)).replicas,
            None,
            "not before the window"
        );
        assert_eq!(a.decide(&p, 2_500, obs(1, 1, 0.0)).replicas, Some(0));
        let held = Observation {
            waiting: 1,
            ..obs(0, 0, 0.0)
        };
        assert_eq!(
            a.decide(&p, 3_000, held).replicas,
            Some(1),
            "a held request wakes it"
        );
    }

    #[test]
    fn gauges_from_prometheus_text() {
        let text = "# TYPE model_requests_in_flight gauge\nmodel_requests_in_flight 3\nmodel_requests_in_flight_total 9\nq{a=\"1\"} 2\nq{a=\"2\"} 5 1700000000\n";
        assert_eq!(gauge_value(text, "model_requests_in_flight"), Some(3.0));
        assert_eq!(gauge_value(text, "q"), Some(7.0));
        let declared = "# HELP idle nothing yet\n# TYPE idle gauge\n";
        assert_eq!(gauge_value(declared, "idle"), Some(0.0));
        assert_eq!(gauge_value(declared, "absent"), None);
        assert_eq!(gauge_value(text, "missing"), None);
    }
}
