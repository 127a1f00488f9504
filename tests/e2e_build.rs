//! `shoal build` end to end, against a real daemon and the busybox image: a multi-stage
//! Dockerfile (RUN, COPY --from, ADD of a tar, ENV/ARG/WORKDIR/USER/CMD, .dockerignore), the
//! built image run; save → rm → load → run; a fully cached rebuild; --target; a failing RUN;
//! compose up --build.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::daemon::{TestDaemon, SHOAL};
use common::require_root;

/// A test daemon whose build containers (a runtime of their own, under `<data>/build`) are
/// removed too when the test ends, even on panic.
struct BuildDaemon(TestDaemon);

impl std::ops::Deref for BuildDaemon {
    type Target = TestDaemon;
    fn deref(&self) -> &TestDaemon {
        &self.0
    }
}

impl Drop for BuildDaemon {
    fn drop(&mut self) {
        self.0.kill9();
        if let Ok(rt) = shoal_agent::runtime::Runtime::new(
            self.0.data_dir().join("build"),
            PathBuf::from(SHOAL),
            self.0.cgroup_parent.clone(),
        ) {
            common::remove_runtime_containers(&rt);
        }
    }
}

fn daemon() -> BuildDaemon {
    BuildDaemon(TestDaemon::with_busybox())
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(path: &Path, content: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    fs::write(path, content).expect("write");
}

/// A `.tar.gz` with `vendor/lib.txt`.
fn vendor_tarball() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = b"vendored library\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "vendor/lib.txt", &data[..])
        .expect("append");
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    gz.finish().expect("gzip")
}

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS builder
ARG GREETING=hello
ENV OUT=/out
WORKDIR $OUT
COPY src/ ./src/
RUN sh src/make.sh "$GREETING" > result.txt \
 && cat /proc/net/route > route.txt
RUN mkdir /scratch-dir && echo temp > /scratch-dir/t && rm -r /scratch-dir \
 && rm /bin/wget && rm -rf /usr && mkdir -p /usr/local && echo x > /usr/local/x

FROM busybox
ARG VERSION
ENV APP_VERSION=${VERSION:-dev}
WORKDIR /app
COPY --from=builder /out/result.txt ./
ADD vendor.tar.gz /opt/
COPY . /ctx/
COPY --chown=nobody:nogroup --chmod=640 src/make.sh ./make.sh
USER nobody
CMD ["sh", "-c", "cat /app/result.txt; echo version=$APP_VERSION; cat /opt/vendor/lib.txt; id -u; pwd; ls /ctx; stat -c '%U:%G %a' make.sh"]
"#;

const EXPECTED: &str = "hello from make\nversion=dev\nvendored library\n65534\n/app\n\
Dockerfile\nkeep.log\nsrc\nvendor.tar.gz\nnobody:nogroup 640\n";

fn context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
    write(&ctx.join("Dockerfile"), DOCKERFILE);
    write(&ctx.join("src/make.sh"), "echo \"$1 from make\"\n");
    write(&ctx.join("vendor.tar.gz"), vendor_tarball());
    write(&ctx.join("secret.txt"), "do not send\n");
    write(&ctx.join("debug.log"), "noise\n");
    write(&ctx.join("keep.log"), "kept\n");
    write(
        &ctx.join(".dockerignore"),
        "secret.txt\n*.log\n!keep.log\n.dockerignore\n",
    );
    ctx
}

/// The ids of the Dockerfile instruction steps (not FROM, not internal, not export), and those
/// of them that finished CACHED, from plain progress output.
fn instruction_steps(progress: &str) -> (Vec<String>, Vec<String>) {
    let mut steps = Vec::new();
    let mut cached = Vec::new();
    for line in progress.lines() {
        let Some((id, rest)) = line.split_once(' ') else {
            continue;
        };
        if !id.starts_with('#') {
            continue;
        }
        if rest.starts_with('[') && !rest.starts_with("[internal]") && !rest.contains("] FROM ") {
            steps.push(id.to_string());
        }
        if rest == "CACHED" {
            cached.push(id.to_string());
        }
    }
    (steps, cached)
}

fn no_build_containers_left(d: &TestDaemon) {
    let root = d.data_dir().join("build");
    d.wait_for("build containers removed", Duration::from_secs(20), || {
        fs::read_dir(&root)
            .map(|entries| {
                entries
                    .flatten()
                    .all(|e| e.file_name().to_string_lossy().starts_with('.'))
            })
            .unwrap_or(true)
    });
}

