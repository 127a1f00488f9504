//! What an instruction does to a stage, decided without touching any file (pure): variable
//! substitution with the variables in scope, the image config changes of the metadata
//! instructions, and the fully expanded form of `RUN`, `COPY` and `ADD` that the builder then
//! carries out. The text each step records in the image history (and keys the cache with) is
//! made here too.
//!
//! Docker's rules followed here:
//! - Substitution sees the stage's environment (`ENV`, the base image's included) first, then
//!   the `ARG`s declared in the stage. `ENV a=1 b=$a` substitutes the value `a` had before the
//!   instruction.
//! - `ARG name` takes the `--build-arg` value, else its default (substituted), else the value of
//!   the global `ARG` of that name (declared before the first `FROM`). ARG values reach `RUN`
//!   as environment variables (unless `ENV` sets the same name) and are not kept in the image.
//!   `TARGETPLATFORM`, `TARGETOS`, `TARGETARCH`, `BUILDPLATFORM`, `BUILDOS`, `BUILDARCH` are
//!   predefined in the global scope.
//! - Shell forms of `RUN`, `CMD` and `ENTRYPOINT` run through `SHELL` (default
//!   `["/bin/sh", "-c"]`); `ENTRYPOINT` resets a `CMD` inherited from the base image.
//! - `WORKDIR` relative to the previous one; relative `COPY`/`ADD` destinations relative to the
//!   `WORKDIR`.

use std::collections::{BTreeMap, BTreeSet};

use super::dockerfile::{ArgDecl, CommandForm, CopyArgs, Healthcheck, Instr, Instruction};
use super::expand::expand_word;
use crate::image::config::{oci_architecture, OciHealthcheck, OciImageConfig};

/// Docker's default shell for shell forms.
pub const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// The build arguments of the whole build: what `--build-arg` gave, the global `ARG`s, and
/// which of the given ones some `ARG` declared (the others are reported as unused).
#[derive(Clone, Debug, Default)]
pub struct BuildArgs {
    given: BTreeMap<String, String>,
    global: BTreeMap<String, Option<String>>,
    consumed: BTreeSet<String>,
}

/// The predefined platform args (global scope).
fn platform_args() -> Vec<(&'static str, String)> {
    let arch = oci_architecture();
    vec![
        ("TARGETPLATFORM", format!("linux/{arch}")),
        ("TARGETOS", "linux".into()),
        ("TARGETARCH", arch.into()),
        ("BUILDPLATFORM", format!("linux/{arch}")),
        ("BUILDOS", "linux".into()),
        ("BUILDARCH", arch.into()),
    ]
}

impl BuildArgs {
    /// Evaluates the global `ARG`s (before the first `FROM`) with the given values.
    pub fn new(
        given: BTreeMap<String, String>,
        global_args: &[Instruction],
        escape: char,
    ) -> Result<BuildArgs, StepError> {
        let mut args = BuildArgs {
            given,
            global: platform_args()
                .into_iter()
                .map(|(k, v)| (k.to_string(), Some(v)))
                .collect(),
            consumed: BTreeSet::new(),
        };
        for ins in global_args {
            let Instr::Arg(decls) = &ins.kind else {
                continue;
            };
            for ArgDecl { name, default } in decls {
                let value = if let Some(v) = args.given.get(name) {
                    args.consumed.insert(name.clone());
                    Some(v.clone())
                } else if let Some(d) = default {
                    let global = &args.global;
                    Some(
                        expand_word(d, escape, &|n| global.get(n).cloned().flatten())
                            .map_err(|e| StepError::new(ins, e))?,
                    )
                } else {
                    None
                };
                args.global.insert(name.clone(), value);
            }
        }
        Ok(args)
    }

    /// Substitutes variables in a `FROM` line's base image (global args only).
    pub fn expand_from(&self, word: &str, escape: char) -> Result<String, String> {
        expand_word(word, escape, &|n| self.global.get(n).cloned().flatten())
    }

