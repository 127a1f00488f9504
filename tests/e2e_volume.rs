//! Volumes end to end with a real daemon: a named volume keeps its data across task
//! replacement and a daemon restart, a fresh volume is filled from the image, and a volume in
//! use cannot be removed.

mod common;

use std::time::Duration;

use common::daemon::TestDaemon;
use common::require_root;

/// `counter` appends a line to /data/boots at each start and prints the count; `/bin` is a
/// fresh volume, so the shell itself must have been copied in from the image.
const APP: &str = r#"
name: volapp
services:
  counter:
    image: busybox
    stop_grace_period: 1s
    environment: { ROUND: "1" }
    volumes:
      - data:/data
      - tools:/bin
    command: [sh, -c, "echo boot >> /data/boots; echo boots=$$(wc -l < /data/boots); exec sleep 1000"]
volumes:
  data: {}
  tools: {}
"#;

#[test]
fn named_volumes_survive_replacement_and_restart_and_are_filled_from_the_image() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::with_busybox();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compose.yaml");
    std::fs::write(&file, APP).expect("write compose file");
    let file = file.to_str().expect("utf-8 path").to_string();
    d.ok(&["compose", "-f", &file, "up", "--wait"]);
    let logs = |d: &TestDaemon| d.ok(&["service", "logs", "volapp_counter"]);
    d.wait_for("the first boot", Duration::from_secs(10), || {
        logs(&d).contains("boots=1")
    });
    let volumes = d.ok(&["volume", "ls", "-q"]);
    assert!(
        volumes.contains("volapp_data") && volumes.contains("volapp_tools"),
        "{volumes}"
    );
    let err = d.fails(&["volume", "rm", "volapp_data"]);
    assert!(err.contains("in use"), "{err}");

    // A new task replaces the old one: same volume, one more boot.
    d.ok(&[
        "service",
        "update",
        "--env-add",
        "ROUND=2",
        "volapp_counter",
    ]);
    d.wait_for("the second boot", Duration::from_secs(20), || {
        logs(&d).contains("boots=2")
    });

    // The daemon dies and comes back: the volume and its data are still there.
    d.kill9();
    d.spawn();
    let inspect = d.json(&["volume", "inspect", "volapp_data"]);
    assert_eq!(inspect[0]["name"], "volapp_data", "{inspect}");
    d.ok(&[
        "service",
        "update",
        "--env-add",
        "ROUND=3",
        "volapp_counter",
    ]);
    d.wait_for("the third boot", Duration::from_secs(20), || {
        logs(&d).contains("boots=3")
    });

    // `compose down` keeps named volumes (as Docker Compose does); then they can go.
    d.ok(&["compose", "-f", &file, "down"]);
    d.wait_for("the volumes free", Duration::from_secs(20), || {
        d.shoal(&["volume", "rm", "volapp_data", "volapp_tools"])
            .status
            .success()
    });
    assert!(d.ok(&["volume", "ls", "-q"]).trim().is_empty());
}