#[test]
fn build_multi_stage_run_save_load_cache_and_target() {
    if !require_root() {
        return;
    }
    let d = daemon();
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context(dir.path());
    let ctx_s = ctx.to_str().expect("utf-8 path");

    let out = d.shoal(&[
        "build",
        "-t",
        "app:1",
        "-t",
        "app:latest",
        "--progress",
        "plain",
        ctx_s,
    ]);
    let (_, progress) = text(&out);
    assert!(
        out.status.success(),
        "build failed:\n{progress}\n{}",
        d.log()
    );
    assert!(
        progress.contains("[builder 5/6] RUN sh src/make.sh"),
        "{progress}"
    );
    assert!(
        progress.contains("naming to docker.io/library/app:1 done"),
        "{progress}"
    );
    let (steps, cached) = instruction_steps(&progress);
    assert_eq!(steps.len(), 13, "{progress}");
    assert!(
        cached.is_empty(),
        "a first build runs everything:\n{progress}"
    );
    no_build_containers_left(&d);

    // The image runs, as its Dockerfile says.
    assert_eq!(d.ok(&["run", "--rm", "app:1"]), EXPECTED);
    let builder_only = d.shoal(&[
        "build",
        "--target",
        "builder",
        "-t",
        "app:builder",
        "-q",
        ctx_s,
    ]);
    let (id_line, err) = text(&builder_only);
    assert!(builder_only.status.success(), "{err}");
    assert!(
        id_line.trim().starts_with("sha256:"),
        "-q prints the id: {id_line}"
    );
    // RUN had the node's bridge network: an interface with a default route.
    let routes = d.ok(&["run", "--rm", "app:builder", "cat", "/out/route.txt"]);
    assert!(
        routes
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000")),
        "RUN had no default route:\n{routes}"
    );
    // --target stopped at the builder: its files, not the final stage's.
    let listing = d.ok(&["run", "--rm", "app:builder", "ls", "/"]);
    assert!(
        listing.contains("out") && !listing.contains("app"),
        "{listing}"
    );
    // RUN's deletions are whiteouts, a directory made anew over a removed one is opaque, and
    // what a RUN made and removed again leaves nothing.
    for gone in ["/scratch-dir", "/bin/wget"] {
        let out = d.shoal(&["run", "--rm", "app:builder", "ls", gone]);
        assert!(!out.status.success(), "{gone} is still there");
    }
    assert_eq!(
        d.ok(&["run", "--rm", "app:builder", "ls", "/usr"]),
        "local\n"
    );
    assert!(d
        .ok(&["run", "--rm", "busybox", "ls", "/bin/wget"])
        .contains("wget"));

    // History like Docker's: one entry per instruction (ARG aside), metadata ones empty.
    let history = d.ok(&["image", "history", "--no-trunc", "app:1"]);
    assert!(history.contains("ENV APP_VERSION=dev"), "{history}");
    assert!(history.contains("ADD vendor.tar.gz /opt/"), "{history}");
    assert!(history.contains("USER nobody"), "{history}");
    let inspect = d.json(&["image", "inspect", "app:1"]);
    let image = &inspect[0];
    let id = image["Id"].as_str().expect("Id").to_string();
    assert_eq!(image["Config"]["User"], "nobody");
    assert_eq!(image["Config"]["WorkingDir"], "/app");

    // save → rm → load → run gives the same output.
    let archive = dir.path().join("app.tar");
    d.ok(&[
        "image",
        "save",
        "-o",
        archive.to_str().expect("path"),
        "app:1",
    ]);
    d.ok(&["image", "rm", "app:1", "app:latest"]);
    assert!(!d.shoal(&["image", "inspect", "app:1"]).status.success());
    d.ok(&["image", "load", "-i", archive.to_str().expect("path")]);
    assert_eq!(d.ok(&["run", "--rm", "app:1"]), EXPECTED);

    // A second build is fully cached (the cache outlived the rm) and makes the same image.
    let out = d.shoal(&["build", "-t", "app:1", "--progress", "plain", ctx_s]);
    let (_, progress) = text(&out);
    assert!(out.status.success(), "{progress}");
    let (steps, cached) = instruction_steps(&progress);
    assert_eq!(steps.len(), 13, "{progress}");
    assert_eq!(
        cached, steps,
        "every instruction step is CACHED:\n{progress}"
    );
    assert_eq!(d.json(&["image", "inspect", "app:1"])[0]["Id"], id.as_str());

    // A build arg changes the final stage from its ENV on; the builder stage stays cached.
    let out = d.shoal(&[
        "build",
        "--build-arg",
        "VERSION=2.0",
        "-t",
        "app:2",
        "--progress",
        "plain",
        ctx_s,
    ]);
    let (_, progress) = text(&out);
    assert!(out.status.success(), "{progress}");
    assert!(progress.contains("[builder 5/6]"), "{progress}");
    let run_line = progress
        .lines()
        .find(|l| l.contains("[builder 5/6] RUN"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the builder's RUN step")
        .to_string();
    assert!(
        progress.contains(&format!("{run_line} CACHED")),
        "{progress}"
    );
    assert!(d.ok(&["run", "--rm", "app:2"]).contains("version=2.0"));

    // A changed source file reruns its COPY and the RUN after it.
    write(&ctx.join("src/make.sh"), "echo \"$1 again\"\n");
    d.ok(&["build", "-t", "app:3", "-q", ctx_s]);
    assert!(d.ok(&["run", "--rm", "app:3"]).starts_with("hello again\n"));
    no_build_containers_left(&d);
}

#[test]
fn build_failing_run_reports_step_code_and_output_and_tags_nothing() {
    if !require_root() {
        return;
    }
    let d = daemon();
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = dir.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo first step\nRUN echo about to fail; echo on stderr >&2; exit 3\nCMD [\"true\"]\n",
    );
    let ctx_s = ctx.to_str().expect("path");
    let out = d.shoal(&["build", "-t", "bad:1", "--progress", "plain", ctx_s]);
    let (_, err) = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("about to fail") && err.contains("on stderr"),
        "{err}"
    );
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("RUN echo about to fail"), "{err}");
    assert!(err.contains("Dockerfile line 3"), "{err}");
    assert!(
        !d.shoal(&["image", "inspect", "bad:1"]).status.success(),
        "nothing tagged"
    );
    // Quiet mode still shows the failing step's output.
    let out = d.shoal(&["build", "-t", "bad:1", "-q", ctx_s]);
    let (stdout, err) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stdout, "");
    assert!(
        err.contains("about to fail") && err.contains("exit code: 3"),
        "{err}"
    );
    // A command that does not exist: 127, as Docker says.
    write(
        &ctx.join("Dockerfile"),
        "FROM busybox\nRUN [\"/no/such/binary\"]\n",
    );
    let out = d.shoal(&["build", "--progress", "plain", ctx_s]);
    assert!(text(&out).1.contains("exit code: 127"), "{}", text(&out).1);
    // Bad input: the Dockerfile's line, a path outside the context, a missing stage/image.
    for (df, want) in [
        ("FROM busybox\nFROBNICATE x\n", "Dockerfile line 2"),
        (
            "FROM busybox\nCOPY ../outside /x\n",
            "outside the build context",
        ),
        (
            "FROM busybox\nCOPY --from=nowhere /a /b\n",
            "no stage of that name",
        ),
        // Not in the store: pulled (from Docker Hub, unreachable or refusing here).
        ("FROM no-such-image:1\n", "pulling it failed"),
    ] {
        write(&ctx.join("Dockerfile"), df);
        let err = d.fails(&["build", "-t", "bad:1", ctx_s]);
        assert!(err.contains(want), "{df:?}: {err}");
    }
    std::os::unix::fs::symlink("/etc/shadow", ctx.join("escape")).expect("symlink");
    write(&ctx.join("Dockerfile"), "FROM busybox\nCOPY escape /x\n");
    let err = d.fails(&["build", "-t", "bad:1", ctx_s]);
    assert!(err.contains("outside the build context"), "{err}");
    assert!(
        !d.shoal(&["image", "inspect", "bad:1"]).status.success(),
        "nothing tagged"
    );
    no_build_containers_left(&d);
}

