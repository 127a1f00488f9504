//! A busybox image layer for runtime tests, made from the host's busybox-static.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// /bin/busybox plus a symlink per applet; /etc/passwd with root, `app` (1000, also in
/// `wheel`) and nobody; /etc/group; /etc/motd saying "from the image"; a few empty dirs.
pub fn busybox_layer(dir: &Path) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir bin");
    fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("copy /bin/busybox (apt-get install busybox-static)");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", bin.join(applet)).expect("applet symlink");
    }
    let etc = dir.join("etc");
    fs::create_dir_all(&etc).expect("mkdir etc");
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         app:x:1000:1000:app:/home/app:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    fs::write(
        etc.join("group"),
        "root:x:0:\nwheel:x:10:app\naudio:x:29:\napp:x:1000:\nnogroup:x:65534:\n",
    )
    .expect("group");
    fs::write(etc.join("motd"), "from the image\n").expect("motd");
    for d in ["tmp", "root", "home/app", "mnt"] {
        fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
}
