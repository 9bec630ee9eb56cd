//! Flags that select a compose project, as `docker compose` names them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use skiff_model::{Environment, StackSpec};
use skiff_spec::diag::SpecError;
use skiff_spec::node::Limits;
use skiff_spec::project::{LoadOptions, LoadedProject, load};
use skiff_spec::{render, runtime};

use crate::fs_loader::{FsLoader, WithStored};
use crate::output;

#[derive(clap::Args, Clone, Debug)]
pub struct ProjectArgs {
    /// Compose file (repeatable; later files override earlier ones).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Project (stack) name.
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    pub project_name: Option<String>,
    /// Directory that relative paths in the files are resolved against.
    #[arg(long = "project-directory", value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
    /// Variables for interpolation, instead of the project's .env (repeatable).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Enable services of this profile (repeatable; default: COMPOSE_PROFILES).
    #[arg(long = "profile", value_name = "NAME")]
    pub profiles: Vec<String>,
}

impl ProjectArgs {
    /// Loads the project; on invalid input prints every diagnostic and returns the exit code.
    pub fn load(&self) -> anyhow::Result<Result<LoadedProject, ExitCode>> {
        self.load_in(None)
    }

    /// [`ProjectArgs::load`] for deploying into `env`: its values interpolate under the
    /// shell's and `.env`'s, its override files (shown as `env:<env>/<name>`) merge after the
    /// user's files.
    pub fn load_in(
        &self,
        env: Option<&Environment>,
    ) -> anyhow::Result<Result<LoadedProject, ExitCode>> {
        let limits = Limits::default();
        let working_dir = std::env::current_dir()?;
        let mut stored = BTreeMap::new();
        let mut extra_files = Vec::new();
        for f in env.map(|e| e.overrides.as_slice()).unwrap_or_default() {
            let name = PathBuf::from(format!("env:{}/{}", env.map_or("", |e| &e.name), f.name));
            stored.insert(
                skiff_spec::loader::normalize(&working_dir.join(&name)),
                f.content.clone(),
            );
            extra_files.push(name);
        }
        let loader = WithStored {
            stored,
            disk: FsLoader {
                max_bytes: limits.max_bytes,
            },
        };
        let opts = LoadOptions {
            values: env.map(|e| e.values.clone()).unwrap_or_default(),
            extra_files,
            files: self.files.clone(),
            working_dir,
            project_dir: self.project_directory.clone(),
            project_name: self.project_name.clone(),
            env: std::env::vars().collect(),
            env_files: self.env_files.clone(),
            profiles: self.profiles.clone(),
            limits,
        };
        match load(&loader, &opts) {
            Ok(p) => Ok(Ok(p)),
            Err(SpecError { diagnostics }) => {
                output::print_diagnostics(&diagnostics, &[]);
                Ok(Err(ExitCode::FAILURE))
            }
        }
    }

    /// What `up` submits for the project: loaded and validated (warnings printed), its
    /// runtime spec and resolved text; on invalid input the diagnostics are printed and the
    /// exit code returned. `skiff diff` compares exactly this with the current release.
    /// In `env` (its record, if it has one) its values and override files take part, and the
    /// spec carries its values.
    pub fn release(&self, env: Option<&Environment>) -> anyhow::Result<Result<Prepared, ExitCode>> {
        let loaded = match self.load_in(env)? {
            Ok(p) => p,
            Err(code) => return Ok(Err(code)),
        };
        output::print_diagnostics(&[], &loaded.warnings);
        let mut spec = match stack_spec(&loaded) {
            Ok(s) => s,
            Err(code) => return Ok(Err(code)),
        };
        // Config templates get the environment's values they read; one they read and the
        // environment lacks stops the release here, not an instance's start.
        let values = env.map(|e| e.values.clone()).unwrap_or_default();
        if let Err(why) = skiff_spec::template::apply_values(&mut spec, &values) {
            for line in why.lines() {
                eprintln!("error: {line}");
            }
            return Ok(Err(ExitCode::FAILURE));
        }
        Ok(Ok(Prepared {
            spec,
            source: render::to_yaml(&loaded.project)?,
            name: loaded.name,
        }))
    }
}

/// A project as `up` submits it.
pub struct Prepared {
    /// The stack's name.
    pub name: String,
    pub spec: StackSpec,
    /// The resolved compose text (`skiff config`).
    pub source: String,
}

/// The runtime spec of a loaded project, its configs' files read from disk (at most
/// `MAX_CONFIG_BYTES` + 1 bytes of one); on a config that cannot be had, prints why and
/// returns the exit code.
pub fn stack_spec(loaded: &LoadedProject) -> Result<StackSpec, ExitCode> {
    let loader = FsLoader {
        max_bytes: runtime::MAX_CONFIG_BYTES,
    };
    runtime::stack_spec(loaded, &loader).map_err(|SpecError { diagnostics }| {
        output::print_diagnostics(&diagnostics, &[]);
        ExitCode::FAILURE
    })
}
