//! `skiff config` output: the resolved project as YAML or JSON that loads back to an equal
//! project.
//!
//! Interpolation already happened, so every `$` left in a value is literal; it is written as
//! `$$` (as `docker compose config` does) so that loading the output again does not interpolate
//! it a second time.

use serde_json::Value as Json;

use crate::model::Project;

/// Why a project could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("writing the project: {0}")]
    Json(#[from] serde_json::Error),
    #[error("writing the project as YAML: {0}")]
    Yaml(String),
}

/// The project as compose YAML.
pub fn to_yaml(project: &Project) -> Result<String, RenderError> {
    serde_saphyr::to_string(&escaped(project)?).map_err(|e| RenderError::Yaml(e.to_string()))
}

/// The project as pretty-printed JSON (also valid compose input).
pub fn to_json(project: &Project) -> Result<String, RenderError> {
    Ok(serde_json::to_string_pretty(&escaped(project)?)? + "\n")
}

fn escaped(project: &Project) -> Result<Json, RenderError> {
    let mut v = serde_json::to_value(project)?;
    escape_dollars(&mut v);
    Ok(v)
}

fn escape_dollars(v: &mut Json) {
    match v {
        Json::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Json::Array(items) => items.iter_mut().for_each(escape_dollars),
        Json::Object(map) => map.values_mut().for_each(escape_dollars),
        _ => {}
    }
}
