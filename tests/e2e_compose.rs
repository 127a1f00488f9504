//! `compose up/ps/down` and `stack deploy/ls/services/rm` with the hello example.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::daemon::TestDaemon;
use common::require_root;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/compose-examples/hello/compose.yaml"
);

fn task_ids(d: &TestDaemon, service: &str) -> HashSet<String> {
    d.running_tasks(service)
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn compose_up_is_a_stack_idempotent_and_down_removes_everything() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&["compose", "-f", EXAMPLE, "up", "--wait"]);
    assert_eq!(d.running_tasks("hello_web").len(), 3);
    assert_eq!(d.running_tasks("hello_ticker").len(), 1);
    let stacks = d.ok(&["stack", "ls"]);
    assert!(stacks.contains("hello") && stacks.contains('2'), "{stacks}");
    let ps = d.ok(&["compose", "-f", EXAMPLE, "ps"]);
    assert!(
        ps.contains("hello_web.3") && ps.contains("hello_ticker.1"),
        "{ps}"
    );

    // The interpolated default reaches the container, and the ticker reaches a web replica by
    // name on the project's network: "hello from shoal, web 10.x.y.z is <its hostname>".
    d.wait_for(
        "the ticker's greeting from web",
        Duration::from_secs(45),
        || {
            d.ok(&["service", "logs", "hello_ticker"]).lines().any(|l| {
                l.split_once("hello from shoal, web ")
                    .and_then(|(_, rest)| rest.split_once(" is "))
                    .is_some_and(|(ip, host)| ip.starts_with("10.") && host.trim().len() == 12)
            })
        },
    );
    // The published port answers from the host.
    let port = d.running_tasks("hello_web")[0]["status"]["ports"][0]["published_port"]
        .as_u64()
        .expect("a published port");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port as u16)).expect("connect");
    std::io::Write::write_all(&mut stream, b"GET /hostname HTTP/1.0\r\n\r\n").expect("send");
    let mut page = String::new();
    std::io::Read::read_to_string(&mut stream, &mut page).expect("read");
    assert!(page.contains(" 200 OK"), "{page}");

    // An unchanged file changes nothing.
    let before = task_ids(&d, "hello_web");
    d.ok(&["compose", "-f", EXAMPLE, "up", "-d"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(task_ids(&d, "hello_web"), before, "no task was replaced");

    d.ok(&["compose", "-f", EXAMPLE, "down"]);
    assert!(d.ok(&["service", "ls", "-q"]).trim().is_empty());
    assert!(d.ok(&["stack", "ls", "-q"]).trim().is_empty());
    let containers = d.data_dir().join("containers");
    d.wait_for("every container removed", Duration::from_secs(20), || {
        std::fs::read_dir(&containers)
            .map(|e| e.count() == 0)
            .unwrap_or(true)
    });
}

#[test]
fn stack_deploy_updates_prunes_and_removes() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stack.yaml");
    let write = |yaml: &str| std::fs::write(&file, yaml).expect("write the stack file");
    write("services:\n  a:\n    image: busybox\n    command: [sleep, '1000']\n    stop_grace_period: 1s\n  b:\n    image: busybox\n    command: [sleep, '1000']\n    stop_grace_period: 1s\n");
    let path = file.to_str().expect("utf-8 path");
    d.ok(&["stack", "deploy", "-c", path, "app"]);
    let services = d.ok(&["stack", "services", "app"]);
    assert!(
        services.contains("app_a") && services.contains("app_b"),
        "{services}"
    );

    write("services:\n  a:\n    image: busybox\n    command: [sleep, '1000']\n    stop_grace_period: 1s\n    deploy: { replicas: 2 }\n");
    d.ok(&["stack", "deploy", "-c", path, "--prune", "app"]);
    assert_eq!(d.running_tasks("app_a").len(), 2);
    assert!(d
        .fails(&["service", "inspect", "app_b"])
        .contains("no such service"));

    let err = d.fails(&["stack", "deploy", "-c", "/nonexistent.yaml", "app"]);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    d.ok(&["stack", "rm", "app"]);
    assert!(d.ok(&["service", "ls", "-q"]).trim().is_empty());
}

const CHAIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/compose-examples/chain/compose.yaml"
);

