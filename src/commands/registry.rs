//! `shoal pull`, `push`, `login`, `logout`. The daemon does the network work; this side finds
//! the saved credentials for the image's registry, sends them along, and shows the progress
//! the daemon streams back: a bar per layer on a terminal, plain lines otherwise.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_agent::image::registry::{credentials_key, credentials_key_of};
use shoal_agent::image::Reference;
use shoal_proto::{LoginRequest, PullRequest, PushRequest, RegistryCredentials, RegistryProgress};

use crate::client::{status_message, Client};
use crate::credentials::{self, CredentialsFile, Login};

/// The saved credentials for the registry `reference` names, for the request.
fn credentials_for(reference: &str) -> Result<Option<RegistryCredentials>> {
    let parsed = Reference::parse_any(reference).map_err(|e| anyhow!("{e}"))?;
    Ok(credentials::lookup(&credentials_key_of(&parsed))?.map(RegistryCredentials::from))
}

/// Asks the daemon to pull `reference` with the saved credentials; the progress stream.
async fn start_pull(
    client: &mut Client,
    reference: &str,
    insecure: bool,
) -> Result<tonic::Streaming<RegistryProgress>> {
    let credentials = credentials_for(reference)?;
    Ok(client
        .registry
        .pull(PullRequest {
            reference: reference.to_string(),
            credentials,
            insecure,
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner())
}

/// `docker pull [-q] REF`.
pub async fn pull(client: &mut Client, reference: &str, insecure: bool, quiet: bool) -> Result<()> {
    let stream = start_pull(client, reference, insecure).await?;
    show(stream, quiet).await?;
    let canonical = Reference::parse_any(reference)
        .map(|r| r.canonical())
        .unwrap_or_else(|_| reference.to_string());
    println!("{canonical}");
    Ok(())
}

/// Pulls every image in `references` at once without per-layer output (`compose pull`);
/// each result, in the order given.
pub async fn pull_quietly(client: &Client, references: &[String]) -> Vec<Result<()>> {
    let pulls = references.iter().map(|reference| {
        let mut client = client.clone();
        async move {
            let stream = start_pull(&mut client, reference, false).await?;
            show(stream, true).await.map(|_| ())
        }
    });
    futures::future::join_all(pulls).await
}

/// `docker push [-q] REF`.
pub async fn push(client: &mut Client, reference: &str, insecure: bool, quiet: bool) -> Result<()> {
    let credentials = credentials_for(reference)?;
    let stream = client
        .registry
        .push(PushRequest {
            reference: reference.to_string(),
            credentials,
            insecure,
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner();
    let digest = show(stream, quiet).await?;
    if quiet {
        println!("{digest}");
    }
    Ok(())
}

/// Shows a progress stream; returns the digest its last message carries.
async fn show(mut stream: tonic::Streaming<RegistryProgress>, quiet: bool) -> Result<String> {
    let mut view = if quiet {
        View::Quiet
    } else if std::io::stdout().is_terminal() {
        View::bars()
    } else {
        View::Plain(HashMap::new())
    };
    let mut digest = String::new();
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                if !p.digest.is_empty() {
                    digest = p.digest.clone();
                }
                view.show(&p);
            }
            Ok(None) => break,
            Err(status) => {
                view.abandon();
                bail!("{}", status_message(&status));
            }
        }
    }
    view.finish();
    Ok(digest)
}

#[allow(clippy::large_enum_variant)] // one per command
enum View {
    Quiet,
    /// Last status shown per layer (plain lines print changes only).
    Plain(HashMap<String, String>),
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
        transfer: ProgressStyle,
        state: ProgressStyle,
    },
}

