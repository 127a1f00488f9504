//! `shoal run`, `ps`, `exec`, `logs`, `stop`, `start`, `restart`, `kill`, `rm`, `pause`,
//! `unpause`, `inspect`, `stats`, `top`: Docker's container commands, on the node the CLI
//! talks to (its `Containers` API).
//!
//! `run` and `exec` end the process with the container's (or the command's) exit code, as
//! Docker does. `run -i/-t` is refused: the runtime cannot give a container's main process a
//! terminal or stdin yet; `exec -it` can.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use shoal_proto::{
    exec_input, exec_output, run_container_event, ContainerInfo, ContainerLogLine,
    ContainerLogsRequest, ContainerRef, ContainerStatsRequest, ExecInput, ExecResize,
    ExecSpecMessage, GetNetworkRequest, KillContainerRequest, ListContainersRequest, Network,
    NetworkAttachmentConfig, RemoveContainerRequest, RunContainerRequest, StopContainerRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::service::{parse_pairs, rfc3339};
use crate::cli::{ContainerCommand, ExecArgs, Format, LogsArgs, PsArgs, RunArgs, StopArgs};
use crate::client::{status_message, Client};
use crate::output::{ago, print_json, size, table};

fn api(status: tonic::Status) -> anyhow::Error {
    anyhow!(status_message(&status))
}

pub async fn run(client: &mut Client, command: ContainerCommand) -> Result<()> {
    match command {
        ContainerCommand::Run(a) => run_container(client, *a).await,
        ContainerCommand::Exec(a) => exec(client, a).await,
        ContainerCommand::Ps(a) => ps(client, a).await,
        ContainerCommand::Logs(a) => logs(client, a).await,
        ContainerCommand::Stop(a) => stop(client, a, false).await,
        ContainerCommand::Restart(a) => stop(client, a, true).await,
        ContainerCommand::Start { containers } => {
            each(&containers, |c| {
                let mut client = client.clone();
                async move {
                    client
                        .containers
                        .start(ContainerRef { container: c })
                        .await?;
                    Ok(())
                }
            })
            .await
        }
        ContainerCommand::Kill { signal, containers } => {
            each(&containers, |c| {
                let mut client = client.clone();
                let signal = signal.clone();
                async move {
                    client
                        .containers
                        .kill(KillContainerRequest {
                            container: c,
                            signal,
                        })
                        .await?;
                    Ok(())
                }
            })
            .await
        }
        ContainerCommand::Rm { force, containers } => {
            each(&containers, |c| {
                let mut client = client.clone();
                async move {
                    client
                        .containers
                        .remove(RemoveContainerRequest {
                            container: c,
                            force,
                        })
                        .await?;
                    Ok(())
                }
            })
            .await
        }
        ContainerCommand::Pause { containers } => {
            each(&containers, |c| {
                let mut client = client.clone();
                async move {
                    client
                        .containers
                        .pause(ContainerRef { container: c })
                        .await?;
                    Ok(())
                }
            })
            .await
        }
        ContainerCommand::Unpause { containers } => {
            each(&containers, |c| {
                let mut client = client.clone();
                async move {
                    client
                        .containers
                        .unpause(ContainerRef { container: c })
                        .await?;
                    Ok(())
                }
            })
            .await
        }
        ContainerCommand::Inspect { containers } => inspect(client, &containers).await,
        ContainerCommand::Stats {
            no_stream,
            containers,
        } => stats(client, no_stream, containers).await,
        ContainerCommand::Top { container } => top(client, &container).await,
    }
}

