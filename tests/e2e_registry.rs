//! End to end: `pull`, `push`, `login`/`logout` against a real registry server
//! (Debian's `docker-registry`, distribution 2.x) that each test starts on loopback with its own
//! config and storage: anonymous, HTTP basic (htpasswd, bcrypt) and bearer tokens from a token
//! server the test runs (JWTs signed with a key whose certificate the registry trusts). Also:
//! tampered and truncated blobs and manifests are refused without a trace, a service whose
//! image the node lacks pulls it on the node, and a build pulls the images its `FROM` and
//! `COPY --from` name.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::daemon::{TestDaemon, SHOAL};
use common::require_root;

const CONVERGE: Duration = Duration::from_secs(60);
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret-pw";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A `docker-registry` process on loopback, killed (by its pid) when dropped.
struct RegistryServer {
    child: Child,
    port: u16,
    storage: PathBuf,
    log: PathBuf,
}

impl RegistryServer {
    /// Starts a registry with `auth` (a YAML `auth:` section, or empty) under `dir`.
    fn start(dir: &Path, auth: &str) -> RegistryServer {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: apt-get install -y docker-registry"
        );
        std::fs::create_dir_all(dir).expect("registry dir");
        let port = free_port();
        let storage = dir.join("storage");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: \
                 {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                storage.display()
            ),
        )
        .expect("registry config");
        let log = dir.join("registry.log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("registry log"))
            .spawn()
            .expect("start docker-registry");
        let mut server = RegistryServer {
            child,
            port,
            storage,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = http_status(port, "/v2/") {
                assert!(status == 200 || status == 401, "registry answered {status}");
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("docker-registry exited ({status}): {}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer within 30 s: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file a blob is stored in.
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of a plain `GET` on loopback, if anything answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `PUT /v2/REPO/manifests/TAG` with `body`; returns the status code.
fn put_manifest(port: u16, repo: &str, tag: &str, media_type: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the registry");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "PUT /v2/{repo}/manifests/{tag} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: \
         {media_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("status line");
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A token service for the registry's `auth.token` realm: checks `USER`/`PASSWORD` (basic
/// auth on the token request) and answers a JWT (ES256, with its certificate in `x5c`)
/// granting what the `scope` parameters ask. Requests without valid credentials get 401.
struct TokenServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// PEM of the certificate the registry trusts (`rootcertbundle`).
    cert_pem: String,
}

const TOKEN_ISSUER: &str = "shoal-test-issuer";
const TOKEN_SERVICE: &str = "shoal-test-registry";

impl TokenServer {
    fn start() -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["shoal-test-token".into()]).expect("cert params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "shoal-test-token");
        let cert = params.self_signed(&key).expect("self-signed cert");
        let cert_pem = cert.pem();
        let cert_der = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("signing key");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    let _ = serve_token(stream, &signer, &cert_der);
                }
            }
        });
        TokenServer {
            port,
            stop,
            thread: Some(thread),
            cert_pem,
        }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_token(
    mut stream: TcpStream,
    signer: &ring::signature::EcdsaKeyPair,
    cert_der: &str,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut scopes = Vec::new();
    for pair in query.split('&') {
        if let Some(("scope", v)) = pair.split_once('=') {
            scopes.push(percent_decode(v));
        }
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let (status, body) = if authorization.as_deref() == Some(expected.as_str()) {
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [cert_der]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": USER, "aud": TOKEN_SERVICE,
            "exp": now + 600, "nbf": now - 30, "iat": now - 30,
            "jti": format!("{}", common::random_u64()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = signer
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| std::io::Error::other("signing failed"))?;
        let token = format!("{signing_input}.{}", b64(signature.as_ref()));
        (
            "200 OK",
            serde_json::json!({"token": token, "access_token": token, "expires_in": 600})
                .to_string(),
        )
    } else {
        (
            "401 Unauthorized",
            r#"{"details":"incorrect username or password"}"#.to_string(),
        )
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// `shoal ARGS` against `d`, with the credentials file in `config` (SHOAL_CONFIG).
fn cli(d: &TestDaemon, config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(SHOAL)
        .arg("--host")
        .arg(d.socket())
        .args(args)
        .env("SHOAL_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal");
    if let Some(mut input) = child.stdin.take() {
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("stdin");
        }
    }
    child.wait_with_output().expect("shoal output")
}

fn cli_ok(d: &TestDaemon, config: &Path, args: &[&str]) -> String {
    let out = cli(d, config, args, None);
    assert!(
        out.status.success(),
        "shoal {args:?} failed:\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_fails(d: &TestDaemon, config: &Path, args: &[&str]) -> String {
    let out = cli(d, config, args, None);
    assert!(
        !out.status.success(),
        "shoal {args:?} should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run a helper command");
    assert!(status.success(), "{cmd:?} failed");
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("read");
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Deterministic filler that does not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Loads `name`, a three-layer image made here: busybox (gzip), 20 MiB of data (plain, so
/// its blob goes up in chunks), and a message (gzip). Returns the layer blob digests, lowest
/// first. Its command prints the message and the data's size.
fn load_test_image(d: &TestDaemon, work: &Path, name: &str) -> Vec<String> {
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let l1 = work.join("l1");
    std::fs::create_dir_all(l1.join("bin")).expect("bin");
    std::fs::copy("/bin/busybox", l1.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "cat", "wc", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", l1.join("bin").join(applet)).expect("symlink");
    }
    let l2 = work.join("l2");
    std::fs::create_dir_all(l2.join("data")).expect("data");
    std::fs::write(l2.join("data/blob"), noise(20 << 20, 7)).expect("data blob");
    let l3 = work.join("l3");
    std::fs::create_dir_all(l3.join("etc")).expect("etc");
    std::fs::write(l3.join("etc/msg"), "hello-from-the-registry\n").expect("msg");
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    let mut digests = Vec::new();
    for (dir, gz) in [(&l1, true), (&l2, false), (&l3, true)] {
        let tar = work.join(format!(
            "{}.tar",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("l")
        ));
        run(Command::new("tar")
            .arg("--sort=name")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        diff_ids.push(format!("sha256:{}", sha256_file(&tar)));
        let blob = if gz {
            run(Command::new("gzip").arg("-kn").arg(&tar));
            tar.with_extension("tar.gz")
        } else {
            tar
        };
        let digest = sha256_file(&blob);
        let size = std::fs::metadata(&blob).expect("stat").len();
        std::fs::copy(&blob, blobs.join(&digest)).expect("copy blob");
        descs.push(serde_json::json!({
            "mediaType": if gz { "application/vnd.oci.image.layer.v1.tar+gzip" }
                         else { "application/vnd.oci.image.layer.v1.tar" },
            "digest": format!("sha256:{digest}"), "size": size,
        }));
        digests.push(format!("sha256:{digest}"));
    }
    let put = |bytes: Vec<u8>| {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(&bytes));
        std::fs::write(blobs.join(&digest), &bytes).expect("write blob");
        (format!("sha256:{digest}"), bytes.len())
    };
    let (config_digest, config_size) = put(serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"],
                   "Cmd": ["sh", "-c", "cat /etc/msg; wc -c < /data/blob"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config"));
    let (manifest_digest, manifest_size) = put(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descs,
    }))
    .expect("manifest"));
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": manifest_size,
                           "annotations": {"io.containerd.image.name": name}}],
        })
        .to_string(),
    )
    .expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let archive = work.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    d.ok(&["image", "load", "-i", archive.to_str().expect("utf-8")]);
    digests
}

const EXPECTED_OUTPUT: &str = "hello-from-the-registry\n20971520\n";

fn run_image(d: &TestDaemon, image: &str) -> String {
    d.ok(&["run", "--rm", image])
}

/// Nothing left half done in the store: no temporary files, no image beyond `expected`.
fn assert_store_clean(d: &TestDaemon, images: usize) {
    let tmp = d.data_dir().join("images/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|it| it.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "leftovers in {}: {left:?}", tmp.display());
    let ls = d.ok(&["image", "ls", "-q"]);
    assert_eq!(ls.lines().count(), images, "images: {ls}");
}

#[test]
fn push_rm_pull_runs_the_same_and_tampered_content_is_refused() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let registry = RegistryServer::start(&d.dir.path().join("registry"), "");
    let cfg = d.dir.path().join("client-config");
    let image = format!("{}/team/app:1.0", registry.host());
    let layers = load_test_image(&d, &d.dir.path().join("work"), &image);
    let before = run_image(&d, &image);
    assert_eq!(before, EXPECTED_OUTPUT);

    let pushed = cli_ok(&d, &cfg, &["push", &image]);
    assert!(
        pushed.contains(&format!(
            "The push refers to repository [{}/team/app]",
            registry.host()
        )),
        "{pushed}"
    );
    assert!(pushed.contains(": Pushed"), "{pushed}");
    let digest_line = pushed
        .lines()
        .find(|l| l.starts_with("1.0: digest: sha256:"))
        .unwrap_or_else(|| panic!("no digest line: {pushed}"));
    let digest = digest_line
        .split_whitespace()
        .nth(2)
        .expect("digest")
        .to_string();
    // A second push finds every layer there already.
    let again = cli_ok(&d, &cfg, &["image", "push", &image]);
    assert_eq!(again.matches("Layer already exists").count(), 3, "{again}");

    d.ok(&["image", "rm", &image]);
    assert_store_clean(&d, 0);
    let pulled = cli_ok(&d, &cfg, &["pull", &image]);
    assert!(pulled.contains("1.0: Pulling from team/app"), "{pulled}");
    assert_eq!(pulled.matches("Pull complete").count(), 3, "{pulled}");
    assert!(pulled.contains(&format!("Digest: {digest}")), "{pulled}");
    assert!(
        pulled.contains(&format!("Status: Downloaded newer image for {image}")),
        "{pulled}"
    );
    assert_eq!(pulled.lines().last(), Some(image.as_str()));
    assert_eq!(run_image(&d, &image), before);
    let inspect = d.json(&["image", "inspect", &image]);
    assert_eq!(
        inspect[0]["RepoDigests"][0],
        format!("{}/team/app@{digest}", registry.host()).as_str()
    );
    let again = cli_ok(&d, &cfg, &["image", "pull", &image]);
    assert!(again.contains("Status: Image is up to date"), "{again}");
    assert_eq!(again.matches("Already exists").count(), 3, "{again}");

    // A multi-arch index (made here, pushed over the plain API): linux/amd64 is chosen.
    let manifest_size = std::fs::metadata(registry.blob_path(&digest))
        .expect("manifest blob")
        .len();
    let entry = |arch: &str, variant: Option<&str>| {
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = serde_json::json!(v);
        }
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": digest, "size": manifest_size, "platform": platform})
    };
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm64", Some("v8")), entry("amd64", None), entry("s390x", None)],
    });
    let status = put_manifest(
        registry.port,
        "team/app",
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &index.to_string(),
    );
    assert_eq!(status, 201, "index upload: {}", registry.log());
    d.ok(&["image", "rm", &image]);
    let multi = format!("{}/team/app:multi", registry.host());
    cli_ok(&d, &cfg, &["pull", &multi]);
    assert_eq!(run_image(&d, &multi), before);
    d.ok(&["image", "rm", &multi]);
    cli_ok(&d, &cfg, &["pull", "-q", &image]);

    // By digest: the same image, untagged.
    let by_digest = format!("{}/team/app@{digest}", registry.host());
    d.ok(&["image", "rm", &image]);
    cli_ok(&d, &cfg, &["pull", "-q", &by_digest]);
    assert_eq!(run_image(&d, &by_digest), before);
    d.ok(&["image", "rm", &by_digest]);
    assert_store_clean(&d, 0);

    // Unknown names and tags: clear errors.
    let err = cli_fails(
        &d,
        &cfg,
        &["pull", &format!("{}/team/app:nope", registry.host())],
    );
    assert!(err.contains("not found in registry"), "{err}");
    let err = cli_fails(&d, &cfg, &["push", "never/made:1"]);
    assert!(err.contains("never/made:1"), "{err}");

    // A tampered layer blob (same size) and then a truncated one: refused, nothing stored.
    let blob = registry.blob_path(&layers[2]);
    let original = std::fs::read(&blob).expect("read blob");
    let mut tampered = original.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x55;
    std::fs::write(&blob, &tampered).expect("tamper");
    let err = cli_fails(&d, &cfg, &["pull", &image]);
    assert!(
        err.contains(&format!("layer {}", layers[2])) && err.contains("digest"),
        "{err}"
    );
    assert_store_clean(&d, 0);
    std::fs::write(&blob, &original[..original.len() / 2]).expect("truncate");
    let err = cli_fails(&d, &cfg, &["pull", &image]);
    assert!(err.contains(&format!("layer {}", layers[2])), "{err}");
    assert_store_clean(&d, 0);
    std::fs::write(&blob, &original).expect("restore");

    // A tampered manifest: the registry still names it by the old digest.
    let manifest = registry.blob_path(&digest);
    let original = std::fs::read(&manifest).expect("read manifest");
    let text = String::from_utf8(original.clone()).expect("utf-8");
    std::fs::write(&manifest, text.replacen("\"size\":", "\"size\": ", 1)).expect("tamper");
    let err = cli_fails(&d, &cfg, &["pull", &image]);
    assert!(err.contains("manifest") && err.contains("digest"), "{err}");
    assert_store_clean(&d, 0);
    std::fs::write(&manifest, &original).expect("restore");
    cli_ok(&d, &cfg, &["pull", &image]);
    assert_eq!(run_image(&d, &image), before);
    drop(registry);
}

