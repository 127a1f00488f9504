//! The builder: runs a parsed Dockerfile's stages against the image store, step by step, with
//! the cache (`cache.rs`), and registers the result like any loaded image.
//!
//! - Only the target stage (`--target`, else the last) and the stages it needs (`FROM stage`,
//!   `COPY --from=stage`, by name or index) are built, in Dockerfile order. A stage can only
//!   use stages defined before it.
//! - `FROM` takes an image from the local store, an earlier stage, or `scratch` (an empty
//!   filesystem with Docker's default `PATH`). An image the store lacks (for `FROM` or
//!   `COPY --from`) is pulled as Docker's builder does, by the node's registry client (the
//!   one `image pull` uses: anonymous, plain HTTP only where the daemon allows it), with the
//!   per-layer progress in the step's log. `--platform` must be this node's platform.
//! - Each step's layer (and every layer of the base) is pinned against garbage collection for
//!   the whole build; a layer is in the store before the cache entry naming it is written.
//! - The result is registered, with all its tags at once, only when every step succeeded:
//!   a failed build tags nothing.
//! - History: one entry per instruction that changes the image (`ARG` does not), with
//!   `empty_layer` for the metadata ones, so `image history` reads like Docker's. A `RUN` that
//!   changes nothing adds no layer (as BuildKit).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use super::cache::{state_id, step_key, BuildCache};
use super::copy::{find_sources, hash_sources, resolve_owner, write_copy, Matched};
use super::dockerfile::{self, Dockerfile, Instr};
use super::layer::{diff_upper, LayerWriter, WrittenLayer};
use super::progress::{Progress, PullLines, Step};
use super::rootfs::{Rootfs, Scope};
use super::run::{RunSpec, Runner};
use super::state::{Action, BuildArgs, CopyPlan, Evaluated, StageState, StepError};
use super::BuildError;
use crate::image::busybox::DEFAULT_PATH_ENV;
use crate::image::config::{
    format_rfc3339, oci_architecture, OciHistory, OciImageConfig, OciRunConfig,
};
use crate::image::error::ImageError;
use crate::image::reference::Reference;
use crate::image::registry::{self, Registry};
use crate::image::store::{ImageStore, PinGuard, PreparedImage, StagedBlob};

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct BuildRequest {
    pub dockerfile: String,
    /// For messages, e.g. `Dockerfile`.
    pub dockerfile_name: String,
    /// The build context, unpacked.
    pub context: PathBuf,
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub labels: BTreeMap<String, String>,
    /// Registry logins by credentials key ([`registry::credentials_key`]): a base image the
    /// store lacks is pulled with its registry's.
    pub credentials: BTreeMap<String, registry::Credentials>,
}

/// Builds images into a store.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    store: ImageStore,
    cache: BuildCache,
    runner: Option<Runner>,
    /// Pulls the base images the store lacks (None: such a build fails, asking for a pull).
    registry: Option<Registry>,
}

/// A finished stage.
#[derive(Clone, Debug)]
struct Built {
    config: OciImageConfig,
    /// Its state id (what a `COPY --from` of it is keyed by).
    id: String,
}

/// Where a `COPY` reads from.
enum Source {
    Context,
    Layers { key: String, layers: Vec<String> },
}

/// One build in progress.
struct Run<'a> {
    b: &'a ImageBuilder,
    req: &'a BuildRequest,
    df: &'a Dockerfile,
    progress: &'a Progress,
    args: BuildArgs,
    built: Vec<Option<Built>>,
    pins: Vec<PinGuard>,
    /// An empty directory: the lower layer of a `RUN` on `scratch`.
    scratch_dir: Option<tempfile_dir::TmpDir>,
}

