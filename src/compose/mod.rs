//! The compose-file loader: `compose.yaml` (and friends) to a normalised [`Project`].
//!
//! Client-side and pure: the only input it reads is the files it is given, through the
//! [`FileSystem`] trait (tests use an in-memory one), and the environment, passed in
//! [`LoadOptions::environment`]. The steps, in Compose's order:
//!
//! 1. find the files (`-f`, `COMPOSE_FILE`, or `compose.yaml` / `compose.yml` /
//!    `docker-compose.yaml` / `docker-compose.yml` in the working directory or the nearest
//!    parent that has one, plus the matching `*.override.*` file next to it);
//! 2. read `.env` from the project directory (or the `--env-file`s, which replace it); the
//!    process environment wins over it;
//! 3. per file: parse the YAML (anchors, aliases with serde_yaml's expansion bound, merge keys
//!    applied until none remain), interpolate `${VAR...}` in values, load `include`s, resolve
//!    `extends`;
//! 4. merge the files by the compose-spec rules (`merge.rs`, with `!reset` and `!override`);
//! 5. convert to the typed model, short syntaxes to long, unknown keys refused (`convert.rs`);
//! 6. apply profiles, then check references (depends_on, networks, volumes, secrets, configs).
//!
//! The model is canonical: short syntaxes in long form, host paths absolute, `env_file` contents
//! merged under `environment` (which wins), services on no network attached to `default` (added
//! as `<project>_default`), resource names filled in (`<project>_<key>` unless external or
//! named). [`to_yaml`] prints it with every `$` doubled, so the output loads back to the same
//! [`Project`] (with the same profiles enabled: inactive services are not printed).
//!
//! Errors are one line: `<file>:<line>: <key path>: <message>`. Lines come from serde_yaml for
//! syntax errors and from `yaml::locate` (a best-effort walk of the file's text) for errors
//! found after merging, in the file that holds the key path.
//!
//! ## Valid compose attributes shoal does not support (yet)
//! Services: `gpus`, `blkio_config`, `credential_spec`, `device_cgroup_rules`, `cgroup`,
//! `cpu_count`, `cpu_percent`, `cpu_period`, `cpu_quota`, `cpu_rt_period`, `cpu_rt_runtime`,
//! `cpuset`, `isolation`, `label_file`, `mem_swappiness`, `oom_kill_disable`, `storage_opt`,
//! `uts`, `models`, `provider`, `post_start`, `pre_stop`, `use_api_socket`: an error naming the
//! key. `develop` and `attach` are ignored with a warning. Also refused: service networks'
//! `link_local_ips`, `mac_address`, `driver_opts`, `gw_priority`, `interface_name`;
//! `deploy.resources.*.devices` and `generic_resources`; secrets' and configs' `driver`,
//! `driver_opts`, `template_driver`; networks' `enable_ipv4: false`; `env_file` formats other
//! than `raw`; top-level `models`.

mod convert;
mod error;
mod interp;
mod merge;
mod model;
mod stack;

pub use model::Project;
pub use stack::{tmpfs_mount, to_stack_spec, Flavor};
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

#[allow(unused_imports)] // part of the API
pub use convert::UNSUPPORTED_SERVICE_KEYS;
pub use error::ComposeError;
pub use model::*;

use convert::clean_path;
use error::Result;
use interp::Lookup;

/// Where the loader reads files from.
pub trait FileSystem {
    fn read(&self, path: &Path) -> std::io::Result<String>;
    fn exists(&self, path: &Path) -> bool {
        self.read(path).is_ok()
    }
}

/// The real file system.
pub struct RealFs;

impl FileSystem for RealFs {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.is_file()
    }
}

/// What `docker compose [-f F]... [-p P] [--env-file E]... [--profile P]...` gives the loader.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Compose files in merge order; empty: `COMPOSE_FILE` or the default names.
    pub files: Vec<PathBuf>,
    pub project_name: Option<String>,
    /// Replace the project's `.env` when not empty.
    pub env_files: Vec<PathBuf>,
    /// Enabled profiles; empty: `COMPOSE_PROFILES`. `*` enables all.
    pub profiles: Vec<String>,
    /// Services named on the command line: active whatever their profiles.
    pub services: Vec<String>,
    /// The process environment.
    pub environment: HashMap<String, String>,
    /// Where relative `-f` paths and the default files are looked up.
    pub working_dir: PathBuf,
}

