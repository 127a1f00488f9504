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

/// Level 6: zlib-rs's level 1 (deflate_quick) barely shrinks runs of zeros, and the bomb
/// test needs a small blob that expands a lot.
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
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
    assert_eq!(
        names_in(&root.join("blobs/sha256")),
        Vec::<String>::new(),
        "blobs"
    );
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
        ..ImportLimits::default()
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

// --- archives: docker save and OCI layouts ---------------------------------------------------------

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

fn hex_of(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A layer: its uncompressed tar (for the diff id) and its blob as stored in the archive.
struct TestLayer {
    tar: Vec<u8>,
    blob: Vec<u8>,
    media_type: &'static str,
}

fn plain_layer(tar: Vec<u8>) -> TestLayer {
    TestLayer {
        blob: tar.clone(),
        tar,
        media_type: "application/vnd.oci.image.layer.v1.tar",
    }
}

fn gzip_layer(tar: Vec<u8>) -> TestLayer {
    TestLayer {
        blob: gzip(&tar),
        tar,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
    }
}

fn zstd_layer(tar: Vec<u8>) -> TestLayer {
    TestLayer {
        blob: zstd_compress(&tar),
        tar,
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// Three layers: a base; then (gzip) a whiteout of `etc/b`, an opaque `data/` with a new file,
/// a new `etc/c`; then (zstd) `etc/a` replaced.
fn three_layers() -> Vec<TestLayer> {
    let base = TarBuilder::new()
        .dir("etc/")
        .file("etc/a", b"a1\n")
        .file("etc/b", b"b1\n")
        .dir("data/")
        .file("data/old1", b"o1\n")
        .dir("data/sub/")
        .file("data/sub/old2", b"o2\n")
        .dir("bin/")
        .finish();
    let second = TarBuilder::new()
        .dir("etc/")
        .file("etc/.wh.b", b"")
        .file("etc/c", b"c2\n")
        .dir("data/")
        .file("data/.wh..wh..opq", b"")
        .file("data/new", b"new2\n")
        .finish();
    let third = TarBuilder::new().file("etc/a", b"a3\n").finish();
    vec![plain_layer(base), gzip_layer(second), zstd_layer(third)]
}

fn config_json(layers: &[TestLayer], cmd: &[&str]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(&l.tar)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": super::config::oci_architecture(),
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "author": "test",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": cmd,
            "ExposedPorts": {"8080/tcp": {}},
            "Volumes": {"/data": {}},
            "Labels": {"org.example": "yes"},
            "StopSignal": "SIGTERM",
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 5_000_000_000i64},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({
            "created": "2024-01-02T03:04:05Z", "created_by": "ADD layer"
        })).chain([serde_json::json!({
            "created": "2024-01-02T03:04:05Z", "created_by": "CMD", "empty_layer": true
        })]).collect::<Vec<_>>(),
    }))
    .expect("config")
}

/// Builds an outer archive from (path, bytes) pairs, with `tar` (paths checked).
fn outer(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, path, &data[..]).expect("append");
    }
    b.into_inner().expect("finish")
}

/// The legacy `docker save` form: `<n>/layer.tar`, `<config hex>.json`, `manifest.json`
/// (written last, as Docker does).
fn docker_archive(layers: &[TestLayer], config: &[u8], tags: &[&str]) -> Vec<u8> {
    let mut files = Vec::new();
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let p = format!("layer{i}/layer.tar");
        files.push((p.clone(), l.blob.clone()));
        paths.push(p);
    }
    let cfg = format!("{}.json", hex_of(config));
    files.push((cfg.clone(), config.to_vec()));
    let manifest = serde_json::json!([{"Config": cfg, "RepoTags": tags, "Layers": paths}]);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).expect("json"),
    ));
    outer(&files)
}