/// Runs `action` on each container, printing its name as given on success and an error line
/// on failure (as Docker does); fails at the end if any failed.
async fn each<F, Fut>(containers: &[String], mut action: F) -> Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = 0;
    for c in containers {
        match action(c.clone()).await {
            Ok(()) => println!("{c}"),
            Err(e) => {
                eprintln!("Error: {}", status_message(&e));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        // The errors are printed already; exit 1 without another line.
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}

async fn stop(client: &mut Client, a: StopArgs, restart: bool) -> Result<()> {
    let timeout = a.time;
    each(&a.containers, |c| {
        let mut client = client.clone();
        async move {
            let request = StopContainerRequest {
                container: c,
                timeout,
            };
            if restart {
                client.containers.restart(request).await?;
            } else {
                client.containers.stop(request).await?;
            }
            Ok(())
        }
    })
    .await
}

/// "Up 5 seconds", "Exited (3) 2 minutes ago", like Docker.
fn status_text(c: &ContainerInfo) -> String {
    let up = || ago(c.started_at).trim_end_matches(" ago").to_string();
    match c.state.as_str() {
        "running" => format!("Up {}", up()),
        "paused" => format!("Up {} (Paused)", up()),
        "exited" => format!("Exited ({}) {}", c.exit_code, ago(c.finished_at)),
        "created" => "Created".into(),
        other => other.to_string(),
    }
}

/// The command as Docker's `ps` shows it: quoted, truncated to 20 characters.
fn command_text(c: &ContainerInfo, no_trunc: bool) -> String {
    let joined = c.command.join(" ");
    let shown = if no_trunc || joined.chars().count() <= 20 {
        joined
    } else {
        let mut s: String = joined.chars().take(19).collect();
        s.push('…');
        s
    };
    format!("\"{shown}\"")
}

async fn ps(client: &mut Client, a: PsArgs) -> Result<()> {
    let containers = client
        .containers
        .list(ListContainersRequest { all: a.all })
        .await
        .map_err(api)?
        .into_inner()
        .containers;
    let id = |c: &ContainerInfo| {
        if a.no_trunc {
            c.id.clone()
        } else {
            c.id.chars().take(12).collect()
        }
    };
    if a.quiet {
        for c in &containers {
            println!("{}", id(c));
        }
        return Ok(());
    }
    if a.format.format == Some(Format::Json) {
        return print_json(&containers);
    }
    let rows = containers
        .iter()
        .map(|c| {
            vec![
                id(c),
                c.image.clone(),
                command_text(c, a.no_trunc),
                ago(c.created),
                status_text(c),
                String::new(),
                c.name.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES"
            ],
            rows
        )
    );
    Ok(())
}

async fn inspect(client: &mut Client, containers: &[String]) -> Result<()> {
    let mut found = Vec::new();
    let mut failed = false;
    for c in containers {
        match client
            .containers
            .inspect(ContainerRef {
                container: c.clone(),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let mut value = serde_json::to_value(r.info.unwrap_or_default())?;
                let detail: serde_json::Value = serde_json::from_str(&r.detail_json)
                    .context("the daemon sent an unreadable container")?;
                if let (Some(obj), Some(detail)) = (value.as_object_mut(), detail.as_object()) {
                    for key in ["config", "status", "paused", "supervisor_pid"] {
                        if let Some(v) = detail.get(key) {
                            let name = if key == "status" { "exit" } else { key };
                            obj.insert(name.to_string(), v.clone());
                        }
                    }
                }
                found.push(value);
            }
            Err(e) => {
                eprintln!("Error: {}", status_message(&e));
                failed = true;
            }
        }
    }
    print_json(&found)?;
    if failed {
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}

fn write_line(line: &ContainerLogLine, timestamps: bool) -> std::io::Result<()> {
    let mut out: Box<dyn Write> = if line.stream == "stderr" {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    };
    if timestamps {
        out.write_all(format!("{} ", rfc3339(line.timestamp)).as_bytes())?;
    }
    out.write_all(&line.line)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// `--since`: a duration before now (`10m`), or a unix time in seconds.
fn parse_since(text: &str) -> Result<i64> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if let Ok(secs) = text.trim().parse::<f64>() {
        if secs > 1e9 {
            return Ok((secs * 1000.0) as i64);
        }
    }
    let d = crate::units::parse_duration(text)
        .map_err(|e| anyhow!("invalid --since {text:?}: {e}; or give a unix time in seconds"))?;
    Ok(now - d.as_millis() as i64)
}

async fn logs(client: &mut Client, a: LogsArgs) -> Result<()> {
    let tail = match a.tail.as_deref() {
        None | Some("all") => None,
        Some(n) => Some(
            n.parse::<u64>()
                .map_err(|_| anyhow!("invalid --tail {n:?}: use a number of lines or `all`"))?,
        ),
    };
    let since = a
        .since
        .as_deref()
        .map(parse_since)
        .transpose()?
        .unwrap_or(0);
    let mut stream = client
        .containers
        .logs(ContainerLogsRequest {
            container: a.container.clone(),
            follow: a.follow,
            tail,
            since,
        })
        .await
        .map_err(api)?
        .into_inner();
    while let Some(line) = stream.message().await.map_err(api)? {
        write_line(&line, a.timestamps)?;
    }
    Ok(())
}

/// `--env-file`: KEY=VALUE lines; `#` comments and blank lines skipped; a bare KEY takes the
/// local value (and is dropped when unset), as Docker does.
fn read_env_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the env file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, _)) if !k.trim().is_empty() && !k.contains(char::is_whitespace) => {
                out.push(line.to_string())
            }
            Some(_) => bail!("{}:{}: {line:?} is not KEY=VALUE", path.display(), n + 1),
            None => {
                if let Ok(v) = std::env::var(line.trim()) {
                    out.push(format!("{}={v}", line.trim()));
                }
            }
        }
    }
    Ok(out)
}

