//! Builds the XDP program (lb-ebpf) for bpfel-unknown-none with the nightly toolchain.
use std::{env, path::PathBuf};

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no workspace root"))?;
    let ebpf_dir = workspace.join("lb-ebpf");
    let common_dir = workspace.join("lb-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());

    // aya-build sets the rustflags itself; ours go through nightly cargo's profile rustflags:
    // cpu v3 for the atomic fetch-and-add of the round-robin cursor. (Not
    // +allows-misaligned-mem-access: LLVM then widens stack accesses the verifier rejects.)
    env::set_var("CARGO_UNSTABLE_PROFILE_RUSTFLAGS", "true");
    env::set_var("CARGO_PROFILE_RELEASE_RUSTFLAGS", "-Ctarget-cpu=v3");
    // Host-side build scripts and proc macros of that build must not get the BPF flags.
    env::set_var("CARGO_PROFILE_RELEASE_BUILD_OVERRIDE_RUSTFLAGS", "");
    // bpf-linker is installed by `cargo xtask setup` into ~/.cargo/bin.
    if let Some(home) = env::var_os("HOME") {
        let cargo_bin = PathBuf::from(home).join(".cargo/bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
        if !paths.contains(&cargo_bin) {
            paths.insert(0, cargo_bin);
            env::set_var("PATH", env::join_paths(paths)?);
        }
    }

    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    let package = Package {
        name: "lb-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