/// An OCI image layout: `index.json` → an image index with a decoy platform first and this
/// machine's, then the manifest, config and layer blobs.
fn oci_archive(layers: &[TestLayer], config: &[u8], name: Option<&str>) -> Vec<u8> {
    let mut files = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let blob = |files: &mut Vec<(String, Vec<u8>)>, data: &[u8]| {
        files.push((format!("blobs/sha256/{}", hex_of(data)), data.to_vec()));
        format!("sha256:{}", hex_of(data))
    };
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": l.media_type,
                "digest": blob(&mut files, &l.blob),
                "size": l.blob.len(),
            })
        })
        .collect();
    let config_digest = blob(&mut files, config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))
    .expect("manifest");
    let manifest_digest = blob(&mut files, &manifest);
    let decoy = format!("sha256:{}", "0".repeat(64));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": decoy,
             "size": 10, "platform": {"os": "linux", "architecture": "s390x-decoy"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": manifest_digest, "size": manifest.len(),
             "platform": {"os": "linux", "architecture": super::config::oci_architecture()}},
        ],
    }))
    .expect("index");
    let index_digest = blob(&mut files, &index);
    let mut annotations = serde_json::Map::new();
    if let Some(n) = name {
        annotations.insert("io.containerd.image.name".into(), n.into());
        annotations.insert("org.opencontainers.image.ref.name".into(), "ignored".into());
    }
    let top = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": index_digest, "size": index.len(),
                       "annotations": annotations}],
    }))
    .expect("top");
    files.push(("index.json".into(), top));
    outer(&files)
}

/// Mounts the image's layers as overlay (read-only, no upper) and returns what a container sees
/// of `paths` (None: absent). Needs root.
fn overlay_view(layer_dirs: &[std::path::PathBuf], paths: &[&str]) -> Vec<Option<String>> {
    let mnt = tempfile::tempdir().expect("mnt");
    let lower: Vec<String> = layer_dirs
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!("lowerdir={}", lower.join(":"));
    nix::mount::mount(
        Some("overlay"),
        mnt.path(),
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .expect("mount overlay");
    let out = paths
        .iter()
        .map(|p| fs::read_to_string(mnt.path().join(p)).ok())
        .collect();
    let names = names_in(&mnt.path().join("data"));
    nix::mount::umount(mnt.path()).expect("umount");
    assert_eq!(names, vec!["new".to_string()], "opaque data/");
    out
}

fn root_or_ci_failure(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} needs root, and CI=true: failing rather than skipping"
    );
    eprintln!("skipping {what}: needs root");
    false
}

fn assert_loaded_three_layers(store: &ImageStore, image: &shoal_proto::Image) {
    assert_eq!(image.layers.len(), 3);
    let resolved = store.resolve(&image.id).expect("resolve");
    let l = &resolved.layer_dirs;
    // Layer 2: whiteout as overlay's char device 0:0, opaque dir xattr.
    let wh = fs::symlink_metadata(l[1].join("etc/b")).expect("whiteout");
    assert!(wh.file_type().is_char_device(), "whiteout is a char device");
    assert_eq!(wh.rdev(), 0);
    assert!(!l[1].join("etc/.wh.b").exists());
    assert!(!l[1].join("data/.wh..wh..opq").exists());
    let mut buf = [0u8; 4];
    let c =
        std::ffi::CString::new(l[1].join("data").as_os_str().as_encoded_bytes()).expect("cstring");
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 1, "opaque xattr");
    assert_eq!(buf[0], b'y');
    let seen = overlay_view(l, &["etc/a", "etc/b", "etc/c", "data/old1", "data/new"]);
    assert_eq!(
        seen,
        vec![
            Some("a3\n".into()),
            None,
            Some("c2\n".into()),
            None,
            Some("new2\n".into())
        ]
    );
    let cfg = image.config.clone().expect("config");
    assert_eq!(cfg.exposed_ports, vec!["8080/tcp".to_string()]);
    assert_eq!(cfg.volumes, vec!["/data".to_string()]);
    assert_eq!(cfg.stop_signal, "SIGTERM");
    assert_eq!(
        cfg.labels.get("org.example").map(String::as_str),
        Some("yes")
    );
    assert_eq!(cfg.healthcheck.expect("hc").interval, 5_000_000_000);
    assert_eq!(image.history.len(), 4);
    assert_eq!(image.author, "test");
}