#[test]
fn basic_auth_registry_needs_login() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let dir = d.dir.path().join("registry");
    std::fs::create_dir_all(&dir).expect("dir");
    let hash = bcrypt::hash_with_result(PASSWORD, 4)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoY);
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).expect("htpasswd");
    let registry = RegistryServer::start(
        &dir,
        &format!(
            "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let cfg = d.dir.path().join("client-config");
    let image = format!("{}/private/app:1", registry.host());
    load_test_image(&d, &d.dir.path().join("work"), &image);
    let before = run_image(&d, &image);

    let err = cli_fails(&d, &cfg, &["push", &image]);
    assert!(
        err.contains("requires authentication")
            && err.contains(&format!("shoal login {}", registry.host())),
        "{err}"
    );
    let out = cli(
        &d,
        &cfg,
        &["login", "-u", USER, "--password-stdin", &registry.host()],
        Some("wrong-password\n"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the credentials of `alice`"), "{err}");
    assert!(!cfg.join("config.json").exists());

    let out = cli(
        &d,
        &cfg,
        &["login", "-u", USER, "--password-stdin", &registry.host()],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Login Succeeded"));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(
        saved["auths"][registry.host()]["auth"],
        base64::engine::general_purpose::STANDARD
            .encode(format!("{USER}:{PASSWORD}"))
            .as_str()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cfg.join("config.json"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    cli_ok(&d, &cfg, &["push", &image]);
    d.ok(&["image", "rm", &image]);
    cli_ok(&d, &cfg, &["pull", &image]);
    assert_eq!(run_image(&d, &image), before);

    // A build's base image comes with the saved login too, as with `docker build`.
    d.ok(&["image", "rm", &image]);
    let ctx = d.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("context dir");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {image}
"
        ),
    )
    .expect("Dockerfile");
    let ctx = ctx.to_str().expect("utf-8");
    cli_ok(&d, &cfg, &["build", "-q", "-t", "on-private:1", ctx]);
    assert_eq!(run_image(&d, "on-private:1"), before);
    d.ok(&["image", "rm", "on-private:1", &image]);

    let out = cli_ok(&d, &cfg, &["logout", &registry.host()]);
    assert!(out.contains("Removing login credentials"), "{out}");
    let err = cli_fails(&d, &cfg, &["pull", &image]);
    assert!(err.contains("requires authentication"), "{err}");
    let err = cli_fails(&d, &cfg, &["build", "-t", "never:1", ctx]);
    assert!(err.contains("requires authentication"), "{err}");
    assert_store_clean(&d, 0);
    drop(registry);
}

#[test]
fn bearer_token_registry_works_through_the_realm() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let dir = d.dir.path().join("registry");
    std::fs::create_dir_all(&dir).expect("dir");
    let tokens = TokenServer::start();
    let bundle = dir.join("token-ca.pem");
    std::fs::write(&bundle, &tokens.cert_pem).expect("bundle");
    let registry = RegistryServer::start(
        &dir,
        &format!(
            "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: \
             {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            tokens.realm(),
            bundle.display()
        ),
    );
    let cfg = d.dir.path().join("client-config");
    let image = format!("{}/tokens/app:2", registry.host());
    load_test_image(&d, &d.dir.path().join("work"), &image);
    let before = run_image(&d, &image);

    let err = cli_fails(&d, &cfg, &["push", &image]);
    assert!(err.contains("requires authentication"), "{err}");
    let out = cli(
        &d,
        &cfg,
        &["login", "-u", USER, "--password-stdin", &registry.host()],
        Some("nope\n"),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token service"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        &d,
        &cfg,
        &["login", "-u", USER, "-p", PASSWORD, &registry.host()],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli_ok(&d, &cfg, &["push", &image]);
    d.ok(&["image", "rm", &image]);
    cli_ok(&d, &cfg, &["pull", &image]);
    assert_eq!(run_image(&d, &image), before);
    drop(registry);
}

#[test]
fn service_pulls_a_missing_image_on_its_node() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let registry = RegistryServer::start(&d.dir.path().join("registry"), "");
    let cfg = d.dir.path().join("client-config");
    let image = format!("{}/svc/app:1", registry.host());
    let layers = load_test_image(&d, &d.dir.path().join("work"), &image);
    cli_ok(&d, &cfg, &["push", &image]);
    d.ok(&["image", "rm", &image]);
    assert_store_clean(&d, 0);

    // Not on the node, in the registry: accepted, pulled as the task prepares, run.
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "pulled",
        "--restart-condition",
        "none",
        &image,
    ]);
    let mut logs = String::new();
    d.wait_for("the pulled service's output", CONVERGE, || {
        logs =
            String::from_utf8_lossy(&d.shoal(&["service", "logs", "pulled"]).stdout).into_owned();
        logs.contains("20971520")
    });
    assert!(logs.contains("hello-from-the-registry"), "{logs}");
    assert_eq!(d.ok(&["image", "ls", "-q"]).lines().count(), 1);
    d.ok(&["service", "rm", "pulled"]);

    // In neither: refused at create, with the reason.
    let err = d.fails(&[
        "service",
        "create",
        "--name",
        "ghost",
        &format!("{}/svc/ghost:1", registry.host()),
    ]);
    assert!(
        err.contains("svc/ghost:1") && err.contains("not found"),
        "{err}"
    );

    // In the registry but broken: the pull fails, and the task says why.
    d.wait_for("the first service's container to go", CONVERGE, || {
        d.shoal(&["image", "rm", &image]).status.success()
    });
    let blob = registry.blob_path(&layers[0]);
    let mut bytes = std::fs::read(&blob).expect("read blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, &bytes).expect("tamper");
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "broken",
        "--restart-condition",
        "none",
        &image,
    ]);
    let mut error = String::new();
    d.wait_for("the broken task's error", CONVERGE, || {
        let tasks = d.json(&["service", "ps", "broken", "--format", "json"]);
        error = tasks
            .as_array()
            .and_then(|t| t.first())
            .and_then(|t| t["status"]["error"].as_str())
            .unwrap_or_default()
            .to_string();
        !error.is_empty()
    });
    assert!(
        error.contains(&format!("cannot pull image {image}"))
            && error.contains(&format!("layer {}", layers[0]))
            && error.contains("digest"),
        "{error}"
    );
    assert_store_clean(&d, 0);
    d.ok(&["service", "rm", "broken"]);
    drop(registry);
}

