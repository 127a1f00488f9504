//! Tests of the image store as a whole (no root needed; run as root, owners are checked too).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::*;

// --- tarball builders ---------------------------------------------------------------------------

/// A header whose path (and link name) are written verbatim, bypassing the `tar` crate's own
/// checks, so that hostile archives can be built.
fn raw_header(path: &str, kind: EntryType, size: u64, link: Option<&str>) -> Header {
    let mut h = Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    h
}

struct TarBuilder(tar::Builder<Vec<u8>>);

impl TarBuilder {
    fn new() -> TarBuilder {
        TarBuilder(tar::Builder::new(Vec::new()))
    }
    fn raw(mut self, path: &str, kind: EntryType, data: &[u8], link: Option<&str>) -> Self {
        let h = raw_header(path, kind, data.len() as u64, link);
        self.0.append(&h, data).expect("append");
        self
    }
    fn file(self, path: &str, data: &[u8]) -> Self {
        self.raw(path, EntryType::Regular, data, None)
    }
    fn dir(self, path: &str) -> Self {
        self.raw(path, EntryType::Directory, b"", None)
    }
    fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(path, EntryType::Symlink, b"", Some(target))
    }
    fn hardlink(self, path: &str, target: &str) -> Self {
        self.raw(path, EntryType::Link, b"", Some(target))
    }
    fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("finish")
    }
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

const LONG_DIR: &str = "deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A small rootfs exercising every supported entry kind and metadata.
pub(crate) fn simple_rootfs_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_234_567_890);
        h.set_size(data.len() as u64);
        match link {
            Some(l) => b.append_link(&mut h, path, l).expect("link"),
            None => b.append_data(&mut h, path, data).expect("data"),
        }
    };
    add("./", EntryType::Directory, 0o755, b"", None);
    add("etc/", EntryType::Directory, 0o755, b"", None);
    add("etc/hostname", EntryType::Regular, 0o640, b"box\n", None);
    add("ro/", EntryType::Directory, 0o555, b"", None);
    add("ro/inside", EntryType::Regular, 0o444, b"read only\n", None);
    add("bin/busybox", EntryType::Regular, 0o755, b"#!fake\n", None);
    add("bin/su", EntryType::Regular, 0o4755, b"setuid\n", None);
    add("bin/sh", EntryType::Symlink, 0o777, b"", Some("busybox"));
    add(
        "bin/abs-link",
        EntryType::Symlink,
        0o777,
        b"",
        Some("/etc/passwd"),
    );
    add(
        "etc/hostname-hard",
        EntryType::Link,
        0o640,
        b"",
        Some("etc/hostname"),
    );
    add("run/fifo", EntryType::Fifo, 0o600, b"", None);
    add(
        &format!("{LONG_DIR}/file"),
        EntryType::Regular,
        0o644,
        b"long\n",
        None,
    );
    // An absolute path: taken relative to the layer root.
    let h = raw_header("/abs/file", EntryType::Regular, 4, None);
    b.append(&h, &b"abs\n"[..]).expect("abs");
    b.into_inner().expect("finish")
}

fn tar_with_file(content: &str) -> Vec<u8> {
    TarBuilder::new().file("hello", content.as_bytes()).finish()
}