pub(crate) async fn run_container(client: &mut Client, a: RunArgs) -> Result<()> {
    if a.interactive || a.tty {
        bail!(
            "shoal run -i/-t is not supported yet: the runtime cannot give a container's main \
             process a terminal or stdin; run it with -d and use `shoal exec -it CONTAINER sh`"
        );
    }
    let mut env = Vec::new();
    for f in &a.env_files {
        env.extend(read_env_file(f)?);
    }
    for e in &a.env {
        if e.contains('=') {
            env.push(e.clone());
        } else if let Ok(v) = std::env::var(e) {
            env.push(format!("{e}={v}"));
        }
    }
    let mut ports = Vec::new();
    for p in &a.publish {
        ports.extend(super::service::parse_publish(p)?);
    }
    let dir = std::env::current_dir()?;
    let mut mounts = Vec::new();
    for v in &a.volumes {
        mounts.push(crate::compose::volume_flag(v, &dir).map_err(|e| anyhow!(e))?);
    }
    for t in &a.tmpfs {
        mounts.push(crate::compose::tmpfs_mount(t));
    }
    let (attachments, networks) = resolve_network(client, &a.network).await?;
    let request = RunContainerRequest {
        image: a.image.clone(),
        cmd: a.args.clone(),
        entrypoint: a.entrypoint.clone(),
        env,
        workdir: a.workdir.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        name: a.name.clone().unwrap_or_default(),
        memory_bytes: a.memory.unwrap_or(0),
        nano_cpus: a.cpus.unwrap_or(0),
        pids_limit: a.pids_limit.unwrap_or(0),
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        read_only: a.read_only,
        init: a.init,
        network: a.network.clone(),
        auto_remove: a.rm,
        attach: !a.detach,
        labels: parse_pairs(&a.labels, "label")?,
        hostname: a.hostname.clone().unwrap_or_default(),
        attachments,
        networks,
        ports,
        mounts,
    };
    let mut stream = client
        .containers
        .run(request)
        .await
        .map_err(api)?
        .into_inner();
    while let Some(event) = stream.message().await.map_err(api)? {
        match event.event {
            Some(run_container_event::Event::Started(info)) if a.detach => {
                println!("{}", info.id);
                return Ok(());
            }
            Some(run_container_event::Event::Started(info)) => {
                proxy_signals(client.clone(), info.id);
            }
            Some(run_container_event::Event::Output(line)) => write_line(&line, false)?,
            Some(run_container_event::Event::ExitCode(code)) => exit_with(code),
            None => {}
        }
    }
    bail!("the daemon ended the run without the container's exit code")
}

