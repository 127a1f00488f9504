//! The runnable examples under compose-examples/ do what their READMEs say, checked from the
//! host over their published loopback ports: `kv` (web → api → store, data in a named volume
//! across `down`/`up`) and `secret` (basic auth with a password from a secret file).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use common::require_root;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("compose-examples")
        .join(name)
}

/// An HTTP/1.0 answer: its status code and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// One HTTP/1.0 request to 127.0.0.1:`port`; `None` when the connection fails or no
/// status line comes back (a port not ready yet).
fn http(port: u16, method: &str, path: &str, body: &str, auth: Option<&str>) -> Option<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    if let Some(credentials) = auth {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        request += &format!("Authorization: Basic {encoded}\r\n");
    }
    if !body.is_empty() {
        request += &format!("Content-Length: {}\r\n", body.len());
    }
    request += "\r\n";
    request += body;
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some(Answer { status, body })
}

/// Retries `request` until it answers with `status` (a fresh deployment's port, DNS and
/// processes settle at their own pace on a loaded machine); panics with the last answer.
fn expect_status(
    d: &TestDaemon,
    status: u16,
    mut request: impl FnMut() -> Option<Answer>,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        match request() {
            Some(a) if a.status == status => return a,
            other => last = other,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "no {status} answer within 60 s; last: {last:?}\ndaemon log:\n{}",
        d.log()
    );
}

/// The host port the service's running task publishes.
fn published_port(d: &TestDaemon, service: &str) -> u16 {
    let tasks = d.running_tasks(service);
    let port = tasks
        .first()
        .and_then(|t| t["status"]["ports"][0]["published_port"].as_u64())
        .unwrap_or_else(|| panic!("{service} publishes no port: {tasks:?}"));
    u16::try_from(port).expect("a port number")
}

#[test]
fn kv_example_stores_through_the_published_port_and_keeps_data_across_down_and_up() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let file = example("kv").join("compose.yaml");
    let f = file.to_str().expect("utf-8 path");
    let compose = |args: &[&str]| {
        let mut all = vec!["compose", "-f", f];
        all.extend_from_slice(args);
        d.ok(&all)
    };

    compose(&["up", "--wait"]);
    for s in ["kv_web", "kv_api", "kv_store"] {
        assert_eq!(d.running_tasks(s).len(), 1, "{s} runs");
    }
    let port = published_port(&d, "kv_web");
    let page = expect_status(&d, 200, || http(port, "GET", "/", "", None));
    assert!(page.body.contains("<h1>kv</h1>"), "{page:?}");

    // web → api → store and back.
    let stored = expect_status(&d, 200, || {
        http(
            port,
            "POST",
            "/cgi-bin/kv/greeting",
            "hello from the host",
            None,
        )
    });
    assert_eq!(stored.body, "ok\n");
    let read = http(port, "GET", "/cgi-bin/kv/greeting", "", None).expect("an answer");
    assert_eq!(
        (read.status, read.body.as_str()),
        (200, "hello from the host\n")
    );
    let missing = http(port, "GET", "/cgi-bin/kv/nosuchkey", "", None).expect("an answer");
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "no such key: nosuchkey\n")
    );
    let bad = http(port, "GET", "/cgi-bin/kv/a%20b", "", None).expect("an answer");
    assert_eq!(bad.status, 400, "{bad:?}");
    http(port, "POST", "/cgi-bin/kv/doomed", "x", None).expect("an answer");
    let deleted = http(port, "DELETE", "/cgi-bin/kv/doomed", "", None).expect("an answer");
    assert_eq!(deleted.status, 200, "{deleted:?}");
    let gone = http(port, "GET", "/cgi-bin/kv/doomed", "", None).expect("an answer");
    assert_eq!(gone.status, 404, "{gone:?}");

    // `down` keeps the named volume; the next `up` finds the data in it.
    compose(&["down"]);
    assert!(d.ok(&["service", "ls", "-q"]).trim().is_empty());
    assert!(
        d.ok(&["volume", "ls", "-q"])
            .lines()
            .any(|v| v == "kv_data"),
        "down without -v keeps the volume"
    );
    compose(&["up", "--wait"]);
    let port = published_port(&d, "kv_web");
    let again = expect_status(&d, 200, || {
        http(port, "GET", "/cgi-bin/kv/greeting", "", None)
    });
    assert_eq!(again.body, "hello from the host\n");

    // `down -v` takes the volume too.
    compose(&["down", "-v"]);
    let volumes = d.ok(&["volume", "ls", "-q"]);
    assert!(!volumes.lines().any(|v| v == "kv_data"), "{volumes}");
}

