//! Checks for a deploy stage's `deploy:`: a service file (a path beside the pipeline file)
//! and an environment, optionally an image built by a stage it needs; or a promotion of a
//! service by name from one environment into another. A deploy stage runs no command, image
//! or test suite of its own.
//!
//! The service file's text is not here (the coordinator never reads the submitter's disk):
//! the CLI sends it with the submission, and the coordinator checks it with
//! `parse_service` before anything is proposed.

use super::Checker;
use super::container::{parse_image, relative_inside};
use crate::spec::{DeployStage, StageFile};

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
                Some(DeployStage::Service {
                    file,
                    yaml: String::new(),
                    environment: d.environment.clone(),
                    image,
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
