//! `shoal-relay`: the small executable that supervises a container. The runtime starts it as
//! `shoal-relay __shoal-supervise ...` (see `shoal_agent::runtime`, module `supervisor`): a
//! few megabytes load much faster than `shoal`, so a container starts sooner. Once the
//! container runs it `execve`s itself again (same pid) into the relay proper, which copies the
//! container's output into its log, forwards signals and records the exit (module `relay`).
//! Not meant to be run by hand: install it beside `shoal`, from the same build.

fn main() {
    // Before any thread exists: the supervisor forks and clones.
    if std::env::args_os().nth(1).as_deref() == Some(shoal_agent::runtime::SUPERVISOR_ARG.as_ref())
    {
        std::process::exit(shoal_agent::runtime::supervisor_main());
    }
    std::process::exit(shoal_agent::runtime::relay_main());
}