fn open(dir: &tempfile::TempDir) -> ImageStore {
    ImageStore::open(dir.path().join("images")).expect("open store")
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// No layer, image, tag or temporary directory.
fn assert_store_empty(store: &ImageStore) {
    let root = store.root();
    assert_eq!(
        names_in(&root.join("layers")),
        Vec::<String>::new(),
        "layers"
    );
    assert_eq!(
        names_in(&root.join("images")),
        Vec::<String>::new(),
        "images"
    );
    assert_eq!(names_in(&root.join("tmp")), Vec::<String>::new(), "tmp");
    if let Ok(tags) = fs::read_to_string(root.join("tags.json")) {
        let v: serde_json::Value = serde_json::from_str(&tags).expect("tags json");
        assert_eq!(v["tags"], serde_json::json!({}), "tags");
    }
    assert!(store.list().expect("list").is_empty());
}

// --- import, resolve, list, remove ----------------------------------------------------------------

#[test]
fn image_import_plain_and_gzip_share_one_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let tar = simple_rootfs_tar();

    let plain = store.import_tar("app", &tar[..]).expect("import plain");
    assert_eq!(plain.tags, vec!["app:latest".to_string()]);
    assert_eq!(
        plain.layers,
        vec![sha256(&tar)],
        "digest = sha256 of the tar stream"
    );
    assert!(plain.id.starts_with("sha256:") && plain.id.len() == 71);
    let config = plain.config.clone().expect("config");
    assert!(config.cmd.is_empty() && config.entrypoint.is_empty());
    assert_eq!(
        config.env,
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()]
    );
    assert_eq!(plain.size, (4 + 10 + 7 + 7 + 5 + 4) as u64);
    assert!(plain.created > 1_700_000_000_000);

    let gz = store
        .import_tar("app:gz", &gzip(&tar)[..])
        .expect("import gzip");
    assert_eq!(gz.layers, plain.layers);
    let layer_dirs: Vec<_> = names_in(&store.root().join("layers"))
        .into_iter()
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert_eq!(layer_dirs.len(), 1, "one shared layer: {layer_dirs:?}");
    assert_eq!(layer_dirs[0], plain.layers[0][7..19]);

    let resolved = store.resolve("app").expect("resolve");
    assert_eq!(resolved.image.id, plain.id);
    assert_eq!(resolved.layer_dirs.len(), 1);
    let l = &resolved.layer_dirs[0];
    assert!(l.is_absolute());

    // Contents and metadata.
    assert_eq!(
        fs::read_to_string(l.join("etc/hostname")).expect("read"),
        "box\n"
    );
    let meta = |p: &str| fs::symlink_metadata(l.join(p)).expect(p);
    assert_eq!(meta("etc/hostname").mode() & 0o7777, 0o640);
    assert_eq!(meta("etc/hostname").mtime(), 1_234_567_890);
    assert_eq!(meta("bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(meta("ro").mode() & 0o7777, 0o555);
    assert_eq!(meta("ro").mtime(), 1_234_567_890);
    assert_eq!(meta("ro/inside").mode() & 0o7777, 0o444);
    assert_eq!(
        fs::read_link(l.join("bin/sh")).expect("link"),
        Path::new("busybox")
    );
    assert_eq!(meta("bin/sh").mtime(), 1_234_567_890);
    assert_eq!(
        fs::read_link(l.join("bin/abs-link")).expect("link"),
        Path::new("/etc/passwd")
    );
    assert_eq!(meta("etc/hostname-hard").ino(), meta("etc/hostname").ino());
    assert!(meta("run/fifo").file_type().is_fifo());
    assert_eq!(
        fs::read_to_string(l.join(format!("{LONG_DIR}/file"))).expect("long"),
        "long\n"
    );
    assert_eq!(
        fs::read_to_string(l.join("abs/file")).expect("abs"),
        "abs\n"
    );
    assert_eq!(meta("").mode() & 0o7777, 0o755);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(
            (meta("etc/hostname").uid(), meta("etc/hostname").gid()),
            (1000, 1001)
        );
        assert_eq!((meta("bin/sh").uid(), meta("ro").gid()), (1000, 1001));
    }
    assert_eq!(names_in(&store.root().join("tmp")), Vec::<String>::new());
}

#[test]
fn image_resolve_by_name_tag_and_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let a = store
        .import_tar("team/app:v1", &tar_with_file("a")[..])
        .expect("a");
    let b = store
        .import_tar("other", &tar_with_file("b")[..])
        .expect("b");
    let hex = &a.id[7..];

    for reference in [
        "team/app:v1".to_string(),
        a.id.clone(),
        format!("sha256:{}", &hex[..10]),
        hex[..12].to_string(),
        hex.to_string(),
    ] {
        assert_eq!(
            store.resolve(&reference).expect(&reference).image.id,
            a.id,
            "{reference}"
        );
    }
    assert_eq!(store.resolve("other").expect("other").image.id, b.id);
    assert_eq!(
        store.resolve("other:latest").expect("other").image.tags,
        vec!["other:latest"]
    );

    for (reference, needle) in [
        ("team/app", "no such image"),
        ("nope:v1", "no such image"),
        ("Team/App", "must be lowercase"),
        ("sha256:XYZ", "lowercase hex"),
        ("sha256:", "lowercase hex"),
        ("", "empty"),
        ("a b", "whitespace"),
    ] {
        let err = store.resolve(reference).expect_err(reference).to_string();
        assert!(err.contains(needle), "{reference:?}: {err}");
    }
    // A short bare hex string is a name, not an id prefix.
    assert!(store.resolve(&hex[..3]).is_err());
}

