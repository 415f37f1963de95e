//! xdp-filter (Debian xdp-tools), the reference: its all-features object loaded with aya.
//!
//! Its maps are declared `pinning = LIBBPF_PIN_BY_NAME`, which aya (like libbpf) pins under
//! `/sys/fs/bpf/<name>` by default: that would leave files behind and could share maps with a
//! real xdp-filter on this host. So the maps are pinned in a private directory on bpffs and
//! unpinned right after loading (the open descriptors keep them alive).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Map, MapData},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use serde_json::{json, Value};

pub const PROGRAM: &str = "xdpfilt_alw_all";
const OBJECT: &str = "xdpfilt_alw_all.o";
const BPFFS: &str = "/sys/fs/bpf";

pub struct XdpFilter {
    ebpf: Ebpf,
    pub object: PathBuf,
    /// Name, type and size of each map, as the kernel reports them.
    pub maps: Vec<Value>,
}

impl XdpFilter {
    pub fn load() -> Result<Self> {
        let object = find_object()?;
        if !is_bpffs(Path::new(BPFFS)) {
            bail!("{BPFFS} is not a bpffs mount (`cargo xtask setup` mounts it); xdp-filter's maps are pinned by name");
        }
        let pin_dir = PrivatePinDir::create()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir.0)
            .load_file(&object)
            .with_context(|| format!("loading {}", object.display()))?;
        drop(pin_dir);
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("no program `{PROGRAM}` in {}", object.display()))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the verifier refused `{PROGRAM}`"))?;
        let mut maps: Vec<Value> = ebpf
            .maps()
            .map(|(name, map)| describe_map(name, map))
            .collect();
        maps.sort_by_key(|m| m["name"].as_str().unwrap_or_default().to_string());
        Ok(XdpFilter { ebpf, object, maps })
    }

    pub fn program(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(PROGRAM)
            .with_context(|| format!("no program `{PROGRAM}`"))?
            .try_into()?)
    }
}

/// `dpkg -L xdp-tools`, else the usual Debian path.
fn find_object() -> Result<PathBuf> {
    if let Ok(out) = Command::new("dpkg").args(["-L", "xdp-tools"]).output() {
        let listing = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = listing.lines().find(|l| l.ends_with(&format!("/{OBJECT}"))) {
            return Ok(PathBuf::from(line.trim()));
        }
    }
    let fallback = PathBuf::from("/usr/lib/x86_64-linux-gnu/bpf").join(OBJECT);
    if fallback.exists() {
        return Ok(fallback);
    }
    bail!("{OBJECT} not found (`dpkg -L xdp-tools` does not list it; is xdp-tools installed?)")
}

fn is_bpffs(path: &Path) -> bool {
    fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let (_, dir, fstype) = (f.next(), f.next(), f.next());
                dir == path.to_str() && fstype == Some("bpf")
            })
        })
        .unwrap_or(false)
}

/// A directory of our own on bpffs, emptied and removed when dropped.
struct PrivatePinDir(PathBuf);

impl PrivatePinDir {
    fn create() -> Result<Self> {
        let dir = Path::new(BPFFS).join(format!("lb-bench-xdpfilt-{}", std::process::id()));
        let _ = remove_dir(&dir);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(PrivatePinDir(dir))
    }
}

fn remove_dir(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        fs::remove_file(entry?.path())?;
    }
    fs::remove_dir(dir)
}

impl Drop for PrivatePinDir {
    fn drop(&mut self) {
        if let Err(e) = remove_dir(&self.0) {
            eprintln!(
                "lb-bench: WARNING: could not remove {}: {e}",
                self.0.display()
            );
        }
    }
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::LpmTrie(m) => Some(m),
        _ => None,
    }
}

fn describe_map(name: &str, map: &Map) -> Value {
    match map_data(map).map(|m| m.info()) {
        Some(Ok(info)) => json!({
            "name": name,
            "type": info.map_type().map(|t| format!("{t:?}")).unwrap_or_else(|_| "unknown".into()),
            "max_entries": info.max_entries(),
            "entries": 0,
        }),
        _ => json!({ "name": name, "entries": 0 }),
    }
}
