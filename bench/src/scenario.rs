//! The measured work, written once and driven against either system, so the method is the same
//! for both: start the clock, issue the detached command, poll the service list until every
//! replica runs, stop the clock.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::util::poll;

/// Replicas for the create scenario, and the count the scale scenario goes to.
pub const CREATE_REPLICAS: u64 = 10;
pub const SCALE_REPLICAS: u64 = 50;

/// How long one scenario may take before the run is declared stuck.
pub const TIMEOUT: Duration = Duration::from_secs(180);

/// What the bench needs from an orchestrator. Every command returns as soon as the request is
/// accepted (`-d`); convergence is observed only through [`Cluster::replicas`].
pub trait Cluster {
    /// `service create -d --name NAME --replicas N ... busybox sleep 100000`.
    fn create(&mut self, name: &str, replicas: u64) -> Result<()>;
    /// `service scale -d NAME=N`.
    fn scale(&mut self, name: &str, replicas: u64) -> Result<()>;
    /// (running, desired) for the service, or `None` while it is not listed.
    fn replicas(&mut self, name: &str) -> Result<Option<(u64, u64)>>;
    /// `service rm NAME`, then wait until all its containers are gone (not timed).
    fn remove(&mut self, name: &str) -> Result<()>;
}

#[derive(Default)]
pub struct Samples {
    pub create: Vec<Duration>,
    pub scale: Vec<Duration>,
}

/// `runs` rounds of create-10 then scale-to-50, each on a fresh service `{prefix}{round}`.
/// Returns what was measured so far together with the first error, if any.
pub fn measure(
    system: &str,
    cluster: &mut dyn Cluster,
    prefix: &str,
    runs: usize,
) -> (Samples, Option<anyhow::Error>) {
    let mut samples = Samples::default();
    for round in 1..=runs {
        let name = format!("{prefix}{round}");
        let result = one_round(cluster, &name, &mut samples)
            .with_context(|| format!("{system}, run {round} of {runs} (service {name})"));
        // Remove the service even when the round failed, so the next system starts clean.
        let removed = cluster
            .remove(&name)
            .with_context(|| format!("{system}: removing service {name}"));
        if let Err(e) = result.and(removed) {
            return (samples, Some(e));
        }
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        eprintln!(
            "  {system} run {round}/{runs}: create-{CREATE_REPLICAS} {:.0} ms, scale-to-{SCALE_REPLICAS} {:.0} ms",
            ms(samples.create.last()),
            ms(samples.scale.last()),
        );
    }
    (samples, None)
}

fn one_round(cluster: &mut dyn Cluster, name: &str, samples: &mut Samples) -> Result<()> {
    let start = Instant::now();
    cluster.create(name, CREATE_REPLICAS)?;
    wait_running(cluster, name, CREATE_REPLICAS)?;
    samples.create.push(start.elapsed());

    let start = Instant::now();
    cluster.scale(name, SCALE_REPLICAS)?;
    wait_running(cluster, name, SCALE_REPLICAS)?;
    samples.scale.push(start.elapsed());
    Ok(())
}

fn wait_running(cluster: &mut dyn Cluster, name: &str, target: u64) -> Result<()> {
    let last = std::cell::Cell::new(None);
    poll(
        &format!("{target}/{target} replicas of {name} running"),
        TIMEOUT,
        || {
            let now = cluster.replicas(name)?;
            last.set(now);
            Ok((now == Some((target, target))).then_some(()))
        },
        || match last.get() {
            Some((running, desired)) => format!("{running}/{desired}"),
            None => "service not listed".into(),
        },
    )
}
