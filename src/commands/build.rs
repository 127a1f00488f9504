//! `shoal build` (also `shoal image build`, and `compose build`): sends the Dockerfile and the
//! build context (filtered by `.dockerignore`, as a tar stream) to the daemon's builder and shows
//! the progress it streams back, BuildKit-style:
//!
//! - `--progress plain` (the default when stderr is not a terminal): every step as `#N name`,
//!   its output as `#N 0.123 line`, and how it ended (`#N CACHED`, `#N DONE 0.3s`,
//!   `#N ERROR: …`);
//! - `--progress tty` (the default on a terminal): one line per finished step
//!   (` => CACHED [2/5] COPY …`, ` => [3/5] RUN …  1.2s`), a failing step's output after it;
//! - `-q` / `--progress quiet`: only the image id (on stdout); a failing step's output and the
//!   error on stderr.
//!
//! Progress goes to stderr; stdout carries only what `-q` prints.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use shoal_agent::image::build::context::{ignore_rules, pack};
use shoal_proto::{build_event, BuildEvent, BuildInput, BuildOptions};

use crate::cli::{ImageBuildArgs, ProgressMode};
use crate::client::{status_message, Client};

/// Bytes of context per message.
const CHUNK: usize = 1 << 20;

/// Where the Dockerfile comes from.
#[derive(Clone, Debug)]
pub enum DockerfileSource {
    /// A file (relative paths are relative to the current directory).
    Path(PathBuf),
    /// `-f -`.
    Stdin,
    /// Compose's `dockerfile_inline`.
    Inline(String),
    /// CONTEXT/Dockerfile.
    Default,
}

/// One build, from the command line or from compose.
#[derive(Clone, Debug)]
pub struct BuildSpec {
    pub context: PathBuf,
    pub dockerfile: DockerfileSource,
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub labels: BTreeMap<String, String>,
    pub progress: ProgressMode,
}

/// `KEY=VALUE` or `KEY` (then the value comes from the environment; unset: left out).
pub fn parse_build_args(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => bail!("invalid --build-arg {a:?}: use KEY=VALUE"),
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// `shoal build ...`: returns the image id.
pub async fn build(client: &mut Client, args: &ImageBuildArgs) -> Result<String> {
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| anyhow!("invalid --label {l:?}: use KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let spec = BuildSpec {
        context: args.context.clone(),
        dockerfile: match &args.file {
            None => DockerfileSource::Default,
            Some(p) if p == Path::new("-") => DockerfileSource::Stdin,
            Some(p) => DockerfileSource::Path(p.clone()),
        },
        tags: args.tags.clone(),
        build_args: parse_build_args(&args.build_args)?,
        target: args.target.clone(),
        no_cache: args.no_cache,
        labels,
        progress: if args.quiet {
            ProgressMode::Quiet
        } else {
            args.progress
        },
    };
    let id = run(client, &spec).await?;
    if spec.progress == ProgressMode::Quiet {
        println!("{id}");
    }
    Ok(id)
}

/// Compose's `build:` sections, built on this node. Each service's image is its `image:`, else
/// `<project>-<service>` (Compose's name); the service then runs that image. With `always`
/// every (named) service with `build:` is built (`compose build`, `up --build`); otherwise only
/// those whose image is not in the store yet (`up`). Returns the image ids built.
pub async fn compose_build(
    client: &mut Client,
    project: &mut crate::compose::Project,
    only: &[String],
    always: bool,
    no_cache: bool,
    extra_args: &[String],
    quiet: bool,
) -> Result<Vec<String>> {
    for name in only {
        if !project.services.contains_key(name) {
            bail!("no such service: {name}");
        }
    }
    let extra = parse_build_args(extra_args)?;
    let project_name = project.name.clone();
    let mut built = Vec::new();
    for (name, service) in project.services.iter_mut() {
        let Some(b) = service.build.clone() else {
            continue;
        };
        let image = service
            .image
            .clone()
            .unwrap_or_else(|| format!("{project_name}-{name}"));
        let wanted = only.is_empty() || only.contains(name);
        let present = client
            .images
            .inspect(shoal_proto::InspectImagesRequest {
                images: vec![image.clone()],
            })
            .await
            .is_ok();
        if wanted && (always || !present) {
            if b.context.contains("://") || b.context.starts_with("git@") {
                bail!(
                    "service {name}: remote build contexts ({}) are not supported: clone it \
                     and give a local directory",
                    b.context
                );
            }
            let context = PathBuf::from(&b.context);
            let dockerfile = match (&b.dockerfile_inline, &b.dockerfile) {
                (Some(text), _) => DockerfileSource::Inline(text.clone()),
                (None, Some(f)) => DockerfileSource::Path(context.join(f)),
                (None, None) => DockerfileSource::Default,
            };
            let mut build_args = BTreeMap::new();
            for (k, v) in &b.args {
                match v {
                    Some(v) => {
                        build_args.insert(k.clone(), v.clone());
                    }
                    None => {
                        if let Ok(v) = std::env::var(k) {
                            build_args.insert(k.clone(), v);
                        }
                    }
                }
            }
            build_args.extend(extra.clone());
            let mut tags = vec![image.clone()];
            tags.extend(b.tags.iter().cloned());
            if !quiet {
                eprintln!("Building {name} ({image})");
            }
            let spec = BuildSpec {
                context,
                dockerfile,
                tags,
                build_args,
                target: b.target.clone(),
                no_cache: no_cache || b.no_cache,
                labels: b.labels.clone(),
                progress: if quiet {
                    ProgressMode::Quiet
                } else {
                    ProgressMode::Auto
                },
            };
            let id = run(client, &spec)
                .await
                .with_context(|| format!("service {name}: building {image} failed"))?;
            built.push(id);
        }
        // The service runs the built image (and `build:` has been dealt with).
        service.image = Some(image);
        service.build = None;
    }
    Ok(built)
}

/// Reads the Dockerfile: (text, name for messages, its path if it is a file).
fn read_dockerfile(spec: &BuildSpec) -> Result<(String, String, Option<PathBuf>)> {
    let from_file = |p: &Path| -> Result<(String, String, Option<PathBuf>)> {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the Dockerfile {}", p.display()))?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into());
        Ok((text, name, Some(p.to_path_buf())))
    };
    match &spec.dockerfile {
        DockerfileSource::Path(p) => from_file(p),
        DockerfileSource::Inline(text) => Ok((text.clone(), "Dockerfile".into(), None)),
        DockerfileSource::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the Dockerfile from standard input")?;
            Ok((text, "Dockerfile".into(), None))
        }
        DockerfileSource::Default => {
            let upper = spec.context.join("Dockerfile");
            let lower = spec.context.join("dockerfile");
            if !upper.exists() && lower.exists() {
                from_file(&lower)
            } else {
                from_file(&upper)
            }
        }
    }
}