#[test]
fn depends_on_conditions_order_the_start_of_the_chain_example() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&["compose", "-f", CHAIN, "up", "--wait"]);
    // web started only after the migration wrote the schema into the shared volume.
    let logs = d.ok(&["service", "logs", "chain_web"]);
    assert!(logs.contains("serving schema v2"), "{logs}");
    let migrate = d.json(&["service", "ps", "chain_migrate", "--format", "json"]);
    assert_eq!(migrate[0]["status"]["state"], "complete", "{migrate}");
    let store = d.json(&["service", "ps", "chain_store", "--format", "json"]);
    let web = d.json(&["service", "ps", "chain_web", "--format", "json"]);
    let at = |v: &serde_json::Value| v[0]["meta"]["created_at"].as_i64().unwrap_or(0);
    assert!(
        at(&store) < at(&migrate) && at(&migrate) < at(&web),
        "tasks made in dependency order: {store} {migrate} {web}"
    );
    // The published port answers with the migrated content.
    let port = web[0]["status"]["ports"][0]["published_port"]
        .as_u64()
        .expect("a published port");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port as u16)).expect("connect");
    std::io::Write::write_all(&mut stream, b"GET /schema HTTP/1.0\r\n\r\n").expect("send");
    let mut page = String::new();
    std::io::Read::read_to_string(&mut stream, &mut page).expect("read");
    assert!(page.contains("schema v2"), "{page}");
    d.ok(&["compose", "-f", CHAIN, "down"]);
}

/// A web server whose page lives in a named volume, and a store it depends on.
const VERBS: &str = r#"
name: verbs
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo page-$$(hostname) > /www/index.html; echo web-up; exec httpd -f -p 80 -h /www"]
    volumes: ["pages:/www"]
    depends_on: [store]
    stop_grace_period: 1s
  store:
    image: busybox
    command: ["sh", "-c", "echo store-up; exec sleep 1000"]
    init: true
    stop_grace_period: 1s
volumes:
  pages: {}
"#;

#[test]
fn compose_verbs_exec_run_logs_stop_start_restart_top_images_and_down_volumes() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compose.yaml");
    std::fs::write(&file, VERBS).expect("write the compose file");
    let f = file.to_str().expect("utf-8 path");
    let compose = |args: &[&str]| {
        let mut all = vec!["compose", "-f", f];
        all.extend_from_slice(args);
        d.ok(&all)
    };

    // `up web` brings its dependency too.
    compose(&["up", "-d", "--wait", "web"]);
    assert_eq!(d.running_tasks("verbs_web").len(), 1);
    assert_eq!(d.running_tasks("verbs_store").len(), 1);

    let page = compose(&["exec", "web", "cat", "/www/index.html"]);
    assert!(page.starts_with("page-"), "{page}");
    d.wait_for("both services' logs", Duration::from_secs(20), || {
        let logs = compose(&["logs", "--no-color"]);
        logs.lines()
            .any(|l| l.starts_with("web-1") && l.ends_with("web-up"))
            && logs
                .lines()
                .any(|l| l.starts_with("store-1") && l.ends_with("store-up"))
    });
    assert!(compose(&["top", "store"]).contains("sleep 1000"));
    assert!(compose(&["images"]).contains("busybox"));

    // A one-off on the project's network reaches web by name, with the service's volume: its
    // very first lookup is answered (the embedded DNS knows it from attach, before it starts).
    let one_off = compose(&[
        "run",
        "--rm",
        "web",
        "sh",
        "-c",
        "ip=$(nslookup web 2>/dev/null | awk '/^Address: /{print $2; exit}'); \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 \"$ip\" 80 | tail -1; cat /www/index.html",
    ]);
    let lines: Vec<&str> = one_off.lines().collect();
    assert_eq!(lines.len(), 2, "{one_off}");
    assert_eq!(
        lines[0], lines[1],
        "the page by name equals the volume's: {one_off}"
    );
    assert!(
        d.ok(&["ps", "-a", "-q"]).lines().count() == 2,
        "run --rm left no container"
    );

    // stop keeps the services; start brings them back; restart replaces the tasks.
    compose(&["stop", "web"]);
    assert!(d.running_tasks("verbs_web").is_empty());
    assert_eq!(d.running_tasks("verbs_store").len(), 1);
    compose(&["start", "web"]);
    assert_eq!(d.running_tasks("verbs_web").len(), 1);
    let before = task_ids(&d, "verbs_store");
    compose(&["restart", "store"]);
    d.wait_for("a new store task", Duration::from_secs(30), || {
        let now = task_ids(&d, "verbs_store");
        now.len() == 1 && now.is_disjoint(&before)
    });
    // An unchanged `up` changes nothing, even after the forced restart.
    let after = task_ids(&d, "verbs_store");
    compose(&["up", "-d", "--wait"]);
    assert_eq!(task_ids(&d, "verbs_store"), after);

    let err = d.fails(&["compose", "-f", f, "exec", "nosuch", "true"]);
    assert!(err.contains("no such service: nosuch"), "{err}");

    compose(&["down", "-v"]);
    assert!(d.ok(&["service", "ls", "-q"]).trim().is_empty());
    let volumes = d.ok(&["volume", "ls", "-q"]);
    assert!(!volumes.contains("verbs_pages"), "{volumes}");
}

