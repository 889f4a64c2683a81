//! Checks for a deploy stage's `deploy:`: a service file (a path beside the pipeline file)
//! and an environment, optionally an image built by a stage it needs; or a promotion of a
//! service by name from one environment into another. A deploy stage runs no command, image
//! or test suite of its own.
//!
//! The service file's text is not here (the coordinator never reads the submitter's disk):
//! the CLI sends it with the submission, and the coordinator checks it with
//! `parse_service` before anything is proposed.

use std::collections::BTreeMap;

use super::Checker;
use super::container::{needs_transitively, parse_image, relative_inside};
use crate::spec::{ArtifactRef, DeployStage, Stage, StageFile, artifact_name};

impl Checker<'_> {
    /// `Some(None)` for a stage without `deploy:`, `Some(Some(_))` for a deploy stage, `None`
    /// when an error was recorded.
    pub(super) fn check_deploy(
        &mut self,
        s: &StageFile,
        path: &str,
        line: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Option<DeployStage>> {
        let Some(d) = &s.deploy else {
            return Some(None);
        };
        let before = self.errors.len();
        let field = |key: &str| format!("{path}.deploy.{key}");
        let refuse = |this: &mut Self, key: &str, reason: &str| {
            this.push(line(key), &field(key), reason.to_string());
        };
        let own = [
            ("command", s.command.is_some()),
            ("image", s.image.is_some()),
            ("build", s.build.is_some()),
            ("tests", s.tests.is_some()),
            ("shards", s.shards.is_some()),
        ];
        for (key, set) in own {
            if set {
                let reason = format!("a deploy stage runs no {key} of its own");
                self.push(line(key), &format!("{path}.{key}"), reason);
            }
        }
        if let Some(env) = &d.environment
            && let Err(reason) = check_environment(env)
        {
            refuse(self, "environment", &reason);
        }
        let stage = match (&d.service, &d.promote) {
            (Some(_), Some(_)) => {
                refuse(self, "promote", "service: and promote: cannot both be set");
                None
            }
            (None, None) => {
                refuse(
                    self,
                    "service",
                    "missing: a service file to deploy, or promote: a service's name",
                );
                None
            }
            (Some(file), None) => {
                if d.from.is_some() {
                    refuse(self, "from", "from: goes with promote:");
                }
                let file = relative_inside(file).unwrap_or_else(|reason| {
                    refuse(
                        self,
                        "service",
                        &format!("{file:?} {reason} the pipeline's directory"),
                    );
                    String::new()
                });
                let image = match d.image.as_deref().map(parse_image) {
                    None => None,
                    Some(Ok(image)) => Some(image),
                    Some(Err(reason)) => {
                        refuse(self, "image", &reason);
                        None
                    }
                };
                let model = match d.model.as_deref().map(parse_artifact_ref) {
                    None => None,
                    Some(Ok(model)) => Some(model),
                    Some(Err(reason)) => {
                        refuse(self, "model", &reason);
                        None
                    }
                };
                Some(DeployStage::Service {
                    file,
                    yaml: String::new(),
                    environment: d.environment.clone(),
                    image,
                    model,
                })
            }
            (None, Some(service)) => {
                if d.image.is_some() {
                    refuse(
                        self,
                        "image",
                        "a promotion deploys the image running in from:",
                    );
                }
                if d.model.is_some() {
                    refuse(
                        self,
                        "model",
                        "a promotion deploys the model running in from:",
                    );
                }
                let from = d.from.clone().unwrap_or_else(|| {
                    refuse(self, "from", "missing: the environment to promote from");
                    String::new()
                });
                let environment = d.environment.clone().unwrap_or_else(|| {
                    refuse(
                        self,
                        "environment",
                        "missing: the environment to promote into",
                    );
                    String::new()
                });
                if !from.is_empty() && from == environment {
                    refuse(self, "from", "promoting from an environment to itself");
                }
                Some(DeployStage::Promote {
                    service: service.clone(),
                    from,
                    environment,
                })
            }
        };
        (self.errors.len() == before).then_some(stage)
    }
}