mod tempfile_dir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct TmpDir(pub PathBuf);

    impl TmpDir {
        pub fn create(parent: &Path) -> std::io::Result<TmpDir> {
            let p = parent.join(format!("scratch-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir(&p)?;
            Ok(TmpDir(p))
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Appends a history entry (and a layer) to `config`, as a step that ran now.
fn record(config: &mut OciImageConfig, created_by: &str, layer: Option<String>) {
    let created = format_rfc3339(now_ms());
    let empty = layer.is_none();
    if let Some(d) = layer {
        config.rootfs.diff_ids.push(d);
    }
    config.history.push(OciHistory {
        created: Some(created.clone()),
        created_by: Some(created_by.to_string()),
        empty_layer: empty,
        ..Default::default()
    });
    config.created = Some(created);
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BuildError::Internal(format!("a build task crashed: {e}")))?
}

impl ImageBuilder {
    /// A builder over `store`; `runner` runs `RUN` steps (None: a Dockerfile with `RUN` fails
    /// with a clear error).
    pub fn new(store: ImageStore, runner: Option<Runner>) -> Result<ImageBuilder, ImageError> {
        let cache = BuildCache::open(store.root())?;
        Ok(ImageBuilder {
            store,
            cache,
            runner,
            registry: None,
        })
    }

    /// Lets builds pull the images they name that the store lacks, through `registry` (which
    /// must pull into this builder's store).
    pub fn with_registry(mut self, registry: Registry) -> ImageBuilder {
        self.registry = Some(registry);
        self
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    pub fn runner(&self) -> Option<&Runner> {
        self.runner.as_ref()
    }

    /// Runs the build; returns the image (registered and tagged).
    pub async fn build(
        &self,
        req: &BuildRequest,
        progress: &Progress,
    ) -> Result<shoal_proto::Image, BuildError> {
        let df = dockerfile::parse(&req.dockerfile).map_err(|e| BuildError::Dockerfile {
            file: req.dockerfile_name.clone(),
            line: e.line,
            message: e.message,
        })?;
        let tags = req
            .tags
            .iter()
            .map(|t| {
                Reference::parse(t)
                    .map_err(|e| BuildError::Invalid(format!("invalid tag {t:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let target = match &req.target {
            None => df.stages.len() - 1,
            Some(t) => {
                let t = t.to_ascii_lowercase();
                df.stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(t.as_str()))
                    .ok_or_else(|| {
                        BuildError::Invalid(format!(
                            "target stage {t:?} could not be found in {} (stages: {})",
                            req.dockerfile_name,
                            df.stages
                                .iter()
                                .enumerate()
                                .map(|(i, s)| s.name.clone().unwrap_or_else(|| i.to_string()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?
            }
        };
        let args = BuildArgs::new(req.build_args.clone(), &df.global_args, df.escape)
            .map_err(|e| step_error(req, e))?;
        let mut run = Run {
            b: self,
            req,
            df: &df,
            progress,
            args,
            built: vec![None; df.stages.len()],
            pins: Vec::new(),
            scratch_dir: None,
        };
        for i in needed_stages(&df, &run.args, target) {
            let built = run.stage(i).await?;
            run.built[i] = Some(built);
        }
        let unused = run.args.unused();
        if !unused.is_empty() {
            progress
                .warning(format!(
                    "one or more build args were not consumed: {}",
                    unused.join(", ")
                ))
                .await;
        }
        let mut config = run.built[target]
            .take()
            .map(|b| b.config)
            .ok_or_else(|| BuildError::Internal("the target stage was not built".into()))?;
        if !req.labels.is_empty() {
            let labels = config.config.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(req.labels.clone());
        }
        let step = progress.start("exporting to image").await;
        let (_, config_bytes) = state_id(&config);
        let store = self.store.clone();
        let image = blocking(move || {
            let blobs = config.rootfs.diff_ids.iter().map(|_| None).collect();
            let mut images = store.commit_images(vec![PreparedImage {
                config_bytes,
                config,
                manifest: None,
                blobs,
                tags,
            }])?;
            images
                .pop()
                .ok_or_else(|| BuildError::Internal("no image was registered".into()))
        })
        .await?;
        progress
            .log(&step, &format!("writing image {} done", image.id), false)
            .await;
        for t in &image.tags {
            if let Ok(r) = Reference::parse(t) {
                progress
                    .log(
                        &step,
                        &format!("naming to {}:{} done", r.full_name(), r.tag),
                        false,
                    )
                    .await;
            }
        }
        progress.done(&step, false).await;
        drop(run);
        let tags: Vec<String> = req.tags.clone();
        progress.result(&image.id, &tags).await;
        Ok(image)
    }
}

fn step_error(req: &BuildRequest, e: StepError) -> BuildError {
    BuildError::Dockerfile {
        file: req.dockerfile_name.clone(),
        line: e.line,
        message: format!("{}: {}", e.instruction, e.message),
    }
}

/// A stage reference (`FROM x`, `COPY --from=x`): the index of the stage it names, if any.
fn stage_index(df: &Dockerfile, name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    df.stages
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
        .or_else(|| name.parse::<usize>().ok().filter(|i| *i < df.stages.len()))
}

/// The stages `target` needs, itself included, in order (a reference to a stage that is not
/// known yet here, e.g. through a stage-level ARG, fails later with a clear error).
fn needed_stages(df: &Dockerfile, args: &BuildArgs, target: usize) -> Vec<usize> {
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if !needed.insert(i) {
            continue;
        }
        let stage = &df.stages[i];
        let mut refs = Vec::new();
        if let Ok(base) = args.expand_from(&stage.base, df.escape) {
            refs.push(base);
        }
        for ins in &stage.instructions {
            if let Instr::Copy(c) = &ins.kind {
                if let Some(f) = &c.from {
                    refs.push(args.expand_from(f, df.escape).unwrap_or_else(|_| f.clone()));
                }
            }
        }
        for r in refs {
            if let Some(j) = stage_index(df, &r) {
                // Only earlier stages (a later one is refused when the step runs).
                if j < i {
                    todo.push(j);
                }
            }
        }
    }
    needed.into_iter().collect()
}

impl Run<'_> {
    fn label(&self, i: usize) -> String {
        if self.df.stages.len() == 1 {
            return String::new();
        }
        match &self.df.stages[i].name {
            Some(n) => format!("{n} "),
            None => format!("stage-{i} "),
        }
    }

    fn store(&self) -> &ImageStore {
        &self.b.store
    }

    fn pin(&mut self, diff_ids: &[String]) {
        self.pins.push(self.b.store.pin_layers(diff_ids));
    }

    /// The config a cached step produced, if there is one and its layers are all here.
    fn cached(&mut self, key: &str) -> Option<OciImageConfig> {
        if self.req.no_cache {
            return None;
        }
        let (config, _) = self.b.cache.get(key)?;
        self.pin(&config.rootfs.diff_ids);
        self.store().layer_dirs_for(&config.rootfs.diff_ids).ok()?;
        Some(config)
    }

    fn remember(&self, key: &str, config: &OciImageConfig) -> Result<(), BuildError> {
        let (_, bytes) = state_id(config);
        self.b.cache.put(key, &bytes)?;
        Ok(())
    }

    async fn stage(&mut self, i: usize) -> Result<Built, BuildError> {
        let df = self.df;
        let stage = &df.stages[i];
        let label = self.label(i);
        let total = 1 + stage
            .instructions
            .iter()
            .filter(|s| !matches!(s.kind, Instr::Arg(_)))
            .count();
        let fail_at = |line: usize, message: String| BuildError::Dockerfile {
            file: self.req.dockerfile_name.clone(),
            line,
            message,
        };
        let base = self
            .args
            .expand_from(&stage.base, df.escape)
            .map_err(|e| fail_at(stage.line, format!("{}: {e}", stage.text)))?;
        if let Some(p) = &stage.platform {
            let p = self
                .args
                .expand_from(p, df.escape)
                .map_err(|e| fail_at(stage.line, format!("{}: {e}", stage.text)))?;
            let here = format!("linux/{}", oci_architecture());
            if p != here && !p.starts_with(&format!("{here}/")) {
                return Err(fail_at(
                    stage.line,
                    format!("--platform={p}: this node builds for {here} only"),
                ));
            }
        }
        let step = self
            .progress
            .start(format!("[{label}1/{total}] FROM {base}"))
            .await;
        let (config, parent) = if base.eq_ignore_ascii_case("scratch") {
            let config = OciImageConfig {
                architecture: oci_architecture().into(),
                os: "linux".into(),
                config: OciRunConfig {
                    env: Some(vec![DEFAULT_PATH_ENV.to_string()]),
                    ..Default::default()
                },
                ..Default::default()
            };
            (config, "scratch".to_string())
        } else if let Some(j) = stage_index(df, &base)
            // Only earlier stages: `FROM busybox AS busybox` names the image.
            .filter(|j| *j < i && !base.contains([':', '/']))
        {
            let b = self.built[j].clone().ok_or_else(|| {
                BuildError::Internal(format!("stage {base} was not built before stage {i}"))
            })?;
            (b.config, b.id)
        } else {
            match self.find_image(&base, &step).await? {
                Ok((id, config)) => (config, id),
                Err(why) => {
                    let e = fail_at(stage.line, format!("FROM {base}: {why}"));
                    self.progress.failed(&step, &e.to_string()).await;
                    return Err(e);
                }
            }
        };
        self.pin(&config.rootfs.diff_ids);
        self.store().layer_dirs_for(&config.rootfs.diff_ids)?;
        self.progress.done(&step, false).await;

        let mut st = StageState::from_config(config);
        let mut parent = parent;
        let mut k = 1;
        for ins in &stage.instructions {
            if self.progress.closed() {
                return Err(BuildError::Cancelled);
            }
            let ev = st
                .evaluate(ins, df.escape, &mut self.args)
                .map_err(|e| step_error(self.req, e))?;
            if ev.action == Action::Variables {
                continue;
            }
            k += 1;
            let name = format!("[{label}{k}/{total}] {}", ins.text);
            let step = self.progress.start(name.clone()).await;
            let at = format!("{name} ({} line {})", self.req.dockerfile_name, ins.line);
            let result = self.step(&st, ev, &parent, i, &at, &step).await;
            let (config, cached) = match result {
                Ok(r) => r,
                Err(e) => {
                    let e = match e {
                        BuildError::Invalid(m) => BuildError::Invalid(format!("{at}: {m}")),
                        other => other,
                    };
                    self.progress.failed(&step, &e.to_string()).await;
                    return Err(e);
                }
            };
            self.progress.done(&step, cached).await;
            if matches!(ins.kind, Instr::Cmd(_)) {
                st.cmd_set = true;
            }
            st.config = config;
            parent = state_id(&st.config).0;
        }
        Ok(Built {
            config: st.config,
            id: parent,
        })
    }

    /// Carries out one evaluated step (or takes it from the cache): (config after, cached).
    async fn step(
        &mut self,
        st: &StageState,
        ev: Evaluated,
        parent: &str,
        stage: usize,
        at: &str,
        step: &Step,
    ) -> Result<(OciImageConfig, bool), BuildError> {
        match ev.action {
            Action::Variables => Ok((st.config.clone(), true)),
            Action::Config => {
                let key = step_key(parent, &ev.created_by, "");
                if let Some(c) = self.cached(&key) {
                    return Ok((c, true));
                }
                let mut config = ev.config;
                record(&mut config, &ev.created_by, None);
                self.remember(&key, &config)?;
                Ok((config, false))
            }
            Action::Run { argv } => {
                let key = step_key(parent, &ev.created_by, "");
                if let Some(c) = self.cached(&key) {
                    return Ok((c, true));
                }
                let layer = self.run(st, argv, at, step).await?;
                let mut config = ev.config;
                record(&mut config, &ev.created_by, layer);
                self.remember(&key, &config)?;
                Ok((config, false))
            }
            Action::Copy(plan) => {
                let source = self.copy_source(&plan, stage, step).await?;
                let (inputs, src_layers) = match &source {
                    Source::Context => {
                        let ctx = self.req.context.clone();
                        let p = plan.clone();
                        let digest = blocking(move || {
                            let fs = Rootfs::context(&ctx);
                            let found = find_sources(&p, &fs).map_err(copy_err)?;
                            hash_sources(&fs, &found).map_err(copy_err)
                        })
                        .await?;
                        (format!("context:{digest}"), None)
                    }
                    Source::Layers { key, layers } => (key.clone(), Some(layers.clone())),
                };
                let key = step_key(parent, &ev.created_by, &inputs);
                if let Some(c) = self.cached(&key) {
                    return Ok((c, true));
                }
                let layer = self.copy(st, plan, src_layers).await?;
                let mut config = ev.config;
                record(&mut config, &ev.created_by, Some(layer));
                self.remember(&key, &config)?;
                Ok((config, false))
            }
        }
    }

    /// The image `reference` names in the store: (id, config). One the store lacks is pulled
    /// first when the builder has a registry client, with the pull's progress in `step`'s log.
    /// `Ok(Err(why))`: there is no such image, and `why` says so in words for the user.
    async fn find_image(
        &self,
        reference: &str,
        step: &Step,
    ) -> Result<Result<(String, OciImageConfig), String>, BuildError> {
        let lookup = |reference: &str| {
            let (store, reference) = (self.store().clone(), reference.to_string());
            blocking(move || Ok(store.image_config(&reference)))
        };
        match lookup(reference).await? {
            Ok(found) => return Ok(Ok(found)),
            Err(ImageError::NotFound { .. }) => {}
            Err(e @ ImageError::InvalidReference { .. }) => {
                return Ok(Err(format!("no such image in this node's store ({e})")))
            }
            Err(e) => return Err(e.into()),
        }
        let Some(registry) = self.b.registry.clone() else {
            return Ok(Err(
                "no such image in this node's store (this builder does not pull: \
                 pull, load or build it first)"
                    .into(),
            ));
        };
        let credentials = Reference::parse_any(reference)
            .ok()
            .and_then(|r| self.req.credentials.get(&registry::credentials_key_of(&r)))
            .cloned()
            .unwrap_or_default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pull = async move {
            let progress = registry::Progress::to(tx);
            registry
                .ensure_with(reference, &credentials, &progress)
                .await
            // `progress` drops here: the log below ends.
        };
        let show = async {
            let mut lines = PullLines::default();
            while let Some(p) = rx.recv().await {
                if let Some(line) = lines.line(&p) {
                    self.progress.log(step, &line, false).await;
                }
            }
        };
        let (pulled, ()) = futures::join!(pull, show);
        if let Err(e) = pulled {
            return Ok(Err(format!(
                "not in this node's store, and pulling it failed: {e}"
            )));
        }
        match lookup(reference).await? {
            Ok(found) => Ok(Ok(found)),
            Err(ImageError::NotFound { .. }) => Ok(Err(
                "pulled, but removed from this node's store before the build could use it: \
                 build again"
                    .into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Where a `COPY --from` reads: an earlier stage, or an image of the store (pulled if
    /// missing).
    async fn copy_source(
        &mut self,
        plan: &CopyPlan,
        stage: usize,
        step: &Step,
    ) -> Result<Source, BuildError> {
        let Some(from) = &plan.from else {
            return Ok(Source::Context);
        };
        if let Some(j) = stage_index(self.df, from).filter(|_| !from.contains([':', '/'])) {
            if j >= stage {
                return Err(BuildError::Invalid(format!(
                    "--from={from}: a stage can only copy from an earlier stage"
                )));
            }
            let b = self.built[j].as_ref().ok_or_else(|| {
                BuildError::Invalid(format!(
                    "--from={from}: that stage was not built (its name came from a variable \
                     only known inside the stage; name it directly)"
                ))
            })?;
            return Ok(Source::Layers {
                key: format!("stage:{}", b.id),
                layers: b.config.rootfs.diff_ids.clone(),
            });
        }
        match self.find_image(from, step).await? {
            Ok((id, config)) => {
                self.pin(&config.rootfs.diff_ids);
                Ok(Source::Layers {
                    key: format!("image:{id}"),
                    layers: config.rootfs.diff_ids,
                })
            }
            Err(why) => Err(BuildError::Invalid(format!(
                "--from={from}: no stage of that name, and {why}"
            ))),
        }
    }

    /// Writes a `COPY`/`ADD` layer and puts it in the store; returns its diff id.
    async fn copy(
        &mut self,
        st: &StageState,
        plan: CopyPlan,
        src_layers: Option<Vec<String>>,
    ) -> Result<String, BuildError> {
        let store = self.store().clone();
        let ctx = self.req.context.clone();
        let diff_ids = st.config.rootfs.diff_ids.clone();
        let written = blocking(move || {
            let image = Rootfs::new(store.layer_dirs_for(&diff_ids)?, Scope::Image);
            let src = match &src_layers {
                None => Rootfs::context(&ctx),
                Some(l) => Rootfs::new(store.layer_dirs_for(l)?, Scope::Image),
            };
            let sources: Vec<Matched> = find_sources(&plan, &src).map_err(copy_err)?;
            let owner = plan
                .chown
                .as_deref()
                .map(|c| resolve_owner(c, &image))
                .transpose()
                .map_err(copy_err)?;
            let mut w = LayerWriter::create(&store.tmp_path())
                .map_err(|e| BuildError::Internal(format!("create a layer file: {e}")))?;
            write_copy(&plan, &src, &sources, &image, owner, &mut w).map_err(copy_err)?;
            w.finish()
                .map_err(|e| BuildError::Internal(format!("write a layer file: {e}")))
        })
        .await?;
        self.add_layer(written).await
    }

    /// Runs a `RUN` step; returns its layer's diff id (None: it changed nothing).
    async fn run(
        &mut self,
        st: &StageState,
        argv: Vec<String>,
        at: &str,
        step: &Step,
    ) -> Result<Option<String>, BuildError> {
        let runner = self.b.runner.clone().ok_or_else(|| {
            BuildError::Invalid(
                "RUN is not available: this builder has no container runtime".into(),
            )
        })?;
        let mut layers = self.store().layer_dirs_for(&st.config.rootfs.diff_ids)?;
        let lower = Rootfs::new(layers.clone(), Scope::Image);
        if layers.is_empty() {
            if self.scratch_dir.is_none() {
                self.scratch_dir = Some(
                    tempfile_dir::TmpDir::create(&self.store().tmp_path())
                        .map_err(|e| BuildError::Internal(format!("make an empty layer: {e}")))?,
                );
            }
            if let Some(d) = &self.scratch_dir {
                layers.push(d.0.clone());
            }
        }
        let workdir = &st.config.config.working_dir;
        let spec = RunSpec {
            argv,
            env: st.run_env(),
            cwd: if workdir.is_empty() {
                "/".into()
            } else {
                workdir.clone()
            },
            user: st.config.config.user.clone(),
            layers,
        };
        let outcome = runner.run(spec, at, self.progress, step).await?;
        let tmp = self.store().tmp_path();
        let upper = outcome.upper.clone();
        let written = blocking(move || {
            let mut w = LayerWriter::create(&tmp)
                .map_err(|e| BuildError::Internal(format!("create a layer file: {e}")))?;
            diff_upper(&upper, &lower, &mut w)
                .map_err(|e| BuildError::Invalid(format!("the RUN's changes: {e}")))?;
            if w.entries() == 0 {
                return Ok(None);
            }
            w.finish()
                .map(Some)
                .map_err(|e| BuildError::Internal(format!("write a layer file: {e}")))
        })
        .await;
        runner.remove(&outcome.id).await;
        match written? {
            Some(w) => self.add_layer(w).await.map(Some),
            None => Ok(None),
        }
    }

    /// Puts a written layer into the store (unpacked once, its tar kept as the blob) and pins
    /// it for the rest of the build.
    async fn add_layer(&mut self, written: WrittenLayer) -> Result<String, BuildError> {
        let digest = written.digest.clone();
        self.pin(std::slice::from_ref(&digest));
        let store = self.store().clone();
        blocking(move || {
            let _layer = store.lock_layer(&written.digest);
            if store.has_layer_blob(&written.digest)? {
                let _ = std::fs::remove_file(&written.path);
            } else {
                let file = File::open(&written.path)
                    .map_err(|e| BuildError::Internal(format!("reopen a layer file: {e}")))?;
                let blob = StagedBlob {
                    path: written.path.clone(),
                    digest: written.digest.clone(),
                    size: written.size,
                };
                store.unpack_and_place(file, &written.digest, blob)?;
            }
            // On disk before the cache entry that names it.
            store.sync_layers(std::slice::from_ref(&written.digest))?;
            Ok(())
        })
        .await?;
        Ok(digest)
    }
}

fn copy_err(e: super::copy::CopyError) -> BuildError {
    BuildError::Invalid(e.to_string())
}

/// For tests: a progress sink that keeps every event.
#[cfg(test)]
pub(crate) fn collecting_progress() -> (
    Progress,
    tokio::sync::mpsc::Receiver<Result<shoal_proto::BuildEvent, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(10_000);
    (Progress::new(tx), rx)
}

/// The build future must be `Send` (the API spawns it).
#[allow(dead_code)]
fn assert_send(b: ImageBuilder, r: BuildRequest, p: Progress) {
    fn is_send<T: Send>(_: T) {}
    is_send(async move { b.build(&r, &p).await });
}
