//! The machine side of a benchmark run: CPU pinning, `kernel.bpf_stats_enabled`, and the
//! facts recorded next to the figures (kernel, CPU model, load).
use std::{fs, mem};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Pins the calling thread to `cpu`, or to the last CPU it may run on when `None`
/// (BPF_PROG_TEST_RUN runs the program on the calling CPU). Returns the CPU.
pub fn pin_to_cpu(cpu: Option<usize>) -> Result<usize> {
    // SAFETY: cpu_set_t is a plain bit set; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size given.
    if unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    let max = libc::CPU_SETSIZE as usize;
    // SAFETY: CPU_ISSET only reads the set, with an index below CPU_SETSIZE.
    let allowed: Vec<usize> = (0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    let cpu = match cpu {
        Some(c) if allowed.contains(&c) => c,
        Some(c) => bail!("CPU {c} is not in this thread's affinity mask {allowed:?}"),
        None => *allowed.last().context("empty CPU affinity mask")?,
    };
    // SAFETY: as above.
    let mut one: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: cpu < CPU_SETSIZE (it came from the mask).
    unsafe { libc::CPU_SET(cpu, &mut one) };
    // SAFETY: pid 0 is the calling thread; `one` is a valid cpu_set_t.
    if unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &one) } != 0 {
        bail!(
            "sched_setaffinity(CPU {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cpu)
}

/// Keeps `kernel.bpf_stats_enabled` at 0 while alive (it inflates BPF run times about 4x) and
/// puts back what was there when dropped.
pub struct BpfStatsOff {
    /// The value found before the run (`None`: could not read it).
    pub before: Option<String>,
    changed: bool,
}

impl BpfStatsOff {
    pub fn ensure() -> Result<Self> {
        let before = fs::read_to_string(BPF_STATS)
            .ok()
            .map(|v| v.trim().to_string());
        let mut guard = BpfStatsOff {
            before,
            changed: false,
        };
        match guard.before.as_deref() {
            Some("0") => {}
            Some(v) => {
                fs::write(BPF_STATS, "0")
                    .with_context(|| format!("setting {BPF_STATS} to 0 (was {v})"))?;
                guard.changed = true;
                println!("lb-bench: kernel.bpf_stats_enabled was {v}: set to 0 for the run, restored after");
            }
            None => println!("lb-bench: WARNING: cannot read {BPF_STATS}; figures may be inflated"),
        }
        Ok(guard)
    }

    pub fn describe(&self) -> Value {
        json!({
            "before": self.before,
            "during": fs::read_to_string(BPF_STATS).ok().map(|v| v.trim().to_string()),
            "set_to_0_for_the_run_and_restored_after": self.changed,
        })
    }
}

impl Drop for BpfStatsOff {
    fn drop(&mut self) {
        if let (true, Some(before)) = (self.changed, self.before.as_deref()) {
            if let Err(e) = fs::write(BPF_STATS, before) {
                eprintln!("lb-bench: WARNING: could not restore {BPF_STATS} to {before}: {e}");
            }
        }
    }
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Online CPUs (not this thread's affinity, which the bench narrows to one).
pub fn nproc() -> i64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }) as i64
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Share of all CPUs' time spent busy (not idle nor iowait) over `window`, from /proc/stat:
/// unlike the load average, it does not remember the build that ran a minute ago.
pub fn cpu_busy_percent(window: std::time::Duration) -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        Some((fields.iter().take(8).sum(), idle))
    };
    let (total0, idle0) = sample()?;
    std::thread::sleep(window);
    let (total1, idle1) = sample()?;
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some(100.0 * (1.0 - idle1.saturating_sub(idle0) as f64 / total as f64))
}

/// Busy and total jiffies of every CPU but `except`, to tell whether something else ran during
/// the benchmark: pass two of them to [`busy_between`].
pub fn other_cpus_jiffies(except: usize) -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let (mut busy, mut total) = (0, 0);
    for line in stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
    {
        let mut f = line.split_whitespace();
        let cpu: usize = f.next()?.trim_start_matches("cpu").parse().ok()?;
        if cpu == except {
            continue;
        }
        let v: Vec<u64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        let sum: u64 = v.iter().sum();
        busy += sum - idle;
        total += sum;
    }
    Some((busy, total))
}

pub fn busy_between(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (a?, b?);
    let total = t1.checked_sub(t0).filter(|t| *t > 0)?;
    Some((1000.0 * b1.saturating_sub(b0) as f64 / total as f64).round() / 10.0)
}

pub fn machine(cpu: usize, busy_percent: Option<f64>) -> Value {
    json!({
        "kernel": kernel_release(),
        "nproc": nproc(),
        "cpu_model": cpu_model(),
        "bench_cpu": cpu,
        "loadavg_1min_at_start": load_average(),
        "cpu_busy_percent_1s_before_start": busy_percent.map(|b| (b * 10.0).round() / 10.0),
    })
}

/// Now as RFC 3339 UTC, seconds precision (no date crate needed for one timestamp).
pub fn timestamp_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The commit the measured program was built from, and whether its sources differed from it.
pub fn source_version() -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let changed = git(&[
        "status",
        "--porcelain",
        "--",
        "lb-ebpf",
        "lb-common",
        "lb-userspace",
        "lb-web",
    ])
    .map(|s| {
        s.lines()
            .map(|l| l.get(3..).unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    });
    json!({ "commit": git(&["rev-parse", "--short", "HEAD"]), "uncommitted_changes_in_program_sources": changed })
}
