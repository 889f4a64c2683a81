//! Turning pipeline YAML into a checked [`Pipeline`], or into [`SpecErrors`] that say where
//! and why: `pipeline.yaml:7: stages.test.needs: unknown stage "biuld"`.
//!
//! Syntax and type errors come with serde_yaml_ng's line; for the checks that run after
//! deserialising (names, the DAG, quantities) the line is found again in the source text by
//! looking for the stage's `name:` and then the field's key inside that stage's block. That
//! search is a heuristic over well-formed YAML; when it finds nothing the error still names
//! the field.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::rc::Rc;

use crate::spec::{
    Command, CommandFile, GpuRequest, Pipeline, PipelineFile, Resources, Scalar, Stage, StageFile,
    defaults, limits,
};
use crate::units;

mod container;
mod deploy;
mod service;
mod sharding;
mod triggers;

pub use deploy::check_environment;
pub use service::parse_service;

/// One problem with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: String,
    pub line: Option<usize>,
    /// The field's path, e.g. `stages.test.resources.cpu`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file, line)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Every problem found in a spec, one line each; shown, the first [`MAX_SHOWN_ERRORS`] and a
/// count of the rest (a spec with 150,000 bad stages answers a few KiB, not 13 MB that no
/// gRPC client would take).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

/// How many problems a message lists.
pub const MAX_SHOWN_ERRORS: usize = 20;
/// The longest one listed problem is shown.
const MAX_ERROR_LINE: usize = 500;

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().take(MAX_SHOWN_ERRORS).enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            let line = e.to_string();
            match line.char_indices().nth(MAX_ERROR_LINE) {
                Some((cut, _)) => write!(f, "{}…", &line[..cut])?,
                None => f.write_str(&line)?,
            }
        }
        let rest = self.0.len().saturating_sub(MAX_SHOWN_ERRORS);
        if rest > 0 {
            write!(
                f,
                "\n… and {rest} more problem{}",
                if rest == 1 { "" } else { "s" }
            )?;
        }
        Ok(())
    }
}

/// Parses and checks a pipeline spec. `file` is only used in messages.
pub fn parse_pipeline(file: &str, source: &str) -> Result<Pipeline, SpecErrors> {
    let raw: PipelineFile = serde_yaml_ng::from_str(source).map_err(|e| yaml_error(file, e))?;
    Checker::new(file, source).check(raw)
}

/// A syntax or type error, with serde_yaml_ng's line.
fn yaml_error(file: &str, e: serde_yaml_ng::Error) -> SpecErrors {
    let line = e.location().map(|l| l.line());
    let mut reason = e.to_string();
    // serde_yaml_ng appends " at line L column C"; the line is already in front.
    if let Some(at) = reason.find(" at line ") {
        reason.truncate(at);
    }
    SpecErrors(vec![SpecError {
        file: file.to_string(),
        line,
        field: String::new(),
        reason,
    }])
}

struct Checker<'a> {
    file: &'a str,
    lines: Rc<[&'a str]>,
    /// The lines of every `name:` key, by name, in order (found once: big pipelines stay linear).
    names: HashMap<&'a str, Vec<usize>>,
    errors: Vec<SpecError>,
}