/// Runs a build; returns the image id.
pub async fn run(client: &mut Client, spec: &BuildSpec) -> Result<String> {
    if !spec.context.is_dir() {
        bail!(
            "unable to prepare the build context: {} is not a directory",
            spec.context.display()
        );
    }
    let (dockerfile, dockerfile_name, dockerfile_path) = read_dockerfile(spec)?;
    let rules = ignore_rules(&spec.context, dockerfile_path.as_deref())?;
    let options = BuildOptions {
        tags: spec.tags.clone(),
        dockerfile,
        dockerfile_name,
        build_args: spec.build_args.clone().into_iter().collect(),
        target: spec.target.clone().unwrap_or_default(),
        no_cache: spec.no_cache,
        labels: spec.labels.clone().into_iter().collect(),
        registry_credentials: crate::credentials::saved_logins()?
            .into_iter()
            .map(|(server, login)| (server, login.into()))
            .collect(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<BuildInput>(4);
    tx.send(BuildInput {
        options: Some(options),
        context: Vec::new(),
    })
    .await
    .map_err(|_| anyhow!("the build request could not be sent"))?;
    let context = spec.context.clone();
    let packer = tokio::task::spawn_blocking(move || {
        let mut w = ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        pack(&context, &rules, &mut w)?;
        w.send()?;
        Ok::<(), anyhow::Error>(())
    });
    let mut renderer = Renderer::new(spec.progress);
    let outcome = async {
        let mut events = client
            .builder
            .build(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut id = None;
        while let Some(ev) = events.message().await? {
            if let Some(build_event::Event::Result(r)) = &ev.event {
                id = Some(r.image_id.clone());
            }
            renderer.event(ev);
        }
        Ok::<Option<String>, tonic::Status>(id)
    }
    .await;
    let packed = packer
        .await
        .map_err(|e| anyhow!("packing the build context crashed: {e}"))?;
    match outcome {
        Ok(Some(id)) => {
            renderer.finish(true);
            packed?;
            Ok(id)
        }
        Ok(None) => {
            renderer.finish(false);
            packed?;
            bail!("the daemon ended the build without a result")
        }
        Err(status) => {
            renderer.finish(false);
            // A context that could not be packed is the real cause, unless packing only
            // stopped because the daemon had given up already.
            if let Err(e) = packed {
                let daemon_gave_up = e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                });
                if !daemon_gave_up {
                    return Err(e);
                }
            }
            Err(anyhow!(status_message(&status)))
        }
    }
}

/// A `Write` that sends the context in `BuildInput` chunks (from a blocking thread).
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<BuildInput>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let context = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(BuildInput {
                options: None,
                context,
            })
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the daemon stopped reading the build context",
                )
            })
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Shows the events (see the module docs).
struct Renderer {
    mode: ProgressMode,
    names: HashMap<u32, String>,
    logs: HashMap<u32, Vec<String>>,
    done: usize,
    started: Instant,
    err: std::io::Stderr,
}