    /// `--build-arg`s no `ARG` declared (Docker warns about them).
    pub fn unused(&self) -> Vec<String> {
        self.given
            .keys()
            .filter(|k| !self.consumed.contains(*k))
            .cloned()
            .collect()
    }
}

/// An instruction that cannot be carried out: its line and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepError {
    pub line: usize,
    pub instruction: String,
    pub message: String,
}

impl StepError {
    pub fn new(ins: &Instruction, message: impl Into<String>) -> StepError {
        StepError {
            line: ins.line,
            instruction: ins.text.clone(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Dockerfile line {} ({}): {}",
            self.line, self.instruction, self.message
        )
    }
}

/// A stage as it is being built.
#[derive(Clone, Debug, Default)]
pub struct StageState {
    /// The image config so far (layers and history included).
    pub config: OciImageConfig,
    /// `ARG`s declared in the stage (None: declared without a value).
    pub args: BTreeMap<String, Option<String>>,
    /// A `CMD` was given in this stage (so `ENTRYPOINT` keeps it).
    pub cmd_set: bool,
}

/// A `COPY`/`ADD` with everything substituted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    pub add: bool,
    pub sources: Vec<String>,
    /// Absolute, cleaned.
    pub dest: String,
    /// The destination was written as a directory (`/` at the end, or `.`).
    pub dest_is_dir: bool,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<u32>,
}

/// What the builder has to do for an instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Only the config changes (done: see [`Evaluated::config`]).
    Config,
    /// Only the stage's variables change (an `ARG`); no history entry.
    Variables,
    /// Run this argv (with [`StageState::run_env`]) and keep what it changed as a layer.
    Run {
        argv: Vec<String>,
    },
    Copy(CopyPlan),
}

/// An instruction evaluated against a stage.
#[derive(Clone, Debug)]
pub struct Evaluated {
    pub action: Action,
    /// The config after the instruction (for `Run`/`Copy`: before their layer is added).
    pub config: OciImageConfig,
    /// The history's `created_by`, which also keys the cache (with the parent's identity).
    pub created_by: String,
}

impl StageState {
    /// A stage starting from an image config (or scratch: an empty one).
    pub fn from_config(config: OciImageConfig) -> StageState {
        StageState {
            config,
            args: BTreeMap::new(),
            cmd_set: false,
        }
    }

    /// A variable's value: the environment first, then the stage's ARGs.
    pub fn lookup(&self, name: &str) -> Option<String> {
        let env = self.config.config.env.as_deref().unwrap_or_default();
        for kv in env.iter().rev() {
            if let Some((k, v)) = kv.split_once('=') {
                if k == name {
                    return Some(v.to_string());
                }
            }
        }
        self.args.get(name).cloned().flatten()
    }

    pub fn expand(&self, word: &str, escape: char) -> Result<String, String> {
        expand_word(word, escape, &|n| self.lookup(n))
    }

    /// The environment of a `RUN`: the image's, plus the ARGs with a value that ENV does not
    /// set.
    pub fn run_env(&self) -> Vec<String> {
        let mut env = self.config.config.env.clone().unwrap_or_default();
        let set: BTreeSet<String> = env
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
            .collect();
        for (k, v) in &self.args {
            if let Some(v) = v {
                if !set.contains(k) {
                    env.push(format!("{k}={v}"));
                }
            }
        }
        env
    }