#[test]
fn image_ambiguous_id_prefix_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut ids = Vec::new();
    // 17 images: two share a first hex digit.
    for i in 0..17 {
        ids.push(
            store
                .import_tar(&format!("img{i}"), &tar_with_file(&i.to_string())[..])
                .expect("import")
                .id,
        );
    }
    let mut by_first = std::collections::BTreeMap::<char, Vec<String>>::new();
    for id in &ids {
        by_first
            .entry(id.as_bytes()[7] as char)
            .or_default()
            .push(id.clone());
    }
    let (c, clash) = by_first
        .iter()
        .find(|(_, v)| v.len() > 1)
        .expect("pigeonhole");
    let err = store
        .resolve(&format!("sha256:{c}"))
        .expect_err("ambiguous");
    assert!(matches!(err, ImageError::Ambiguous { .. }), "{err}");
    assert!(err.to_string().contains(&clash[0]), "{err}");
}

#[test]
fn image_list_and_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let tar = tar_with_file("x");
    let one = store.import_tar("one", &tar[..]).expect("one");
    std::thread::sleep(std::time::Duration::from_millis(5));
    // Same layer, new image (a new creation time), two tags.
    let two = store.import_tar("two", &tar[..]).expect("two");
    let alias = store.tag("two", "two:alias").expect("tag");
    assert_eq!(alias.id, two.id);
    assert_eq!(
        alias.tags,
        vec!["two:alias".to_string(), "two:latest".to_string()]
    );
    assert_ne!(one.id, two.id);
    assert_eq!(one.layers, two.layers);
    let err = store.tag("missing", "x").expect_err("missing source");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    let err = store.tag("two", "Bad").expect_err("bad target");
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");

    let list = store.list().expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, two.id, "newest first");
    assert_eq!(list[1].tags, vec!["one:latest".to_string()]);

    // By id with two tags: refused, as in Docker.
    let err = store.remove(&two.id).expect_err("conflict");
    assert!(matches!(err, ImageError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("two:alias, two:latest"), "{err}");
    store.remove("two:alias").expect("untag");
    assert_eq!(
        store.resolve(&two.id).expect("still tagged").image.tags,
        vec!["two:latest"]
    );
    store.remove("two").expect("remove two");
    assert!(store.resolve("two").is_err());
    assert!(store.resolve(&two.id).is_err());
    // The layer is still used by `one`.
    let resolved = store.resolve("one").expect("one");
    assert!(resolved.layer_dirs[0].join("hello").exists());

    store.remove(&one.id[..20]).expect("remove by id prefix");
    let err = store.remove("one").expect_err("gone");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    assert_store_empty(&store);
}

#[test]
fn image_retag_leaves_dangling_image_until_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let old = store
        .import_tar("app", &tar_with_file("old")[..])
        .expect("old");
    let new = store
        .import_tar("app", &tar_with_file("new")[..])
        .expect("new");
    assert_ne!(old.id, new.id);
    assert_eq!(store.resolve("app").expect("app").image.id, new.id);
    let dangling = store.resolve(&old.id).expect("old by id");
    assert!(dangling.image.tags.is_empty());
    assert_eq!(store.prune_dangling().expect("prune"), vec![old.id.clone()]);
    assert!(store.resolve(&old.id).is_err());
    assert!(store.resolve("app").is_ok());
    assert_eq!(
        names_in(&store.root().join("layers")).len(),
        2,
        "one layer dir + record"
    );
}