impl View {
    fn bars() -> View {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let transfer = ProgressStyle::with_template(
            "{prefix}: {msg:<12} [{bar:40}] {bytes:>10}/{total_bytes:<10}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let state = ProgressStyle::with_template("{prefix}: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        View::Bars {
            multi,
            bars: HashMap::new(),
            transfer,
            state,
        }
    }

    fn show(&mut self, p: &RegistryProgress) {
        match self {
            View::Quiet => {}
            View::Plain(last) => {
                if p.id.is_empty() {
                    println!("{}", p.status);
                } else if last.get(&p.id) != Some(&p.status) {
                    println!("{}: {}", p.id, p.status);
                    last.insert(p.id.clone(), p.status.clone());
                }
            }
            View::Bars {
                multi,
                bars,
                transfer,
                state,
            } => {
                if p.id.is_empty() {
                    let _ = multi.println(&p.status);
                    return;
                }
                let bar = bars.entry(p.id.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(0));
                    b.set_style(state.clone());
                    b.set_prefix(p.id.clone());
                    b
                });
                if p.total > 0 && p.current < p.total.max(1) || p.status == "Downloading" {
                    bar.set_style(transfer.clone());
                    bar.set_length(p.total);
                    bar.set_position(p.current);
                } else {
                    bar.set_style(state.clone());
                }
                bar.set_message(p.status.clone());
            }
        }
    }

    fn finish(&mut self) {
        if let View::Bars { bars, .. } = self {
            for b in bars.values() {
                b.finish();
            }
        }
    }

    fn abandon(&mut self) {
        if let View::Bars { bars, .. } = self {
            for b in bars.values() {
                b.abandon();
            }
        }
    }
}

/// `docker login [-u USER] [-p PASS | --password-stdin] [SERVER]`.
pub async fn login(
    client: &mut Client,
    server: Option<&str>,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
) -> Result<()> {
    let key = credentials_key(server);
    let path = credentials::config_path()?;
    let mut file = CredentialsFile::open(&path)?;
    let saved = file.get(&key)?;
    if password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
    }
    let password = if password_stdin {
        if username.is_none() {
            bail!("--password-stdin needs a user name: give -u USER");
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        Some(line.trim_end_matches(['\n', '\r']).to_string())
    } else {
        password
    };
    let login = match (username, password) {
        (Some(u), Some(p)) => Login {
            username: u,
            password: p,
        },
        (u, p) => {
            if !std::io::stdin().is_terminal() {
                bail!(
                    "cannot prompt for credentials without a terminal: give -u USER and \
                     --password-stdin (or -p PASSWORD)"
                );
            }
            let default = saved.as_ref().map(|s| s.username.clone());
            let username = match u {
                Some(u) => u,
                None => prompt_line(&match &default {
                    Some(d) => format!("Username ({d}): "),
                    None => "Username: ".into(),
                })?
                .filter(|s| !s.is_empty())
                .or(default)
                .ok_or_else(|| anyhow!("a user name is needed"))?,
            };
            let password = match p {
                Some(p) => p,
                None => prompt_secret("Password: ")?,
            };
            Login { username, password }
        }
    };
    if login.username.is_empty() || login.password.is_empty() {
        bail!("both a user name and a password are needed");
    }
    let message = client
        .registry
        .login(LoginRequest {
            server: server.unwrap_or_default().to_string(),
            credentials: Some(login.clone().into()),
            insecure: false,
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .message;
    file.set(&key, &login);
    file.save()?;
    eprintln!("Credentials saved in {}", path.display());
    println!("{message}");
    Ok(())
}

/// `docker logout [SERVER]`.
pub fn logout(server: Option<&str>) -> Result<()> {
    let key = credentials_key(server);
    let path = credentials::config_path()?;
    let mut file = CredentialsFile::open(&path)?;
    if file.remove(&key) {
        file.save()?;
        println!("Removing login credentials for {key}");
    } else {
        println!("Not logged in to {key}");
    }
    Ok(())
}

fn prompt_line(prompt: &str) -> Result<Option<String>> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim().to_string()))
}

/// Reads a line from the terminal with echo off.
fn prompt_secret(prompt: &str) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("cannot read the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("cannot turn the terminal echo off")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