#[test]
fn image_load_docker_archive_applies_whiteouts_and_opaque_dirs() {
    if !root_or_ci_failure("whiteouts (mknod 0:0, trusted xattrs, overlay)") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let layers = three_layers();
    let config = config_json(&layers, &["cat", "/etc/a"]);
    let archive = docker_archive(
        &layers,
        &config,
        &["team/app:v1", "docker.io/library/other"],
    );
    let (images, messages) = store.load(&archive[..]).expect("load");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, format!("sha256:{}", hex_of(&config)));
    assert_eq!(
        messages,
        vec![
            "Loaded image: team/app:v1".to_string(),
            "Loaded image: other:latest".to_string()
        ]
    );
    assert_loaded_three_layers(&store, &images[0]);
    assert_eq!(
        store.resolve("other").expect("other").image.id,
        images[0].id
    );
    // The blobs are kept as they came: gzip and zstd too.
    let blobs = names_in(&store.root().join("blobs/sha256"));
    for l in &layers {
        assert!(blobs.contains(&hex_of(&l.blob)), "blob kept");
    }
    // Loading again is a no-op that unpacks nothing new; gzip-compressed archive works too.
    let (again, _) = store.load(&gzip(&archive)[..]).expect("reload gz");
    assert_eq!(again[0].id, images[0].id);
    assert_eq!(names_in(&store.root().join("tmp")), Vec::<String>::new());
}

#[test]
fn image_load_oci_layout_picks_this_platform() {
    if !root_or_ci_failure("whiteouts (mknod 0:0, trusted xattrs, overlay)") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let layers = three_layers();
    let config = config_json(&layers, &["cat", "/etc/a"]);
    let archive = oci_archive(&layers, &config, Some("registry.local:5000/team/oci:1.0"));
    let (images, messages) = store.load(&zstd_compress(&archive)[..]).expect("load");
    assert_eq!(
        messages,
        vec!["Loaded image: registry.local:5000/team/oci:1.0".to_string()]
    );
    let image = &images[0];
    assert_loaded_three_layers(&store, image);
    // The manifest is kept byte for byte: name@digest resolves by it, and by the config digest.
    assert!(image.manifest_digest.starts_with("sha256:"));
    assert_eq!(
        image.digests,
        vec![format!(
            "registry.local:5000/team/oci@{}",
            image.manifest_digest
        )]
    );
    for r in [
        format!("registry.local:5000/team/oci@{}", image.manifest_digest),
        format!("registry.local:5000/team/oci@{}", image.id),
        format!("registry.local:5000/team/oci:1.0@{}", image.manifest_digest),
    ] {
        assert_eq!(store.resolve(&r).expect(&r).image.id, image.id, "{r}");
    }
    let err = store
        .resolve(&format!("other/repo@{}", image.manifest_digest))
        .expect_err("other repo");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");

    // Untagged when the layout names no image.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let store2 = open(&dir2);
    let (_, messages) = store2
        .load(&oci_archive(&layers, &config, None)[..])
        .expect("untagged");
    assert_eq!(messages, vec![format!("Loaded image ID: {}", image.id)]);
}