/// A loaded project and the warnings (unset variables, ignored keys) met on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub project: Project,
    pub warnings: Vec<String>,
}

/// Loads a project from the real file system.
#[allow(dead_code)] // the entry point for `compose up` and friends, still to come
pub fn load(opts: &LoadOptions) -> std::result::Result<Project, ComposeError> {
    load_with(opts, &RealFs).map(|l| l.project)
}

const DEFAULT_FILES: &[(&str, &str)] = &[
    ("compose.yaml", "compose.override.yaml"),
    ("compose.yml", "compose.override.yml"),
    ("docker-compose.yaml", "docker-compose.override.yaml"),
    ("docker-compose.yml", "docker-compose.override.yml"),
];

/// How deep `include`s may nest.
const MAX_INCLUDE_DEPTH: usize = 16;

/// The environment used for interpolation: the process environment over the dotenv values.
struct Env {
    process: HashMap<String, String>,
    dotenv: BTreeMap<String, String>,
}

impl Lookup for Env {
    fn get(&self, name: &str) -> Option<String> {
        self.process
            .get(name)
            .or_else(|| self.dotenv.get(name))
            .cloned()
    }
}

struct Loader<'a> {
    fs: &'a dyn FileSystem,
    process: &'a HashMap<String, String>,
    warnings: Vec<String>,
    /// Files read so far with their text, to find error lines.
    texts: Vec<(PathBuf, String)>,
}

/// Loads a project through `fs`.
pub fn load_with(
    opts: &LoadOptions,
    fs: &dyn FileSystem,
) -> std::result::Result<Loaded, ComposeError> {
    let mut loader = Loader {
        fs,
        process: &opts.environment,
        warnings: Vec::new(),
        texts: Vec::new(),
    };
    let result = loader.load(opts);
    result
        .map(|project| Loaded {
            project,
            warnings: std::mem::take(&mut loader.warnings),
        })
        .map_err(|e| loader.place(e))
}