#[test]
fn build_pulls_missing_from_and_copy_from_images() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let registry = RegistryServer::start(&d.dir.path().join("registry"), "");
    let cfg = d.dir.path().join("client-config");
    let base = format!("{}/team/base:1", registry.host());
    let other = format!("{}/team/other:2", registry.host());
    load_test_image(&d, &d.dir.path().join("work"), &base);
    d.ok(&["image", "tag", &base, &other]);
    cli_ok(&d, &cfg, &["push", "-q", &base]);
    cli_ok(&d, &cfg, &["push", "-q", &other]);
    d.ok(&["image", "rm", &base, &other]);
    assert_store_clean(&d, 0);

    let ctx = d.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("context dir");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY --from={other} /etc/msg /etc/copied\nCMD [\"sh\", \"-c\", \
             \"cat /etc/copied /etc/msg; wc -c < /data/blob\"]\n"
        ),
    )
    .expect("Dockerfile");
    let ctx_s = ctx.to_str().expect("utf-8");
    let out = cli(
        &d,
        &cfg,
        &["build", "-t", "built:1", "--progress", "plain", ctx_s],
        None,
    );
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "build failed:\n{progress}\ndaemon log:\n{}",
        d.log()
    );
    // The FROM step shows the pull layer by layer; COPY --from finds the layers there.
    let step_of = |needle: &str| {
        progress
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .map(|id| format!("{id} "))
            .unwrap_or_else(|| panic!("no step `{needle}`:\n{progress}"))
    };
    let from = step_of(&format!("FROM {base}"));
    let from_log: Vec<&str> = progress.lines().filter(|l| l.starts_with(&from)).collect();
    let from_log = from_log.join("\n");
    assert!(from_log.contains("1: Pulling from team/base"), "{from_log}");
    assert!(
        from_log.matches(": Downloading ").count() >= 3,
        "{from_log}"
    );
    assert_eq!(from_log.matches(": Pull complete").count(), 3, "{from_log}");
    let copy = step_of(&format!("COPY --from={other}"));
    let copy_log: Vec<&str> = progress.lines().filter(|l| l.starts_with(&copy)).collect();
    let copy_log = copy_log.join("\n");
    assert_eq!(
        copy_log.matches(": Already exists").count(),
        3,
        "{copy_log}"
    );

    assert_eq!(
        run_image(&d, "built:1"),
        format!("hello-from-the-registry\n{EXPECTED_OUTPUT}")
    );
    // The pulled images stay, as after `docker build`.
    run_image(&d, &base);
    run_image(&d, &other);

    // An image in neither the store nor the registry: the build says so and tags nothing.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}/team/nope:1\n", registry.host()),
    )
    .expect("Dockerfile");
    let err = cli_fails(&d, &cfg, &["build", "-t", "never:1", ctx_s]);
    assert!(
        err.contains("team/nope:1")
            && err.contains("pulling it failed")
            && err.contains("not found"),
        "{err}"
    );
    assert!(!d.shoal(&["image", "inspect", "never:1"]).status.success());
    let tmp = d.data_dir().join("images/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|it| it.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "leftovers in {}: {left:?}", tmp.display());
    drop(registry);
}

