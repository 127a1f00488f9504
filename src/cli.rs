//! The command line, Docker's verbs and flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A container orchestrator in the Docker Swarm / Compose mould"
)]
pub struct Cli {
    /// The daemon to talk to: a socket path, unix://PATH, or tcp://HOST:PORT.
    #[arg(long, short = 'H', env = "SHOAL_HOST", global = true, default_value = crate::client::DEFAULT_SOCKET)]
    pub host: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run the daemon: a manager and an agent in one process.
    Daemon(DaemonArgs),
    /// Show cluster-wide and daemon information.
    Info(FormatArgs),
    /// Show the version.
    Version,
    /// Print the token that joins a node to this cluster (`worker` or `manager`).
    JoinToken {
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
        /// Replace the token's secret: the old token stops working.
        #[arg(long)]
        rotate: bool,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Work with compose files (`docker compose`).
    Compose(ComposeArgs),
    /// Manage stacks (deployed compose projects).
    #[command(subcommand)]
    Stack(StackCommand),
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage this node's volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Manage secrets (files on a tmpfs at /run/secrets in the tasks that use them).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Manage configs (files at their target path in the tasks that use them).
    #[command(subcommand)]
    Config(SecretCommand),
    /// Containers on this node (`run`, `ps`, `exec`, `logs`, `stop`, ...).
    #[command(flatten)]
    Container(ContainerCommand),
    /// Download an image from a registry (`image pull`).
    Pull(PullArgs),
    /// Upload an image to a registry (`image push`).
    Push(PullArgs),
    /// Log in to a registry (Docker Hub when no server is given).
    Login(LoginArgs),
    /// Log out from a registry (Docker Hub when no server is given).
    Logout {
        /// HOST[:PORT] of the registry.
        server: Option<String>,
    },
    /// Build an image from a Dockerfile (`docker build`).
    Build(ImageBuildArgs),
}

/// `pull` / `push` arguments.
#[derive(Args)]
pub struct PullArgs {
    /// NAME[:TAG] or NAME@DIGEST (`push`: NAME[:TAG]).
    pub image: String,
    /// Speak plain HTTP to the registry (only the daemon's --insecure-registry list and
    /// loopback registries may otherwise).
    #[arg(long)]
    pub insecure: bool,
    /// Print only the image name (pull) or digest (push).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (visible to other users of the machine: prefer --password-stdin).
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// HOST[:PORT] of the registry.
    pub server: Option<String>,
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Create one from a file, or from stdin with `-`.
    Create {
        /// Labels (KEY=VALUE).
        #[arg(short, long = "label")]
        labels: Vec<String>,
        name: String,
        file: PathBuf,
    },
    /// List them.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show them in detail (JSON; a secret's data is never shown).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove them (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `shoal build` / `shoal image build`.
#[derive(Args, Clone)]
pub struct ImageBuildArgs {
    /// Name and optionally a tag (NAME[:TAG]); may be given several times.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile); `-` reads it from standard input.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A build-time variable (KEY=VALUE; KEY alone takes the value from the environment).
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Build up to this stage (by name).
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the cache: run every step.
    #[arg(long)]
    pub no_cache: bool,
    /// Progress output: auto (compact on a terminal, plain otherwise), plain, tty or quiet.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Print only the image id when done.
    #[arg(short, long)]
    pub quiet: bool,
    /// Set a label on the image (KEY=VALUE).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// The build context: a directory.
    pub context: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Plain,
    Tty,
    Quiet,
}

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (a random name when none is given).
    Create {
        /// Volume labels (KEY=VALUE).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Driver: local.
        #[arg(short, long, default_value = "local")]
        driver: String,
        name: Option<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show volumes in detail (JSON).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes (refused while a container uses one).
    #[command(alias = "remove")]
    Rm {
        /// A missing volume is not an error.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every volume no container uses.
    Prune {
        /// Accepted for Docker's habits: there is no prompt.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a network.
    Create(NetworkCreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show networks in detail (JSON).
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove every network no service uses.
    Prune {
        /// Do not ask for confirmation (there is no prompt: accepted for Docker's habits).
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct NetworkCreateArgs {
    /// Driver: bridge.
    #[arg(short, long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR form, e.g. 10.10.0.0/24 (default: from the node's address pools).
    #[arg(long)]
    pub subnet: Option<String>,
    /// Gateway address inside the subnet (default: its first address).
    #[arg(long)]
    pub gateway: Option<String>,
    /// Allocate container addresses from this sub-range.
    #[arg(long)]
    pub ip_range: Option<String>,
    /// No way in or out except between the network's members.
    #[arg(long)]
    pub internal: bool,
    /// Let standalone containers attach.
    #[arg(long)]
    pub attachable: bool,
    /// Network labels (KEY=VALUE).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Driver options (`com.docker.network.driver.mtu=N` sets the MTU).
    #[arg(short = 'o', long = "opt")]
    pub options: Vec<String>,
    pub name: String,
}

#[derive(Args)]
pub struct ComposeArgs {
    /// Compose files, merged in order (default: compose.yaml and compose.override.yaml).
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Project name (default: COMPOSE_PROJECT_NAME, the file's `name:`, or the directory).
    #[arg(short = 'p', long)]
    pub project_name: Option<String>,
    /// Environment files to use instead of the project's .env.
    #[arg(long = "env-file")]
    pub env_files: Vec<PathBuf>,
    /// Enable a profile (default: COMPOSE_PROFILES).
    #[arg(long = "profile")]
    pub profiles: Vec<String>,
    #[command(subcommand)]
    pub command: ComposeCommand,
}

#[derive(Args)]
pub struct ComposeRunArgs {
    /// Run in the background and print the container's id.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// The container's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=VALUE).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Overwrite the service's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Username or UID.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Mount a volume or host path.
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Publish a port.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish the service's own ports too.
    #[arg(long)]
    pub service_ports: bool,
    /// Do not start the services it depends on.
    #[arg(long)]
    pub no_deps: bool,
    pub service: String,
    /// Command and arguments (default: the service's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Subcommand)]
pub enum ComposeCommand {
    /// Print the normalised compose model.
    Config {
        /// Services to include (and activate whatever their profiles).
        services: Vec<String>,
    },
    /// Deploy the project as a stack and wait until it runs; then follow its logs (Ctrl-C
    /// stops the project).
    Up {
        /// Return once deployed, without waiting.
        #[arg(short, long)]
        detach: bool,
        /// Wait until every service runs (healthy, or finished for a one-shot job), then
        /// return (no logs).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        wait_timeout: Option<u64>,
        /// Remove the project's services that the file no longer has.
        #[arg(long)]
        remove_orphans: bool,
        /// Build the images of services with `build:` before starting (without it, only
        /// missing images are built).
        #[arg(long)]
        build: bool,
        /// Replace the containers even if nothing changed.
        #[arg(long)]
        force_recreate: bool,
        /// Do not start the services the named ones depend on.
        #[arg(long)]
        no_deps: bool,
        /// Stop the project when any container exits (foreground only).
        #[arg(long)]
        abort_on_container_exit: bool,
        /// Pull images before starting: `always`, `missing` (when not on this node) or
        /// `never`; overrides each service's `pull_policy` (default: `missing`).
        #[arg(long, value_parser = ["always", "missing", "never"])]
        pull: Option<String>,
        /// Services to start (default: all).
        services: Vec<String>,
    },
    /// Remove the project's services and networks and wait until their containers are gone.
    Down {
        /// Also remove the project's named volumes (on this node).
        #[arg(short, long)]
        volumes: bool,
        /// Accepted for Compose's sake: services the file no longer has go too.
        #[arg(long)]
        remove_orphans: bool,
        /// Also remove images: `all` (every service's image) or `local` (only images
        /// without a custom tag, i.e. built for the project).
        #[arg(long, value_parser = ["local", "all"])]
        rmi: Option<String>,
    },
    /// Pull the images of the services (all, or those named) from their registries, at once.
    Pull {
        /// Warn instead of failing when an image cannot be pulled.
        #[arg(long)]
        ignore_pull_failures: bool,
        /// Also pull the images of the services the named ones depend on.
        #[arg(long)]
        include_deps: bool,
        /// Print only errors.
        #[arg(short, long)]
        quiet: bool,
        services: Vec<String>,
    },
    /// Build the images of the services that have `build:` (all, or those named).
    Build {
        /// Do not use the cache.
        #[arg(long)]
        no_cache: bool,
        /// A build-time variable for every service (KEY=VALUE).
        #[arg(long = "build-arg")]
        build_args: Vec<String>,
        /// Print only the image ids.
        #[arg(short, long)]
        quiet: bool,
        services: Vec<String>,
    },
    /// List the project's tasks.
    Ps(ListArgs),
    /// Show the output of the project's services.
    Logs {
        /// Keep following new output.
        #[arg(short, long)]
        follow: bool,
        /// Number of lines from the end of each task's log.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
        /// Show timestamps.
        #[arg(short, long)]
        timestamps: bool,
        /// No colours in the prefixes.
        #[arg(long)]
        no_color: bool,
        /// Services to show (default: all).
        services: Vec<String>,
    },
    /// Run a command in a running container of a service (on this node).
    Exec {
        /// Do not allocate a terminal (default: one when stdin is a terminal).
        #[arg(short = 'T', long = "no-TTY")]
        no_tty: bool,
        /// Username or UID (format: <name|uid>[:<group|gid>]).
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Working directory inside the container.
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        /// Set environment variables (KEY=VALUE).
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Which replica (1-based).
        #[arg(long, default_value_t = 1)]
        index: u64,
        service: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Run a one-off command in a new container of a service, on its networks.
    Run(ComposeRunArgs),
    /// Replace the containers of services (all by default), following their update settings.
    Restart { services: Vec<String> },
    /// Stop services (all by default) without removing them; `start` brings them back.
    Stop { services: Vec<String> },
    /// Start services that `stop` stopped.
    Start { services: Vec<String> },
    /// The processes of the project's containers on this node.
    Top { services: Vec<String> },
    /// The images the project's services use.
    Images { services: Vec<String> },
}

#[derive(Subcommand)]
pub enum StackCommand {
    /// Deploy a new stack or update an existing one.
    #[command(alias = "up")]
    Deploy {
        /// Compose files, merged in order.
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<PathBuf>,
        /// Remove the stack's services the files no longer have.
        #[arg(long)]
        prune: bool,
        /// Return at once instead of waiting for the services to converge.
        #[arg(short, long)]
        detach: bool,
        name: String,
    },
    /// List stacks.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// List the services of a stack.
    Services {
        name: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// List the tasks of a stack.
    Ps {
        name: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Remove stacks.
    #[command(alias = "remove", alias = "down")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Roll every service the stack's last deployment changed back to its previous spec.
    Rollback {
        /// Return at once instead of waiting for the rollbacks (`--detach=false`: wait).
        #[arg(short, long, num_args = 0..=1, default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set, default_value = "false")]
        detach: bool,
        name: String,
    },
}

#[derive(Args)]
pub struct DaemonArgs {
    /// Where the cluster state, images and containers live.
    #[arg(long, default_value = "/var/lib/shoal")]
    pub data_dir: PathBuf,
    /// The control socket the CLI talks to (mode 0600).
    #[arg(long, default_value = crate::client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Address for manager traffic (dispatcher, Raft, images for the other nodes); on a
    /// worker, where it serves its images to the other nodes. Port 0 picks a free one (and
    /// keeps it across restarts: other nodes know this one by its address).
    #[arg(long, default_value = "127.0.0.1:4242")]
    pub listen_addr: String,
    /// The address other nodes reach this manager at (HOST or HOST:PORT), when it is not
    /// the `--listen-addr` (e.g. that is 0.0.0.0). Default: the bound listen address.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub advertise_addr: Option<String>,
    /// Disaster recovery after losing a majority of managers: start this surviving manager
    /// as the only member of its cluster, keeping its state (see `shoal daemon --help`).
    #[arg(long)]
    pub force_new_cluster: bool,
    /// How long node certificates are valid (Swarm's `--cert-expiry`; default 90 days):
    /// stored for the whole cluster by a manager started with it. Nodes renew theirs at a
    /// random 50–80 % of it.
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub cert_expiry: Option<std::time::Duration>,
    /// How often agents heartbeat; a node is down after three missed heartbeats.
    #[arg(long, default_value = "500ms", value_parser = crate::units::parse_duration)]
    pub heartbeat: std::time::Duration,
    /// The cgroup (below each hierarchy's root) that holds every container's cgroup.
    #[arg(long, default_value = "shoal")]
    pub cgroup_parent: String,
    /// Join the cluster whose manager listens at this address (first start only), with
    /// `--token`; without it, a first start makes a new one-manager cluster.
    #[arg(long, value_name = "MANAGER_ADDR", requires = "token")]
    pub join: Option<String>,
    /// The join token (`shoal join-token worker` on a manager prints it).
    #[arg(long, env = "SHOAL_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where local network subnets come from: base=CIDR,size=N (repeatable; Docker's
    /// `--default-address-pool`). Default: Docker's pools. Subnets that collide with a host
    /// route are skipped.
    #[arg(long = "default-address-pool", value_parser = parse_address_pool)]
    pub address_pools: Vec<shoal_agent::network::AddressPool>,
    /// Where overlay networks' subnets come from, cluster-wide, in /24s (Swarm's
    /// `swarm init --default-addr-pool`; default 10.0.0.0/8). Taken when this daemon makes a
    /// new cluster; later starts and joining nodes keep the cluster's.
    #[arg(long, value_name = "CIDR")]
    pub overlay_address_pool: Option<shoal_agent::network::Ipv4Net>,
    /// Where ingress ports published as 0 (`-p 80`) come from, cluster-wide, FIRST-LAST
    /// (default Swarm's 30000-32767). Taken when this daemon makes a new cluster.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_port_range)]
    pub ingress_port_range: Option<String>,
    /// Prefix of the bridge and veth names this daemon makes (1-5 of [a-z0-9]).
    #[arg(long, default_value = "sh")]
    pub network_prefix: String,
    /// Base name of this daemon's nftables tables.
    #[arg(long, default_value = "shoal")]
    pub nft_table: String,
    /// Where the node's DNS server forwards names it does not know (IP[:PORT], repeatable;
    /// `none`: answer SERVFAIL instead). Default: the host's /etc/resolv.conf nameservers.
    #[arg(long = "dns-upstream")]
    pub dns_upstreams: Vec<String>,
    /// A registry that may be reached over plain HTTP (HOST:PORT, or HOST for any port;
    /// repeatable). Loopback registries always may.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
}

/// `base=10.10.0.0/16,size=24`.
fn parse_port_range(text: &str) -> Result<String, String> {
    shoal_manager::ingress::parse_range(text).map(|r| format!("{}-{}", r.start(), r.end()))
}

fn parse_address_pool(text: &str) -> Result<shoal_agent::network::AddressPool, String> {
    let mut base = None;
    let mut size = None;
    for field in text.split(',') {
        match field.split_once('=') {
            Some(("base", v)) => base = Some(v.parse().map_err(|e| format!("base {v:?}: {e}"))?),
            Some(("size", v)) => {
                size = Some(
                    v.parse()
                        .map_err(|_| format!("size {v:?} is not a number"))?,
                )
            }
            _ => return Err(format!("{field:?}: use base=CIDR,size=N")),
        }
    }
    let base = base.ok_or("base=CIDR is missing")?;
    let size = size.ok_or("size=N is missing")?;
    shoal_agent::network::AddressPool::new(base, size).map_err(|e| e.to_string())
}

#[derive(Args, Clone, Copy)]
pub struct FormatArgs {
    /// Output format: `json` prints one JSON document.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

#[derive(Args, Clone, Copy)]
pub struct ListArgs {
    /// Only display IDs.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show nodes in detail (JSON).
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
        #[command(flatten)]
        format: FormatArgs,
    },
    /// Update a node: availability, labels.
    Update {
        /// `active`, `pause` (keep tasks, take no new ones) or `drain` (move tasks away).
        #[arg(long, value_enum)]
        availability: Option<AvailabilityArg>,
        /// Add or change labels (KEY=VALUE).
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove labels (KEY).
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// `manager` (promote) or `worker` (demote).
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        node: String,
    },
    /// Make workers managers: each gets a manager certificate, restarts as a manager and
    /// joins the Raft membership.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers: each leaves the Raft membership, gets a worker certificate and
    /// restarts as a worker. Refused for the last manager, or when it would lose the quorum.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the cluster; their certificates are refused from then on.
    #[command(alias = "remove")]
    Rm {
        /// Remove a node that is still up.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum RoleArg {
    Worker,
    Manager,
}

#[derive(ValueEnum, Clone, Copy)]
pub enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// List the tasks of a service.
    Ps {
        service: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a service in detail (JSON).
    Inspect {
        #[arg(required = true)]
        services: Vec<String>,
        #[command(flatten)]
        format: FormatArgs,
    },
    /// Update a service: its tasks are replaced with the new spec.
    Update {
        /// A new image.
        #[arg(long)]
        image: Option<String>,
        /// Add or change environment variables (KEY=VALUE).
        #[arg(long = "env-add")]
        env_add: Vec<String>,
        /// Remove environment variables (KEY).
        #[arg(long = "env-rm")]
        env_rm: Vec<String>,
        /// A new number of tasks.
        #[arg(long, allow_negative_numbers = true, value_parser = parse_replicas)]
        replicas: Option<u64>,
        /// Replace every task even if nothing changed.
        #[arg(long)]
        force: bool,
        /// Placement changes (--constraint-add/-rm, --placement-pref-add/-rm,
        /// --replicas-max-per-node).
        #[command(flatten)]
        placement: crate::commands::service::PlacementArgs,
        /// Rolling-update and rollback settings (--update-*, --rollback-*).
        #[command(flatten)]
        rollout: Box<crate::commands::service::RolloutArgs>,
        /// Return at once instead of waiting for the rollout (`--detach=false`: wait).
        #[arg(short, long, num_args = 0..=1, default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set, default_value = "false")]
        detach: bool,
        service: String,
    },
    /// Roll a service back to its previous spec (with its rollback settings). After a
    /// blue-green switch, while blue is kept, it switches the traffic back at once.
    Rollback {
        /// Return at once instead of waiting for the rollback (`--detach=false`: wait).
        #[arg(short, long, num_args = 0..=1, default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set, default_value = "false")]
        detach: bool,
        service: String,
    },
    /// Blue-green with `--update-promote manual`: switch the traffic to the new tasks.
    Promote {
        /// Return at once instead of waiting for the switch (`--detach=false`: wait).
        #[arg(short, long, num_args = 0..=1, default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set, default_value = "false")]
        detach: bool,
        service: String,
    },
    /// Scale services: SERVICE=REPLICAS...
    Scale {
        #[arg(required = true, value_parser = parse_scale)]
        targets: Vec<(String, u64)>,
        /// Return at once instead of waiting for the service to converge.
        #[arg(short, long)]
        detach: bool,
    },
    /// Show the logs of a service's tasks.
    Logs {
        service: String,
        /// Keep following new output.
        #[arg(short, long)]
        follow: bool,
        /// Show only the last N lines of each task.
        #[arg(long, short = 'n')]
        tail: Option<u64>,
        /// Show timestamps.
        #[arg(short, long)]
        timestamps: bool,
    },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// Service name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Number of tasks.
    #[arg(long, default_value = "1", allow_negative_numbers = true, value_parser = parse_replicas)]
    pub replicas: u64,
    /// `replicated` (a number of tasks) or `global` (one task on every node).
    #[arg(long, value_enum, default_value = "replicated")]
    pub mode: ServiceModeArg,
    /// Set environment variables (KEY=VALUE).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Memory limit, e.g. 64m.
    #[arg(long = "memory", alias = "limit-memory", value_parser = crate::units::parse_bytes)]
    pub memory: Option<i64>,
    /// CPU limit, e.g. 0.5.
    #[arg(long = "cpus", alias = "limit-cpu", value_parser = crate::units::parse_cpus)]
    pub cpus: Option<i64>,
    /// Maximum number of processes (0: unlimited).
    #[arg(long = "pids-limit", alias = "limit-pids")]
    pub pids_limit: Option<i64>,
    /// Reserve memory (the scheduler only places the task where it fits).
    #[arg(long, value_parser = crate::units::parse_bytes)]
    pub reserve_memory: Option<i64>,
    /// Reserve CPUs.
    #[arg(long, value_parser = crate::units::parse_cpus)]
    pub reserve_cpu: Option<i64>,
    /// When to restart tasks.
    #[arg(long, value_enum, default_value = "any")]
    pub restart_condition: RestartConditionArg,
    /// Delay between restart attempts (default 5s).
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub restart_delay: Option<std::time::Duration>,
    /// Maximum number of restarts before giving up (0: unlimited).
    #[arg(long, default_value = "0")]
    pub restart_max_attempts: u64,
    /// Window used to count restarts (0: unbounded).
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub restart_window: Option<std::time::Duration>,
    /// Time to wait before force-killing a container (default 10s).
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub stop_grace_period: Option<std::time::Duration>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Overwrite the image's entrypoint (a command line, split on spaces).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Service labels (KEY=VALUE).
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Publish a port: [IP:]HOST:CONTAINER[/udp], CONTAINER (a free host port), or
    /// published=HOST,target=CONTAINER[,protocol=udp][,mode=host] (repeatable).
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Attach to a network: NAME, or name=NAME,alias=A[,alias=B] (repeatable).
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// How the service's name resolves on overlay networks: vip (one virtual address,
    /// balanced over its tasks) or dnsrr (the tasks' addresses).
    #[arg(long, value_parser = ["vip", "dnsrr"])]
    pub endpoint_mode: Option<String>,
    /// Add Linux capabilities (or ALL).
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities (or ALL).
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Run an init inside the container that forwards signals and reaps processes.
    #[arg(long)]
    pub init: bool,
    /// Namespaced kernel parameters (KEY=VALUE).
    #[arg(long = "sysctl")]
    pub sysctls: Vec<String>,
    /// Add a custom host-to-IP mapping (HOST:IP).
    #[arg(long = "add-host")]
    pub extra_hosts: Vec<String>,
    /// Custom DNS servers.
    #[arg(long)]
    pub dns: Vec<String>,
    /// Signal to stop the container (default SIGTERM).
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Command that checks the task's health (run with /bin/sh -c inside it).
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between health checks (default 30s).
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub health_interval: Option<std::time::Duration>,
    /// Time a health check may take (default 30s).
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub health_timeout: Option<std::time::Duration>,
    /// Failures in a row that make the task unhealthy (default 3).
    #[arg(long)]
    pub health_retries: Option<u64>,
    /// Time after start when failures do not count yet.
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub health_start_period: Option<std::time::Duration>,
    /// Time between health checks during the start period (default 5s).
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub health_start_interval: Option<std::time::Duration>,
    /// Disable the image's healthcheck.
    #[arg(long, conflicts_with = "health_cmd")]
    pub no_healthcheck: bool,
    /// Log driver options (max-size=10m, max-file=3).
    #[arg(long = "log-opt")]
    pub log_opts: Vec<String>,
    /// Placement constraint, e.g. node.labels.zone==a or node.role!=manager (repeatable).
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// Placement preference: spread=node.labels.KEY splits the tasks evenly over the label's
    /// values (repeatable: nested, outermost first).
    #[arg(long = "placement-pref")]
    pub placement_prefs: Vec<String>,
    /// At most this many tasks of the service on one node (0: no limit).
    #[arg(long = "replicas-max-per-node")]
    pub replicas_max_per_node: Option<u64>,
    /// Rolling-update and rollback settings (--update-*, --rollback-*).
    #[command(flatten)]
    pub rollout: crate::commands::service::RolloutArgs,
    /// Return at once instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// The image to run.
    pub image: String,
    /// Command and arguments (replace the image's cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum ServiceModeArg {
    Replicated,
    Global,
}

#[derive(ValueEnum, Clone, Copy)]
pub enum RestartConditionArg {
    Any,
    OnFailure,
    None,
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// List images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Import a rootfs tarball (plain or gzip) as an image, like `docker import`.
    Import {
        /// The tarball, or - for standard input.
        file: PathBuf,
        /// NAME[:TAG] of the new image.
        #[arg(long)]
        name: String,
    },
    /// Make an image from software on this host (`busybox` from busybox-static).
    Bootstrap {
        #[arg(value_parser = ["busybox"])]
        what: String,
    },
    /// Load images from a `docker save` archive or an OCI image-layout archive.
    Load {
        /// Read from this file instead of standard input.
        #[arg(short, long)]
        input: Option<PathBuf>,
        /// Suppress the "Loaded image" lines.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Save images to an archive `docker load` accepts.
    Save {
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The images (NAME[:TAG] or ID).
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Display detailed information on images (JSON).
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show the history of an image.
    History {
        image: String,
        /// Don't truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        format: FormatArgs,
    },
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE.
    Tag { source: String, target: String },
    /// Remove images.
    #[command(alias = "remove", alias = "rmi")]
    Rm {
        /// Remove by id even when tagged several times; untag an image stopped containers use.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Download an image from a registry.
    Pull(PullArgs),
    /// Upload an image to a registry.
    Push(PullArgs),
    /// Build an image from a Dockerfile (same as `shoal build`).
    Build(ImageBuildArgs),
    /// Remove unused images.
    Prune {
        /// Remove all images no container uses, not just dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation (shoal never prompts).
        #[arg(short, long)]
        force: bool,
    },
}

fn parse_replicas(text: &str) -> Result<u64, String> {
    let n: i64 = text
        .parse()
        .map_err(|_| format!("invalid replica count {text:?}: use a whole number, 0 or more"))?;
    u64::try_from(n).map_err(|_| format!("invalid replica count {n}: it must be 0 or more"))
}

fn parse_scale(text: &str) -> Result<(String, u64), String> {
    let (name, n) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid scale target {text:?}: use SERVICE=REPLICAS"))?;
    Ok((name.to_string(), parse_replicas(n)?))
}

/// Docker's local container commands, on the node the CLI talks to.
#[derive(Subcommand)]
pub enum ContainerCommand {
    /// Create and run a standalone container from an image.
    Run(Box<RunArgs>),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// List containers (service tasks show under their task names).
    Ps(PsArgs),
    /// Show the output of a container.
    Logs(LogsArgs),
    /// Stop running containers (the stop signal, then SIGKILL after the grace period).
    Stop(StopArgs),
    /// Start stopped containers again (same config and filesystem, a new process).
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart containers.
    Restart(StopArgs),
    /// Send a signal to running containers.
    Kill {
        /// The signal: a name (KILL, SIGHUP, RTMIN+1) or a number.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill and remove running containers.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Freeze every process of containers.
    Pause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Thaw paused containers.
    Unpause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show containers in detail (JSON).
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show the resource usage of containers (default: every running one).
    Stats {
        /// Print one sample and exit.
        #[arg(long)]
        no_stream: bool,
        containers: Vec<String>,
    },
    /// Show the processes of a container.
    Top { container: String },
}

#[derive(Args)]
pub struct RunArgs {
    /// Run in the background and print the container's id.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open (not supported by `run` yet: use `shoal exec -i`).
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal (not supported by `run` yet: use `shoal exec -t`).
    #[arg(short, long)]
    pub tty: bool,
    /// The container's name (default: a generated adjective_noun).
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=VALUE, or KEY to pass the local value).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments).
    #[arg(long = "env-file")]
    pub env_files: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Memory limit, e.g. 64m.
    #[arg(short = 'm', long, value_parser = crate::units::parse_bytes)]
    pub memory: Option<i64>,
    /// CPU limit, e.g. 0.5.
    #[arg(long, value_parser = crate::units::parse_cpus)]
    pub cpus: Option<i64>,
    /// Maximum number of processes (0: unlimited).
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Add Linux capabilities (or ALL).
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities (or ALL).
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Run an init inside the container that forwards signals and reaps processes.
    #[arg(long)]
    pub init: bool,
    /// `bridge` (the node's default network), `none` (only lo), `host`, a network's name, or
    /// `container:NAME` (share that running container's network namespace).
    #[arg(long, default_value = "bridge")]
    pub network: String,
    /// Publish a port: `[IP:][HOST:]CONTAINER[/tcp|/udp]`, ranges allowed (HOST omitted: a
    /// random free port).
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Mount a volume or host path: `[SOURCE:]TARGET[:ro|rw|...]`.
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Mount a tmpfs: `TARGET[:size=64m,mode=1777]`.
    #[arg(long = "tmpfs")]
    pub tmpfs: Vec<String>,
    /// Overwrite the image's entrypoint (one executable; "" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Container labels (KEY=VALUE).
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// The image to run.
    pub image: String,
    /// Command and arguments (replace the image's cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Set environment variables (KEY=VALUE).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    pub container: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Args)]
pub struct PsArgs {
    /// Show every container (default: only running ones).
    #[arg(short, long)]
    pub all: bool,
    /// Only display ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate ids and commands.
    #[arg(long)]
    pub no_trunc: bool,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Keep following new output until the container stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Show only the last N lines (`all`: every line).
    #[arg(short = 'n', long)]
    pub tail: Option<String>,
    /// Only lines since this long ago (e.g. 10m) or this unix time in seconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Show timestamps.
    #[arg(short, long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait before killing (default: the container's stop grace period).
    #[arg(short = 't', long = "time", visible_alias = "timeout")]
    pub time: Option<u32>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}