#[test]
fn build_compose_up_builds_the_services_images() {
    if !require_root() {
        return;
    }
    let d = daemon();
    let dir = tempfile::tempdir().expect("tempdir");
    let project = format!("bld{}", common::random_u64() % 100_000);
    write(
        &dir.path().join("web/Dockerfile"),
        "FROM busybox\nARG MSG=unset\nRUN echo \"$MSG\" > /msg\nCMD [\"sh\", \"-c\", \"cat /msg; sleep 3600\"]\n",
    );
    write(
        &dir.path().join("compose.yaml"),
        format!(
            "name: {project}\nservices:\n  web:\n    build:\n      context: ./web\n      args:\n        MSG: built by compose\n    init: true\n"
        ),
    );
    let file = dir.path().join("compose.yaml");
    let file_s = file.to_str().expect("path");
    let out = d.shoal(&["compose", "-f", file_s, "up", "-d", "--build"]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}\n{}", d.log());
    let image = format!("{project}-web");
    let inspect = d.json(&["image", "inspect", &image]);
    assert!(inspect[0]["Id"].as_str().is_some(), "{inspect}");
    let service = format!("{project}_web");
    d.wait_for("the built service runs", Duration::from_secs(60), || {
        d.running_tasks(&service).len() == 1
    });
    d.wait_for("its output", Duration::from_secs(30), || {
        d.ok(&["service", "logs", &service])
            .contains("built by compose")
    });
    // `compose build` again: fully cached.
    let out = d.shoal(&["compose", "-f", file_s, "build"]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("CACHED"), "{err}");
    d.ok(&["compose", "-f", file_s, "down"]);
    // `up` without --build builds an image that is missing.
    d.ok(&["image", "rm", &image]);
    let out = d.shoal(&["compose", "-f", file_s, "up", "-d"]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("Building web ({image})")), "{err}");
    assert!(d.json(&["image", "inspect", &image])[0]["Id"]
        .as_str()
        .is_some());
    d.ok(&["compose", "-f", file_s, "down"]);
    no_build_containers_left(&d);
}