#[test]
fn image_import_rejects_bad_names_and_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let tar = tar_with_file("x");
    for name in ["", "UPPER", "has space", "a:", "x@sha256:1"] {
        let err = store.import_tar(name, &tar[..]).expect_err(name);
        assert!(
            matches!(err, ImageError::InvalidReference { .. }),
            "{name:?}: {err}"
        );
    }
    let err = store.import_tar("e", &b""[..]).expect_err("empty");
    assert!(matches!(err, ImageError::EmptyInput), "{err}");
    let err = store
        .import_tar("z", &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0][..])
        .expect_err("zstd");
    assert!(err.to_string().contains("zstd"), "{err}");
    let err = store
        .import_tar("g", &[b'x'; 2000][..])
        .expect_err("garbage");
    assert!(matches!(err, ImageError::BadArchive { .. }), "{err}");
    let err = store.import_tar("t", &tar[..700]).expect_err("truncated");
    assert!(matches!(err, ImageError::BadArchive { .. }), "{err}");
    let err = store
        .import_tar("zero", &[0u8; 1024][..])
        .expect_err("no entries");
    assert!(err.to_string().contains("no entries"), "{err}");
    let gz = gzip(&tar);
    let err = store
        .import_tar("tg", &gz[..gz.len() - 10])
        .expect_err("truncated gzip");
    assert!(matches!(err, ImageError::BadArchive { .. }), "{err}");
    assert_store_empty(&store);
}

#[test]
fn image_failed_import_keeps_previous_tag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let good = store
        .import_tar("app", &tar_with_file("good")[..])
        .expect("good");
    let evil = TarBuilder::new()
        .file("ok", b"1")
        .file("../escape", b"x")
        .finish();
    store.import_tar("app", &evil[..]).expect_err("evil");
    assert_eq!(store.resolve("app").expect("app").image.id, good.id);
    assert_eq!(store.list().expect("list").len(), 1);
    assert_eq!(names_in(&store.root().join("tmp")), Vec::<String>::new());
}

#[test]
fn image_concurrent_imports_share_the_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let tar = simple_rootfs_tar();
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                let tar = &tar;
                s.spawn(move || {
                    store
                        .import_tar(&format!("c{i}"), &tar[..])
                        .expect("import")
                        .layers[0]
                        .clone()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    assert!(ids.iter().all(|d| *d == ids[0]));
    let dirs = names_in(&store.root().join("layers"));
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert_eq!(names_in(&store.root().join("tmp")), Vec::<String>::new());
    assert_eq!(
        store
            .list()
            .expect("list")
            .iter()
            .map(|i| i.tags.len())
            .sum::<usize>(),
        4
    );
}

#[test]
fn image_open_cleans_up_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let kept = store
        .import_tar("kept", &tar_with_file("k")[..])
        .expect("import");
    let root = store.root().to_path_buf();
    drop(store);
    // An interrupted import, a layer moved but never recorded, a layer no image uses, and a
    // half-written metadata file.
    fs::create_dir_all(root.join("tmp/import-dead/usr/bin")).expect("mkdir");
    fs::set_permissions(
        root.join("tmp/import-dead/usr"),
        fs::Permissions::from_mode(0o555),
    )
    .expect("chmod");
    fs::create_dir(root.join("layers/0123456789ab")).expect("mkdir");
    fs::create_dir(root.join("layers/fedcba987654")).expect("mkdir");
    fs::write(
        root.join("layers/fedcba987654.json"),
        format!(
            r#"{{"digest":"sha256:fedcba987654{}","size":1,"created":0}}"#,
            "0".repeat(52)
        ),
    )
    .expect("write");
    fs::write(root.join(".tags.json.tmp-123"), b"{").expect("write");

    let store = ImageStore::open(root.clone()).expect("reopen");
    assert_eq!(names_in(&root.join("tmp")), Vec::<String>::new());
    let layers = names_in(&root.join("layers"));
    assert_eq!(layers.len(), 2, "{layers:?}");
    assert!(!root.join(".tags.json.tmp-123").exists());
    assert_eq!(store.resolve("kept").expect("kept").image.id, kept.id);
}

// --- busybox ----------------------------------------------------------------------------------------

