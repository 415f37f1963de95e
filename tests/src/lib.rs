//! Shared pieces of the test suite: a packet builder whose checksums are computed from scratch
//! (never by the code under test), and a harness around the real XDP program.
pub mod agent_lab;
pub mod browser;
pub mod fuzz;
pub mod harness;
pub mod netns;
pub mod packet;

/// True when running as root. Otherwise prints a loud skip line; under CI with
/// `LB_REQUIRE_ROOT_TESTS=1` a missing privilege fails the test instead.
#[track_caller]
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("LB_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: needs root, and LB_REQUIRE_ROOT_TESTS=1 forbids skipping");
    }
    // Straight to stderr: libtest captures eprintln! of passing tests, which would hide the skip.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED (needs root): {test} — run `cargo xtask test` as root ***\n"
    );
    false
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
