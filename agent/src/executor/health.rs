//! Docker's HEALTHCHECK for tasks, with Swarm's consequences: a task with a healthcheck counts
//! as running (and joins DNS and its published ports) only once healthy; a task that turns
//! unhealthy is stopped and fails, so its restart policy replaces it.
//!
//! [`Health`] is the pure state machine (Docker's rules); [`run_probe`] runs one probe with
//! `exec` inside the container.

use std::time::Duration;

use shoal_proto::Task;

use crate::runtime::{ExecSpec, Runtime};

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
/// Output kept of a probe (Docker keeps 4 KiB).
const MAX_OUTPUT: usize = 4096;

/// A task's healthcheck, read from its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub args: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    pub start_interval: Duration,
}

/// The task's probe, if it has an enabled healthcheck. Pure.
pub fn probe_of(task: &Task) -> Result<Option<Probe>, String> {
    let Some(h) = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .and_then(|c| c.healthcheck.as_ref())
    else {
        return Ok(None);
    };
    let args = match h.test.split_first() {
        None => return Ok(None),
        Some((kind, _)) if kind == "NONE" => return Ok(None),
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
            vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
        }
        Some(_) => {
            return Err(format!(
            "healthcheck test {:?}: use [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]",
            h.test
        ))
        }
    };
    let ms = |v: Option<u64>, default: Duration| {
        v.filter(|v| *v > 0)
            .map(Duration::from_millis)
            .unwrap_or(default)
    };
    Ok(Some(Probe {
        args,
        interval: ms(h.interval_ms, DEFAULT_INTERVAL),
        timeout: ms(h.timeout_ms, DEFAULT_TIMEOUT),
        retries: h
            .retries
            .filter(|r| *r > 0)
            .map(|r| r.min(u64::from(u32::MAX)) as u32)
            .unwrap_or(DEFAULT_RETRIES),
        start_period: ms(h.start_period_ms, Duration::ZERO),
        start_interval: ms(h.start_interval_ms, DEFAULT_START_INTERVAL),
    }))
}

/// Blue-green: the task's verification (its update config's `verify`), run like a probe with
/// the healthcheck's default timeout. Pure.
pub fn verify_probe_of(task: &Task) -> Option<Probe> {
    let test = &task.spec.as_ref()?.update_config.as_ref()?.verify;
    let args = match test.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
            vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
        }
        _ => return None,
    };
    Some(Probe {
        args,
        interval: DEFAULT_INTERVAL,
        timeout: DEFAULT_TIMEOUT,
        retries: 1,
        start_period: Duration::ZERO,
        start_interval: DEFAULT_START_INTERVAL,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// Docker's rules: failures inside the start period do not count (a success there makes the
/// container healthy at once); after it, `retries` failures in a row make it unhealthy; any
/// success makes it healthy and resets the count.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub state: HealthState,
    failures: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: HealthState::Starting,
            failures: 0,
        }
    }
}

impl Health {
    /// Records one probe result, `since_start` after the container started.
    pub fn record(&mut self, ok: bool, since_start: Duration, probe: &Probe) -> HealthState {
        if ok {
            self.failures = 0;
            self.state = HealthState::Healthy;
        } else if since_start >= probe.start_period || self.state == HealthState::Healthy {
            self.failures += 1;
            if self.failures >= probe.retries {
                self.state = HealthState::Unhealthy;
            }
        }
        self.state
    }

    /// How long until the next probe: the start interval while starting within the start
    /// period, else the interval.
    pub fn next_delay(&self, since_start: Duration, probe: &Probe) -> Duration {
        if self.state == HealthState::Starting && since_start < probe.start_period {
            probe.start_interval
        } else {
            probe.interval
        }
    }
}