#[test]
fn compose_pull_and_up_follow_the_pull_policy() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let registry = RegistryServer::start(&d.dir.path().join("registry"), "");
    let cfg = d.dir.path().join("client-config");
    let image = format!("{}/compose/app:1", registry.host());
    load_test_image(&d, &d.dir.path().join("work"), &image);
    cli_ok(&d, &cfg, &["push", &image]);
    d.ok(&["image", "rm", &image]);
    assert_store_clean(&d, 0);

    let project = d.dir.path().join("project");
    std::fs::create_dir_all(&project).expect("project dir");
    let file = |policy: &str| {
        let path = project.join(format!("compose-{policy}.yaml"));
        let text = format!(
            "name: pulled\nservices:\n  app:\n    image: {image}\n    pull_policy: {policy}\n    \
             command: [\"sleep\", \"1000\"]\n    init: true\n"
        );
        std::fs::write(&path, text).expect("compose file");
        path.to_string_lossy().into_owned()
    };

    // `compose pull` brings the image; its line names the service.
    let missing = file("missing");
    let out = cli(&d, &cfg, &["compose", "-f", &missing, "pull"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("app Pulled"),
        "{out:?}"
    );
    assert_store_clean(&d, 1);
    d.ok(&["image", "rm", &image]);

    // `pull_policy: never` and the image absent: up refuses, saying why; `--pull` overrides.
    let never = file("never");
    let err = cli_fails(&d, &cfg, &["compose", "-f", &never, "up", "-d"]);
    assert!(err.contains("pull policy is never"), "{err}");
    cli_ok(
        &d,
        &cfg,
        &["compose", "-f", &never, "up", "-d", "--pull", "missing"],
    );
    assert_store_clean(&d, 1);
    cli_ok(&d, &cfg, &["compose", "-f", &never, "down"]);

    // An image no registry has: `pull` fails naming it, unless told to ignore failures.
    let ghost = project.join("compose-ghost.yaml");
    std::fs::write(
        &ghost,
        format!(
            "services:\n  ghost:\n    image: {}/compose/ghost:1\n",
            registry.host()
        ),
    )
    .expect("compose file");
    let ghost = ghost.to_string_lossy().into_owned();
    let err = cli_fails(&d, &cfg, &["compose", "-f", &ghost, "pull"]);
    assert!(
        err.contains("ghost") && err.contains("compose/ghost:1"),
        "{err}"
    );
    cli_ok(
        &d,
        &cfg,
        &["compose", "-f", &ghost, "pull", "--ignore-pull-failures"],
    );
    drop(registry);
}
