//! cgroup v2 limits for the process driver: one cgroup per container under
//! `<root>/berth/`, with `memory.max`, `memory.low` and `cpu.max` written
//! before the process is moved in (the child writes `0` to `cgroup.procs`
//! before exec, so it never runs unlimited).

use std::path::{Path, PathBuf};

use crate::{AgentError, Result};

/// cpu.max period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Whether this host lets the agent set limits, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    /// cgroup v2 with the memory and cpu controllers, rooted here.
    Available { root: PathBuf },
    /// Limits will not be enforced; the string says why.
    Unavailable(String),
}

impl CgroupSupport {
    /// Looks at `/sys/fs/cgroup`.
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    /// Looks for a cgroup v2 hierarchy at `root` offering memory and cpu.
    pub fn detect_at(root: &Path) -> Self {
        let controllers = match std::fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(c) => c,
            Err(_) => {
                return CgroupSupport::Unavailable(format!(
                    "no cgroup v2 hierarchy at {} (cgroup v1 or hybrid host): memory and cpu limits are NOT \
                     enforced for the process driver",
                    root.display()
                ));
            }
        };
        let have: Vec<&str> = controllers.split_whitespace().collect();
        let missing: Vec<&str> = ["memory", "cpu"].into_iter().filter(|c| !have.contains(c)).collect();
        if !missing.is_empty() {
            return CgroupSupport::Unavailable(format!(
                "cgroup v2 at {} lacks the {} controller(s): memory and cpu limits are NOT enforced for the \
                 process driver",
                root.display(),
                missing.join(" and ")
            ));
        }
        let parent = root.join("berth");
        if let Err(e) = std::fs::create_dir_all(&parent) {
            return CgroupSupport::Unavailable(format!(
                "cannot create {}: {e}: memory and cpu limits are NOT enforced for the process driver",
                parent.display()
            ));
        }
        // Enabling controllers for children fails on a non-root cgroup that
        // has processes of its own; the error then names the real cause.
        for dir in [root, parent.as_path()] {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu") {
                return CgroupSupport::Unavailable(format!(
                    "cannot enable memory and cpu controllers in {}: {e}: limits are NOT enforced for the process \
                     driver",
                    dir.display()
                ));
            }
        }
        CgroupSupport::Available {
            root: root.to_path_buf(),
        }
    }

    pub fn is_available(&self) -> bool {
        matches!(self, CgroupSupport::Available { .. })
    }
}

/// The limits of one container, in cgroup v2 file syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_low: Option<u64>,
    /// (quota, period) in microseconds.
    pub cpu_max: Option<(u64, u64)>,
}

impl Limits {
    /// From ECS units: MiB, and CPU units where 1024 is one core.
    pub fn from_ecs(memory_mib: Option<u32>, reservation_mib: Option<u32>, cpu_units: u32) -> Self {
        Limits {
            memory_max: memory_mib.map(|m| u64::from(m) << 20),
            memory_low: reservation_mib.map(|m| u64::from(m) << 20),
            cpu_max: (cpu_units > 0).then(|| ((u64::from(cpu_units) * CPU_PERIOD_US / 1024).max(1000), CPU_PERIOD_US)),
        }
    }
}

/// Creates `<root>/berth/<name>` and writes the limits; returns its path.
pub fn create(root: &Path, name: &str, limits: &Limits) -> Result<PathBuf> {
    let dir = root.join("berth").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(format!("create cgroup {}", dir.display()), e))?;
    let write = |file: &str, value: String| {
        std::fs::write(dir.join(file), value)
            .map_err(|e| AgentError::io(format!("write {file} in {}", dir.display()), e))
    };
    if let Some(m) = limits.memory_max {
        write("memory.max", m.to_string())?;
        // No swap escape hatch: the hard limit is the limit.
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
    }
    if let Some(m) = limits.memory_low {
        write("memory.low", m.to_string())?;
    }
    if let Some((quota, period)) = limits.cpu_max {
        write("cpu.max", format!("{quota} {period}"))?;
    }
    Ok(dir)
}

/// How many times the kernel OOM-killed in this cgroup.
pub fn oom_kills(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("memory.events"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

/// Current memory use of the cgroup, if readable.
pub fn memory_current(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Removes the (empty) cgroup directory; best effort.
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_says_why_limits_are_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = CgroupSupport::detect_at(dir.path());
        let CgroupSupport::Unavailable(why) = s else {
            panic!("{s:?}")
        };
        assert!(why.contains("NOT enforced"), "{why}");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpuset io pids\n").unwrap();
        let CgroupSupport::Unavailable(why) = CgroupSupport::detect_at(dir.path()) else {
            panic!()
        };
        assert!(why.contains("memory and cpu"), "{why}");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert!(CgroupSupport::detect_at(dir.path()).is_available());
    }

    #[test]
    fn limits_are_written_in_cgroup_v2_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let l = Limits::from_ecs(Some(64), Some(32), 512);
        assert_eq!(l.cpu_max, Some((50_000, 100_000)), "512 units = half a core");
        let cg = create(dir.path(), "c1", &l).unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.join("memory.max")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(cg.join("memory.low")).unwrap(),
            (32u64 << 20).to_string()
        );
        assert_eq!(std::fs::read_to_string(cg.join("cpu.max")).unwrap(), "50000 100000");
        std::fs::write(cg.join("memory.events"), "low 0\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&cg), 2);
        assert_eq!(Limits::from_ecs(None, None, 0).cpu_max, None);
    }
}