impl<'a> Checker<'a> {
    fn new(file: &'a str, source: &'a str) -> Checker<'a> {
        Checker {
            file,
            lines: source.lines().collect(),
            names: name_lines(source),
            errors: Vec::new(),
        }
    }

    fn check(mut self, raw: PipelineFile) -> Result<Pipeline, SpecErrors> {
        if let Err(reason) = check_name(&raw.name) {
            let line = find_key_line(&self.lines, 0, "name");
            self.push(line, "name", reason);
        }
        let on = self.check_triggers(raw.on.as_ref());
        let concurrency = self.check_concurrency(raw.concurrency.as_ref());
        if raw.stages.is_empty() {
            let line = find_key_line(&self.lines, 0, "stages");
            self.push(line, "stages", "a pipeline needs at least one stage".into());
        }
        if raw.stages.len() > limits::MAX_STAGES {
            self.push(
                None,
                "stages",
                format!("more than {} stages", limits::MAX_STAGES),
            );
        }

        let mut seen = BTreeMap::new();
        let mut seen_names = HashMap::new();
        let mut stages = Vec::new();
        for (index, stage) in raw.stages.iter().enumerate() {
            let occurrence = bump(&mut seen_names, &stage.name);
            let at = self.stage_line(&stage.name, occurrence);
            if let Err(reason) = check_name(&stage.name) {
                self.push(at, &format!("stages[{index}].name"), reason);
                continue;
            }
            if seen.insert(stage.name.clone(), index).is_some() {
                self.push(
                    at,
                    &format!("stages.{}", stage.name),
                    "duplicate stage name".into(),
                );
                continue;
            }
            if let Some(stage) = self.check_stage(stage, at, &format!("stages.{}", stage.name)) {
                stages.push(stage);
            }
        }
        self.check_needs(&raw.stages, &seen);
        self.check_image_refs(&raw.stages, &stages, &seen);
        self.check_artifact_refs(&raw.stages, &stages, &seen);

        if self.errors.is_empty() {
            Ok(Pipeline {
                name: raw.name,
                on,
                concurrency,
                stages,
            })
        } else {
            Err(SpecErrors(self.errors))
        }
    }

    /// Checks one stage (or a service's replica, written like one); `path` prefixes the
    /// fields in errors (`stages.test`).
    fn check_stage(&mut self, s: &StageFile, at: Option<usize>, path: &str) -> Option<Stage> {
        let before = self.errors.len();
        let path = path.to_string();
        let lines = self.lines.clone();
        let line = |key: &str| at.and_then(|l| find_key_line(&lines, l - 1, key)).or(at);

        let container = self.check_container(s, &path, &line);
        let deploy = self.check_deploy(s, &path, &line);
        let artifacts = self.check_artifacts(s, &path, &line);
        let shards = self.check_shards(s, &path, &line);
        let tests = self.check_tests(s, &path, &line);
        let command = match &s.command {
            None if s.image.is_some()
                || s.build.is_some()
                || s.tests.is_some()
                || s.deploy.is_some() =>
            {
                Some(Command::None)
            }
            None => {
                self.push(
                    at,
                    &format!("{path}.command"),
                    "missing: a stage without image:, build:, tests: or deploy: needs a command"
                        .into(),
                );
                None
            }
            Some(CommandFile::Shell(text)) if text.trim().is_empty() => {
                self.push(
                    line("command"),
                    &format!("{path}.command"),
                    "empty command".into(),
                );
                None
            }
            Some(CommandFile::Argv(argv)) if argv.first().is_none_or(|a| a.trim().is_empty()) => {
                self.push(
                    line("command"),
                    &format!("{path}.command"),
                    "empty command".into(),
                );
                None
            }
            Some(CommandFile::Shell(text)) => Some(Command::Shell(text.clone())),
            Some(CommandFile::Argv(argv)) => Some(Command::Argv(argv.clone())),
        };

        let cpu_millis = self.quantity(
            s.resources.cpu.as_ref(),
            line("cpu"),
            &format!("{path}.resources.cpu"),
            units::parse_cpu,
            defaults::CPU_MILLIS,
            limits::MAX_CPU_MILLIS,
            "cores",
            1000,
        );
        let memory_bytes = self.quantity(
            s.resources.memory.as_ref(),
            line("memory"),
            &format!("{path}.resources.memory"),
            units::parse_memory,
            defaults::MEMORY_BYTES,
            limits::MAX_MEMORY_BYTES,
            "GiB",
            1 << 30,
        );
        let timeout_ms = self.quantity(
            s.timeout.as_ref(),
            line("timeout"),
            &format!("{path}.timeout"),
            units::parse_duration_ms,
            defaults::TIMEOUT_MS,
            limits::MAX_TIMEOUT_MS,
            "hours",
            3_600_000,
        );

        let gpu = self.check_gpu(s, &path, &line);

        let retries = match s.retries {
            None => 0,
            Some(r) if (0..=limits::MAX_RETRIES).contains(&r) => r as u32,
            Some(r) => {
                let reason = format!("{r} is out of range (0 to {})", limits::MAX_RETRIES);
                self.push(line("retries"), &format!("{path}.retries"), reason);
                0
            }
        };
        for key in s.env.keys() {
            if let Err(reason) = check_env_name(key) {
                self.push(line("env"), &format!("{path}.env"), reason);
            }
        }
        for (i, name) in s.secrets.iter().enumerate() {
            if let Err(reason) = check_env_name(name) {
                self.push(line("secrets"), &format!("{path}.secrets[{i}]"), reason);
            } else if s.env.contains_key(name) {
                let reason = format!("{name} is also in env: a secret's variable is its own");
                self.push(line("secrets"), &format!("{path}.secrets[{i}]"), reason);
            }
        }
        // `VAR: ${{ stages.X.artifacts.NAME }}`: an input, not a value.
        let mut env = s.env.clone();
        let mut inputs = BTreeMap::new();
        for (key, value) in &s.env {
            if !value.trim_start().starts_with("${{") {
                continue;
            }
            match deploy::parse_artifact_ref(value) {
                // The agent gives a fetched input as a path on the node, which a container
                // would not see.
                Ok(_) if s.image.is_some() || s.build.is_some() => {
                    let reason = "an image or build stage takes no artifact inputs (they are paths on the node)".to_string();
                    self.push(line("env"), &format!("{path}.env.{key}"), reason);
                }
                Ok(r) => {
                    env.remove(key);
                    inputs.insert(key.clone(), r);
                }
                Err(reason) => self.push(line("env"), &format!("{path}.env.{key}"), reason),
            }
        }

        if self.errors.len() > before {
            return None;
        }
        Some(Stage {
            name: s.name.clone(),
            needs: s.needs.clone(),
            command: command?,
            env,
            resources: Resources {
                cpu_millis,
                memory_bytes,
            },
            gpu,
            retries,
            timeout_ms,
            constraints: s.constraints.clone(),
            container: container?,
            shards: shards?,
            tests: tests?,
            deploy: deploy?,
            artifacts: artifacts?,
            inputs,
            interruptible: s.interruptible.unwrap_or(true),
            secrets: s.secrets.clone(),
        })
    }

    /// `gpus`, `gpu_memory`, `gpu_model`, `gpu_min_memory`.
    fn check_gpu(
        &mut self,
        s: &StageFile,
        path: &str,
        line: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<GpuRequest> {
        let r = &s.resources;
        let count = match r.gpus {
            None => 0,
            Some(n) if (1..=limits::MAX_GPUS).contains(&n) => n as u32,
            Some(n) => {
                let reason = format!("{n} is out of range (1 to {})", limits::MAX_GPUS);
                self.push(line("gpus"), &format!("{path}.resources.gpus"), reason);
                0
            }
        };
        let mut memory = |value: Option<&Scalar>, key: &str| {
            self.quantity(
                value,
                line(key),
                &format!("{path}.resources.{key}"),
                units::parse_memory,
                0,
                limits::MAX_GPU_MEMORY_BYTES,
                "GiB",
                1 << 30,
            )
        };
        let share_bytes = memory(r.gpu_memory.as_ref(), "gpu_memory");
        let min_memory_bytes = memory(r.gpu_min_memory.as_ref(), "gpu_min_memory");
        if r.gpus.is_some() && r.gpu_memory.is_some() {
            let reason =
                "use gpus for whole GPUs or gpu_memory for a share of one, not both".into();
            self.push(
                line("gpu_memory"),
                &format!("{path}.resources.gpu_memory"),
                reason,
            );
        }
        if let Some(glob) = &r.gpu_model
            && glob.trim().is_empty()
        {
            let field = format!("{path}.resources.gpu_model");
            self.push(line("gpu_model"), &field, "empty model glob".into());
        }
        let asks_gpu = count > 0 || share_bytes > 0;
        if !asks_gpu && (r.gpu_model.is_some() || r.gpu_min_memory.is_some()) {
            let reason = "gpu_model and gpu_min_memory need gpus or gpu_memory".into();
            let at = line("gpu_model").or(line("gpu_min_memory"));
            self.push(at, &format!("{path}.resources"), reason);
        }
        asks_gpu.then(|| GpuRequest {
            count,
            share_bytes,
            model: r.gpu_model.clone(),
            min_memory_bytes,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn quantity(
        &mut self,
        value: Option<&Scalar>,
        line: Option<usize>,
        field: &str,
        parse: fn(&str) -> Result<u64, String>,
        default: u64,
        max: u64,
        unit_name: &str,
        unit: u64,
    ) -> u64 {
        let Some(value) = value else { return default };
        match parse(&value.to_string()) {
            Ok(0) => self.push(line, field, format!("{value} must be greater than zero")),
            Ok(v) if v > max => self.push(
                line,
                field,
                format!(
                    "{value} is more than the limit of {} {unit_name}",
                    max / unit
                ),
            ),
            Ok(v) => return v,
            Err(reason) => self.push(line, field, reason),
        }
        default
    }

    fn check_needs(&mut self, stages: &[StageFile], index: &BTreeMap<String, usize>) {
        let mut seen_names = HashMap::new();
        for s in stages {
            let occurrence = bump(&mut seen_names, &s.name);
            let at = self.stage_line(&s.name, occurrence);
            let line = at
                .and_then(|l| find_key_line(&self.lines, l - 1, "needs"))
                .or(at);
            for need in &s.needs {
                if need == &s.name {
                    self.push(
                        line,
                        &format!("stages.{}.needs", s.name),
                        "a stage cannot need itself".into(),
                    );
                } else if !index.contains_key(need) {
                    self.push(
                        line,
                        &format!("stages.{}.needs", s.name),
                        format!("unknown stage {need:?}"),
                    );
                }
            }
        }
        if let Some(cycle) = find_cycle(stages, index) {
            let at = self.stage_line(&cycle[0], 0);
            let line = at
                .and_then(|l| find_key_line(&self.lines, l - 1, "needs"))
                .or(at);
            let path = format!("stages.{}.needs", cycle[0]);
            self.push(line, &path, format!("cycle: {}", cycle.join(" -> ")));
        }
    }

    /// The 1-based line of the `occurrence`-th stage named `name` (its `name:` key).
    fn stage_line(&self, name: &str, occurrence: usize) -> Option<usize> {
        self.names
            .get(name)
            .and_then(|lines| lines.get(occurrence))
            .copied()
    }

    fn push(&mut self, line: Option<usize>, field: &str, reason: String) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line,
            field: field.to_string(),
            reason,
        });
    }
}

