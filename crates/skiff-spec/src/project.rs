//! Loading a compose project: file discovery, `.env`, and the per-file pipeline.
//!
//! ```text
//!  for each -f file:  read → parse → interpolate → include → extends → merge ─┐
//!                                                                            ▼
//!           typed model ◀── from_node ◀── merged tree ── normalize ── validate
//! ```
//!
//! As in compose: the project directory is `--project-directory`, else the first file's
//! directory; `.env` there (or `--env-file`) feeds interpolation, and the process environment
//! wins over it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::de::from_node;
use crate::diag::{Diagnostic, Pos, SpecError};
use crate::loader::{Loader, ReadError, dir_of, normalize, resolve};
use crate::model::{Driver, Project, VolumeKind};
use crate::node::{Limits, Map, Node};
use crate::{dotenv, extends, interpolate, merge, schema, validate};

/// File names tried, in order, when no `-f` is given; each with its `*.override.*` partner.
pub const DEFAULT_FILES: &[(&str, &str)] = &[
    ("compose.yaml", "compose.override.yaml"),
    ("compose.yml", "compose.override.yml"),
    ("docker-compose.yaml", "docker-compose.override.yaml"),
    ("docker-compose.yml", "docker-compose.override.yml"),
];

/// What the command line and the process environment say about the project.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `-f` files in order; empty means discover (`COMPOSE_FILE`, then [`DEFAULT_FILES`]).
    pub files: Vec<PathBuf>,
    /// The current directory (absolute), where discovery starts.
    pub working_dir: PathBuf,
    /// `--project-directory`.
    pub project_dir: Option<PathBuf>,
    /// `-p/--project-name`.
    pub project_name: Option<String>,
    /// The process environment.
    pub env: BTreeMap<String, String>,
    /// `--env-file` (replaces the project's `.env`).
    pub env_files: Vec<PathBuf>,
    /// `--profile`; empty means `COMPOSE_PROFILES`.
    pub profiles: Vec<String>,
    pub limits: Limits,
    /// The environment's values: variables under `.env`'s and the process's (those win),
    /// over `${VAR:-default}` defaults.
    pub values: BTreeMap<String, String>,
    /// Files merged after the `-f` (or discovered) ones, in order: the environment's
    /// override files, read through the loader like any other.
    pub extra_files: Vec<PathBuf>,
}

/// A loaded, normalized and validated project.
#[derive(Clone, Debug)]
pub struct LoadedProject {
    /// The stack name.
    pub name: String,
    pub project: Project,
    /// The merged tree the model was read from, for positions in later diagnostics.
    pub tree: Node,
    pub files: Vec<PathBuf>,
    pub project_dir: PathBuf,
    /// Variables available to interpolation (process environment over `.env`).
    pub environment: BTreeMap<String, String>,
    pub warnings: Vec<Diagnostic>,
}

/// Loads, merges, normalizes and validates a project.
pub fn load(loader: &dyn Loader, opts: &LoadOptions) -> Result<LoadedProject, SpecError> {
    let mut warnings = Vec::new();
    let (files, project_dir, environment) = discover(loader, opts)?;
    let lookup = |k: &str| environment.get(k).cloned();

    let mut merged: Option<Node> = None;
    for file in &files {
        for doc in read_documents(loader, opts, file, &lookup, &mut warnings, &mut Vec::new())? {
            let next = match merged {
                None => doc,
                Some(base) => merge::merge_files(base, doc)?,
            };
            // As compose-go: the schema holds for every file's merge result, before any type
            // is read, so its errors come first and the typed reader never repeats them.
            schema::check(&next)?;
            merged = Some(next);
        }
    }
    let first = shown(opts, &files[0]);
    let mut tree = merged.unwrap_or_else(|| Node::map(Pos::new(first.as_str(), 1, 1), Map::new()));
    if tree.is_null() {
        tree = Node::map(tree.pos.clone(), Map::new());
    }
    if tree.as_map().is_some_and(Map::is_empty) {
        // compose-go: "empty compose file" when nothing is left after every file is merged.
        return Err(SpecError::at(
            &Pos::new(first.as_str(), 1, 1),
            "",
            "empty compose file",
        ));
    }
    if let Some(m) = tree.as_map_mut() {
        // Resolved above; the typed model keeps no trace of them.
        m.remove("include");
    }

    let mut project: Project = from_node(&tree, "")?;
    if project.version.is_some() {
        let pos = crate::validate::key_pos(&tree, &["version"]);
        warnings.push(Diagnostic::new(
            pos,
            "version",
            "the attribute is obsolete and ignored",
        ));
    }
    let name = project_name(&project, opts, &environment, &project_dir, &tree)?;
    project.name = Some(name.clone());

    let profiles = active_profiles(opts, &environment);
    apply_profiles(&mut project, &profiles, &tree)?;
    normalize_project(
        loader,
        &mut project,
        &name,
        &project_dir,
        &environment,
        &tree,
    )?;
    validate::validate(&project, &tree, loader, &mut warnings)?;

    Ok(LoadedProject {
        name,
        project,
        tree,
        files,
        project_dir,
        environment,
        warnings,
    })
}

