//! Turning a service file into a checked [`ServiceSpec`]: the replica's own fields
//! (command or image, env, resources, GPUs, constraints) are checked as a stage's are;
//! then replicas and autoscaling, the health check and the update strategy.

use super::{Checker, SpecErrors, check_name, find_key_line, yaml_error};
use crate::service::{
    Autoscale, AutoscaleFile, Health, HealthCheck, Metric, MetricsEndpoint, MetricsPort,
    ServiceFile, ServiceSpec, Update, defaults, limits,
};
use crate::spec::{self, Scalar, StageFile};
use crate::units;

/// Services run until stopped: their replicas' "timeout" is ten years.
const NO_TIMEOUT_MS: u64 = 10 * 365 * 24 * 3_600_000;

/// Parses and checks a service spec. `file` is only used in messages.
pub fn parse_service(file: &str, source: &str) -> Result<ServiceSpec, SpecErrors> {
    let raw: ServiceFile = serde_yaml_ng::from_str(source).map_err(|e| yaml_error(file, e))?;
    Checker::new(file, source).check_service(raw)
}

impl Checker<'_> {
    fn check_service(mut self, s: ServiceFile) -> Result<ServiceSpec, SpecErrors> {
        let lines = self.lines.clone();
        let line = |key: &str| find_key_line(&lines, 0, key);
        if let Err(reason) = check_name(&s.name) {
            self.push(line("name"), "name", reason);
        }
        if s.image.is_some() && s.health.as_ref().is_some_and(|h| h.exec.is_some()) {
            let reason = "an exec check runs on the node, not in an image replica's container: use http or tcp".into();
            self.push(line("exec"), "health.exec", reason);
        }
        if s.command.is_none() && s.image.is_none() {
            let reason = "missing: a service runs a command or an image".into();
            self.push(line("name"), "command", reason);
        }
        let as_stage = StageFile {
            interruptible: None,
            name: s.name.clone(),
            needs: Vec::new(),
            command: s.command.clone(),
            env: s.env.clone(),
            resources: s.resources.clone(),
            retries: None,
            timeout: None,
            constraints: s.constraints.clone(),
            image: s.image.clone(),
            build: None,
            shards: None,
            tests: None,
            deploy: None,
            artifacts: None,
            secrets: s.secrets.clone(),
        };
        let before = self.errors.len();
        let replica = if self.errors.is_empty() {
            self.check_stage(&as_stage, line("name"), "")
        } else {
            None
        };
        // A stage's fields are `stages.NAME.field`; a service's are just `field`.
        for e in &mut self.errors[before..] {
            e.field = e.field.trim_start_matches('.').to_string();
        }

        let port = match (s.port, &s.image) {
            (None, None) => 0,
            (Some(p), Some(_)) if (1..=65535).contains(&p) => p as u16,
            (Some(p), Some(_)) => {
                self.push(
                    line("port"),
                    "port",
                    format!("{p} is not a port (1 to 65535)"),
                );
                0
            }
            (None, Some(_)) => {
                let reason = "an image replica needs the port it listens on".into();
                self.push(line("image"), "port", reason);
                0
            }
            (Some(_), None) => {
                let reason =
                    "a process replica listens on $PORT, which kiln picks; leave port out".into();
                self.push(line("port"), "port", reason);
                0
            }
        };
        let autoscale = s
            .autoscale
            .as_ref()
            .and_then(|a| self.check_autoscale(a, s.image.is_some(), &line));
        let replicas = self.check_replicas(&s, autoscale.as_ref(), &line);
        let health = self.check_health(&s, &line);
        let update = self.check_update(&s, &line);
        if let Some(model) = &s.model
            && model.trim().is_empty()
        {
            self.push(line("model"), "model", "must not be empty".into());
        }

        if !self.errors.is_empty() {
            return Err(SpecErrors(self.errors));
        }
        let mut replica = replica.ok_or_else(|| SpecErrors(Vec::new()))?;
        if let Some(var) = replica.inputs.keys().next() {
            let reason = "a service takes its model from model:, not from a stage's artifacts";
            let errors = vec![super::SpecError {
                file: self.file.to_string(),
                line: line("env"),
                field: format!("env.{var}"),
                reason: reason.into(),
            }];
            return Err(SpecErrors(errors));
        }
        replica.timeout_ms = NO_TIMEOUT_MS;
        Ok(ServiceSpec {
            name: s.name,
            replica,
            port,
            replicas,
            autoscale,
            health,
            update,
            model: s.model,
        })
    }

    fn check_replicas(
        &mut self,
        s: &ServiceFile,
        autoscale: Option<&Autoscale>,
        line: &dyn Fn(&str) -> Option<usize>,
    ) -> u32 {
        let replicas = match s.replicas {
            None => autoscale.map_or(defaults::REPLICAS, |a| a.min.max(1).min(a.max)),
            Some(n) if (0..=limits::MAX_REPLICAS).contains(&n) => n as u32,
            Some(n) => {
                let reason = format!("{n} is out of range (0 to {})", limits::MAX_REPLICAS);
                self.push(line("replicas"), "replicas", reason);
                return 0;
            }
        };
        if let (Some(a), Some(_)) = (autoscale, s.replicas) {
            if replicas > a.max {
                let reason = format!("{replicas} is above autoscale.max ({})", a.max);
                self.push(line("replicas"), "replicas", reason);
            } else if replicas < a.min {
                let reason = format!("{replicas} is below autoscale.min ({})", a.min);
                self.push(line("replicas"), "replicas", reason);
            }
        }
        replicas
    }

    fn check_autoscale(
        &mut self,
        a: &AutoscaleFile,
        image: bool,
        line: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Autoscale> {
        let before = self.errors.len();
        let count = |n: i64| (0..=limits::MAX_REPLICAS).contains(&n).then_some(n as u32);
        let (min, max) = (count(a.min), count(a.max));
        if min.is_none() {
            let reason = format!("{} is out of range (0 to {})", a.min, limits::MAX_REPLICAS);
            self.push(line("min"), "autoscale.min", reason);
        }
        match max {
            Some(0) => self.push(line("max"), "autoscale.max", "must be at least 1".into()),
            None => {
                let reason = format!("{} is out of range (1 to {})", a.max, limits::MAX_REPLICAS);
                self.push(line("max"), "autoscale.max", reason);
            }
            Some(max) if min.is_some_and(|min| min > max) => {
                let reason = format!("{} is above autoscale.max ({max})", a.min);
                self.push(line("min"), "autoscale.min", reason);
            }
            Some(_) => {}
        }
        let metric = Metric::parse(&a.metric);
        if metric.is_none() {
            let reason = format!(
                "{:?} is not one of concurrency, rps, cpu, gpu, prometheus:<metric name>",
                a.metric
            );
            self.push(line("metric"), "autoscale.metric", reason);
        }
        let target = a.target.to_string().trim().parse::<f64>().ok();
        let target = target.filter(|t| t.is_finite() && *t > 0.0);
        if target.is_none() {
            let reason = format!("{} must be a number greater than zero", a.target);
            self.push(line("target"), "autoscale.target", reason);
        }
        let window_ms = self.duration(
            a.window.as_ref(),
            line("window"),
            "autoscale.window",
            defaults::WINDOW_MS,
        );
        let metrics = self.check_metrics(a, image, line);
        (self.errors.len() == before).then(|| Autoscale {
            min: min.unwrap_or(0),
            max: max.unwrap_or(1),
            metric: metric.unwrap_or(Metric::Concurrency),
            target: target.unwrap_or(1.0),
            window_ms,
            metrics,
        })
    }

    /// `autoscale.metrics`: a container port (image replicas) or `$METRICS_PORT` (process
    /// replicas), and a path from `/`.
    fn check_metrics(
        &mut self,
        a: &AutoscaleFile,
        image: bool,
        line: &dyn Fn(&str) -> Option<usize>,
    ) -> MetricsEndpoint {
        let Some(m) = &a.metrics else {
            return MetricsEndpoint::default();
        };
        let path = m.path.clone().unwrap_or_else(|| "/metrics".into());
        if !path.starts_with('/') {
            let reason = format!("{path:?} must start with '/'");
            self.push(line("path"), "autoscale.metrics.path", reason);
        }
        let port = match (&m.port, image) {
            (None, _) => MetricsPort::Serving,
            (Some(Scalar::Text(t)), false) if t == "$METRICS_PORT" => MetricsPort::Picked,
            (Some(Scalar::Int(p)), true) if (1..=65535).contains(p) => {
                MetricsPort::Container(*p as u16)
            }
            (Some(p), true) => {
                let reason = format!("{p} is not a port (1 to 65535) of the container");
                self.push(line("port"), "autoscale.metrics.port", reason);
                MetricsPort::Serving
            }
            (Some(p), false) => {
                let reason = format!(
                    "{p}: a process replica serves metrics on a port kiln picks: write $METRICS_PORT"
                );
                self.push(line("port"), "autoscale.metrics.port", reason);
                MetricsPort::Serving
            }
        };
        MetricsEndpoint { port, path }
    }

    fn check_health(&mut self, s: &ServiceFile, line: &dyn Fn(&str) -> Option<usize>) -> Health {
        let h = s.health.clone().unwrap_or_default();
        let chosen = [h.http.is_some(), h.tcp.is_some(), h.exec.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if chosen > 1 {
            let reason = "choose one of http, tcp and exec".into();
            self.push(line("health"), "health", reason);
        }
        let check = match (&h.http, &h.exec) {
            (Some(path), _) => {
                if !path.starts_with('/') {
                    let reason = format!("{path:?} must start with '/'");
                    self.push(line("http"), "health.http", reason);
                }
                HealthCheck::Http(path.clone())
            }
            (None, Some(cmd)) => {
                if cmd.trim().is_empty() {
                    self.push(line("exec"), "health.exec", "must not be empty".into());
                }
                HealthCheck::Exec(cmd.clone())
            }
            (None, None) => {
                if h.tcp == Some(false) {
                    let reason = "a service needs a health check: http, tcp: true, or exec".into();
                    self.push(line("tcp"), "health.tcp", reason);
                }
                HealthCheck::Tcp
            }
        };
        Health {
            check,
            interval_ms: self.duration(
                h.interval.as_ref(),
                line("interval"),
                "health.interval",
                defaults::HEALTH_INTERVAL_MS,
            ),
            timeout_ms: self.duration(
                h.timeout.as_ref(),
                line("timeout"),
                "health.timeout",
                defaults::HEALTH_TIMEOUT_MS,
            ),
            startup_ms: self.duration(
                h.startup.as_ref(),
                line("startup"),
                "health.startup",
                defaults::STARTUP_MS,
            ),
        }
    }

    fn check_update(&mut self, s: &ServiceFile, line: &dyn Fn(&str) -> Option<usize>) -> Update {
        let u = s.update.clone().unwrap_or_default();
        let mut count = |value: Option<i64>, key: &str, default: u32| match value {
            None => default,
            Some(n) if (0..=limits::MAX_REPLICAS).contains(&n) => n as u32,
            Some(n) => {
                let reason = format!("{n} is out of range (0 to {})", limits::MAX_REPLICAS);
                self.push(line(key), &format!("update.{key}"), reason);
                default
            }
        };
        let max_surge = count(u.max_surge, "max_surge", defaults::MAX_SURGE);
        let max_unavailable = count(u.max_unavailable, "max_unavailable", 0);
        let canary = count(u.canary, "canary", 0);
        if max_surge == 0 && max_unavailable == 0 {
            let reason = "max_surge and max_unavailable cannot both be 0: a rollout could never start a new replica or stop an old one".into();
            self.push(
                line("max_surge").or(line("max_unavailable")),
                "update",
                reason,
            );
        }
        Update {
            max_surge,
            max_unavailable,
            min_healthy_time_ms: self.duration(
                u.min_healthy_time.as_ref(),
                line("min_healthy_time"),
                "update.min_healthy_time",
                defaults::MIN_HEALTHY_TIME_MS,
            ),
            healthy_deadline_ms: self.duration(
                u.healthy_deadline.as_ref(),
                line("healthy_deadline"),
                "update.healthy_deadline",
                defaults::HEALTHY_DEADLINE_MS,
            ),
            canary,
            auto_promote: u.auto_promote.unwrap_or(false),
            auto_revert: u.auto_revert.unwrap_or(false),
        }
    }

    /// A duration field, `default` when absent.
    fn duration(
        &mut self,
        value: Option<&spec::Scalar>,
        line: Option<usize>,
        field: &str,
        default: u64,
    ) -> u64 {
        self.quantity(
            value,
            line,
            field,
            units::parse_duration_ms,
            default,
            spec::limits::MAX_TIMEOUT_MS,
            "hours",
            3_600_000,
        )
    }
}