impl Checker<'_> {
    /// `artifacts:`: paths inside the stage's work directory, with distinct names; a deploy
    /// stage has no work directory to publish from.
    pub(super) fn check_artifacts(
        &mut self,
        s: &StageFile,
        path: &str,
        line: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Vec<String>> {
        let Some(paths) = &s.artifacts else {
            return Some(Vec::new());
        };
        let before = self.errors.len();
        let field = format!("{path}.artifacts");
        if s.deploy.is_some() || s.build.is_some() || s.tests.is_some() {
            let reason =
                "only a stage that runs a command (on the node or in an image) publishes artifacts"
                    .to_string();
            self.push(line("artifacts"), &field, reason);
        }
        let mut names = BTreeMap::new();
        for p in paths {
            match relative_inside(p) {
                Ok(rel) if !rel.is_empty() && rel != "." => {
                    if let Some(other) = names.insert(artifact_name(&rel).to_string(), p) {
                        let reason = format!(
                            "{p:?} and {other:?} would both be named {:?}",
                            artifact_name(&rel)
                        );
                        self.push(line("artifacts"), &field, reason);
                    }
                }
                Ok(_) => {
                    let reason = format!("{p:?}: name a file or directory in the work directory");
                    self.push(line("artifacts"), &field, reason);
                }
                Err(reason) => {
                    let reason = format!("{p:?} {reason} the work directory");
                    self.push(line("artifacts"), &field, reason);
                }
            }
        }
        (self.errors.len() == before).then(|| paths.clone())
    }

    /// `model: ${{ stages.X.artifacts.NAME }}` must name a stage this one needs (directly
    /// or not) that publishes an artifact NAME.
    pub(super) fn check_artifact_refs(
        &mut self,
        raw: &[StageFile],
        stages: &[Stage],
        index: &BTreeMap<String, usize>,
    ) {
        for stage in stages {
            let model = match &stage.deploy {
                Some(DeployStage::Service { model: Some(m), .. }) => {
                    Some(("model", "deploy.model".to_string(), m))
                }
                _ => None,
            };
            let inputs = stage
                .inputs
                .iter()
                .map(|(var, r)| ("env", format!("env.{var}"), r));
            for (key, field, r) in model.into_iter().chain(inputs) {
                self.check_artifact_ref(raw, index, &stage.name, key, &field, r);
            }
        }
    }

    fn check_artifact_ref(
        &mut self,
        raw: &[StageFile],
        index: &BTreeMap<String, usize>,
        stage: &str,
        key: &str,
        field: &str,
        ArtifactRef { stage: from, name }: &ArtifactRef,
    ) {
        let at = self.stage_line(stage, 0);
        let line = at
            .and_then(|l| super::find_key_line(&self.lines, l - 1, key))
            .or(at);
        let field = format!("stages.{stage}.{field}");
        let Some(&i) = index.get(from) else {
            self.push(line, &field, format!("unknown stage {from:?}"));
            return;
        };
        let publishes = raw[i]
            .artifacts
            .iter()
            .flatten()
            .any(|p| artifact_name(p) == name);
        if !publishes {
            let reason = format!("stage {from:?} publishes no artifact named {name:?}");
            self.push(line, &field, reason);
        } else if !needs_transitively(raw, index, stage, from) {
            let reason = format!(
                "stage {from:?} must be among the stages {stage:?} needs, so that its artifact exists first"
            );
            self.push(line, &field, reason);
        }
    }
}

/// `${{ stages.NAME.artifacts.ART }}` → the artifact it names.
pub fn parse_artifact_ref(text: &str) -> Result<ArtifactRef, String> {
    let t = text.trim();
    let inner = t
        .strip_prefix("${{")
        .and_then(|r| r.strip_suffix("}}"))
        .map(str::trim);
    let parts: Vec<&str> = inner.map(|i| i.split('.').collect()).unwrap_or_default();
    match parts.as_slice() {
        ["stages", stage, "artifacts", name] if !stage.is_empty() && !name.is_empty() => {
            Ok(ArtifactRef {
                stage: stage.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(format!(
            "{t:?}: name an artifact a stage published, as ${{{{ stages.NAME.artifacts.ART }}}}"
        )),
    }
}

/// An environment's name: a name, and no '.' (gateways route `SERVICE.ENV`).
pub fn check_environment(name: &str) -> Result<(), String> {
    super::check_name(name)?;
    if name.contains('.') {
        return Err(format!(
            "{name:?} may not hold '.' (gateways route SERVICE.ENV)"
        ));
    }
    Ok(())
}