fn display(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// How a file is named in diagnostics: relative to the working directory when below it.
fn shown(opts: &LoadOptions, p: &Path) -> String {
    display(p.strip_prefix(&opts.working_dir).unwrap_or(p))
}

fn read_text(loader: &dyn Loader, path: &Path, what: &str) -> Result<String, SpecError> {
    loader.read(path).map_err(|e| match e {
        ReadError::NotFound => SpecError::msg(format!("{what} {} not found", display(path))),
        ReadError::Other(m) => SpecError::msg(format!("cannot read {what} {}: {m}", display(path))),
    })
}

/// Reads one compose file into interpolated documents with `include` and `extends` resolved.
fn read_documents(
    loader: &dyn Loader,
    opts: &LoadOptions,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<Diagnostic>,
    including: &mut Vec<PathBuf>,
) -> Result<Vec<Node>, SpecError> {
    let name = shown(opts, file);
    if including.contains(&file.to_path_buf()) {
        let chain: Vec<String> = including
            .iter()
            .chain(std::iter::once(&file.to_path_buf()))
            .map(|f| shown(opts, f))
            .collect();
        return Err(SpecError::msg(format!(
            "include cycle: {}",
            chain.join(" -> ")
        )));
    }
    let text = loader
        .read(file)
        .map_err(|e| SpecError::msg(format!("cannot read compose file {name}: {e}")))?;
    let mut docs = crate::node::parse(&name, &text, &opts.limits)?;
    if docs.is_empty() {
        docs.push(Node::map(Pos::new(name.as_str(), 1, 1), Map::new()));
    }
    let base_dir = dir_of(file);
    for doc in &mut docs {
        if doc.is_null() {
            *doc = Node::map(doc.pos.clone(), Map::new());
        }
        if doc.as_map().is_none() {
            return Err(SpecError::at(
                &doc.pos,
                "",
                format!("the top level must be a mapping, got {}", doc.describe()),
            ));
        }
        interpolate::interpolate_tree(doc, "", lookup, warnings)?;
        including.push(file.to_path_buf());
        resolve_includes(loader, opts, doc, &base_dir, lookup, warnings, including)?;
        including.pop();
        let mut load_base = |rel: &str, at: &Pos| -> Result<Node, SpecError> {
            let path = resolve(&base_dir, rel);
            let base_name = shown(opts, &path);
            let text = loader
                .read(&path)
                .map_err(|e| SpecError::at(at, "", format!("cannot read {base_name}: {e}")))?;
            let mut docs = crate::node::parse(&base_name, &text, &opts.limits)?;
            let mut doc = if docs.is_empty() {
                Node::map(Pos::new(base_name.as_str(), 1, 1), Map::new())
            } else {
                docs.remove(0)
            };
            interpolate::interpolate_tree(&mut doc, "", lookup, &mut Vec::new())?;
            Ok(doc)
        };
        extends::resolve_extends(doc, &name, &mut load_base)?;
    }
    Ok(docs)
}

fn resolve_includes(
    loader: &dyn Loader,
    opts: &LoadOptions,
    doc: &mut Node,
    base_dir: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<Diagnostic>,
    including: &mut Vec<PathBuf>,
) -> Result<(), SpecError> {
    let mut load_included = |rel: &str, at: &Pos| -> Result<Node, SpecError> {
        let path = resolve(base_dir, rel);
        if !loader.exists(&path) {
            return Err(SpecError::at(
                at,
                "include",
                format!("included file {rel} not found"),
            ));
        }
        let mut docs = read_documents(loader, opts, &path, lookup, warnings, including)?;
        let mut it = docs.drain(..);
        let mut merged = it.next().expect("at least one document");
        for d in it {
            merged = merge::merge_files(merged, d)?;
        }
        Ok(merged)
    };
    extends::resolve_include(doc, &mut load_included)
}

/// The files, the project directory and the interpolation environment.
type Discovered = (Vec<PathBuf>, PathBuf, BTreeMap<String, String>);

/// Finds the files, the project directory and the interpolation environment.
fn discover(loader: &dyn Loader, opts: &LoadOptions) -> Result<Discovered, SpecError> {
    let wd = &opts.working_dir;
    let explicit: Vec<PathBuf> = opts
        .files
        .iter()
        .map(|f| resolve(wd, &display(f)))
        .collect();
    // The .env of the working directory may name the files (COMPOSE_FILE).
    let first_dir = opts
        .project_dir
        .as_ref()
        .map(|d| resolve(wd, &display(d)))
        .or_else(|| explicit.first().map(|f| dir_of(f)))
        .unwrap_or_else(|| wd.clone());
    let mut env = environment(loader, opts, &first_dir)?;

    let files = if !explicit.is_empty() {
        explicit
    } else if let Some(list) = env.get("COMPOSE_FILE").filter(|s| !s.is_empty()) {
        let sep = env
            .get("COMPOSE_PATH_SEPARATOR")
            .cloned()
            .unwrap_or_else(|| ":".into());
        list.split(sep.as_str())
            .filter(|s| !s.is_empty())
            .map(|f| resolve(&first_dir, f))
            .collect()
    } else {
        find_default_files(loader, wd).ok_or_else(|| {
            SpecError::msg(format!(
                "no compose file found in {} or its parents (looked for compose.yaml, \
                 compose.yml, docker-compose.yaml, docker-compose.yml); name one with -f",
                display(wd)
            ))
        })?
    };
    let project_dir = match &opts.project_dir {
        Some(d) => resolve(wd, &display(d)),
        None => dir_of(&files[0]),
    };
    let mut files = files;
    files.extend(opts.extra_files.iter().map(|f| resolve(wd, &display(f))));
    if project_dir != first_dir {
        env = environment(loader, opts, &project_dir)?;
    }
    Ok((files, project_dir, env))
}

fn find_default_files(loader: &dyn Loader, wd: &Path) -> Option<Vec<PathBuf>> {
    let mut dir = Some(wd.to_path_buf());
    while let Some(d) = dir {
        for (main, over) in DEFAULT_FILES {
            let f = d.join(main);
            if loader.exists(&f) {
                let mut files = vec![f];
                let o = d.join(over);
                if loader.exists(&o) {
                    files.push(o);
                }
                return Some(files);
            }
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    None
}

/// The interpolation environment: `.env` (or `--env-file`s) with the process environment
/// over it.
fn environment(
    loader: &dyn Loader,
    opts: &LoadOptions,
    project_dir: &Path,
) -> Result<BTreeMap<String, String>, SpecError> {
    let mut from_files: BTreeMap<String, String> = BTreeMap::new();
    let files: Vec<(PathBuf, bool)> = if opts.env_files.is_empty() {
        vec![(project_dir.join(".env"), false)]
    } else {
        opts.env_files
            .iter()
            .map(|f| (resolve(&opts.working_dir, &display(f)), true))
            .collect()
    };
    for (path, required) in files {
        let text = match loader.read(&path) {
            Ok(t) => t,
            Err(ReadError::NotFound) if !required => continue,
            Err(_) => read_text(loader, &path, "env file")?,
        };
        let lookup = |k: &str| opts.env.get(k).or_else(|| from_files.get(k)).cloned();
        let vars = dotenv::parse_dotenv(&display(&path), &text, &lookup)?;
        for (k, v) in vars {
            if let Some(v) = v {
                from_files.insert(k, v);
            }
        }
    }
    let mut env = opts.values.clone();
    env.extend(from_files);
    env.extend(opts.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(env)
}

/// The stack name: top-level `name:`, else `-p`, else `COMPOSE_PROJECT_NAME`, else the
/// project directory's name made safe (docs/adr/0001-project-name.md).
fn project_name(
    project: &Project,
    opts: &LoadOptions,
    env: &BTreeMap<String, String>,
    project_dir: &Path,
    tree: &Node,
) -> Result<String, SpecError> {
    let explicit = [
        (project.name.clone(), "name"),
        (opts.project_name.clone(), "-p/--project-name"),
        (
            env.get("COMPOSE_PROJECT_NAME").cloned(),
            "COMPOSE_PROJECT_NAME",
        ),
    ];
    for (value, source) in explicit {
        if let Some(n) = value.filter(|n| !n.is_empty()) {
            if !valid_project_name(&n) {
                let pos = crate::validate::value_pos(tree, &["name"]).filter(|_| source == "name");
                let path = if source == "name" { "name" } else { "" };
                return Err(SpecError::one(Diagnostic::new(
                    pos,
                    path,
                    format!(
                        "project name {n:?} (from {source}) must contain only lowercase letters, \
                         digits, dashes and underscores, and start with a letter or digit"
                    ),
                )));
            }
            return Ok(n);
        }
    }
    let base = normalize(project_dir)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let safe: String = base
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let safe = safe.trim_start_matches(['_', '-']).to_string();
    if safe.is_empty() {
        return Err(SpecError::msg(format!(
            "cannot derive a project name from the directory {}: set name: in the file or \
             pass -p",
            display(project_dir)
        )));
    }
    Ok(safe)
}

pub fn valid_project_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn active_profiles(opts: &LoadOptions, env: &BTreeMap<String, String>) -> Vec<String> {
    if !opts.profiles.is_empty() {
        return opts.profiles.clone();
    }
    env.get("COMPOSE_PROFILES")
        .map(|p| {
            p.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Drops services whose profiles are all inactive. A required dependency on a dropped
/// service is an error; an optional one is dropped with it.
fn apply_profiles(project: &mut Project, active: &[String], tree: &Node) -> Result<(), SpecError> {
    let enabled = |profiles: &[String]| {
        profiles.is_empty()
            || active.iter().any(|a| a == "*")
            || profiles.iter().any(|p| active.contains(p))
    };
    let disabled: IndexMap<String, Vec<String>> = project
        .services
        .iter()
        .filter(|(_, s)| !enabled(&s.profiles))
        .map(|(n, s)| (n.clone(), s.profiles.clone()))
        .collect();
    project.services.retain(|n, _| !disabled.contains_key(n));
    for (name, svc) in &mut project.services {
        for (dep, d) in &svc.depends_on {
            if let Some(profiles) = disabled.get(dep)
                && d.required
            {
                let pos = crate::validate::key_pos(tree, &["services", name, "depends_on", dep]);
                return Err(SpecError::one(Diagnostic::new(
                    pos,
                    format!("services.{name}.depends_on.{dep}"),
                    format!(
                        "service {dep:?} is only enabled by the profiles [{}]: enable one with \
                         --profile or COMPOSE_PROFILES, or mark the dependency required: false",
                        profiles.join(", ")
                    ),
                )));
            }
        }
        svc.depends_on.retain(|dep, _| !disabled.contains_key(dep));
    }
    Ok(())
}

fn normalize_project(
    loader: &dyn Loader,
    project: &mut Project,
    name: &str,
    project_dir: &Path,
    env: &BTreeMap<String, String>,
    tree: &Node,
) -> Result<(), SpecError> {
    let abs = |p: &str| -> String {
        if let Some(rest) = p.strip_prefix("~/")
            && let Some(home) = env.get("HOME")
        {
            return display(&resolve(Path::new(home), rest));
        }
        display(&resolve(project_dir, p))
    };
    let default_driver = project
        .x_skiff
        .as_ref()
        .and_then(|x| x.driver)
        .unwrap_or(Driver::Docker);
    let mut uses_default_network = false;

    for (sname, svc) in &mut project.services {
        // env_file first, `environment` over it.
        let mut environment: IndexMap<String, Option<String>> = IndexMap::new();
        for (i, ef) in svc.env_file.iter_mut().enumerate() {
            let path = PathBuf::from(abs(&ef.path));
            ef.path = display(&path);
            let text = match loader.read(&path) {
                Ok(t) => t,
                Err(ReadError::NotFound) if !ef.required => continue,
                Err(e) => {
                    let pos = crate::validate::item_pos(tree, &["services", sname, "env_file"], i);
                    return Err(SpecError::one(Diagnostic::new(
                        pos,
                        format!("services.{sname}.env_file"),
                        format!("cannot read {}: {e}", ef.path),
                    )));
                }
            };
            let lookup = |k: &str| env.get(k).cloned();
            for (k, v) in dotenv::parse_dotenv(&ef.path, &text, &lookup)? {
                environment.insert(k, v);
            }
        }
        for (k, v) in std::mem::take(&mut svc.environment) {
            environment.insert(k, v);
        }
        for (k, v) in environment.iter_mut() {
            if v.is_none() {
                *v = env.get(k).cloned();
            }
        }
        svc.environment = environment;

        if let Some(build) = &mut svc.build {
            let ctx = build.context.get_or_insert_with(|| ".".into());
            if !is_remote_context(ctx) {
                *ctx = abs(ctx);
            }
        }
        for v in &mut svc.volumes {
            if v.kind == VolumeKind::Bind
                && let Some(src) = &mut v.source
            {
                *src = abs(src);
            }
        }
        if svc.networks.is_empty() && svc.network_mode.is_none() {
            svc.networks.insert("default".into(), None);
        }
        if svc.networks.contains_key("default") {
            uses_default_network = true;
        }
        let x = svc.x_skiff.get_or_insert_with(Default::default);
        x.driver.get_or_insert(default_driver);
        if let Some(a) = &mut x.artifact
            && let Some(p) = &mut a.path
        {
            *p = abs(p);
        }
        if let Some(seed) = &mut x.seed
            && !seed.is_url()
            && !seed.from.is_empty()
        {
            seed.from = abs(&seed.from);
        }
    }
    if uses_default_network && !project.networks.contains_key("default") {
        project
            .networks
            .insert("default".into(), Default::default());
    }
    for (n, net) in &mut project.networks {
        if net.name.is_none() && net.external.is_none() {
            net.name = Some(format!("{name}_{n}"));
        }
    }
    for (n, vol) in &mut project.volumes {
        if vol.name.is_none() && vol.external.is_none() {
            vol.name = Some(format!("{name}_{n}"));
        }
    }
    for objects in [&mut project.configs, &mut project.secrets] {
        for (n, obj) in objects.iter_mut() {
            if let Some(f) = &mut obj.file {
                *f = abs(f);
            }
            if obj.name.is_none() && obj.external.is_none() {
                obj.name = Some(format!("{name}_{n}"));
            }
        }
    }
    project.services.sort_keys();
    project.networks.sort_keys();
    project.volumes.sort_keys();
    project.configs.sort_keys();
    project.secrets.sort_keys();
    Ok(())
}

fn is_remote_context(ctx: &str) -> bool {
    ctx.contains("://") || ctx.starts_with("git@") || ctx.starts_with("github.com/")
}

/// Reads a project from in-memory compose files (each one a `-f`, in order) under
/// `/project`: the entry point for tests and fuzzing.
pub fn load_str(files: &[(&str, &str)], env: &[(&str, &str)]) -> Result<LoadedProject, SpecError> {
    let mut loader = crate::loader::MemLoader::new();
    for (path, text) in files {
        loader.insert(Path::new("/project").join(path), *text);
    }
    let opts = LoadOptions {
        files: files.iter().map(|(p, _)| PathBuf::from(p)).collect(),
        working_dir: PathBuf::from("/project"),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..LoadOptions::default()
    };
    load(&loader, &opts)
}