/// A stage or pipeline name: 1 to 63 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() {
        Err("must not be empty".into())
    } else if name.len() > limits::MAX_NAME_LEN {
        Err(format!("longer than {} characters", limits::MAX_NAME_LEN))
    } else if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Err(format!(
            "{name:?} may hold only letters, digits, '_', '-' and '.', and must start with a letter or digit"
        ))
    } else {
        Ok(())
    }
}

/// A variable a user may set: a valid name, and not one of kiln's own (`KILN_*`, which kiln
/// sets and an agent trusts, e.g. the model directory it mounts).
pub fn check_env_name(name: &str) -> Result<(), String> {
    if !is_env_name(name) {
        return Err(format!("{name:?} is not a valid environment variable name"));
    }
    if name.starts_with("KILN_") {
        return Err(format!("{name:?}: KILN_* variables are kiln's own"));
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Finds one cycle among known `needs`, as the path of stage names that closes it.
fn find_cycle(stages: &[StageFile], index: &BTreeMap<String, usize>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        at: usize,
        stages: &[StageFile],
        index: &BTreeMap<String, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        marks[at] = Mark::Active;
        path.push(at);
        for need in &stages[at].needs {
            let Some(&next) = index.get(need) else {
                continue;
            };
            if next == at {
                continue; // reported as "cannot need itself"
            }
            match marks[next] {
                Mark::Active => {
                    let from = path.iter().position(|&p| p == next).unwrap_or(0);
                    let mut cycle: Vec<String> = path[from..]
                        .iter()
                        .map(|&p| stages[p].name.clone())
                        .collect();
                    cycle.push(stages[next].name.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, stages, index, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[at] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; stages.len()];
    for (name, &i) in index {
        let _ = name;
        if marks[i] == Mark::New
            && let Some(c) = visit(i, stages, index, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The 1-based lines of every `name: X` key, by X, in order.
fn name_lines(source: &str) -> HashMap<&str, Vec<usize>> {
    let mut names: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, l) in source.lines().enumerate() {
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        if let Some(v) = t.strip_prefix("name:") {
            let v = v.split(" #").next().unwrap_or("").trim();
            names
                .entry(v.trim_matches(|c| c == '"' || c == '\''))
                .or_default()
                .push(i + 1);
        }
    }
    names
}

/// Counts one more occurrence of `name`; returns how many came before.
fn bump<'n>(seen: &mut HashMap<&'n str, usize>, name: &'n str) -> usize {
    let n = seen.entry(name).or_default();
    *n += 1;
    *n - 1
}

/// The 1-based line of `key:` at or after 0-based line `from`, within the same list item
/// (stops at the next `- ` item at the item's own indentation or shallower).
fn find_key_line(lines: &[&str], from: usize, key: &str) -> Option<usize> {
    let first = lines.get(from)?;
    let item_indent = first.len() - first.trim_start().len();
    for (i, line) in lines.iter().enumerate().skip(from) {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim_start();
        if i > from && t.starts_with("- ") && indent <= item_indent {
            return None;
        }
        let t = t.trim_start_matches("- ");
        if t.starts_with(&format!("{key}:"))
            || t.contains(&format!(" {key}:"))
            || t.contains(&format!("{{{key}:"))
        {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests;
