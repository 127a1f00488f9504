//! Builds without `RUN` (no container runtime needed): `COPY`, `ADD`, metadata, stages, the
//! cache, and bad input, against a real store in a temporary directory.

use std::collections::BTreeMap;
use std::fs;

use shoal_proto::build_event::Event;

use super::builder::{collecting_progress, BuildRequest, ImageBuilder};
use super::BuildError;
use crate::image::tests::simple_rootfs_tar;
use crate::image::ImageStore;

struct Fixture {
    _dir: tempfile::TempDir,
    store: ImageStore,
    builder: ImageBuilder,
    context: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path().join("store")).expect("store");
    store
        .import_tar("base:1", std::io::Cursor::new(simple_rootfs_tar()))
        .expect("import base");
    let context = dir.path().join("ctx");
    fs::create_dir_all(context.join("src/sub")).expect("mkdir");
    fs::write(context.join("hello.txt"), "hello\n").expect("write");
    fs::write(context.join("src/a.c"), "int a;\n").expect("write");
    fs::write(context.join("src/sub/b.c"), "int b;\n").expect("write");
    let builder = ImageBuilder::new(store.clone(), None).expect("builder");
    Fixture {
        _dir: dir,
        store,
        builder,
        context,
    }
}

struct Outcome {
    result: Result<shoal_proto::Image, BuildError>,
    /// (step name, cached) of every finished step, in order.
    steps: Vec<(String, bool)>,
    warnings: Vec<String>,
}

