//! Shared helpers of the end-to-end tests.
#![allow(dead_code)]

/// Privileged tests need root. Outside CI a non-root run skips them with a note; under
/// `CI=true` that is a failure, never a silent skip.
pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this privileged test needs root, and CI=true forbids skipping it");
    }
    eprintln!("skipping: needs root");
    false
}

pub mod daemon;
pub mod hosts;
pub mod load;
pub mod rootfs;

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Polls the container's log until an entry equal to `line` shows up (15 s at most).
pub async fn wait_for_line(
    rt: &shoal_agent::runtime::Runtime,
    id: &str,
    line: &str,
) -> Vec<shoal_agent::runtime::LogEntry> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let entries = shoal_agent::runtime::read_log(&rt.log_path(id), None).expect("read log");
        if entries.iter().any(|e| e.l == line) {
            return entries;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line {line:?} within 15 s; log so far: {entries:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The guard of the runtime tests: removes every container under `rt`'s root (directories
/// `list()` skips included), then the cgroup parent. Runs the async removals on a thread of
/// its own, so it works from inside or outside a tokio runtime (and during a panic).
pub fn remove_runtime_containers(rt: &shoal_agent::runtime::Runtime) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let Ok(tokio_rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if let Ok(entries) = std::fs::read_dir(rt.root()) {
                for e in entries.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    if id.starts_with('.') {
                        continue; // removals still being deleted
                    }
                    if let Err(e) = tokio_rt.block_on(rt.remove(&id)) {
                        eprintln!("cleanup: remove {id}: {e}");
                    }
                }
            }
        });
    });
    if let Err(e) = rt.remove_cgroup_parent() {
        eprintln!("cleanup: cgroup parent of {}: {e}", rt.root().display());
    }
}

/// A random number (std's per-process random hasher keys), for names that must not collide.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A name no other test, in this process or another, uses: for cgroups, dirs, links.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}