#[test]
fn image_save_then_load_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let a = store
        .import_tar("app:v1", &gzip(&simple_rootfs_tar())[..])
        .expect("import");
    store.tag("app:v1", "app:v2").expect("tag");
    let b = store
        .import_tar("other", &tar_with_file("b")[..])
        .expect("import b");
    let mut saved = Vec::new();
    store
        .save(
            &["app:v1".into(), "app:v2".into(), "other".into()],
            &mut saved,
        )
        .expect("save");

    // What is in it: Docker's manifest.json and the OCI index/layout.
    let mut names = Vec::new();
    let mut manifest = None;
    let mut index = None;
    let mut ar = tar::Archive::new(&saved[..]);
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let p = e.path().expect("path").display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).expect("read");
        if p == "manifest.json" {
            manifest = Some(serde_json::from_slice::<serde_json::Value>(&data).expect("json"));
        }
        if p == "index.json" {
            index = Some(serde_json::from_slice::<serde_json::Value>(&data).expect("json"));
        }
        if let Some(h) = p.strip_prefix("blobs/sha256/") {
            if !h.is_empty() {
                assert_eq!(hex_of(&data), h, "blob named by its digest");
            }
        }
        names.push(p);
    }
    assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
    let manifest = manifest.expect("manifest.json");
    assert_eq!(manifest.as_array().expect("array").len(), 2);
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["app:v1", "app:v2"])
    );
    assert_eq!(
        manifest[0]["Config"],
        format!("blobs/sha256/{}", &a.id[7..])
    );
    let index = index.expect("index.json");
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "docker.io/library/app:v1"
    );

    store.remove("app:v1").expect("rm");
    store.remove("app:v2").expect("rm");
    store.remove("other").expect("rm");
    assert_store_empty(&store);
    let (loaded, messages) = store.load(&saved[..]).expect("load");
    assert_eq!(loaded[0].id, a.id);
    assert_eq!(loaded[1].id, b.id);
    assert_eq!(messages.len(), 3, "{messages:?}");
    let resolved = store.resolve("app:v2").expect("v2");
    assert_eq!(
        fs::read_to_string(resolved.layer_dirs[0].join("etc/hostname")).expect("read"),
        "box\n"
    );
    // Saving again gives the same bytes (deterministic).
    let mut again = Vec::new();
    store
        .save(
            &["app:v1".into(), "app:v2".into(), "other".into()],
            &mut again,
        )
        .expect("save");
    assert_eq!(again, saved);
}

#[test]
fn image_concurrent_loads_of_the_same_layers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let layers = vec![
        plain_layer(tar_with_file("one")),
        gzip_layer(TarBuilder::new().file("two", &[1u8; 100_000]).finish()),
    ];
    let config = config_json(&layers, &["true"]);
    let archive = docker_archive(&layers, &config, &["c"]);
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                let archive = &archive;
                s.spawn(move || store.load(&archive[..]).expect("load").0[0].id.clone())
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("join")).collect()
    });
    assert!(ids.iter().all(|i| *i == ids[0]));
    let dirs: Vec<String> = names_in(&store.root().join("layers"))
        .into_iter()
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert_eq!(dirs.len(), 2, "each layer unpacked into one directory");
    assert_eq!(names_in(&store.root().join("tmp")), Vec::<String>::new());
}

#[test]
fn image_rm_and_prune_respect_containers_and_collect_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let a = store.import_tar("a", &tar_with_file("a")[..]).expect("a");
    let b = store.import_tar("b", &tar_with_file("b")[..]).expect("b");
    let a_dirs = store.resolve("a").expect("a").layer_dirs;
    let running = ContainerUse {
        name: "web.1".into(),
        layers: a_dirs.clone(),
        running: true,
    };
    let stopped = ContainerUse {
        running: false,
        ..running.clone()
    };
    let err = store
        .remove_with("a", true, std::slice::from_ref(&running))
        .expect_err("running");
    assert!(err.to_string().contains("running container web.1"), "{err}");
    let err = store
        .remove_with("a", false, std::slice::from_ref(&stopped))
        .expect_err("stopped");
    assert!(err.to_string().contains("--force"), "{err}");
    // Forced with a stopped user: untagged, kept.
    let r = store
        .remove_with("a", true, std::slice::from_ref(&stopped))
        .expect("force");
    assert_eq!(r.untagged, vec!["a:latest".to_string()]);
    assert!(r.deleted.is_empty());
    assert!(store.resolve(&a.id).is_ok());
    // prune keeps what containers use; -a removes unused tagged images.
    let r = store
        .prune(false, std::slice::from_ref(&stopped))
        .expect("prune");
    assert!(r.deleted.is_empty(), "{r:?}");
    let r = store.prune(true, &[stopped]).expect("prune -a");
    assert_eq!(r.deleted, vec![b.id.clone()]);
    assert_eq!(r.untagged, vec!["b:latest".to_string()]);
    assert_eq!(r.layers.len(), 1);
    assert!(r.reclaimed > 0);
    let r = store.prune(true, &[]).expect("prune -a, no users");
    assert_eq!(r.deleted, vec![a.id.clone()]);
    assert_store_empty(&store);
}

