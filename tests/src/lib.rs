//! Shared pieces of the test suite: a packet builder whose checksums are computed from scratch
//! (never by the code under test), and a harness around the real XDP program.
pub mod agent_lab;
pub mod browser;
pub mod fuzz;
pub mod harness;
pub mod netns;
pub mod packet;
pub mod pinned;

/// Fails the calling test, saying why and what to run instead, unless it runs as root.
///
/// The tests that need root (BPF_PROG_TEST_RUN, network namespaces, XDP attach) are
/// `#[ignore = "needs root"]`, so a plain `cargo test` reports them as ignored, never as passed;
/// `cargo xtask test` adds `--include-ignored` as root. Run one without root anyway and this,
/// called where such a test first needs the privilege (loading the program, mounting a bpffs),
/// fails it with this message rather than with an `EPERM` from deep inside. (Labs say the same
/// from `xtask::lab::Lab::up`.)
#[track_caller]
pub fn assert_root(what: &str) {
    assert!(
        xtask::util::is_root(),
        "{what} needs root: this test is #[ignore = \"needs root\"] and was run without it; \
         run it as root (`cargo xtask test`, or `cargo test --release -p lb-tests -- \
         --include-ignored --test-threads=1` as root)"
    );
}

/// Keeps the calling thread on the CPU it runs on now. BPF_PROG_TEST_RUN runs the program on
/// the caller's CPU, so per-CPU state (the flow cache) is only seen again by a thread that
/// stays put. Panics if it cannot: a test relying on it would silently test less.
#[track_caller]
pub fn stay_on_this_cpu() {
    // SAFETY: plain syscalls on a zeroed cpu_set_t owned here.
    let pinned = unsafe {
        let cpu = libc::sched_getcpu();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        cpu >= 0 && {
            libc::CPU_SET(cpu as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    };
    assert!(
        pinned,
        "could not pin the test thread to its CPU: {}",
        std::io::Error::last_os_error()
    );
}
