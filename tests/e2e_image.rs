//! End to end: image archives (`image save` / `image load`, Docker and OCI layouts), and
//! `image inspect/history/tag/rm/prune`, through the real CLI and daemon; loaded images run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::TestDaemon;
use common::require_root;

const CONVERGE: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run a helper command");
    assert!(status.success(), "{cmd:?} failed");
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

/// A busybox rootfs (the host's busybox-static and a few applets) in `dir`.
fn busybox_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).expect("bin");
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "echo", "sleep", "cat", "test", "ls"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).expect("symlink");
    }
}

/// `tar -C dir -cf out .` (GNU tar, sorted, for a stable digest).
fn tar_dir(dir: &Path, out: &Path) {
    run(Command::new("tar")
        .arg("--sort=name")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

/// Waits until `service logs` of `service` contains `needle`; returns the logs.
fn wait_for_logs(d: &TestDaemon, service: &str, needle: &str) -> String {
    let mut logs = String::new();
    d.wait_for(
        &format!("`{needle}` in the logs of {service}"),
        CONVERGE,
        || {
            logs = String::from_utf8_lossy(&d.shoal(&["service", "logs", service]).stdout)
                .into_owned();
            logs.contains(needle)
        },
    );
    logs
}

#[test]
fn save_rm_load_runs_and_tag_rm_prune_work_like_docker() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let work = d.dir.path().join("work");
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    std::fs::write(rootfs.join("marker"), "saved-and-loaded\n").expect("marker");
    let tarball = work.join("rootfs.tar");
    tar_dir(&rootfs, &tarball);
    let id = d
        .ok(&[
            "image",
            "import",
            "--name",
            "app:v1",
            tarball.to_str().expect("utf-8"),
        ])
        .trim()
        .to_string();

    // Save two images to a file, and one to stdout.
    let saved = work.join("saved.tar");
    d.ok(&[
        "image",
        "save",
        "-o",
        saved.to_str().expect("utf-8"),
        "app:v1",
        "busybox",
    ]);
    let out = d.shoal(&["image", "save", "app:v1"]);
    assert!(out.status.success());
    let to_stdout = work.join("stdout.tar");
    std::fs::write(&to_stdout, &out.stdout).expect("write");
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&saved)
        .output()
        .expect("tar -t");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for name in ["manifest.json", "index.json", "oci-layout"] {
        assert!(listing.lines().any(|l| l == name), "{name} in {listing}");
    }

    // rm → gone; load → back with the same id; it runs.
    let removed = d.ok(&["image", "rm", "app:v1"]);
    assert!(removed.contains("Untagged: app:v1"), "{removed}");
    assert!(removed.contains(&format!("Deleted: {id}")), "{removed}");
    assert!(!d.ok(&["image", "ls"]).contains("app"));
    let loaded = d.ok(&["image", "load", "-i", saved.to_str().expect("utf-8")]);
    assert!(loaded.contains("Loaded image: app:v1"), "{loaded}");
    assert!(loaded.contains("Loaded image: busybox:latest"), "{loaded}");
    let inspect = d.json(&["image", "inspect", "app:v1"]);
    assert_eq!(inspect[0]["Id"], id.as_str());
    assert_eq!(inspect[0]["RepoTags"][0], "app:v1");
    assert_eq!(inspect[0]["Os"], "linux");
    assert!(inspect[0]["RootFS"]["Layers"][0]
        .as_str()
        .unwrap_or("")
        .starts_with("sha256:"));
    let digest = inspect[0]["RepoDigests"][0]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(digest.starts_with("app@sha256:"), "{inspect}");
    // By digest, and as Docker's normalised name.
    assert_eq!(d.json(&["image", "inspect", &digest])[0]["Id"], id.as_str());
    assert_eq!(
        d.json(&["image", "inspect", "docker.io/library/app:v1"])[0]["Id"],
        id.as_str()
    );

    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "fromload",
        "--restart-condition",
        "none",
        "app:v1",
        "cat",
        "/marker",
    ]);
    wait_for_logs(&d, "fromload", "saved-and-loaded");
    d.ok(&["service", "rm", "fromload"]);

    // Load from stdin (once the finished task's container is gone: until then it uses the
    // image, and Docker refuses too).
    d.wait_for("the finished task's container to go", CONVERGE, || {
        d.shoal(&["image", "rm", "app:v1"]).status.success()
    });
    let status = Command::new(common::daemon::SHOAL)
        .arg("--host")
        .arg(d.socket())
        .args(["image", "load"])
        .stdin(Stdio::from(std::fs::File::open(&to_stdout).expect("open")))
        .stdout(Stdio::null())
        .status()
        .expect("load from stdin");
    assert!(status.success());
    assert_eq!(
        d.json(&["image", "inspect", "app:v1"])[0]["Id"],
        id.as_str()
    );

    // history, tag.
    let history = d.ok(&["image", "history", "app:v1"]);
    assert!(
        history.contains("CREATED BY") && history.contains("shoal import"),
        "{history}"
    );
    d.ok(&["image", "tag", "app:v1", "team/app:v2"]);
    let ls = d.ok(&["image", "ls"]);
    assert!(ls.contains("team/app") && ls.contains("v2"), "{ls}");
    assert!(ls.starts_with("REPOSITORY"), "{ls}");
    let out = d.ok(&["image", "rm", "team/app:v2"]);
    assert_eq!(out.trim(), "Untagged: team/app:v2");

    // In use by a running task: refused, forced or not.
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "user",
        "--stop-grace-period",
        "1s",
        "app:v1",
        "sleep",
        "1000",
    ]);
    d.wait_for("the task to run", CONVERGE, || {
        !d.running_tasks("user").is_empty()
    });
    let err = d.fails(&["image", "rm", "app:v1"]);
    assert!(err.contains("running container"), "{err}");
    let err = d.fails(&["image", "rm", "-f", "app:v1"]);
    assert!(err.contains("cannot be forced"), "{err}");
    let pruned = d.ok(&["image", "prune", "-a"]);
    assert!(
        !pruned.contains(&id),
        "an image in use is not pruned: {pruned}"
    );
    assert!(
        pruned.contains("Untagged: busybox:latest"),
        "unused: {pruned}"
    );
    d.ok(&["service", "rm", "user"]);

    // Dangling after a re-import onto the tag: prune removes it; prune -a the rest.
    std::fs::write(rootfs.join("marker"), "second\n").expect("marker");
    tar_dir(&rootfs, &tarball);
    d.ok(&[
        "image",
        "import",
        "--name",
        "app:v1",
        tarball.to_str().expect("utf-8"),
    ]);
    assert!(d.ok(&["image", "ls"]).contains("<none>"));
    d.wait_for("the old image to be unused", CONVERGE, || {
        d.ok(&["image", "prune"])
            .contains(&format!("Deleted: {id}"))
    });
    assert!(!d.ok(&["image", "ls"]).contains("<none>"));
    let pruned = d.ok(&["image", "prune", "-a"]);
    assert!(pruned.contains("Untagged: app:v1"), "{pruned}");
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    let ls = d.ok(&["image", "ls"]);
    assert_eq!(ls.lines().count(), 1, "only the header left: {ls}");
    let err = d.fails(&[
        "image",
        "load",
        "-i",
        work.join("missing").to_str().expect("utf-8"),
    ]);
    assert!(err.contains("cannot open"), "{err}");
}

