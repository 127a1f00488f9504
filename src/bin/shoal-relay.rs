//! `shoal-relay`: the small executable a container's supervisor becomes (execve, same pid)
//! once the container runs. It relays the container's output into its log, forwards signals,
//! and records the exit; see `shoal_agent::runtime` (module `relay`). Not meant to be run by
//! hand: install it beside `shoal`, from the same build.

fn main() {
    std::process::exit(shoal_agent::runtime::relay_main());
}
