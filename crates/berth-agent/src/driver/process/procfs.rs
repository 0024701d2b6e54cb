//! What the process driver reads from `/proc`, and the one place that forks.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

/// Fields of `/proc/<pid>/stat` the driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub state: char,
    pub pgrp: i32,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// Start time in clock ticks since boot: with the pid, the identity of a
    /// process (a reused pid has a different start time).
    pub start_ticks: u64,
    pub rss_pages: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name may contain
/// spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); field n is f[n - 3].
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        utime_ticks: f.get(11)?.parse().ok()?,
        stime_ticks: f.get(12)?.parse().ok()?,
        start_ticks: f.get(19)?.parse().ok()?,
        rss_pages: f.get(21)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks, resident pages and number of the live processes in group
/// `pgid` (a container is its whole process group).
pub fn group_usage(pgid: i32) -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return total;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(s) = stat(pid).filter(|s| s.pgrp == pgid && s.state != 'Z') {
            total.0 += s.utime_ticks + s.stime_ticks;
            total.1 += s.rss_pages;
            total.2 += 1;
        }
    }
    total
}

/// Whether `pid` is still the process that started at `start_ticks` and has
/// not exited (a zombie has exited; its parent just has not reaped it yet).
pub fn is_alive(pid: i32, start_ticks: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_ticks == start_ticks && s.state != 'Z' && s.state != 'X')
}

/// Clock ticks per second (`_SC_CLK_TCK`): fixed at 100 by the Linux
/// user-space ABI on every architecture Berth targets.
pub const TICKS_PER_SECOND: u64 = 100;

/// Spawns `cmd` as the leader of a new session (so of a new process group
/// too: `setsid` makes pid = pgid = sid), detached from the agent's terminal
/// and signals; when `cgroup_procs` is given, the child moves itself into
/// that cgroup before exec so it never runs outside its limits.
#[allow(unsafe_code)]
pub fn spawn_in_new_session(
    cmd: &mut tokio::process::Command,
    cgroup_procs: Option<OwnedFd>,
) -> std::io::Result<tokio::process::Child> {
    let mut procs = cgroup_procs.map(File::from);
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: it calls setsid(2) and write(2) on a
    // file descriptor opened before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if let Some(f) = procs.as_mut() {
                f.write_all(b"0")?;
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let line = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 987654 10000 55 \
                    18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 4242);
        assert_eq!((s.utime_ticks, s.stime_ticks), (7, 3));
        assert_eq!(s.start_ticks, 987654);
        assert_eq!(s.rss_pages, 55);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive_and_identity_checks_start_time() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(is_alive(me, s.start_ticks));
        assert!(!is_alive(me, s.start_ticks + 1), "same pid, other start time: not ours");
    }
}