/// Runs one probe inside the container: `(passed, output)`. A probe that outlives its timeout
/// is killed and fails.
pub async fn run_probe(runtime: &Runtime, id: &str, probe: &Probe) -> (bool, String) {
    let mut handle = match runtime.exec(id, ExecSpec::new(probe.args.clone())).await {
        Ok(h) => h,
        Err(e) => return (false, e.to_string()),
    };
    let (stdout, stderr) = (handle.take_stdout(), handle.take_stderr());
    let read = async move {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        for stream in [stdout, stderr].into_iter().flatten() {
            let mut limited = stream.take(MAX_OUTPUT as u64);
            let _ = limited.read_to_end(&mut out).await;
        }
        out
    };
    let outcome = tokio::time::timeout(probe.timeout, async {
        let out = read.await;
        (handle.wait().await, out)
    })
    .await;
    match outcome {
        Ok((Ok(0), out)) => (true, clip(&out)),
        Ok((Ok(code), out)) => (false, format!("exit {code}: {}", clip(&out))),
        Ok((Err(e), _)) => (false, e.to_string()),
        Err(_) => (
            false,
            format!("health check exceeded its timeout of {:?}", probe.timeout),
        ),
    }
}

fn clip(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(&out[..out.len().min(MAX_OUTPUT)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, HealthCheck, ServiceSpec};

    fn task(test: &[&str]) -> Task {
        Task {
            spec: Some(
                ServiceSpec {
                    container: Some(ContainerSpec {
                        healthcheck: Some(HealthCheck {
                            test: test.iter().map(|s| s.to_string()).collect(),
                            interval_ms: Some(1000),
                            retries: Some(2),
                            start_period_ms: Some(10_000),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn tests_become_commands() {
        let p = probe_of(&task(&["CMD-SHELL", "wget -q localhost"]))
            .expect("valid")
            .expect("enabled");
        assert_eq!(p.args, ["/bin/sh", "-c", "wget -q localhost"]);
        assert_eq!(p.interval, Duration::from_secs(1));
        assert_eq!(p.timeout, DEFAULT_TIMEOUT);
        let p = probe_of(&task(&["CMD", "true"]))
            .expect("valid")
            .expect("on");
        assert_eq!(p.args, ["true"]);
        assert_eq!(probe_of(&task(&["NONE"])), Ok(None));
        assert_eq!(probe_of(&Task::default()), Ok(None));
        assert!(probe_of(&task(&["true"])).is_err());
    }

    #[test]
    fn a_verification_runs_like_a_probe() {
        let with = |verify: &[&str]| Task {
            spec: Some(
                ServiceSpec {
                    update_config: Some(shoal_proto::UpdateConfig {
                        verify: verify.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        };
        let p = verify_probe_of(&with(&["CMD-SHELL", "test -f /ok"])).expect("a probe");
        assert_eq!(p.args, ["/bin/sh", "-c", "test -f /ok"]);
        assert_eq!(p.timeout, DEFAULT_TIMEOUT);
        let p = verify_probe_of(&with(&["CMD", "true"])).expect("a probe");
        assert_eq!(p.args, ["true"]);
        assert_eq!(verify_probe_of(&with(&[])), None);
        assert_eq!(verify_probe_of(&with(&["CMD"])), None);
        assert_eq!(verify_probe_of(&Task::default()), None);
    }

    #[test]
    fn docker_rules_for_healthy_and_unhealthy() {
        let p = probe_of(&task(&["CMD", "true"]))
            .expect("valid")
            .expect("on");
        let s = Duration::from_secs;
        let mut h = Health::default();
        // Failures in the start period do not count; probes come every start interval.
        assert_eq!(h.record(false, s(1), &p), HealthState::Starting);
        assert_eq!(h.record(false, s(2), &p), HealthState::Starting);
        assert_eq!(h.next_delay(s(2), &p), DEFAULT_START_INTERVAL);
        assert_eq!(h.record(true, s(3), &p), HealthState::Healthy);
        assert_eq!(h.next_delay(s(3), &p), s(1));
        // Healthy, then `retries` failures in a row.
        assert_eq!(h.record(false, s(4), &p), HealthState::Healthy);
        assert_eq!(h.record(true, s(5), &p), HealthState::Healthy);
        assert_eq!(h.record(false, s(6), &p), HealthState::Healthy);
        assert_eq!(h.record(false, s(7), &p), HealthState::Unhealthy);
        // Never healthy: failures count once the start period is over.
        let mut h = Health::default();
        assert_eq!(h.record(false, s(11), &p), HealthState::Starting);
        assert_eq!(h.record(false, s(12), &p), HealthState::Unhealthy);
    }
}