/// `--network NAME`: a store network, resolved here so the agent can make it on this node.
/// The node's own modes (`bridge`, `none`, `host`, `container:NAME`) need nothing.
pub(crate) async fn resolve_network(
    client: &mut Client,
    network: &str,
) -> Result<(Vec<NetworkAttachmentConfig>, Vec<Network>)> {
    if matches!(network, "" | "bridge" | "default" | "none" | "host")
        || network.starts_with("container:")
        || network.starts_with("service:")
    {
        return Ok((Vec::new(), Vec::new()));
    }
    let found = client
        .control
        .get_network(GetNetworkRequest {
            network: network.to_string(),
        })
        .await
        .map_err(|s| anyhow!("network {network}: {}", status_message(&s)))?
        .into_inner()
        .network
        .ok_or_else(|| anyhow!("no such network: {network}"))?;
    let attachment = NetworkAttachmentConfig {
        target: found.id.clone(),
        ..Default::default()
    };
    Ok((vec![attachment], vec![found]))
}

/// Docker's `--sig-proxy`: SIGINT, SIGTERM, SIGHUP and SIGQUIT received while attached go
/// to the container (which decides whether to exit; the CLI waits for its exit code).
fn proxy_signals(client: Client, id: String) {
    use tokio::signal::unix::{signal, SignalKind};
    for (kind, name) in [
        (SignalKind::interrupt(), "INT"),
        (SignalKind::terminate(), "TERM"),
        (SignalKind::hangup(), "HUP"),
        (SignalKind::quit(), "QUIT"),
    ] {
        let Ok(mut incoming) = signal(kind) else {
            continue;
        };
        let (mut client, id) = (client.clone(), id.clone());
        tokio::spawn(async move {
            while incoming.recv().await.is_some() {
                let request = KillContainerRequest {
                    container: id.clone(),
                    signal: name.into(),
                };
                if let Err(e) = client.containers.kill(request).await {
                    eprintln!("Error: cannot forward SIG{name}: {}", status_message(&e));
                }
            }
        });
    }
}

/// Ends the process with `code`, as `docker run` and `docker exec` do.
fn exit_with(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// The local terminal's size (rows, columns), if stdout is one.
fn terminal_size() -> Option<(u32, u32)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into `ws`.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then(|| (u32::from(ws.ws_row), u32::from(ws.ws_col)))
}

/// Puts the local terminal in raw mode; restores it when dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

pub(crate) async fn exec(client: &mut Client, a: ExecArgs) -> Result<()> {
    let (rows, cols) = if a.tty {
        terminal_size().unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    let (tx, rx) = mpsc::channel::<ExecInput>(16);
    let start = ExecInput {
        input: Some(exec_input::Input::Start(ExecSpecMessage {
            container: a.container.clone(),
            cmd: a.cmd.clone(),
            env: a.env.clone(),
            user: a.user.clone().unwrap_or_default(),
            workdir: a.workdir.clone().unwrap_or_default(),
            tty: a.tty,
            stdin: a.interactive,
            rows,
            cols,
        })),
    };
    tx.send(start)
        .await
        .map_err(|_| anyhow!("cannot send the exec request"))?;
    let mut stream = client
        .containers
        .exec(ReceiverStream::new(rx))
        .await
        .map_err(api)?
        .into_inner();
    // Raw mode only once the process runs (errors above print normally), and only on a TTY.
    let raw = (a.tty && a.interactive && std::io::stdin().is_terminal())
        .then(RawMode::enter)
        .flatten();
    if a.interactive {
        let stdin_tx = tx.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let message = ExecInput {
                            input: Some(exec_input::Input::Stdin(buf[..n].to_vec())),
                        };
                        if stdin_tx.blocking_send(message).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = stdin_tx.blocking_send(ExecInput {
                input: Some(exec_input::Input::CloseStdin(true)),
            });
        });
    }
    if a.tty && std::io::stdout().is_terminal() {
        let resize_tx = tx.clone();
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some((rows, cols)) = terminal_size() {
                        let message = ExecInput {
                            input: Some(exec_input::Input::Resize(ExecResize { rows, cols })),
                        };
                        if resize_tx.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
    // Keep the request stream open while the process runs (stdin, resizes).
    let _keep = tx;
    let mut code = None;
    let result: Result<()> = async {
        while let Some(message) = stream.message().await.map_err(api)? {
            match message.output {
                Some(exec_output::Output::Stdout(data)) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&data)?;
                    out.flush()?;
                }
                Some(exec_output::Output::Stderr(data)) => {
                    let mut err = std::io::stderr().lock();
                    err.write_all(&data)?;
                    err.flush()?;
                }
                Some(exec_output::Output::ExitCode(c)) => {
                    code = Some(c);
                    break;
                }
                None => {}
            }
        }
        Ok(())
    }
    .await;
    drop(raw);
    result?;
    match code {
        Some(0) => Ok(()),
        Some(c) => exit_with(c),
        None => bail!("the exec ended without an exit code"),
    }
}

