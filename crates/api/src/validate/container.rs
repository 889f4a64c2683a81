//! Checks for the Docker driver's fields of a stage: `image:` (a reference, or the image an
//! earlier `build:` stage pushed) and `build:` (a context directory that must stay inside
//! the pipeline's directory, a Dockerfile inside the context, a registry repository name).
//!
//! These checks are lexical: the coordinator never sees the submitter's disk. The CLI checks
//! the same paths again on disk (symlinks included) when it packs the context.

use std::collections::BTreeMap;

use super::Checker;
use crate::spec::{Build, Container, DeployStage, ImageRef, Stage, StageFile};

impl Checker<'_> {
    /// `Some(None)` for a process stage, `Some(Some(_))` for a Docker stage, `None` when an
    /// error was recorded.
    pub(super) fn check_container(
        &mut self,
        s: &StageFile,
        path: &str,
        line: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Option<Container>> {
        match (&s.image, &s.build) {
            (None, None) => Some(None),
            (Some(_), Some(_)) => {
                self.push(
                    line("build"),
                    path,
                    "image: and build: cannot both be set (build a stage's image in one stage, run it in another)".into(),
                );
                None
            }
            (Some(image), None) => match parse_image(image) {
                Ok(r) => Some(Some(Container::Image(r))),
                Err(reason) => {
                    self.push(line("image"), &format!("{path}.image"), reason);
                    None
                }
            },
            (None, Some(b)) => {
                let before = self.errors.len();
                let context = relative_inside(&b.context).unwrap_or_else(|reason| {
                    let reason = format!("{:?} {reason} the pipeline's directory", b.context);
                    self.push(line("context"), &format!("{path}.build.context"), reason);
                    String::new()
                });
                let dockerfile = b.dockerfile.as_deref().unwrap_or("Dockerfile");
                let dockerfile = relative_inside(dockerfile).unwrap_or_else(|reason| {
                    let reason = format!("{dockerfile:?} {reason} the build context");
                    self.push(
                        line("dockerfile"),
                        &format!("{path}.build.dockerfile"),
                        reason,
                    );
                    String::new()
                });
                if let Err(reason) = check_repository(&b.name) {
                    self.push(line("name"), &format!("{path}.build.name"), reason);
                }
                (self.errors.len() == before).then(|| {
                    Some(Container::Build(Build {
                        context,
                        dockerfile,
                        name: b.name.clone(),
                        context_digest: String::new(),
                    }))
                })
            }
        }
    }

    /// `image: ${{ stages.b.image }}` (a stage's, or its `deploy:`'s) must name a stage that
    /// builds an image and that this stage needs, directly or not, so the image exists
    /// before this stage starts.
    pub(super) fn check_image_refs(
        &mut self,
        raw: &[StageFile],
        stages: &[Stage],
        index: &BTreeMap<String, usize>,
    ) {
        for stage in stages {
            let (built, key) = match (&stage.container, &stage.deploy) {
                (Some(Container::Image(ImageRef::Built { stage: built })), _) => (built, "image"),
                (
                    _,
                    Some(DeployStage::Service {
                        image: Some(ImageRef::Built { stage: built }),
                        ..
                    }),
                ) => (built, "deploy.image"),
                _ => continue,
            };
            let at = self.stage_line(&stage.name, 0);
            let line = at
                .and_then(|l| super::find_key_line(&self.lines, l - 1, "image"))
                .or(at);
            let field = format!("stages.{}.{key}", stage.name);
            let Some(&b) = index.get(built) else {
                self.push(line, &field, format!("unknown stage {built:?}"));
                continue;
            };
            if raw[b].build.is_none() {
                let reason = format!("stage {built:?} builds no image (it has no build:)");
                self.push(line, &field, reason);
            } else if !needs_transitively(raw, index, &stage.name, built) {
                let reason = format!(
                    "stage {built:?} must be among the stages {:?} needs, so that its image exists first",
                    stage.name
                );
                self.push(line, &field, reason);
            }
        }
    }
}

/// `${{ stages.NAME.image }}` → the stage it names; anything else is an image reference.
pub fn parse_image(text: &str) -> Result<ImageRef, String> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix("${{").and_then(|r| r.strip_suffix("}}")) {
        let parts: Vec<&str> = inner.trim().split('.').collect();
        return match parts.as_slice() {
            ["stages", name, "image"] if !name.is_empty() => Ok(ImageRef::Built {
                stage: name.to_string(),
            }),
            _ => Err(format!(
                "{t:?}: the only expression here is ${{{{ stages.NAME.image }}}}"
            )),
        };
    }
    if t.is_empty() {
        return Err("empty image reference".into());
    }
    if t.contains("${{") || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{t:?} is not an image reference"));
    }
    if t.len() > 255 {
        return Err("an image reference is at most 255 characters".into());
    }
    Ok(ImageRef::Named(t.to_string()))
}

/// A relative path that stays inside its base once `.` and `..` are resolved, normalised
/// (`a/./b/../c` → `a/c`, `.` for the base itself). The error completes "PATH ... BASE".
pub fn relative_inside(path: &str) -> Result<String, &'static str> {
    if path.starts_with('/') || path.contains('\\') {
        return Err("must be a relative path inside");
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("is outside");
                }
            }
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

/// A repository name as registries accept it: lowercase path components of letters and
/// digits, separated inside by `.`, `_` or `-`.
fn check_repository(name: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if name.len() > 128 || !name.split('/').all(component_ok) {
        return Err(format!(
            "{name:?} is not a repository name: lowercase letters, digits, and '.', '_', '-' or '/' between them"
        ));
    }
    Ok(())
}

/// Does `stage` need `target`, directly or through other stages?
pub(super) fn needs_transitively(
    raw: &[StageFile],
    index: &BTreeMap<String, usize>,
    stage: &str,
    target: &str,
) -> bool {
    let mut seen = vec![false; raw.len()];
    let mut todo: Vec<usize> = index.get(stage).copied().into_iter().collect();
    while let Some(i) = todo.pop() {
        for need in &raw[i].needs {
            if need == target {
                return true;
            }
            if let Some(&j) = index.get(need)
                && !seen[j]
            {
                seen[j] = true;
                todo.push(j);
            }
        }
    }
    false
}
