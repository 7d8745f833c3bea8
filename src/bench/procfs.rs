//! CPU time and memory of server processes, from Linux's `/proc`.
//!
//! CPU time of a process tree = user + system time of every live process in it, plus what its
//! roots have reaped from children that exited (`cutime`, `cstime`). Given the PostgreSQL
//! postmaster's PID, this counts its backends too.

use std::collections::BTreeMap;
use std::fs;

/// Clock ticks per second as `/proc/*/stat` counts them. Linux fixes USER_HZ at 100 on every
/// architecture it supports.
const TICKS_PER_SECOND: u64 = 100;

#[derive(Debug, Clone, Copy)]
struct Stat {
    ppid: u32,
    /// utime + stime, in ticks.
    own: u64,
    /// cutime + cstime, in ticks.
    reaped: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last `)`.
    let after = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat { ppid: u32::try_from(num(1)?).ok()?, own: num(11)? + num(12)?, reaped: num(13)? + num(14)? })
}

fn all_processes() -> BTreeMap<u32, Stat> {
    let Ok(entries) = fs::read_dir("/proc") else { return BTreeMap::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// CPU milliseconds used so far by the trees rooted at `roots`.
pub fn cpu_millis(roots: &[u32]) -> u64 {
    let procs = all_processes();
    let mut ticks = 0;
    for (&pid, s) in &procs {
        let mut cursor = Some(pid);
        let mut in_tree = false;
        // Walk up the parent chain (bounded: pid 1's parent is 0).
        for _ in 0..64 {
            let Some(p) = cursor else { break };
            if roots.contains(&p) {
                in_tree = true;
                break;
            }
            cursor = procs.get(&p).map(|s| s.ppid).filter(|pp| *pp != 0);
        }
        if in_tree {
            ticks += s.own;
            if roots.contains(&pid) {
                ticks += s.reaped;
            }
        }
    }
    ticks * 1000 / TICKS_PER_SECOND
}

/// Current and peak resident memory of the processes themselves (not their children), in KiB.
pub fn rss_kib(pids: &[u32]) -> (u64, u64) {
    let mut current = 0;
    let mut peak = 0;
    for pid in pids {
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        for line in status.lines() {
            let value = || line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if line.starts_with("VmRSS:") {
                current += value();
            } else if line.starts_with("VmHWM:") {
                peak += value();
            }
        }
    }
    (current, peak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_up_as_cpu_time_and_memory_is_read() {
        let me = std::process::id();
        let before = cpu_millis(&[me]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut x = 0u64;
        while cpu_millis(&[me]) < before + 100 && std::time::Instant::now() < deadline {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(cpu_millis(&[me]) >= before + 100, "100 ms of busy work were counted");
        let (rss, peak) = rss_kib(&[me]);
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
        assert_eq!(cpu_millis(&[u32::MAX]), 0, "no such process");
    }
}
