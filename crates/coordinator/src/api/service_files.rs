//! The service files of a submission's deploy stages. The pipeline names them by path; the
//! client sends their text (`SubmitRunRequest.service_files`), and each is checked here
//! with `parse_service`, so a bad service file is refused with the submission, naming its
//! own file and line, before anything is proposed.

use std::collections::HashMap;

use kiln_api::spec::{DeployStage, Pipeline};
use kiln_api::validate::parse_service;

use crate::error::{Error, Result};

/// The most a service file may hold.
const MAX_SERVICE_FILE: usize = 1 << 20;

/// Puts each deploy stage's service file text into the pipeline, checked.
pub fn attach(
    pipeline: &mut Pipeline,
    file: &str,
    mut sent: HashMap<String, String>,
) -> Result<()> {
    for stage in &mut pipeline.stages {
        let Some(DeployStage::Service {
            file: path,
            yaml,
            image,
            ..
        }) = &mut stage.deploy
        else {
            continue;
        };
        let field = format!("{file}: stages.{}.deploy.service", stage.name);
        let text = match sent.get(path.as_str()) {
            Some(text) => text.clone(),
            None => {
                return Err(Error::InvalidInput(format!(
                    "{field}: {path:?} was not sent with the submission (the kiln CLI reads it; other clients put its text in service_files[{path:?}])"
                )));
            }
        };
        if text.len() > MAX_SERVICE_FILE {
            return Err(Error::InvalidInput(format!(
                "{field}: {path:?} is larger than {MAX_SERVICE_FILE} bytes"
            )));
        }
        let spec = parse_service(path, &text).map_err(|e| Error::InvalidInput(e.to_string()))?;
        if spec.model.is_some() {
            return Err(Error::InvalidInput(format!(
                "{field}: {path}: model: deploy stages carry no model artifact yet; deploy it with kiln deploy"
            )));
        }
        if image.is_some() && spec.replica.container.is_none() {
            return Err(Error::InvalidInput(format!(
                "{file}: stages.{}.deploy.image: {path} runs a command, not an image, so there is no image to replace",
                stage.name
            )));
        }
        *yaml = text;
    }
    let named: Vec<String> = pipeline
        .stages
        .iter()
        .filter_map(|s| match &s.deploy {
            Some(DeployStage::Service { file, .. }) => Some(file.clone()),
            _ => None,
        })
        .collect();
    sent.retain(|path, _| !named.contains(path));
    match sent.keys().next() {
        Some(extra) => Err(Error::InvalidInput(format!(
            "{file}: service_files[{extra:?}]: no deploy: stage names it"
        ))),
        None => Ok(()),
    }
}