impl Loader<'_> {
    /// Fills in the file and line of an error raised on the merged tree.
    fn place(&self, mut e: ComposeError) -> ComposeError {
        if e.path.is_empty() || e.line.is_some() {
            return e;
        }
        let candidates: Vec<&(PathBuf, String)> = match &e.file {
            Some(f) => self.texts.iter().filter(|(p, _)| p == f).collect(),
            None => self.texts.iter().rev().collect(),
        };
        // The file that follows the path deepest; the later file on a tie.
        let mut best: Option<(usize, usize, &PathBuf)> = None;
        for (file, text) in candidates {
            if let Some((line, depth)) = yaml::locate(text, &e.path) {
                if best.is_none_or(|(_, d, _)| depth > d) {
                    best = Some((line, depth, file));
                }
            }
        }
        if let Some((line, _, file)) = best {
            e.file = Some(file.clone());
            e.line = Some(line);
            return e;
        }
        if e.file.is_none() {
            e.file = self.texts.first().map(|(p, _)| p.clone());
        }
        e
    }

    fn files(&self, opts: &LoadOptions) -> Result<Vec<PathBuf>> {
        let wd = &opts.working_dir;
        if !opts.files.is_empty() {
            return Ok(opts.files.iter().map(|f| clean_path(&wd.join(f))).collect());
        }
        if let Some(list) = self.process.get("COMPOSE_FILE").filter(|l| !l.is_empty()) {
            let sep = self
                .process
                .get("COMPOSE_PATH_SEPARATOR")
                .cloned()
                .unwrap_or_else(|| ":".into());
            return Ok(list
                .split(sep.as_str())
                .filter(|f| !f.is_empty())
                .map(|f| clean_path(&wd.join(f)))
                .collect());
        }
        // The working directory, then its parents, like Compose.
        for dir in wd.ancestors() {
            for (main, over) in DEFAULT_FILES {
                let path = dir.join(main);
                if self.fs.exists(&path) {
                    let mut files = vec![clean_path(&path)];
                    let over = dir.join(over);
                    if self.fs.exists(&over) {
                        files.push(clean_path(&over));
                    }
                    return Ok(files);
                }
            }
        }
        Err(ComposeError::at(
            "",
            format!(
                "no compose file found in {} (looked for compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml)",
                wd.display()
            ),
        ))
    }

    fn read(&mut self, path: &Path) -> Result<String> {
        let text = self
            .fs
            .read(path)
            .map_err(|e| ComposeError::file(path, None, format!("cannot read: {e}")))?;
        if !self.texts.iter().any(|(p, _)| p == path) {
            self.texts.push((path.to_path_buf(), text.clone()));
        }
        Ok(text)
    }

    /// Reads dotenv files; each later one wins.
    fn dotenv(&mut self, files: &[PathBuf], required: bool) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for file in files {
            if !required && !self.fs.exists(file) {
                continue;
            }
            let text = self.fs.read(file).map_err(|e| {
                ComposeError::file(file, None, format!("cannot read env file: {e}"))
            })?;
            let lookup = |name: &str| {
                self.process
                    .get(name)
                    .cloned()
                    .or_else(|| out.get(name).cloned())
            };
            let entries = interp::parse_dotenv(&text, &lookup)
                .map_err(|e| ComposeError::file(file, None, e))?;
            out.extend(entries);
        }
        Ok(out)
    }

    fn load(&mut self, opts: &LoadOptions) -> Result<Project> {
        let files = self.files(opts)?;
        if files.is_empty() {
            return Err(ComposeError::at("", "no compose file given"));
        }
        let project_dir = files[0]
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| opts.working_dir.clone());
        let dotenv = if opts.env_files.is_empty() {
            self.dotenv(&[project_dir.join(".env")], false)?
        } else {
            let files: Vec<PathBuf> = opts
                .env_files
                .iter()
                .map(|f| clean_path(&opts.working_dir.join(f)))
                .collect();
            self.dotenv(&files, true)?
        };
        let env = Env {
            process: self.process.clone(),
            dotenv,
        };
        let mut merged: Option<Value> = None;
        for file in &files {
            let doc = self.load_file(file, &env, &mut Vec::new())?;
            merged = Some(match merged {
                None => doc,
                Some(base) => merge::merge_project(base, doc).map_err(|e| e.in_file(file))?,
            });
        }
        let mut merged = merged.expect("at least one file");
        merge::strip_tags(&mut merged, "")?;

        let top = match &merged {
            Value::Mapping(m) => m.clone(),
            _ => Mapping::new(),
        };
        let name_key = top
            .get("name")
            .and_then(|v| convert::scalar(v, "name").ok());
        let raw_name = opts
            .project_name
            .clone()
            .or_else(|| env.get("COMPOSE_PROJECT_NAME").filter(|n| !n.is_empty()))
            .or(name_key)
            .unwrap_or_else(|| {
                project_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let name = normalize_project_name(&raw_name)
            .ok_or_else(|| ComposeError::at("name", format!("invalid project name {raw_name:?}: use lowercase letters, digits, '_' and '-', starting with a letter or digit")))?;

        let mut profiles = opts.profiles.clone();
        if profiles.is_empty() {
            if let Some(p) = env.get("COMPOSE_PROFILES") {
                profiles = p
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
            }
        }
        let mut ctx = convert::Ctx {
            project_name: &name,
            project_dir: &project_dir,
            env: &env,
            fs: self.fs,
            warnings: &mut self.warnings,
        };
        let project = build_project(&top, &mut ctx)?;
        let project = apply_profiles(project, &profiles, &opts.services)?;
        validate(&project)?;
        Ok(project)
    }

    /// One file: parse, interpolate, includes, extends. `stack`: the includes being loaded.
    fn load_file(
        &mut self,
        file: &Path,
        env: &dyn Lookup,
        stack: &mut Vec<PathBuf>,
    ) -> Result<Value> {
        let mut doc = self.parse_file(file, env)?;
        self.includes(&mut doc, file, stack)?;
        self.extends(&mut doc, file, env)
            .map_err(|e| e.in_file(file))?;
        Ok(doc)
    }

    fn parse_file(&mut self, file: &Path, env: &dyn Lookup) -> Result<Value> {
        let text = self.read(file)?;
        let mut doc = yaml::parse(&text, file)?;
        if !matches!(doc, Value::Mapping(_)) {
            return Err(ComposeError::file(
                file,
                None,
                "a compose file must be a mapping at the top level",
            ));
        }
        let mut unset = Vec::new();
        interp::interpolate_value(&mut doc, "", env, &mut unset).map_err(|e| e.in_file(file))?;
        for name in unset {
            let w = format!("the {name:?} variable is not set, defaulting to a blank string");
            if !self.warnings.contains(&w) {
                self.warnings.push(w);
            }
        }
        Ok(doc)
    }

    fn includes(&mut self, doc: &mut Value, file: &Path, stack: &mut Vec<PathBuf>) -> Result<()> {
        let Value::Mapping(top) = doc else {
            return Ok(());
        };
        let Some(include) = top.remove("include") else {
            return Ok(());
        };
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        if stack.len() >= MAX_INCLUDE_DEPTH || stack.iter().any(|p| p == file) {
            return Err(ComposeError::file(
                file,
                None,
                format!("include cycle: {} includes itself again", file.display()),
            ));
        }
        let items = match include {
            Value::Sequence(s) => s,
            Value::Null => Vec::new(),
            v => vec![v],
        };
        stack.push(file.to_path_buf());
        for (i, item) in items.iter().enumerate() {
            let path = format!("include[{i}]");
            let bad = |m: &str| ComposeError::at(path.as_str(), m).in_file(file);
            let (paths, project_directory, env_files) = match item {
                Value::Mapping(m) => {
                    for k in m.keys() {
                        let k = yaml::key_string(k);
                        if !["path", "project_directory", "env_file"].contains(&k.as_str())
                            && !k.starts_with("x-")
                        {
                            return Err(bad(&format!("unknown key {k:?}; expected one of: path, project_directory, env_file")));
                        }
                    }
                    let list = |key: &str| -> Result<Vec<String>> {
                        match m.get(key) {
                            None | Some(Value::Null) => Ok(Vec::new()),
                            Some(Value::Sequence(s)) => s
                                .iter()
                                .map(|v| convert::scalar(v, &path).map_err(|e| e.in_file(file)))
                                .collect(),
                            Some(v) => {
                                Ok(vec![convert::scalar(v, &path).map_err(|e| e.in_file(file))?])
                            }
                        }
                    };
                    let pd = m
                        .get("project_directory")
                        .map(|v| convert::scalar(v, &path))
                        .transpose()
                        .map_err(|e| e.in_file(file))?;
                    (list("path")?, pd, list("env_file")?)
                }
                v => (
                    vec![convert::scalar(v, &path).map_err(|e| e.in_file(file))?],
                    None,
                    Vec::new(),
                ),
            };
            if paths.is_empty() {
                return Err(bad("an include needs a path"));
            }
            let paths: Vec<PathBuf> = paths.iter().map(|p| clean_path(&dir.join(p))).collect();
            let project_dir = match project_directory {
                Some(pd) => clean_path(&dir.join(pd)),
                None => paths[0].parent().unwrap_or(Path::new("/")).to_path_buf(),
            };
            let dotenv = if env_files.is_empty() {
                self.dotenv(&[project_dir.join(".env")], false)?
            } else {
                let files: Vec<PathBuf> =
                    env_files.iter().map(|p| clean_path(&dir.join(p))).collect();
                self.dotenv(&files, true)?
            };
            let env = Env {
                process: self.process.clone(),
                dotenv,
            };
            let mut sub: Option<Value> = None;
            for p in &paths {
                let d = self.load_file(p, &env, stack)?;
                sub = Some(match sub {
                    None => d,
                    Some(b) => merge::merge_project(b, d).map_err(|e| e.in_file(p))?,
                });
            }
            let mut sub = sub.expect("at least one path");
            merge::strip_tags(&mut sub, "").map_err(|e| e.in_file(&paths[0]))?;
            rebase_project(&mut sub, &project_dir);
            let Value::Mapping(sub) = sub else { continue };
            for section in ["services", "networks", "volumes", "secrets", "configs"] {
                let Some(Value::Mapping(items)) = sub.get(section) else {
                    continue;
                };
                let target = top
                    .entry(section.into())
                    .or_insert_with(|| Value::Mapping(Mapping::new()));
                if target.is_null() {
                    *target = Value::Mapping(Mapping::new());
                }
                let Value::Mapping(target) = target else {
                    return Err(ComposeError::at(section, "expected a mapping").in_file(file));
                };
                for (k, v) in items {
                    match target.get(k) {
                        Some(existing) if existing != v => {
                            return Err(ComposeError::at(
                                format!("{section}.{}", yaml::key_string(k)),
                                format!("also defined by the included file {}", paths[0].display()),
                            )
                            .in_file(file));
                        }
                        _ => {
                            target.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
        stack.pop();
        Ok(())
    }

    fn extends(&mut self, doc: &mut Value, file: &Path, env: &dyn Lookup) -> Result<()> {
        let Some(Value::Mapping(services)) = doc.get("services").cloned() else {
            return Ok(());
        };
        let mut resolved = Mapping::new();
        for (name, _) in &services {
            let name = yaml::key_string(name);
            let v = self.extend_one(&services, file, &name, env, &mut Vec::new(), None)?;
            resolved.insert(name.into(), v);
        }
        if let Value::Mapping(top) = doc {
            top.insert("services".into(), Value::Mapping(resolved));
        }
        Ok(())
    }

    /// The service `name` of `services` (from `file`) with its `extends` chain merged in.
    fn extend_one(
        &mut self,
        services: &Mapping,
        file: &Path,
        name: &str,
        env: &dyn Lookup,
        chain: &mut Vec<String>,
        from: Option<&str>,
    ) -> Result<Value> {
        let key = format!("{}:{name}", file.display());
        if chain.contains(&key) {
            let mut names: Vec<&str> = chain
                .iter()
                .map(|k| k.rsplit(':').next().unwrap_or(k))
                .collect();
            names.push(name);
            return Err(ComposeError::at(
                format!("services.{}.extends", names[0]),
                format!("extends cycle: {}", names.join(" -> ")),
            ));
        }
        let Some(svc) = services.get(name) else {
            return Err(ComposeError::at(
                format!("services.{}.extends", from.unwrap_or(name)),
                format!("service {name:?} not found in {}", file.display()),
            )
            .in_file(file));
        };
        let mut svc = svc.clone();
        let Some(ext) = (match &mut svc {
            Value::Mapping(m) => m.remove("extends"),
            _ => None,
        }) else {
            return Ok(svc);
        };
        let path = format!("services.{name}.extends");
        let (base_name, base_file) = match &ext {
            Value::Mapping(m) => {
                for k in m.keys() {
                    let k = yaml::key_string(k);
                    if k != "service" && k != "file" {
                        return Err(ComposeError::at(
                            path.as_str(),
                            format!("unknown key {k:?}; expected one of: service, file"),
                        ));
                    }
                }
                let s = m
                    .get("service")
                    .ok_or_else(|| ComposeError::at(path.as_str(), "extends needs a service"))
                    .and_then(|v| convert::scalar(v, &path))?;
                let f = m
                    .get("file")
                    .map(|v| convert::scalar(v, &path))
                    .transpose()?;
                (s, f)
            }
            v => (convert::scalar(v, &path)?, None),
        };
        chain.push(key);
        let base = match base_file {
            None => self.extend_one(services, file, &base_name, env, chain, Some(name))?,
            Some(f) => {
                let dir = file.parent().unwrap_or(Path::new("/"));
                let other = clean_path(&dir.join(f));
                let doc = self.parse_file(&other, env)?;
                let Some(Value::Mapping(other_services)) = doc.get("services") else {
                    return Err(ComposeError::at(
                        path.as_str(),
                        format!("{} has no services", other.display()),
                    ));
                };
                let mut base = self
                    .extend_one(other_services, &other, &base_name, env, chain, Some(name))
                    .map_err(|e| e.in_file(&other))?;
                rebase_service(&mut base, other.parent().unwrap_or(Path::new("/")));
                base
            }
        };
        chain.pop();
        merge::merge_service(base, svc)
    }
}

/// Lowercase, only `[a-z0-9_-]`, starting with a letter or digit.
pub fn normalize_project_name(raw: &str) -> Option<String> {
    let name: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let name = name.trim_start_matches(['_', '-']).to_string();
    (!name.is_empty()).then_some(name)
}

fn join_rel(dir: &Path, p: &str) -> String {
    if p.starts_with('/') || p.starts_with('~') {
        p.to_string()
    } else {
        clean_path(&dir.join(p)).to_string_lossy().into_owned()
    }
}

/// Makes the relative paths of a service from another directory (another file's `extends`, an
/// `include`) absolute, before it joins this project.
fn rebase_service(svc: &mut Value, dir: &Path) {
    let Value::Mapping(m) = svc else { return };
    match m.get_mut("build") {
        Some(Value::String(ctx)) if !ctx.contains("://") && !ctx.starts_with("git@") => {
            *ctx = join_rel(dir, ctx)
        }
        Some(Value::Mapping(b)) => {
            let ctx = b
                .get("context")
                .and_then(Value::as_str)
                .unwrap_or(".")
                .to_string();
            if !ctx.contains("://") && !ctx.starts_with("git@") {
                b.insert("context".into(), join_rel(dir, &ctx).into());
            }
        }
        _ => {}
    }
    let fix_env = |v: &mut Value| match v {
        Value::String(s) => *s = join_rel(dir, s),
        Value::Mapping(e) => {
            if let Some(Value::String(p)) = e.get_mut("path") {
                *p = join_rel(dir, p);
            }
        }
        _ => {}
    };
    match m.get_mut("env_file") {
        Some(Value::Sequence(s)) => s.iter_mut().for_each(fix_env),
        Some(v) => fix_env(v),
        None => {}
    }
    if let Some(Value::Sequence(vols)) = m.get_mut("volumes") {
        for v in vols {
            match v {
                Value::String(s) if s.starts_with('.') => {
                    let (src, rest) = s.split_once(':').unwrap_or((s.as_str(), ""));
                    let src = join_rel(dir, src);
                    *s = if rest.is_empty() {
                        src
                    } else {
                        format!("{src}:{rest}")
                    };
                }
                Value::Mapping(vm) => {
                    let bind = vm.get("type").and_then(Value::as_str) == Some("bind");
                    if let Some(Value::String(src)) = vm.get_mut("source") {
                        if bind {
                            *src = join_rel(dir, src);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn rebase_project(doc: &mut Value, dir: &Path) {
    let Value::Mapping(top) = doc else { return };
    if let Some(Value::Mapping(services)) = top.get_mut("services") {
        for (_, s) in services.iter_mut() {
            rebase_service(s, dir);
        }
    }
    for section in ["secrets", "configs"] {
        if let Some(Value::Mapping(items)) = top.get_mut(section) {
            for (_, o) in items.iter_mut() {
                if let Some(Value::String(f)) = o.get_mut("file") {
                    *f = join_rel(dir, f);
                }
            }
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "networks", "volumes", "secrets", "configs",
];

fn build_project(top: &Mapping, ctx: &mut convert::Ctx) -> Result<Project> {
    for key in top.keys() {
        let k = yaml::key_string(key);
        if k == "models" {
            return Err(ComposeError::at(
                k,
                "\"models\" is a valid compose attribute that shoal does not support yet",
            ));
        }
        if !k.starts_with("x-") && !TOP_KEYS.contains(&k.as_str()) {
            return Err(ComposeError::at(
                k.clone(),
                format!(
                    "unknown key {k:?}; expected one of: {}",
                    TOP_KEYS.join(", ")
                ),
            ));
        }
    }
    if top.contains_key("version") {
        ctx.warnings
            .push("the top-level \"version\" is obsolete and ignored".into());
    }
    let section = |key: &str| -> Result<Mapping> {
        match top.get(key) {
            None | Some(Value::Null) => Ok(Mapping::new()),
            Some(Value::Mapping(m)) => Ok(m.clone()),
            Some(_) => Err(ComposeError::at(key, "expected a mapping")),
        }
    };
    let project_name = ctx.project_name.to_string();
    let mut p = Project {
        name: project_name.clone(),
        services: BTreeMap::new(),
        networks: BTreeMap::new(),
        volumes: BTreeMap::new(),
        secrets: BTreeMap::new(),
        configs: BTreeMap::new(),
    };
    for (k, v) in section("services")? {
        let k = yaml::key_string(&k);
        if k.starts_with("x-") {
            continue;
        }
        let s = convert::service(&k, &v, ctx)?;
        p.services.insert(k, s);
    }
    for (k, v) in section("networks")? {
        let k = yaml::key_string(&k);
        let n = convert::network(&k, &v, &format!("networks.{k}"), &project_name)?;
        p.networks.insert(k, n);
    }
    for (k, v) in section("volumes")? {
        let k = yaml::key_string(&k);
        let n = convert::volume(&k, &v, &format!("volumes.{k}"), &project_name)?;
        p.volumes.insert(k, n);
    }
    for (k, v) in section("secrets")? {
        let k = yaml::key_string(&k);
        let n = convert::file_object(&k, &v, &format!("secrets.{k}"), &project_name, ctx)?;
        p.secrets.insert(k, n);
    }
    for (k, v) in section("configs")? {
        let k = yaml::key_string(&k);
        let n = convert::file_object(&k, &v, &format!("configs.{k}"), &project_name, ctx)?;
        p.configs.insert(k, n);
    }
    // Services on no network join the project's default network, like Compose.
    let mut uses_default = false;
    for s in p.services.values_mut() {
        if s.networks.is_empty() && s.network_mode.is_none() {
            s.networks
                .insert("default".into(), ServiceNetwork::default());
        }
        uses_default |= s.networks.contains_key("default");
    }
    if uses_default && !p.networks.contains_key("default") {
        p.networks.insert(
            "default".into(),
            Network {
                name: format!("{project_name}_default"),
                ..Default::default()
            },
        );
    }
    Ok(p)
}

/// Services that `s` needs running: depends_on, `service:` network modes, volumes_from.
fn needs(s: &Service) -> Vec<String> {
    let mut out: Vec<String> = s.depends_on.keys().cloned().collect();
    for mode in [&s.network_mode, &s.ipc, &s.pid].into_iter().flatten() {
        if let Some(svc) = mode.strip_prefix("service:") {
            out.push(svc.to_string());
        }
    }
    for vf in &s.volumes_from {
        if !vf.starts_with("container:") {
            out.push(vf.split(':').next().unwrap_or(vf).to_string());
        }
    }
    out
}

/// Keeps the active services: no profile, an enabled profile (`*`: all), named explicitly, or
/// needed by an active service.
fn apply_profiles(mut p: Project, profiles: &[String], named: &[String]) -> Result<Project> {
    for n in named {
        if !p.services.contains_key(n) {
            return Err(ComposeError::at(
                "services",
                format!("no such service: {n:?}"),
            ));
        }
    }
    let all = profiles.iter().any(|x| x == "*");
    let mut active: BTreeSet<String> = p
        .services
        .iter()
        .filter(|(name, s)| {
            s.profiles.is_empty()
                || all
                || s.profiles.iter().any(|x| profiles.contains(x))
                || named.contains(name)
        })
        .map(|(n, _)| n.clone())
        .collect();
    let mut todo: Vec<String> = active.iter().cloned().collect();
    while let Some(n) = todo.pop() {
        let Some(s) = p.services.get(&n) else {
            continue;
        };
        for dep in needs(s) {
            if p.services.contains_key(&dep) && active.insert(dep.clone()) {
                todo.push(dep);
            }
        }
    }
    p.services.retain(|n, _| active.contains(n));
    Ok(p)
}

/// Cross-references: every service, network, volume, secret and config used is defined, and
/// depends_on has no cycle.
fn validate(p: &Project) -> Result<()> {
    for (name, s) in &p.services {
        let path = format!("services.{name}");
        for (dep, d) in &s.depends_on {
            if !p.services.contains_key(dep) && d.required {
                return Err(ComposeError::at(
                    format!("{path}.depends_on"),
                    format!("depends on undefined service {dep:?}"),
                ));
            }
        }
        for dep in needs(s) {
            if !p.services.contains_key(&dep) && !s.depends_on.contains_key(&dep) {
                return Err(ComposeError::at(
                    path.as_str(),
                    format!("refers to undefined service {dep:?}"),
                ));
            }
        }
        for net in s.networks.keys() {
            if !p.networks.contains_key(net) {
                return Err(ComposeError::at(
                    format!("{path}.networks"),
                    format!("network {net:?} is not defined in the top-level networks"),
                ));
            }
        }
        for (i, v) in s.volumes.iter().enumerate() {
            if let (true, Some(src)) = (v.kind == "volume", &v.source) {
                if !p.volumes.contains_key(src) {
                    return Err(ComposeError::at(
                        format!("{path}.volumes[{i}]"),
                        format!("volume {src:?} is not defined in the top-level volumes"),
                    ));
                }
            }
        }
        for (what, refs, defined) in [
            ("secret", &s.secrets, &p.secrets),
            ("config", &s.configs, &p.configs),
        ] {
            for (i, r) in refs.iter().enumerate() {
                if !defined.contains_key(&r.source) {
                    return Err(ComposeError::at(
                        format!("{path}.{what}s[{i}]"),
                        format!(
                            "{what} {:?} is not defined in the top-level {what}s",
                            r.source
                        ),
                    ));
                }
            }
        }
    }
    // depends_on cycles, depth first.
    fn visit<'a>(
        p: &'a Project,
        n: &'a str,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Result<()> {
        if let Some(i) = stack.iter().position(|x| *x == n) {
            let mut cycle: Vec<&str> = stack[i..].to_vec();
            cycle.push(n);
            return Err(ComposeError::at(
                format!("services.{}.depends_on", cycle[0]),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            ));
        }
        if !done.insert(n) {
            return Ok(());
        }
        stack.push(n);
        if let Some(s) = p.services.get(n) {
            for dep in s.depends_on.keys() {
                visit(p, dep, stack, done)?;
            }
        }
        stack.pop();
        Ok(())
    }
    let mut done = BTreeSet::new();
    for n in p.services.keys() {
        visit(p, n, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

/// Reads the data of the secrets and configs the stack's services use into `spec` (from their
/// files, the process environment, or their `content`).
pub fn read_secrets(project: &Project, spec: &mut shoal_proto::StackSpec) -> anyhow::Result<()> {
    let read = |path: &str| std::fs::read(path);
    let env = |var: &str| std::env::var(var).ok();
    stack::attach_secrets(project, spec, &read, &env).map_err(|e| anyhow::anyhow!(e))
}

/// `run -v [SOURCE:]TARGET[:MODE]`: compose's short volume syntax, host paths (absolute, `.`
/// or `~` relative) resolved against `dir`; any other source names a volume.
pub fn volume_flag(spec: &str, dir: &Path) -> std::result::Result<shoal_proto::Mount, String> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut warnings = Vec::new();
    let ctx = convert::Ctx {
        project_name: "",
        project_dir: dir,
        env: &env,
        fs: &RealFs,
        warnings: &mut warnings,
    };
    let v = convert::volume_short(spec, "--volume", &ctx).map_err(|e| e.to_string())?;
    let source = v.source.clone().unwrap_or_default();
    stack::mount(&v, source)
}

/// Loads the project the way every `shoal compose` verb does (flags, env, profiles), printing
/// the loader's warnings.
pub fn load_for_cli(
    args: &crate::cli::ComposeArgs,
    services: &[String],
) -> anyhow::Result<Project> {
    let opts = LoadOptions {
        files: args.files.clone(),
        project_name: args.project_name.clone(),
        env_files: args.env_files.clone(),
        profiles: args.profiles.clone(),
        services: services.to_vec(),
        environment: std::env::vars().collect(),
        working_dir: std::env::current_dir()?,
    };
    let loaded = load_with(&opts, &RealFs)?;
    for w in &loaded.warnings {
        eprintln!("WARN: {w}");
    }
    Ok(loaded.project)
}

/// `shoal compose ... config`: loads the project and prints its normalised form.
pub fn config(args: &crate::cli::ComposeArgs) -> anyhow::Result<()> {
    let services = match &args.command {
        crate::cli::ComposeCommand::Config { services } => services.clone(),
        _ => Vec::new(),
    };
    let project = load_for_cli(args, &services)?;
    let mut project = project;
    if !services.is_empty() {
        // Only the named services and what they need.
        let mut keep: BTreeSet<String> = services.into_iter().collect();
        let mut todo: Vec<String> = keep.iter().cloned().collect();
        while let Some(n) = todo.pop() {
            if let Some(s) = project.services.get(&n) {
                for dep in needs(s) {
                    if keep.insert(dep.clone()) {
                        todo.push(dep);
                    }
                }
            }
        }
        project.services.retain(|n, _| keep.contains(n));
    }
    print!("{}", to_yaml(&project));
    Ok(())
}
