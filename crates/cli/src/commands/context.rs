//! Packing the build contexts of a pipeline's `build:` stages, to send with the submission.
//!
//! The spec's check already refused contexts that leave the pipeline's directory on paper;
//! here the same is checked on disk, with symlinks resolved, and the context is packed as a
//! tar archive of at most [`MAX_CONTEXT_BYTES`] (64 MiB) — past that the submission is
//! refused with the stage's name, before anything is sent. Symlinks inside the context are
//! packed as symlinks, never followed.

use std::collections::HashMap;

use std::path::Path;

use kiln_api::spec::{Container, DeployStage, Pipeline, limits::MAX_CONTEXT_BYTES};

use crate::error::CliError;

/// The packed context of every `build:` stage, by stage name. `dir` is the pipeline file's
/// directory; `file` names the file in messages.
pub fn pack_all(
    file: &str,
    dir: &Path,
    pipeline: &Pipeline,
) -> Result<HashMap<String, Vec<u8>>, CliError> {
    let mut out = HashMap::new();
    for stage in &pipeline.stages {
        let Some(Container::Build(build)) = &stage.container else {
            continue;
        };
        let field = format!("{file}: stages.{}.build", stage.name);
        let context = dir
            .join(&build.context)
            .canonicalize()
            .map_err(|e| CliError::Invalid(format!("{field}.context: {:?}: {e}", build.context)))?;
        if !context.starts_with(dir) {
            return Err(CliError::Invalid(format!(
                "{field}.context: {:?} is outside the pipeline's directory (through a symlink)",
                build.context
            )));
        }
        if !context.is_dir() {
            return Err(CliError::Invalid(format!(
                "{field}.context: {:?} is not a directory",
                build.context
            )));
        }
        if !context.join(&build.dockerfile).is_file() {
            return Err(CliError::Invalid(format!(
                "{field}.dockerfile: {:?} not found in the context {}",
                build.dockerfile,
                context.display()
            )));
        }
        let bytes = pack(&context).map_err(|e| match e.kind() {
            std::io::ErrorKind::FileTooLarge => CliError::Invalid(format!(
                "{field}.context: {:?} packs to more than the limit of {} MiB",
                build.context,
                MAX_CONTEXT_BYTES >> 20
            )),
            _ => CliError::Invalid(format!(
                "{field}.context: packing {}: {e}",
                context.display()
            )),
        })?;
        out.insert(stage.name.clone(), bytes);
    }
    Ok(out)
}

/// A tar of `dir`'s contents, refused once it grows past the limit.
fn pack(dir: &Path) -> std::io::Result<Vec<u8>> {
    kiln_api::artifact::pack_context(dir, MAX_CONTEXT_BYTES)
}

/// A service's model artifact (a file, or a directory's files), packed as the blob store
/// keeps artifacts ([`kiln_api::artifact::pack`]), at most [`MAX_CONTEXT_BYTES`].
pub fn pack_model(path: &Path) -> std::io::Result<Vec<u8>> {
    kiln_api::artifact::pack(path, MAX_CONTEXT_BYTES)
}

/// The text of every service file a `deploy:` stage names, by the path the pipeline gives,
/// each checked here first (inside the pipeline's directory on disk, and a valid service).
pub fn service_files(
    file: &str,
    dir: &Path,
    pipeline: &Pipeline,
) -> Result<HashMap<String, String>, CliError> {
    let mut out = HashMap::new();
    for stage in &pipeline.stages {
        let Some(DeployStage::Service { file: path, .. }) = &stage.deploy else {
            continue;
        };
        let field = format!("{file}: stages.{}.deploy.service", stage.name);
        let full = dir
            .join(path)
            .canonicalize()
            .map_err(|e| CliError::Invalid(format!("{field}: {path:?}: {e}")))?;
        if !full.starts_with(dir) {
            return Err(CliError::Invalid(format!(
                "{field}: {path:?} is outside the pipeline's directory (through a symlink)"
            )));
        }
        let text = std::fs::read_to_string(&full)
            .map_err(|e| CliError::Invalid(format!("{field}: {path:?}: {e}")))?;
        kiln_api::validate::parse_service(path, &text)
            .map_err(|e| CliError::Invalid(e.to_string()))?;
        out.insert(path.clone(), text);
    }
    Ok(out)
}
