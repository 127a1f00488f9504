//! The daemon's allocator: mimalloc instead of glibc malloc.
//!
//! The manager's write path allocates and frees many small objects per Raft entry (protobuf
//! messages, labels, gRPC frames) across tokio's worker threads; glibc's arenas spent about
//! 30 % of the daemon's CPU on that (`perf` under `raft-bench`). mimalloc's thread-local free
//! lists take most of it away.
//!
//! Two options keep its memory close to glibc's: arenas are committed on demand rather than
//! whole (eagerly, an idle daemon held 39 MiB instead of 26), and freed pages go back to the
//! OS at once rather than after a delay. They must be set before mimalloc initialises, which
//! its own load-time constructor does; a constructor with a priority runs before that one.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's option numbers (`mi_option_e` in its `mimalloc.h`); `libmimalloc-sys`
/// names only some of them.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

extern "C" fn set_allocator_options() {
    // SAFETY: runs once, at load, before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// Prioritised constructors (`.init_array.NNNNN`) run before plain ones like mimalloc's.
#[used]
#[link_section = ".init_array.00100"]
static SET_ALLOCATOR_OPTIONS: extern "C" fn() = set_allocator_options;