    fn shell(&self) -> Vec<String> {
        self.config
            .config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect())
    }

    fn argv(&self, form: &CommandForm) -> Vec<String> {
        match form {
            CommandForm::Exec(v) => v.clone(),
            CommandForm::Shell(s) => {
                let mut argv = self.shell();
                argv.push(s.clone());
                argv
            }
        }
    }

    fn workdir(&self) -> String {
        let w = &self.config.config.working_dir;
        if w.is_empty() {
            "/".into()
        } else {
            w.clone()
        }
    }

    /// Evaluates `ins`; for `ARG` the stage's variables change at once (`args`), for every
    /// other instruction `self` is left as it is and the caller adopts [`Evaluated::config`].
    pub fn evaluate(
        &mut self,
        ins: &Instruction,
        escape: char,
        args: &mut BuildArgs,
    ) -> Result<Evaluated, StepError> {
        let fail = |m: String| StepError::new(ins, m);
        let x = |w: &str| self.expand(w, escape).map_err(|e| StepError::new(ins, e));
        let mut config = self.config.clone();
        let run = &mut config.config;
        let created_by = match &ins.kind {
            Instr::Arg(decls) => {
                for ArgDecl { name, default } in decls {
                    let value = if let Some(v) = args.given.get(name) {
                        args.consumed.insert(name.clone());
                        Some(v.clone())
                    } else if let Some(d) = default {
                        Some(self.expand(d, escape).map_err(&fail)?)
                    } else {
                        args.global.get(name).cloned().flatten()
                    };
                    self.args.insert(name.clone(), value);
                }
                return Ok(Evaluated {
                    action: Action::Variables,
                    config,
                    created_by: String::new(),
                });
            }
            Instr::Env(pairs) => {
                let mut shown = Vec::new();
                let expanded: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(k, v)| Ok((x(k)?, x(v)?)))
                    .collect::<Result<_, StepError>>()?;
                let env = run.env.get_or_insert_with(Vec::new);
                for (k, v) in expanded {
                    if k.is_empty() || k.contains('=') {
                        return Err(fail(format!("invalid environment variable name {k:?}")));
                    }
                    let entry = format!("{k}={v}");
                    match env
                        .iter_mut()
                        .find(|e| e.split('=').next() == Some(k.as_str()))
                    {
                        Some(e) => *e = entry.clone(),
                        None => env.push(entry.clone()),
                    }
                    shown.push(entry);
                }
                format!("ENV {}", shown.join(" "))
            }
            Instr::Label(pairs) => {
                let mut shown = Vec::new();
                let labels = run.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in pairs {
                    let (k, v) = (x(k)?, x(v)?);
                    if k.is_empty() {
                        return Err(fail("LABEL names can not be blank".into()));
                    }
                    shown.push(format!("{k}={v}"));
                    labels.insert(k, v);
                }
                format!("LABEL {}", shown.join(" "))
            }
            Instr::Workdir(w) => {
                let w = x(w)?;
                let joined = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{w}", self.workdir())
                };
                let clean = normalize_abs(&joined);
                run.working_dir = clean.clone();
                format!("WORKDIR {clean}")
            }
            Instr::User(u) => {
                let u = x(u)?;
                if u.is_empty() {
                    return Err(fail("USER requires a user name or uid".into()));
                }
                run.user = u.clone();
                format!("USER {u}")
            }
            Instr::Expose(ports) => {
                let mut shown = Vec::new();
                let exposed = run.exposed_ports.get_or_insert_with(BTreeMap::new);
                for p in ports {
                    for port in parse_expose(&x(p)?).map_err(&fail)? {
                        exposed.insert(port.clone(), serde_json::json!({}));
                        shown.push(port);
                    }
                }
                format!("EXPOSE {}", shown.join(" "))
            }
            Instr::Volume(paths) => {
                let mut shown = Vec::new();
                let volumes = run.volumes.get_or_insert_with(BTreeMap::new);
                for p in paths {
                    let p = x(p)?;
                    if p.trim().is_empty() {
                        return Err(fail("VOLUME specified can not be an empty string".into()));
                    }
                    volumes.insert(p.clone(), serde_json::json!({}));
                    shown.push(p);
                }
                format!("VOLUME [{}]", shown.join(" "))
            }
            Instr::StopSignal(s) => {
                let s = x(s)?;
                crate::runtime::parse_signal(&s)
                    .map_err(|e| fail(format!("STOPSIGNAL {s}: {e}")))?;
                run.stop_signal = s.clone();
                format!("STOPSIGNAL {s}")
            }
            Instr::Healthcheck(h) => {
                let ns = |d: &Option<std::time::Duration>| {
                    d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                        .unwrap_or(0)
                };
                run.healthcheck = Some(match h {
                    Healthcheck::None => OciHealthcheck {
                        test: Some(vec!["NONE".into()]),
                        ..Default::default()
                    },
                    Healthcheck::Check {
                        test,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => OciHealthcheck {
                        test: Some(test.clone()),
                        interval: ns(interval),
                        timeout: ns(timeout),
                        start_period: ns(start_period),
                        start_interval: ns(start_interval),
                        retries: retries.unwrap_or(0),
                    },
                });
                ins.text.clone()
            }
            Instr::Cmd(form) => {
                let argv = self.argv(form);
                run.cmd = Some(argv.clone());
                format!("CMD {}", json(&argv))
            }
            Instr::Entrypoint(form) => {
                let argv = self.argv(form);
                run.entrypoint = Some(argv.clone());
                if !self.cmd_set {
                    run.cmd = None;
                }
                format!("ENTRYPOINT {}", json(&argv))
            }
            Instr::Shell(shell) => {
                run.shell = Some(shell.clone());
                format!("SHELL {}", json(shell))
            }
            Instr::Maintainer(m) => {
                config.author = Some(m.clone());
                format!("MAINTAINER {m}")
            }
            Instr::Run(form) => {
                let argv = self.argv(form);
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(fail("RUN requires a command".into()));
                }
                let with_values: Vec<String> = self
                    .args
                    .iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                    .collect();
                let prefix = if with_values.is_empty() {
                    String::new()
                } else {
                    format!("|{} {} ", with_values.len(), with_values.join(" "))
                };
                let created_by = format!("RUN {prefix}{}", argv.join(" "));
                return Ok(Evaluated {
                    action: Action::Run { argv },
                    config,
                    created_by,
                });
            }
            Instr::Copy(c) | Instr::Add(c) => {
                let add = matches!(ins.kind, Instr::Add(_));
                let plan = self.copy_plan(c, add, escape).map_err(&fail)?;
                let mut shown = String::from(if add { "ADD" } else { "COPY" });
                if let Some(f) = &plan.from {
                    shown.push_str(&format!(" --from={f}"));
                }
                if let Some(o) = &plan.chown {
                    shown.push_str(&format!(" --chown={o}"));
                }
                if let Some(m) = plan.chmod {
                    shown.push_str(&format!(" --chmod={m:o}"));
                }
                for s in &plan.sources {
                    shown.push(' ');
                    shown.push_str(s);
                }
                shown.push(' ');
                shown.push_str(&plan.dest);
                if plan.dest_is_dir && plan.dest != "/" {
                    shown.push('/');
                }
                return Ok(Evaluated {
                    action: Action::Copy(plan),
                    config,
                    created_by: shown,
                });
            }
        };
        Ok(Evaluated {
            action: Action::Config,
            config,
            created_by,
        })
    }

    fn copy_plan(&self, c: &CopyArgs, add: bool, escape: char) -> Result<CopyPlan, String> {
        let x = |w: &str| self.expand(w, escape);
        let sources: Vec<String> = c.sources.iter().map(|s| x(s)).collect::<Result<_, _>>()?;
        if sources.iter().any(|s| s.is_empty()) {
            return Err("a source path is empty".into());
        }
        if add {
            if let Some(url) = sources.iter().find(|s| {
                s.starts_with("http://") || s.starts_with("https://") || s.starts_with("git@")
            }) {
                return Err(format!(
                    "ADD of a remote URL ({url}) is not supported by shoal build: download the \
                     file into the build context first, or RUN wget/curl in the Dockerfile"
                ));
            }
        }
        let dest_raw = x(&c.dest)?;
        if dest_raw.is_empty() {
            return Err("the destination is empty".into());
        }
        let dest_is_dir = dest_raw.ends_with('/')
            || dest_raw == "."
            || dest_raw.ends_with("/.")
            || dest_raw == ".."
            || dest_raw.ends_with("/..");
        let joined = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!("{}/{dest_raw}", self.workdir())
        };
        let dest = normalize_abs(&joined);
        let chmod = match &c.chmod {
            None => None,
            Some(m) => {
                let m = x(m)?;
                Some(
                    u32::from_str_radix(&m, 8)
                        .ok()
                        .filter(|v| *v <= 0o7777)
                        .ok_or_else(|| {
                            format!(
                                "invalid --chmod={m}: give octal permission bits, e.g. 755 or 0644"
                            )
                        })?,
                )
            }
        };
        let chown = c.chown.as_deref().map(x).transpose()?;
        if chown.as_deref() == Some("") {
            return Err("--chown needs a user: --chown=user[:group]".into());
        }
        let from = c.from.as_deref().map(x).transpose()?;
        Ok(CopyPlan {
            add,
            sources,
            dest,
            dest_is_dir,
            from,
            chown,
            chmod,
        })
    }
}