// --- hostile archives -------------------------------------------------------------------------------

fn assert_load_rejected(store: &ImageStore, archive: &[u8], needle: &str) -> ImageError {
    let err = store.load(archive).expect_err(needle);
    let msg = err.to_string();
    assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    assert_store_empty(store);
    err
}

#[test]
fn image_load_rejects_hostile_archives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).expect("mkdir");
    let target = victim.display().to_string();
    let good = plain_layer(tar_with_file("ok"));
    let load_layer = |tar: Vec<u8>| {
        let l = vec![plain_layer(tar_with_file("base")), gzip_layer(tar)];
        let cfg = config_json(&l, &["true"]);
        docker_archive(&l, &cfg, &["evil"])
    };

    // Layers: `..`, writing through a symlink, hardlink outside, device node.
    let a = load_layer(TarBuilder::new().file("../../escape", b"x").finish());
    assert_load_rejected(&store, &a, "`..`");
    let a = load_layer(
        TarBuilder::new()
            .symlink("a", &target)
            .file("a/pwned", b"x")
            .finish(),
    );
    assert_load_rejected(&store, &a, "symlink");
    let a = load_layer(
        TarBuilder::new()
            .hardlink("h", "../../../etc/passwd")
            .finish(),
    );
    assert_load_rejected(&store, &a, "hardlink target");
    let a = load_layer(
        TarBuilder::new()
            .raw("mem", EntryType::Char, b"", None)
            .finish(),
    );
    assert_load_rejected(&store, &a, "device nodes are not allowed");
    let a = load_layer(TarBuilder::new().file("etc/.wh...", b"").finish());
    assert_load_rejected(&store, &a, "not a valid whiteout");
    assert_eq!(names_in(&victim), Vec::<String>::new(), "nothing outside");

    // A layer that is not what the config says.
    let l = vec![plain_layer(tar_with_file("x"))];
    let mut cfg_layers = vec![plain_layer(tar_with_file("y"))];
    let cfg = config_json(&cfg_layers, &["true"]);
    assert_load_rejected(
        &store,
        &docker_archive(&l, &cfg, &["x"]),
        "image config says",
    );
    cfg_layers.clear();

    // A config whose name is not its digest.
    let cfg = config_json(std::slice::from_ref(&good), &["true"]);
    let mut a = docker_archive(std::slice::from_ref(&good), &cfg, &["x"]);
    let needle = b"\"Cmd\":[\"true\"]";
    let pos = a
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("cmd in archive");
    a[pos + 8] = b'f'; // "true" → "frue": same length, other digest
    assert_load_rejected(&store, &a, "does not match its name");

    // OCI: a manifest whose digest does not match its content.
    let layers = vec![good];
    let cfg = config_json(&layers, &["true"]);
    let mut a = oci_archive(&layers, &cfg, Some("m"));
    let needle = b"\"layers\":[";
    let pos = a
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("manifest in archive");
    a[pos + 6] = b'z'; // "layerz": same length, other digest
    assert_load_rejected(&store, &a, "does not match its digest");

    // A truncated archive (cut inside a blob), and a descriptor size that lies.
    let a = oci_archive(&layers, &cfg, Some("t"));
    assert_load_rejected(&store, &a[..a.len() / 2], "truncated");
    let big = vec![gzip_layer(
        TarBuilder::new().file("f", &[7u8; 300_000]).finish(),
    )];
    let cfg_big = config_json(&big, &["true"]);
    let a = oci_archive(&big, &cfg_big, Some("t"));
    assert_load_rejected(&store, &a[..a.len() / 2], "truncated");
    // index.json (last in the archive, not a blob) says the image index is a byte longer or
    // shorter: one digit changed, so the tar entry keeps its length.
    let mut lie = a.clone();
    let key = b"\"size\":";
    let at = lie
        .windows(key.len())
        .rposition(|w| w == key)
        .expect("size in index.json")
        + key.len();
    let end = at + lie[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    lie[end - 1] = if lie[end - 1] == b'9' {
        b'0'
    } else {
        lie[end - 1] + 1
    };
    assert_load_rejected(&store, &lie, "but its descriptor says");

    // Archive entries: `..`, hardlinks, devices.
    let mut b = tar::Builder::new(Vec::new());
    b.append(&raw_header("../x", EntryType::Regular, 1, None), &b"x"[..])
        .expect("append");
    assert_load_rejected(&store, &b.into_inner().expect("tar"), "leaves the archive");
    let a = TarBuilder::new()
        .file("manifest.json", b"[]")
        .raw("dev", EntryType::Block, b"", None)
        .finish();
    assert_load_rejected(&store, &a, "only files, directories and symlinks");
    assert_load_rejected(&store, b"", "empty");
    assert_load_rejected(&store, &outer(&[("x".into(), b"y".to_vec())]), "neither");
    assert_load_rejected(
        &store,
        &outer(&[("manifest.json".into(), b"{not json".to_vec())]),
        "cannot parse manifest.json",
    );
}

