//! `shoal`: one binary that is the daemon, the CLI, and the per-container supervisor.

mod alloc;
mod cli;
mod client;
mod commands;
mod compose;
mod credentials;
mod daemon;
mod output;
mod units;

use clap::Parser;

use cli::{
    Cli, Command, ImageCommand, NetworkCommand, NodeCommand, ServiceCommand, StackCommand,
    VolumeCommand,
};
use commands::{build, container, image, network, registry, service, stack, system, volume};

fn main() {
    // The container supervisor is this binary re-executed. It must run before any thread (and
    // so any tokio runtime) exists: it forks and clones, which is only safe single-threaded.
    if std::env::args_os().nth(1).as_deref() == Some(shoal_agent::runtime::SUPERVISOR_ARG.as_ref())
    {
        std::process::exit(shoal_agent::runtime::supervisor_main());
    }
    if std::env::args_os().nth(1).as_deref() == Some(shoal_agent::runtime::EXEC_ARG.as_ref()) {
        std::process::exit(shoal_agent::runtime::exec_main());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other error: what is wrong and with which flag.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            eprintln!("Error: {}", message.join(" ").trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Daemon(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                        .unwrap_or_else(|_| "info,openraft=warn".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            // One process-wide rustls provider: ring (see STACK.md).
            let _ = rustls::crypto::ring::default_provider().install_default();
            daemon::run(args).await
        }
        Command::Version => {
            system::version();
            Ok(())
        }
        Command::Logout { server } => registry::logout(server.as_deref()),
        // `compose config` needs no daemon.
        Command::Compose(args) if matches!(args.command, cli::ComposeCommand::Config { .. }) => {
            compose::config(&args)
        }
        command => {
            let mut client = client::connect(&cli.host).await?;
            match command {
                Command::Info(f) => system::info(&mut client, f).await,
                Command::Compose(args) => commands::compose::run(&mut client, args).await,
                Command::Network(n) => match n {
                    NetworkCommand::Create(a) => network::create(&mut client, &a).await,
                    NetworkCommand::Ls(l) => network::ls(&mut client, l).await,
                    NetworkCommand::Inspect { networks } => {
                        network::inspect(&mut client, &networks).await
                    }
                    NetworkCommand::Rm { networks } => network::rm(&mut client, &networks).await,
                    NetworkCommand::Prune { .. } => network::prune(&mut client).await,
                },
                Command::Secret(c) => {
                    commands::secret::run(&mut client, shoal_proto::SecretKind::Secret, c).await
                }
                Command::Config(c) => {
                    commands::secret::run(&mut client, shoal_proto::SecretKind::Config, c).await
                }
                Command::Volume(v) => match v {
                    VolumeCommand::Create {
                        labels,
                        driver,
                        name,
                    } => volume::create(&mut client, name, &driver, &labels).await,
                    VolumeCommand::Ls(l) => volume::ls(&mut client, l).await,
                    VolumeCommand::Inspect { names } => volume::inspect(&mut client, &names).await,
                    VolumeCommand::Rm { force, names } => {
                        volume::rm(&mut client, &names, force).await
                    }
                    VolumeCommand::Prune { .. } => volume::prune(&mut client).await,
                },
                Command::Stack(s) => match s {
                    StackCommand::Deploy {
                        files,
                        prune,
                        detach,
                        name,
                    } => stack::deploy(&mut client, files, &name, prune, detach).await,
                    StackCommand::Ls(l) => stack::ls(&mut client, l).await,
                    StackCommand::Services { name, list } => {
                        stack::services(&mut client, &name, list).await
                    }
                    StackCommand::Ps { name, list } => stack::ps(&mut client, &name, list).await,
                    StackCommand::Rm { names } => stack::rm(&mut client, &names).await,
                    StackCommand::Rollback { detach, name } => {
                        stack::rollback(&mut client, &name, detach).await
                    }
                },
                Command::JoinToken {
                    role,
                    rotate,
                    quiet,
                } => system::join_token(&mut client, &role, rotate, quiet).await,
                Command::Node(n) => match n {
                    NodeCommand::Ls(l) => system::node_ls(&mut client, l).await,
                    NodeCommand::Inspect { nodes, .. } => {
                        system::node_inspect(&mut client, &nodes).await
                    }
                    NodeCommand::Update {
                        availability,
                        label_add,
                        label_rm,
                        role,
                        node,
                    } => {
                        let update = system::NodeUpdate {
                            availability,
                            label_add,
                            label_rm,
                            role,
                        };
                        system::node_update(&mut client, &node, update).await
                    }
                    NodeCommand::Promote { nodes } => {
                        system::node_set_role(&mut client, &nodes, cli::RoleArg::Manager).await
                    }
                    NodeCommand::Demote { nodes } => {
                        system::node_set_role(&mut client, &nodes, cli::RoleArg::Worker).await
                    }
                    NodeCommand::Rm { force, nodes } => {
                        system::node_rm(&mut client, &nodes, force).await
                    }
                },
                Command::Service(s) => match s {
                    ServiceCommand::Create(a) => service::create(&mut client, &a).await,
                    ServiceCommand::Ls(l) => service::ls(&mut client, l).await,
                    ServiceCommand::Ps { service: s, list } => {
                        service::ps(&mut client, &s, list).await
                    }
                    ServiceCommand::Inspect { services, format } => {
                        service::inspect(&mut client, &services, format).await
                    }
                    ServiceCommand::Update {
                        image,
                        env_add,
                        env_rm,
                        replicas,
                        force,
                        placement,
                        rollout,
                        detach,
                        service: s,
                    } => {
                        let change = service::SpecChange {
                            image,
                            env_add,
                            env_rm,
                            replicas,
                            force,
                            placement,
                            rollout: *rollout,
                        };
                        service::update(&mut client, &s, &change, detach).await
                    }
                    ServiceCommand::Rollback { detach, service: s } => {
                        service::rollback(&mut client, &s, detach).await
                    }
                    ServiceCommand::Promote { detach, service: s } => {
                        service::promote(&mut client, &s, detach).await
                    }
                    ServiceCommand::Scale { targets, detach } => {
                        service::scale(&mut client, &targets, detach).await
                    }
                    ServiceCommand::Logs {
                        service: s,
                        follow,
                        tail,
                        timestamps,
                    } => service::logs(&mut client, &s, follow, tail, timestamps).await,
                    ServiceCommand::Rm { services } => service::rm(&mut client, &services).await,
                },
                Command::Image(i) => match i {
                    ImageCommand::Ls(l) => image::ls(&mut client, l).await,
                    ImageCommand::Import { file, name } => {
                        image::import(&mut client, &file, &name).await
                    }
                    ImageCommand::Bootstrap { what } => image::bootstrap(&mut client, &what).await,
                    ImageCommand::Load { input, quiet } => {
                        image::load(&mut client, input.as_deref(), quiet).await
                    }
                    ImageCommand::Save { output, images } => {
                        image::save(&mut client, output.as_deref(), &images).await
                    }
                    ImageCommand::Inspect { images } => image::inspect(&mut client, &images).await,
                    ImageCommand::History {
                        image: i,
                        no_trunc,
                        quiet,
                        format,
                    } => image::history(&mut client, &i, no_trunc, quiet, format).await,
                    ImageCommand::Tag { source, target } => {
                        image::tag(&mut client, &source, &target).await
                    }
                    ImageCommand::Rm { force, images } => {
                        image::rm(&mut client, &images, force).await
                    }
                    ImageCommand::Prune { all, force: _ } => image::prune(&mut client, all).await,
                    ImageCommand::Pull(a) => {
                        registry::pull(&mut client, &a.image, a.insecure, a.quiet).await
                    }
                    ImageCommand::Push(a) => {
                        registry::push(&mut client, &a.image, a.insecure, a.quiet).await
                    }
                    ImageCommand::Build(b) => build::build(&mut client, &b).await.map(drop),
                },
                Command::Build(b) => build::build(&mut client, &b).await.map(drop),
                Command::Pull(a) => {
                    registry::pull(&mut client, &a.image, a.insecure, a.quiet).await
                }
                Command::Push(a) => {
                    registry::push(&mut client, &a.image, a.insecure, a.quiet).await
                }
                Command::Login(a) => {
                    registry::login(
                        &mut client,
                        a.server.as_deref(),
                        a.username,
                        a.password,
                        a.password_stdin,
                    )
                    .await
                }
                Command::Container(c) => container::run(&mut client, c).await,
                Command::Daemon(_) | Command::Version | Command::Logout { .. } => Ok(()),
            }
        }
    }
}