impl Renderer {
    fn new(mode: ProgressMode) -> Renderer {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        Renderer {
            mode,
            names: HashMap::new(),
            logs: HashMap::new(),
            done: 0,
            started: Instant::now(),
            err: std::io::stderr(),
        }
    }

    fn event(&mut self, ev: BuildEvent) {
        let Some(ev) = ev.event else { return };
        let mut out = self.err.lock();
        match ev {
            build_event::Event::Started(s) => {
                if self.mode == ProgressMode::Plain {
                    let _ = writeln!(out, "#{} {}", s.id, s.name);
                }
                self.names.insert(s.id, s.name);
            }
            build_event::Event::Log(l) => {
                let name = self.names.get(&l.id).map(String::as_str).unwrap_or("");
                let timed = name.starts_with('[') && !name.starts_with("[internal]");
                if self.mode == ProgressMode::Plain {
                    if timed {
                        let _ = writeln!(
                            out,
                            "#{} {:.3} {}",
                            l.id,
                            l.elapsed_ms as f64 / 1000.0,
                            l.text
                        );
                    } else {
                        let _ = writeln!(out, "#{} {}", l.id, l.text);
                    }
                } else if timed {
                    self.logs.entry(l.id).or_default().push(l.text);
                }
            }
            build_event::Event::Done(d) => {
                self.done += 1;
                let name = self.names.get(&d.id).cloned().unwrap_or_default();
                let secs = d.elapsed_ms as f64 / 1000.0;
                match self.mode {
                    ProgressMode::Plain => {
                        if !d.error.is_empty() {
                            let _ = writeln!(out, "#{} ERROR: {}", d.id, d.error);
                        } else if d.cached {
                            let _ = writeln!(out, "#{} CACHED", d.id);
                        } else {
                            let _ = writeln!(out, "#{} DONE {secs:.1}s", d.id);
                        }
                        let _ = writeln!(out);
                    }
                    ProgressMode::Tty => {
                        if !d.error.is_empty() {
                            let _ = writeln!(out, " => ERROR {name}  {secs:.1}s");
                            let lines = self.logs.remove(&d.id).unwrap_or_default();
                            if !lines.is_empty() {
                                let _ = writeln!(out, "------\n > {name}:");
                                for l in lines {
                                    let _ = writeln!(out, "{l}");
                                }
                                let _ = writeln!(out, "------");
                            }
                        } else if d.cached {
                            let _ = writeln!(out, " => CACHED {name}  {secs:.1}s");
                        } else {
                            let _ = writeln!(out, " => {name}  {secs:.1}s");
                        }
                    }
                    _ => {
                        if !d.error.is_empty() {
                            for l in self.logs.remove(&d.id).unwrap_or_default() {
                                let _ = writeln!(out, "{l}");
                            }
                        }
                    }
                }
                self.logs.remove(&d.id);
            }
            build_event::Event::Warning(w) => {
                let _ = writeln!(out, "WARNING: {w}");
            }
            build_event::Event::Result(_) => {}
        }
    }

    fn finish(&self, ok: bool) {
        if self.mode == ProgressMode::Tty {
            let _ = writeln!(
                self.err.lock(),
                "[+] Building {:.1}s ({} steps) {}",
                self.started.elapsed().as_secs_f64(),
                self.done,
                if ok { "FINISHED" } else { "FAILED" }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_cli_parses_build_args() {
        std::env::set_var("SHOAL_TEST_BUILD_ARG", "from-env");
        let got = parse_build_args(&[
            "A=1".into(),
            "B=".into(),
            "C=x=y".into(),
            "SHOAL_TEST_BUILD_ARG".into(),
            "SHOAL_TEST_UNSET_ARG".into(),
        ])
        .unwrap();
        assert_eq!(got.get("A").map(String::as_str), Some("1"));
        assert_eq!(got.get("B").map(String::as_str), Some(""));
        assert_eq!(got.get("C").map(String::as_str), Some("x=y"));
        assert_eq!(
            got.get("SHOAL_TEST_BUILD_ARG").map(String::as_str),
            Some("from-env")
        );
        assert!(!got.contains_key("SHOAL_TEST_UNSET_ARG"));
        assert!(parse_build_args(&["=x".into()]).is_err());
    }
}