/// An absolute, cleaned path; `..` never climbs above `/`.
pub fn normalize_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// `EXPOSE` specs: `80`, `80/tcp`, `53/udp`, `8000-8002` → `N/proto` each.
pub fn parse_expose(spec: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "EXPOSE {spec}: invalid protocol {proto:?} (use tcp, udp or sctp)"
        ));
    }
    let port = |p: &str| -> Result<u16, String> {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("EXPOSE {spec}: invalid port {p:?} (1-65535)"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(format!("EXPOSE {spec}: the range goes backwards"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::dockerfile::parse;
    use crate::image::config::OciRunConfig;

    /// Runs every instruction of the (single-stage) Dockerfile against a base with PATH set.
    fn run_all(
        text: &str,
        given: &[(&str, &str)],
    ) -> Result<(StageState, Vec<Evaluated>, BuildArgs), StepError> {
        let df = parse(text).expect("parse");
        let mut args = BuildArgs::new(
            given
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            &df.global_args,
            df.escape,
        )?;
        let mut st = StageState::from_config(OciImageConfig {
            config: OciRunConfig {
                env: Some(vec!["PATH=/bin".into()]),
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
            ..Default::default()
        });
        let mut out = Vec::new();
        for ins in &df.stages[0].instructions {
            let ev = st.evaluate(ins, df.escape, &mut args)?;
            if matches!(ins.kind, Instr::Cmd(_)) {
                st.cmd_set = true;
            }
            st.config = ev.config.clone();
            out.push(ev);
        }
        Ok((st, out, args))
    }

    #[test]
    fn build_state_env_substitution_uses_previous_values() {
        let (st, evs, _) = run_all(
            "FROM b\nENV A=1\nENV A=2 B=$A C=\"x y\" D='$A'\nENV LEGACY some value\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            st.config.config.env.unwrap(),
            vec![
                "PATH=/bin",
                "A=2",
                "B=1",
                "C=x y",
                "D=$A",
                "LEGACY=some value"
            ]
        );
        assert_eq!(evs[1].created_by, "ENV A=2 B=1 C=x y D=$A");
        assert_eq!(evs[1].action, Action::Config);
    }

    #[test]
    fn build_state_args_scope_and_precedence() {
        let text = "ARG G=global\nARG ONLY_GLOBAL=og\nFROM b\nARG G\nARG L=local-$G\nARG ONLY_GLOBAL\nARG UNSET\nENV FROM_ARG=$L E=$ONLY_GLOBAL U=${UNSET:-none}\nRUN echo\n";
        let (st, evs, args) = run_all(text, &[]).unwrap();
        let env = st.config.config.env.clone().unwrap();
        assert!(
            env.contains(&"FROM_ARG=local-global".to_string()),
            "{env:?}"
        );
        assert!(env.contains(&"E=og".to_string()), "{env:?}");
        assert!(env.contains(&"U=none".to_string()), "{env:?}");
        let run = evs.last().unwrap();
        assert_eq!(
            run.created_by,
            "RUN |3 G=global L=local-global ONLY_GLOBAL=og /bin/sh -c echo"
        );
        assert!(args.unused().is_empty());
        // ARG values reach RUN's environment, unless ENV sets the name.
        let run_env = st.run_env();
        assert!(run_env.contains(&"L=local-global".to_string()));
        assert!(!run_env.iter().any(|e| e.starts_with("UNSET=")));

        // --build-arg wins over defaults; undeclared ones are reported.
        let (st, _, args) = run_all(text, &[("G", "cli"), ("L", "given"), ("X", "1")]).unwrap();
        let env = st.config.config.env.unwrap();
        assert!(env.contains(&"FROM_ARG=given".to_string()), "{env:?}");
        assert_eq!(args.unused(), vec!["X".to_string()]);
    }

    #[test]
    fn build_state_env_overrides_arg() {
        let (st, evs, _) = run_all("FROM b\nARG V=arg\nENV V=env\nENV W=$V\nRUN x\n", &[]).unwrap();
        assert!(st
            .config
            .config
            .env
            .as_ref()
            .unwrap()
            .contains(&"W=env".to_string()));
        let run_env = st.run_env();
        assert_eq!(run_env.iter().filter(|e| e.starts_with("V=")).count(), 1);
        assert!(run_env.contains(&"V=env".to_string()));
        assert_eq!(evs[0].action, Action::Variables);
    }

    #[test]
    fn build_state_global_args_expand_from() {
        let df = parse("ARG BASE=busy\nARG TAG=${BASE}box\nFROM $TAG:${V:-latest}\n").unwrap();
        let args = BuildArgs::new(BTreeMap::new(), &df.global_args, '\\').unwrap();
        assert_eq!(
            args.expand_from(&df.stages[0].base, '\\').unwrap(),
            "busybox:latest"
        );
        let args = BuildArgs::new(
            [("BASE".to_string(), "x".to_string())].into(),
            &df.global_args,
            '\\',
        )
        .unwrap();
        assert_eq!(args.expand_from("$TAG", '\\').unwrap(), "xbox");
        assert!(args
            .expand_from("$TARGETPLATFORM", '\\')
            .unwrap()
            .starts_with("linux/"));
    }

    #[test]
    fn build_state_workdir_user_and_copy_dest() {
        let (st, evs, _) = run_all(
            "FROM b\nWORKDIR /app\nWORKDIR sub/../src\nUSER ${NAME:-app}:grp\nCOPY a b ./\nCOPY x rel\nCOPY y /abs/./z/\nWORKDIR ../../../..\n",
            &[],
        )
        .unwrap();
        assert_eq!(evs[0].created_by, "WORKDIR /app");
        assert_eq!(evs[1].created_by, "WORKDIR /app/src");
        assert_eq!(st.config.config.user, "app:grp");
        let Action::Copy(c) = &evs[3].action else {
            panic!("copy")
        };
        assert_eq!(c.dest, "/app/src");
        assert!(c.dest_is_dir);
        assert_eq!(c.sources, vec!["a", "b"]);
        assert_eq!(evs[3].created_by, "COPY a b /app/src/");
        let Action::Copy(c) = &evs[4].action else {
            panic!("copy")
        };
        assert_eq!((c.dest.as_str(), c.dest_is_dir), ("/app/src/rel", false));
        let Action::Copy(c) = &evs[5].action else {
            panic!("copy")
        };
        assert_eq!((c.dest.as_str(), c.dest_is_dir), ("/abs/z", true));
        assert_eq!(st.config.config.working_dir, "/");
    }

    #[test]
    fn build_state_copy_flags() {
        let (_, evs, _) = run_all(
            "FROM b\nARG OWNER=1000\nCOPY --from=builder --chown=$OWNER:$OWNER --chmod=0640 /out /bin/\n",
            &[],
        )
        .unwrap();
        let Action::Copy(c) = &evs[1].action else {
            panic!("copy")
        };
        assert_eq!(c.from.as_deref(), Some("builder"));
        assert_eq!(c.chown.as_deref(), Some("1000:1000"));
        assert_eq!(c.chmod, Some(0o640));
        assert_eq!(
            evs[1].created_by,
            "COPY --from=builder --chown=1000:1000 --chmod=640 /out /bin/"
        );
        let e = run_all("FROM b\nCOPY --chmod=u+x a /b\n", &[]).unwrap_err();
        assert!(e.message.contains("--chmod"), "{e}");
        assert_eq!(e.line, 2);
        let e = run_all("FROM b\nADD https://example.invalid/x /x\n", &[]).unwrap_err();
        assert!(e.message.contains("remote URL"), "{e}");
    }

    #[test]
    fn build_state_cmd_entrypoint_shell() {
        let (st, evs, _) = run_all(
            "FROM b\nSHELL [\"/bin/ash\", \"-eo\", \"pipefail\", \"-c\"]\nCMD echo $HOME\nRUN ls\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            st.config.config.cmd.as_deref().unwrap(),
            ["/bin/ash", "-eo", "pipefail", "-c", "echo $HOME"]
        );
        assert_eq!(
            evs[2].action,
            Action::Run {
                argv: vec![
                    "/bin/ash".into(),
                    "-eo".into(),
                    "pipefail".into(),
                    "-c".into(),
                    "ls".into()
                ]
            }
        );
        // ENTRYPOINT drops an inherited CMD, keeps one set in the stage.
        let (st, _, _) = run_all("FROM b\nENTRYPOINT [\"/x\"]\n", &[]).unwrap();
        assert_eq!(st.config.config.cmd, None);
        let (st, _, _) = run_all("FROM b\nCMD [\"a\"]\nENTRYPOINT [\"/x\"]\n", &[]).unwrap();
        assert_eq!(st.config.config.cmd.as_deref().unwrap(), ["a"]);
        assert_eq!(st.config.config.entrypoint.as_deref().unwrap(), ["/x"]);
    }

    #[test]
    fn build_state_metadata_instructions() {
        let (st, evs, _) = run_all(
            "FROM b\nLABEL a=1 \"b c\"=\"d e\"\nEXPOSE 80 53/udp 8000-8001\nVOLUME /data\nSTOPSIGNAL SIGQUIT\nHEALTHCHECK --interval=5s --retries=2 CMD true\nMAINTAINER me\n",
            &[],
        )
        .unwrap();
        let c = &st.config.config;
        let labels = c.labels.clone().unwrap();
        assert_eq!(labels.get("b c").map(String::as_str), Some("d e"));
        let ports: Vec<String> = c.exposed_ports.clone().unwrap().keys().cloned().collect();
        assert_eq!(ports, vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert!(c.volumes.clone().unwrap().contains_key("/data"));
        assert_eq!(c.stop_signal, "SIGQUIT");
        let h = c.healthcheck.clone().unwrap();
        assert_eq!(h.test.unwrap(), vec!["CMD-SHELL", "true"]);
        assert_eq!((h.interval, h.retries), (5_000_000_000, 2));
        assert_eq!(st.config.author.as_deref(), Some("me"));
        assert_eq!(evs[1].created_by, "EXPOSE 80/tcp 53/udp 8000/tcp 8001/tcp");
        let (st, _, _) = run_all("FROM b\nHEALTHCHECK NONE\n", &[]).unwrap();
        assert_eq!(
            st.config.config.healthcheck.unwrap().test.unwrap(),
            vec!["NONE"]
        );
        for bad in [
            "FROM b\nEXPOSE 0\n",
            "FROM b\nEXPOSE 80/icmp\n",
            "FROM b\nEXPOSE 9-1\n",
            "FROM b\nSTOPSIGNAL SIGNOPE\n",
            "FROM b\nENV A=${B:?needed}\n",
        ] {
            assert!(run_all(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn build_state_expose_specs() {
        assert_eq!(parse_expose("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(parse_expose("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            parse_expose("1-3/sctp").unwrap(),
            vec!["1/sctp", "2/sctp", "3/sctp"]
        );
        assert!(parse_expose("x").is_err());
        assert!(parse_expose("70000").is_err());
    }

    #[test]
    fn build_state_normalize_abs() {
        assert_eq!(normalize_abs("/a/./b/../c/"), "/a/c");
        assert_eq!(normalize_abs("/../.."), "/");
        assert_eq!(normalize_abs("//x//y"), "/x/y");
    }
}