#[test]
fn image_bootstrap_busybox() {
    if let Err(e) = busybox::find_busybox() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and busybox-static is missing: {e}");
        }
        eprintln!("SKIPPED image_bootstrap_busybox: {e}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let image = store.bootstrap_busybox().expect("bootstrap");
    assert_eq!(image.tags, vec!["busybox:latest".to_string()]);
    let config = image.config.clone().expect("config");
    assert_eq!(config.cmd, vec!["sh".to_string()]);
    assert_eq!(config.env, vec![busybox::DEFAULT_PATH_ENV.to_string()]);
    assert_eq!(image.created, 0);

    // Reproducible: again, and in another store.
    assert_eq!(store.bootstrap_busybox().expect("again").id, image.id);
    let dir2 = tempfile::tempdir().expect("tempdir");
    let other = open(&dir2).bootstrap_busybox().expect("other store");
    assert_eq!(
        (other.id, other.layers),
        (image.id.clone(), image.layers.clone())
    );
    assert_eq!(store.list().expect("list").len(), 1);

    let resolved = store.resolve("busybox").expect("resolve");
    let l = &resolved.layer_dirs[0];
    let meta = |p: &str| fs::symlink_metadata(l.join(p)).expect(p);
    assert!(meta("bin/busybox").is_file());
    assert_eq!(meta("bin/busybox").mode() & 0o7777, 0o755);
    for applet in ["sh", "ls", "cat", "echo"] {
        assert_eq!(
            fs::read_link(l.join("bin").join(applet)).expect(applet),
            Path::new("busybox"),
            "{applet}"
        );
    }
    assert_eq!(
        fs::read_to_string(l.join("etc/passwd")).expect("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    );
    assert_eq!(
        fs::read_to_string(l.join("etc/group")).expect("group"),
        "root:x:0:\nnogroup:x:65534:\n"
    );
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(meta("root").mode() & 0o7777, 0o700);
    for d in ["proc", "sys", "dev", "etc", "var", "usr/bin", "home"] {
        assert!(meta(d).is_dir(), "{d}");
    }

    // Not busybox-static: a dynamically linked binary is refused with the fix.
    let err = store
        .bootstrap_busybox_from(Path::new("/proc/self/exe"))
        .expect_err("dynamic");
    if !matches!(err, ImageError::BusyboxUnusable { .. })
        || !err.to_string().contains("busybox-static")
    {
        panic!("{err}");
    }
    store.remove("busybox").expect("remove");
    assert_store_empty(&store);
}

// --- hostile tarballs -------------------------------------------------------------------------

fn assert_rejected(store: &ImageStore, name: &str, tar: &[u8], needle: &str) -> ImageError {
    let err = store.import_tar(name, tar).expect_err(name);
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "{name}: expected `{needle}` in: {msg}"
    );
    assert!(
        msg.contains("nothing was imported") || matches!(err, ImageError::LimitExceeded { .. }),
        "{msg}"
    );
    assert_store_empty(store);
    err
}

#[test]
fn image_rejects_path_traversal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).expect("mkdir");

    let tar = TarBuilder::new()
        .file("ok", b"1")
        .file("../x", b"x")
        .finish();
    assert_rejected(&store, "dotdot", &tar, "`..`");
    let tar = TarBuilder::new().file("a/../../x", b"x").finish();
    assert_rejected(&store, "dotdot2", &tar, "`..`");
    let escape = format!("/../../../../../..{}/abs", victim.display());
    let tar = TarBuilder::new().file(&escape, b"x").finish();
    assert_rejected(&store, "absolute", &gzip(&tar), "`..`");
    assert!(!victim.join("abs").exists());

    // An absolute path without `..` stays inside the layer.
    let inside = format!("{}/inside", victim.display());
    let tar = TarBuilder::new().file(&inside, b"in").finish();
    let image = store
        .import_tar("abs-ok", &tar[..])
        .expect("absolute inside");
    assert!(!victim.join("inside").exists());
    let l = store.resolve(&image.id).expect("resolve").layer_dirs[0].clone();
    assert_eq!(
        fs::read(l.join(inside.trim_start_matches('/'))).expect("read"),
        b"in"
    );
}

#[test]
fn image_rejects_writing_through_symlinks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).expect("mkdir");
    let target = victim.display().to_string();

    let tar = TarBuilder::new()
        .symlink("a", &target)
        .file("a/pwned", b"x")
        .finish();
    assert_rejected(&store, "through-file", &tar, "`a` is a symlink");
    let tar = TarBuilder::new()
        .symlink("a", &target)
        .dir("a/sub/")
        .finish();
    assert_rejected(&store, "through-dir", &tar, "symlink");
    let tar = TarBuilder::new()
        .dir("d/")
        .symlink("d/link", "..")
        .file("d/link/escaped", b"x")
        .finish();
    assert_rejected(&store, "relative-link", &tar, "symlink");
    let tar = TarBuilder::new()
        .file("f", b"1")
        .symlink("a", &target)
        .hardlink("a/hl", "f")
        .finish();
    assert_rejected(&store, "hardlink-through", &tar, "symlink");
    let tar = TarBuilder::new()
        .symlink("a", &target)
        .raw("a/fifo", EntryType::Fifo, b"", None)
        .finish();
    assert_rejected(&store, "fifo-through", &tar, "symlink");
    assert_eq!(
        names_in(&victim),
        Vec::<String>::new(),
        "nothing written outside"
    );

    // Replacing a symlink by a file unlinks it, never writes through it.
    fs::write(victim.join("keep"), b"original").expect("write");
    let tar = TarBuilder::new()
        .symlink("a", &format!("{target}/keep"))
        .file("a", b"replaced")
        .finish();
    let image = store.import_tar("replace", &tar[..]).expect("replace");
    assert_eq!(fs::read(victim.join("keep")).expect("read"), b"original");
    let l = store.resolve(&image.id).expect("resolve").layer_dirs[0].clone();
    assert_eq!(fs::read(l.join("a")).expect("read"), b"replaced");
}