#[test]
fn secret_example_guards_a_page_with_the_password_from_its_secret_file() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    // A copy of the example, so the test can change the password file.
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(example("secret")).expect("the example's files") {
        let path = entry.expect("a dir entry").path();
        let name = path.file_name().expect("a file name");
        std::fs::copy(&path, dir.path().join(name)).expect("copy an example file");
    }
    let file = dir.path().join("compose.yaml");
    let f = file.to_str().expect("utf-8 path");
    let compose = |args: &[&str]| {
        let mut all = vec!["compose", "-f", f];
        all.extend_from_slice(args);
        d.ok(&all)
    };
    let password = std::fs::read_to_string(dir.path().join("admin_password.txt"))
        .expect("the example's password");
    let right = format!("admin:{}", password.trim_end());

    compose(&["up", "--wait"]);
    let port = published_port(&d, "secret_site");
    let public = expect_status(&d, 200, || http(port, "GET", "/", "", None));
    assert!(public.body.contains("This page is public"), "{public:?}");
    let private = "/private/";
    let anonymous = http(port, "GET", private, "", None).expect("an answer");
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let wrong = http(port, "GET", private, "", Some("admin:wrong")).expect("an answer");
    assert_eq!(wrong.status, 401, "{wrong:?}");
    // The user name comes from the config.
    let other_user = format!("root:{}", password.trim_end());
    let as_root = http(port, "GET", private, "", Some(&other_user)).expect("an answer");
    assert_eq!(as_root.status, 401, "{as_root:?}");
    let page = http(port, "GET", private, "", Some(&right)).expect("an answer");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("this page is private"), "{page:?}");

    // Root's only: mode 0400 on a tmpfs; the server (uid 33) and other users cannot read it,
    // and the server's config holds a hash, not the password.
    let exec = |args: &[&str]| {
        let mut all = vec!["compose", "-f", f, "exec"];
        all.extend_from_slice(args);
        d.shoal(&all)
    };
    let stat = exec(&["site", "stat", "-c", "%a %u", "/run/secrets/admin_password"]);
    assert_eq!(String::from_utf8_lossy(&stat.stdout), "400 0\n", "{stat:?}");
    let denied = exec(&["-u", "33", "site", "cat", "/run/secrets/admin_password"]);
    assert!(!denied.status.success(), "{denied:?}");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{denied:?}"
    );
    let uid = exec(&["site", "sh", "-c", "grep ^Uid: /proc/$(pidof httpd)/status"]);
    assert!(
        String::from_utf8_lossy(&uid.stdout).starts_with("Uid:\t33\t33"),
        "{uid:?}"
    );
    let conf = exec(&["site", "cat", "/etc/httpd.conf"]);
    let conf = String::from_utf8_lossy(&conf.stdout).into_owned();
    assert!(
        conf.starts_with("/private:admin:$1$") && !conf.contains(password.trim_end()),
        "{conf}"
    );
    let mounts = exec(&["site", "grep", " /run/secrets ", "/proc/mounts"]);
    assert!(
        String::from_utf8_lossy(&mounts.stdout).contains(" tmpfs "),
        "{mounts:?}"
    );

    // A new password in the file: `up` stores it, `restart` gives it to a new task.
    std::fs::write(dir.path().join("admin_password.txt"), "new password\n").expect("write");
    compose(&["up", "-d", "--wait"]);
    compose(&["restart"]);
    let port = published_port(&d, "secret_site");
    expect_status(&d, 200, || {
        http(port, "GET", private, "", Some("admin:new password"))
    });
    let old = http(port, "GET", private, "", Some(&right)).expect("an answer");
    assert_eq!(old.status, 401, "{old:?}");

    compose(&["down"]);
    assert!(d.ok(&["secret", "ls", "-q"]).trim().is_empty());
    assert!(d.ok(&["config", "ls", "-q"]).trim().is_empty());
}