#[test]
fn secrets_and_configs_reach_the_tasks_as_files_and_go_with_the_stack() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("db_password.txt"), "hunter2\n").expect("write the secret");
    // An external secret, made with the CLI from stdin.
    let made = d.shoal_with_input(&["secret", "create", "shared_key", "-"], b"from-stdin");
    assert!(made.status.success(), "{made:?}");
    let file = dir.path().join("compose.yaml");
    std::fs::write(
        &file,
        r#"
name: sec
services:
  app:
    image: busybox
    command: ["sleep", "1000"]
    init: true
    stop_grace_period: 1s
    secrets:
      - db_password
      - { source: shared, target: /etc/shared.key, mode: 0400 }
    configs:
      - { source: app_conf, target: /etc/app.conf }
secrets:
  db_password: { file: ./db_password.txt }
  shared: { external: true, name: shared_key }
configs:
  app_conf: { content: "greeting=hello" }
"#,
    )
    .expect("write the compose file");
    let f = file.to_str().expect("utf-8 path");
    d.ok(&["compose", "-f", f, "up", "-d", "--wait"]);
    let exec = |cmd: &str| d.ok(&["compose", "-f", f, "exec", "app", "sh", "-c", cmd]);
    assert_eq!(exec("cat /run/secrets/db_password"), "hunter2\n");
    assert_eq!(exec("cat /etc/shared.key"), "from-stdin");
    assert_eq!(exec("stat -c %a /etc/shared.key"), "400\n");
    assert_eq!(exec("cat /etc/app.conf"), "greeting=hello");
    assert_eq!(
        exec("grep ' /run/secrets ' /proc/mounts | cut -d' ' -f3"),
        "tmpfs\n"
    );
    let err = d.fails(&[
        "compose",
        "-f",
        f,
        "exec",
        "app",
        "sh",
        "-c",
        "echo x > /run/secrets/db_password",
    ]);
    assert!(err.contains("Read-only"), "{err}");

    let listed = d.ok(&["secret", "ls"]);
    assert!(
        listed.contains("sec_db_password") && listed.contains("shared_key"),
        "{listed}"
    );
    assert!(d.ok(&["config", "ls"]).contains("sec_app_conf"));
    let shown = d.ok(&["secret", "inspect", "sec_db_password"]);
    assert!(
        !shown.contains("hunter2") && !shown.contains("aHVudGVyMg"),
        "{shown}"
    );
    let err = d.fails(&["secret", "rm", "shared_key"]);
    assert!(err.contains("in use by service sec_app"), "{err}");

    d.ok(&["compose", "-f", f, "down"]);
    let left = d.ok(&["secret", "ls", "-q"]);
    assert_eq!(
        left.lines().count(),
        1,
        "only the external one stays: {left}"
    );
    assert!(d.ok(&["config", "ls", "-q"]).trim().is_empty());
    d.ok(&["secret", "rm", "shared_key"]);
    d.wait_for(
        "no secret file left on the tmpfs",
        Duration::from_secs(20),
        || std::fs::read_dir(d.secrets_root()).map_or(true, |mut r| r.next().is_none()),
    );
}