#[test]
fn image_rejects_hardlinks_outside_or_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let tar = TarBuilder::new()
        .hardlink("passwd", "../../../../etc/passwd")
        .finish();
    assert_rejected(&store, "hl-dotdot", &tar, "hardlink target");
    let tar = TarBuilder::new().hardlink("passwd", "/etc/passwd").finish();
    assert_rejected(&store, "hl-abs", &tar, "not in the layer");
    let tar = TarBuilder::new().hardlink("x", "missing").finish();
    assert_rejected(&store, "hl-missing", &tar, "not in the layer");
    let tar = TarBuilder::new().dir("d/").hardlink("x", "d").finish();
    assert_rejected(&store, "hl-dir", &tar, "is a directory");
    let tar = TarBuilder::new()
        .file("x", b"1")
        .hardlink("x", "x")
        .finish();
    assert_rejected(&store, "hl-self", &tar, "itself");
}

#[test]
fn image_rejects_device_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut h = raw_header("dev/mem", EntryType::Char, 0, None);
    h.set_device_major(1).expect("major");
    h.set_device_minor(1).expect("minor");
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&raw_header("dev/", EntryType::Directory, 0, None), &b""[..])
        .expect("dir");
    b.append(&h, &b""[..]).expect("dev");
    let tar = b.into_inner().expect("finish");
    assert_rejected(&store, "chardev", &tar, "device nodes are not allowed");
    let tar = TarBuilder::new()
        .raw("sda", EntryType::Block, b"", None)
        .finish();
    assert_rejected(&store, "blockdev", &tar, "device nodes are not allowed");
}

#[test]
fn image_bounds_decompression_bombs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = ImportLimits {
        max_bytes: 64 << 10,
        max_entries: 10,
    };
    let store = ImageStore::open_with_limits(dir.path().join("images"), limits).expect("open");
    assert_eq!(store.limits(), limits);

    // 4 MiB of zeros: a few KiB compressed.
    let bomb = gzip(
        &TarBuilder::new()
            .file("zeros", &vec![0u8; 4 << 20])
            .finish(),
    );
    assert!(bomb.len() < 64 << 10);
    let err = assert_rejected(&store, "bomb", &bomb, "import limit of 65536");
    assert!(matches!(err, ImageError::LimitExceeded { .. }));

    // Many small files.
    let mut t = TarBuilder::new();
    for i in 0..20 {
        t = t.file(&format!("f{i}"), b"");
    }
    assert_rejected(&store, "many", &t.finish(), "import limit of 10 entries");

    // A stream of zero blocks past the end-of-archive marker is bounded too.
    let mut padded = TarBuilder::new().file("a", b"1").finish();
    padded.resize(padded.len() + (1 << 20), 0);
    assert_rejected(&store, "padding", &gzip(&padded), "uncompressed bytes");

    // A huge PAX header would be buffered whole by the tar reader: capped at 1 MiB.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let store2 = open(&dir2);
    let pax = TarBuilder::new()
        .raw("pax", EntryType::XHeader, &vec![b'a'; 2 << 20], None)
        .file("f", b"1")
        .finish();
    assert_rejected(&store2, "pax", &gzip(&pax), "PAX / long-name metadata");

    // Within the limits, all is well.
    let ok = gzip(&TarBuilder::new().file("small", &[7u8; 1000]).finish());
    store.import_tar("ok", &ok[..]).expect("small import");
}