#[test]
fn image_load_bounds_decompression_bombs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = ImportLimits {
        max_ratio: 10,
        ratio_floor: 64 << 10,
        ..ImportLimits::default()
    };
    let store = ImageStore::open_with_limits(dir.path().join("images"), limits).expect("open");
    // 8 MiB of zeros in a few KiB of gzip (or zstd).
    let zeros = TarBuilder::new()
        .file("zeros", &vec![0u8; 8 << 20])
        .finish();
    for layer in [gzip_layer(zeros.clone()), zstd_layer(zeros)] {
        assert!(layer.blob.len() < 64 << 10);
        let l = vec![layer];
        let cfg = config_json(&l, &["true"]);
        let err = assert_load_rejected(
            &store,
            &docker_archive(&l, &cfg, &["bomb"]),
            "expansion ratio",
        );
        assert!(
            matches!(err, ImageError::LimitExceeded { limit: 10, .. }),
            "{err}"
        );
    }
    // Outer archive bound too.
    let small = ImageStore::open_with_limits(
        dir.path().join("small"),
        ImportLimits {
            max_bytes: 64 << 10,
            ..ImportLimits::default()
        },
    )
    .expect("open");
    let a = gzip(&outer(&[("big".into(), vec![0u8; 1 << 20])]));
    assert_load_rejected(&small, &a, "import limit of 65536 uncompressed bytes");
    // A modest, genuine ratio is fine.
    let ok = vec![gzip_layer(
        TarBuilder::new().file("t", &[b'a'; 100_000]).finish(),
    )];
    let cfg = config_json(&ok, &["true"]);
    let limits = ImportLimits {
        max_ratio: 100_000,
        ratio_floor: 0,
        ..ImportLimits::default()
    };
    let fine = ImageStore::open_with_limits(dir.path().join("fine"), limits).expect("open");
    fine.load(&docker_archive(&ok, &cfg, &["ok"])[..])
        .expect("fine");
}
