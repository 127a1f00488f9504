//! Shared helpers of the end-to-end tests.
#![allow(dead_code)]

/// Privileged tests need root. Outside CI a non-root run skips them with a note; under
/// `CI=true` that is a failure, never a silent skip.
pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this privileged test needs root, and CI=true forbids skipping it");
    }
    eprintln!("skipping: needs root");
    false
}

pub mod daemon;
pub mod rootfs;