async fn stats(client: &mut Client, no_stream: bool, containers: Vec<String>) -> Result<()> {
    let mut stream = client
        .containers
        .stats(ContainerStatsRequest {
            containers,
            no_stream,
        })
        .await
        .map_err(api)?
        .into_inner();
    let live = !no_stream && std::io::stdout().is_terminal();
    while let Some(batch) = stream.message().await.map_err(api)? {
        let rows = batch
            .stats
            .iter()
            .map(|s| {
                let mem_percent = if s.memory_limit > 0 {
                    format!(
                        "{:.2}%",
                        s.memory_usage as f64 / s.memory_limit as f64 * 100.0
                    )
                } else {
                    "--".into()
                };
                vec![
                    s.id.chars().take(12).collect(),
                    s.name.clone(),
                    format!("{:.2}%", s.cpu_percent),
                    format!(
                        "{} / {}",
                        binary_size(s.memory_usage),
                        if s.memory_limit > 0 {
                            binary_size(s.memory_limit)
                        } else {
                            "unlimited".into()
                        }
                    ),
                    mem_percent,
                    format!("{} / {}", size(s.net_rx), size(s.net_tx)),
                    s.pids.to_string(),
                ]
            })
            .collect();
        if live {
            // Clear the screen and go home, as `docker stats` does.
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "{}",
            table(
                &[
                    "CONTAINER ID",
                    "NAME",
                    "CPU %",
                    "MEM USAGE / LIMIT",
                    "MEM %",
                    "NET I/O",
                    "PIDS"
                ],
                rows
            )
        );
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

/// 1.5MiB, like Docker's memory column (binary units).
fn binary_size(bytes: u64) -> String {
    let b = bytes as f64;
    const K: f64 = 1024.0;
    if b < K {
        format!("{bytes}B")
    } else if b < K * K {
        format!("{:.2}KiB", b / K)
    } else if b < K * K * K {
        format!("{:.2}MiB", b / (K * K))
    } else {
        format!("{:.2}GiB", b / (K * K * K))
    }
}

pub(crate) async fn top(client: &mut Client, container: &str) -> Result<()> {
    let processes = client
        .containers
        .top(ContainerRef {
            container: container.to_string(),
        })
        .await
        .map_err(api)?
        .into_inner()
        .processes;
    let rows = processes
        .into_iter()
        .map(|p| {
            let secs = p.cpu_ms / 1000;
            vec![
                p.user,
                p.pid.to_string(),
                p.ppid.to_string(),
                p.state,
                format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
                p.cmd,
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["UID", "PID", "PPID", "STAT", "TIME", "CMD"], rows)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_like_docker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("env");
        std::fs::write(&p, "# comment\n\nA=1\nB=x=y\nSHOAL_SURELY_UNSET_VAR\n").expect("write");
        assert_eq!(read_env_file(&p).expect("reads"), ["A=1", "B=x=y"]);
        std::fs::write(&p, "=bad\n").expect("write");
        let err = read_env_file(&p).expect_err("bad line").to_string();
        assert!(err.contains(":1:"), "{err}");
    }

    #[test]
    fn ps_columns_read_like_docker() {
        let c = ContainerInfo {
            command: vec!["sh".into(), "-c".into(), "sleep 1000; echo done".into()],
            state: "exited".into(),
            exit_code: 3,
            finished_at: 1,
            ..Default::default()
        };
        assert_eq!(command_text(&c, false), "\"sh -c sleep 1000; e…\"");
        assert!(status_text(&c).starts_with("Exited (3) "));
        assert_eq!(binary_size(1536), "1.50KiB");
    }
}