#[test]
fn oci_layout_archive_made_by_the_test_loads_and_runs() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let work = d.dir.path().join("oci");
    // Layer 1 (gzip): busybox and a file layer 2 deletes; layer 2 (plain): a message and the
    // whiteout.
    let l1 = work.join("l1");
    busybox_rootfs(&l1);
    std::fs::write(l1.join("gone"), "should not be seen\n").expect("gone");
    let l2 = work.join("l2");
    std::fs::create_dir_all(l2.join("etc")).expect("etc");
    std::fs::write(l2.join("etc/msg"), "hello-from-oci\n").expect("msg");
    std::fs::write(l2.join(".wh.gone"), "").expect("whiteout");
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let mut diff_ids = Vec::new();
    let mut layer_descs = Vec::new();
    for (dir, gz) in [(&l1, true), (&l2, false)] {
        let tar = work.join(format!(
            "{}.tar",
            dir.file_name().unwrap().to_string_lossy()
        ));
        tar_dir(dir, &tar);
        diff_ids.push(format!("sha256:{}", sha256_of(&tar)));
        let blob = if gz {
            run(Command::new("gzip").arg("-kn").arg(&tar));
            tar.with_extension("tar.gz")
        } else {
            tar
        };
        let digest = sha256_of(&blob);
        let size = std::fs::metadata(&blob).expect("stat").len();
        std::fs::copy(&blob, blobs.join(&digest)).expect("copy blob");
        layer_descs.push(serde_json::json!({
            "mediaType": if gz { "application/vnd.oci.image.layer.v1.tar+gzip" }
                         else { "application/vnd.oci.image.layer.v1.tar" },
            "digest": format!("sha256:{digest}"), "size": size,
        }));
    }
    let put = |bytes: Vec<u8>| {
        let path = work.join("tmp-blob");
        std::fs::write(&path, &bytes).expect("write");
        let digest = sha256_of(&path);
        std::fs::rename(&path, blobs.join(&digest)).expect("rename");
        (format!("sha256:{digest}"), bytes.len())
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"],
                   "Cmd": ["sh", "-c", "cat /etc/msg; test -e /gone || echo gone-is-gone"],
                   "ExposedPorts": {"8080/tcp": {}}, "Labels": {"made.by": "test"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config");
    let (config_digest, config_size) = put(config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    }))
    .expect("manifest");
    let (manifest_digest, manifest_size) = put(manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "platform": {"os": "linux", "architecture": "amd64"},
                       "annotations": {"io.containerd.image.name": "oci/app:1.0"}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("layout");
    let archive = work.join("oci.tar");
    tar_dir(&layout, &archive);

    let loaded = d.ok(&["image", "load", "-i", archive.to_str().expect("utf-8")]);
    assert_eq!(loaded.trim(), "Loaded image: oci/app:1.0");
    let inspect = d.json(&["image", "inspect", "oci/app:1.0"]);
    assert_eq!(inspect[0]["Id"], config_digest.as_str());
    assert_eq!(
        inspect[0]["RepoDigests"][0],
        format!("oci/app@{manifest_digest}").as_str()
    );
    assert_eq!(
        inspect[0]["Config"]["ExposedPorts"]["8080/tcp"],
        serde_json::json!({})
    );
    assert_eq!(inspect[0]["Config"]["Labels"]["made.by"], "test");
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "oci",
        "--restart-condition",
        "none",
        "oci/app:1.0",
    ]);
    let logs = wait_for_logs(&d, "oci", "gone-is-gone");
    assert!(logs.contains("hello-from-oci"), "{logs}");
    assert!(!logs.contains("should not be seen"), "{logs}");
    d.ok(&["service", "rm", "oci"]);

    // The same archive with a tampered blob: refused, nothing registered.
    d.wait_for("the service's container to go", CONVERGE, || {
        d.shoal(&["image", "rm", "oci/app:1.0"]).status.success()
    });
    let manifest_path = blobs.join(manifest_digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&manifest_path).expect("read");
    let last = bytes.len() - 1;
    bytes[last - 1] ^= 1;
    std::fs::write(&manifest_path, bytes).expect("write");
    tar_dir(&layout, &archive);
    let err = d.fails(&["image", "load", "-i", archive.to_str().expect("utf-8")]);
    assert!(err.contains("does not match its digest"), "{err}");
    assert_eq!(d.ok(&["image", "ls"]).lines().count(), 1);
}