impl Fixture {
    async fn build(
        &self,
        dockerfile: &str,
        tags: &[&str],
        f: impl FnOnce(&mut BuildRequest),
    ) -> Outcome {
        let mut req = BuildRequest {
            dockerfile: dockerfile.into(),
            dockerfile_name: "Dockerfile".into(),
            context: self.context.clone(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        f(&mut req);
        let (progress, mut rx) = collecting_progress();
        let result = self.builder.build(&req, &progress).await;
        drop(progress);
        let mut names = BTreeMap::new();
        let mut steps = Vec::new();
        let mut warnings = Vec::new();
        while let Some(Ok(ev)) = rx.recv().await {
            match ev.event {
                Some(Event::Started(s)) => {
                    names.insert(s.id, s.name);
                }
                Some(Event::Done(d)) => {
                    steps.push((names.get(&d.id).cloned().unwrap_or_default(), d.cached));
                }
                Some(Event::Warning(w)) => warnings.push(w),
                _ => {}
            }
        }
        Outcome {
            result,
            steps,
            warnings,
        }
    }

    fn file(&self, image: &str, path: &str) -> Option<String> {
        let resolved = self.store.resolve(image).expect("resolve");
        let fs_ = super::rootfs::Rootfs::new(resolved.layer_dirs, super::rootfs::Scope::Image);
        fs_.read_file(path)
            .expect("read")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

const APP: &str = "\
FROM base:1
ARG VERSION=1.0
ENV APP_HOME=/app VERSION=$VERSION
WORKDIR $APP_HOME
COPY hello.txt src ./
COPY --chmod=600 hello.txt /etc/greeting
LABEL version=$VERSION
EXPOSE 8080
USER nobody
CMD [\"cat\", \"hello.txt\"]
";

#[tokio::test]
async fn build_copy_and_metadata_then_fully_cached() {
    let f = fixture();
    let first = f.build(APP, &["app:v1", "app:latest"], |_| {}).await;
    let image = first.result.expect("first build");
    assert_eq!(
        image.tags,
        vec!["app:latest".to_string(), "app:v1".to_string()]
    );
    let c = image.config.clone().expect("config");
    assert_eq!(c.cmd, vec!["cat", "hello.txt"]);
    assert_eq!(c.workdir, "/app");
    assert_eq!(c.user, "nobody");
    assert!(c.env.contains(&"VERSION=1.0".to_string()), "{:?}", c.env);
    assert_eq!(c.labels.get("version").map(String::as_str), Some("1.0"));
    assert_eq!(c.exposed_ports, vec!["8080/tcp".to_string()]);
    assert_eq!(image.layers.len(), 3, "base + two COPY layers");
    // History: the base's entry, then one per instruction but ARG; COPY ones have layers.
    let history: Vec<(String, bool)> = image
        .history
        .iter()
        .map(|h| (h.created_by.clone(), h.empty_layer))
        .collect();
    assert_eq!(history.len(), 1 + 8, "{history:?}");
    assert_eq!(history[3], ("COPY hello.txt src /app/".to_string(), false));
    assert_eq!(
        history[1],
        ("ENV APP_HOME=/app VERSION=1.0".to_string(), true)
    );
    assert_eq!(
        f.file("app:v1", "/app/hello.txt").as_deref(),
        Some("hello\n")
    );
    assert_eq!(f.file("app:v1", "/app/a.c").as_deref(), Some("int a;\n"));
    assert_eq!(
        f.file("app:v1", "/app/sub/b.c").as_deref(),
        Some("int b;\n")
    );
    assert_eq!(
        f.file("app:v1", "/etc/greeting").as_deref(),
        Some("hello\n")
    );
    assert!(first.steps.iter().all(|(_, cached)| !cached));

    // Again: every instruction step is CACHED, and the image is the very same.
    let second = f.build(APP, &["app:v2"], |_| {}).await;
    let again = second.result.expect("second build");
    assert_eq!(again.id, image.id);
    let instruction_steps: Vec<&(String, bool)> = second
        .steps
        .iter()
        .filter(|(n, _)| {
            n.starts_with('[') && !n.starts_with("[internal]") && !n.contains(" FROM ")
        })
        .collect();
    assert_eq!(instruction_steps.len(), 8, "{:?}", second.steps);
    assert!(
        instruction_steps.iter().all(|(_, c)| *c),
        "{:?}",
        second.steps
    );

    // A changed file invalidates its COPY and what follows, not what precedes.
    fs::write(f.context.join("src/a.c"), "int a2;\n").expect("write");
    let third = f.build(APP, &["app:v3"], |_| {}).await;
    let changed = third.result.expect("third build");
    assert_ne!(changed.id, image.id);
    let cached: Vec<bool> = third
        .steps
        .iter()
        .filter(|(n, _)| {
            n.starts_with("[2/")
                || n.starts_with("[3/")
                || n.starts_with("[4/")
                || n.starts_with("[5/")
        })
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(cached, vec![true, true, false, false], "{:?}", third.steps);
    assert_eq!(f.file("app:v3", "/app/a.c").as_deref(), Some("int a2;\n"));

    // --no-cache runs everything again; a different build arg changes the env step.
    let fourth = f.build(APP, &[], |r| r.no_cache = true).await;
    assert!(fourth.result.is_ok());
    assert!(fourth.steps.iter().all(|(_, c)| !c));
    let fifth = f
        .build(APP, &["app:v5"], |r| {
            r.build_args.insert("VERSION".into(), "2.0".into());
            r.build_args.insert("UNUSED".into(), "x".into());
        })
        .await;
    let v5 = fifth.result.expect("fifth");
    assert!(v5
        .config
        .expect("config")
        .env
        .contains(&"VERSION=2.0".to_string()));
    assert_eq!(fifth.warnings.len(), 1);
    assert!(fifth.warnings[0].contains("UNUSED"), "{:?}", fifth.warnings);
}

#[tokio::test]
async fn build_multi_stage_target_and_from_image() {
    let f = fixture();
    let df = "\
FROM base:1 AS builder
COPY src /out/
FROM scratch AS final
COPY --from=builder /out/a.c /a.c
COPY --from=0 /out/sub /sub
COPY --from=base:1 /etc/hostname /hosts
ENTRYPOINT [\"/a.c\"]
FROM final AS extra
LABEL extra=yes
";
    let built = f
        .build(df, &["multi:1"], |r| r.target = Some("final".into()))
        .await;
    let image = built.result.expect("build");
    assert_eq!(f.file("multi:1", "/a.c").as_deref(), Some("int a;\n"));
    assert_eq!(f.file("multi:1", "/sub/b.c").as_deref(), Some("int b;\n"));
    assert!(f.file("multi:1", "/hosts").is_some());
    assert!(
        image.config.expect("config").labels.is_empty(),
        "--target stops before extra"
    );
    let names: Vec<&str> = built.steps.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"[builder 2/2] COPY src /out/"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("[extra")), "{names:?}");
    // The whole file builds the last stage, which starts from `final`.
    let all = f
        .build(df, &["multi:2"], |_| {})
        .await
        .result
        .expect("build");
    assert_eq!(
        all.config
            .expect("config")
            .labels
            .get("extra")
            .map(String::as_str),
        Some("yes")
    );
}

#[tokio::test]
async fn build_add_extracts_a_local_tar() {
    let f = fixture();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o755);
    h.set_cksum();
    b.append_data(&mut h, "pkg/tool", &b"abc"[..])
        .expect("append");
    fs::write(f.context.join("pkg.tar"), b.into_inner().expect("tar")).expect("write");
    let df = "FROM base:1\nADD pkg.tar /opt/\nADD hello.txt /opt/\n";
    f.build(df, &["added"], |_| {}).await.result.expect("build");
    assert_eq!(f.file("added", "/opt/pkg/tool").as_deref(), Some("abc"));
    assert_eq!(
        f.file("added", "/opt/hello.txt").as_deref(),
        Some("hello\n")
    );
}

fn message(o: &Outcome) -> String {
    match &o.result {
        Ok(_) => panic!("the build should fail"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn build_bad_input_is_refused_and_tags_nothing() {
    let f = fixture();
    let before = f.store.list().expect("list").len();
    let cases: Vec<(&str, &str)> = vec![
        ("FROM base:1\nBOGUS x\n", "Dockerfile line 2"),
        (
            "FROM base:1\nCOPY ../secret /x\n",
            "outside the build context",
        ),
        ("FROM base:1\nCOPY missing.txt /x\n", "not found"),
        ("FROM nosuch:image\n", "no such image"),
        (
            "FROM base:1\nCOPY --from=nostage /x /y\n",
            "no stage of that name",
        ),
        ("FROM base:1\nRUN true\n", "RUN is not available"),
        ("FROM base:1\nCOPY --chown=ghost hello.txt /x\n", "ghost"),
    ];
    for (df, want) in cases {
        let o = f.build(df, &["bad:1"], |_| {}).await;
        let m = message(&o);
        assert!(m.contains(want), "{df:?}: {m}");
    }
    std::os::unix::fs::symlink("/etc/passwd", f.context.join("escape")).expect("symlink");
    let o = f
        .build("FROM base:1\nCOPY escape /x\n", &["bad:1"], |_| {})
        .await;
    assert!(
        message(&o).contains("outside the build context"),
        "{}",
        message(&o)
    );
    let o = f
        .build("FROM base:1\n", &["bad:1"], |r| {
            r.target = Some("nope".into())
        })
        .await;
    assert!(message(&o).contains("target stage"), "{}", message(&o));
    let o = f.build("FROM base:1\n", &["Bad Tag"], |_| {}).await;
    assert!(message(&o).contains("invalid tag"), "{}", message(&o));
    assert_eq!(
        f.store.list().expect("list").len(),
        before,
        "nothing registered"
    );
    assert!(f.store.resolve("bad:1").is_err());
}

#[tokio::test]
async fn build_cache_survives_reopen_and_rm_and_is_pruned() {
    let f = fixture();
    let df = "FROM base:1\nCOPY hello.txt /h\nCMD [\"cat\", \"/h\"]\n";
    let image = f.build(df, &["c:1"], |_| {}).await.result.expect("build");
    // A new store and builder on the same directory (a daemon restart).
    let store = ImageStore::open(f.store.root().to_path_buf()).expect("reopen");
    let builder = ImageBuilder::new(store.clone(), None).expect("builder");
    let f2 = Fixture {
        _dir: tempfile::tempdir().expect("tempdir"),
        store: store.clone(),
        builder,
        context: f.context.clone(),
    };
    // Removing the image keeps the cache (and its layers) ...
    store.remove("c:1").expect("rm");
    let o = f2.build(df, &["c:2"], |_| {}).await;
    assert_eq!(o.result.expect("rebuild").id, image.id);
    assert!(
        o.steps
            .iter()
            .filter(|(n, _)| n.starts_with("[2/") || n.starts_with("[3/"))
            .all(|(_, c)| *c),
        "{:?}",
        o.steps
    );
    // ... prune drops what no image builds on.
    store.remove("c:2").expect("rm");
    store.prune(false, &[]).expect("prune");
    let o = f2.build(df, &["c:3"], |_| {}).await;
    o.result.expect("rebuild");
    assert!(
        o.steps
            .iter()
            .filter(|(n, _)| n.starts_with("[2/"))
            .all(|(_, c)| !*c),
        "{:?}",
        o.steps
    );
}
