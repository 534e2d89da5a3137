//! Process groups: processes matched by name, executable, command line or
//! pid into named groups, with counters that survive process exits.
//!
//! A configured group with no process is still exported (with `up` 0),
//! including a group whose process never started.

use std::collections::HashMap;

use serde::Deserialize;
use sysinfo::{Pid, Process};

use crate::select::Pattern;

/// A named group of processes.
///
/// A process belongs to the first group whose matchers it satisfies; any one
/// matcher matching is enough.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessGroupConfig {
    /// Value of the `group` label.
    pub name: String,
    /// Exact process names (`/proc/PID/comm`, at most 15 characters).
    #[serde(default)]
    pub comm: Vec<String>,
    /// Exact executable base names (`/proc/PID/exe`).
    #[serde(default)]
    pub exe: Vec<String>,
    /// Regexes matched against the command line joined by spaces.
    #[serde(default)]
    pub cmdline: Vec<Pattern>,
    /// Process ids (e.g. `[1]` for the init process).
    #[serde(default)]
    pub pids: Vec<u32>,
}

/// The groups used when the file names none: init (pid 1) and vitals itself.
pub(crate) fn default_process_groups() -> Vec<ProcessGroupConfig> {
    vec![
        ProcessGroupConfig {
            name: "init".into(),
            comm: vec![],
            exe: vec![],
            cmdline: vec![],
            pids: vec![1],
        },
        ProcessGroupConfig {
            // This process only: matching the name would also take in
            // every other vitals process on the host (tests, the relay).
            name: "vitals".into(),
            comm: vec![],
            exe: vec![],
            cmdline: vec![],
            pids: vec![std::process::id()],
        },
    ]
}

/// What the group logic needs from one process; taken from `sysinfo` in
/// production and written by hand in tests.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub comm: String,
    pub exe_name: Option<String>,
    pub cmdline: String,
    /// Unix time the process started.
    pub start_time: u64,
    /// CPU time used so far, in milliseconds.
    pub cpu_ms: u64,
    pub resident_bytes: u64,
    pub open_files: Option<usize>,
}

/// Aggregates of one group for one tick.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupStats {
    pub processes: usize,
    /// Monotonic: CPU time of current processes plus that of exited ones.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_files: Option<usize>,
    pub oldest_start: Option<u64>,
    pub exits: u64,
}

/// A process seen in a previous tick.
#[derive(Debug, Clone)]
struct Tracked {
    start_time: u64,
    /// Index of the group, or `None` when it matched no group (remembered so
    /// the regexes are not run again every tick).
    group: Option<usize>,
    cpu_ms: u64,
}

pub struct ProcessGroups {
    groups: Vec<ProcessGroupConfig>,
    tracked: HashMap<u32, Tracked>,
    /// CPU milliseconds accumulated per group; only ever grows.
    cpu_ms: Vec<u64>,
    exits: Vec<u64>,
}

impl ProcessGroups {
    pub fn new(groups: Vec<ProcessGroupConfig>) -> Self {
        let n = groups.len();
        ProcessGroups {
            groups,
            tracked: HashMap::new(),
            cpu_ms: vec![0; n],
            exits: vec![0; n],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn matches(g: &ProcessGroupConfig, p: &ProcInfo) -> bool {
        g.pids.contains(&p.pid)
            || g.comm.contains(&p.comm)
            || p.exe_name
                .as_ref()
                .is_some_and(|e| g.exe.iter().any(|x| x == e))
            || g.cmdline.iter().any(|re| re.is_match(&p.cmdline))
    }

    /// Which process details the matchers need: (command line, executable).
    pub fn needs(&self) -> (bool, bool) {
        (
            self.groups.iter().any(|g| !g.cmdline.is_empty()),
            self.groups.iter().any(|g| !g.exe.is_empty()),
        )
    }

    /// Pids `sysinfo` lists that have not been classified yet (new, or a
    /// reused pid with another start time). Only these need their command
    /// line and executable read.
    pub fn unclassified(&self, processes: &HashMap<Pid, Process>) -> Vec<Pid> {
        processes
            .values()
            .filter(|p| p.thread_kind().is_none())
            .filter(|p| {
                self.tracked
                    .get(&p.pid().as_u32())
                    .is_none_or(|t| t.start_time != p.start_time())
            })
            .map(|p| p.pid())
            .collect()
    }

    /// Assign a group (or none) to every unclassified process and return
    /// the pids that belong to a group (whose memory and fds are read).
    pub fn classify(&mut self, processes: &HashMap<Pid, Process>) -> Vec<Pid> {
        for p in processes.values().filter(|p| p.thread_kind().is_none()) {
            let pid = p.pid().as_u32();
            if self
                .tracked
                .get(&pid)
                .is_some_and(|t| t.start_time == p.start_time())
            {
                continue;
            }
            let info = ProcInfo {
                pid,
                comm: p.name().to_string_lossy().into_owned(),
                exe_name: p
                    .exe()
                    .and_then(|e| e.file_name())
                    .map(|n| n.to_string_lossy().into_owned()),
                cmdline: p
                    .cmd()
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                start_time: p.start_time(),
                cpu_ms: 0,
                resident_bytes: 0,
                open_files: None,
            };
            let group = self.groups.iter().position(|g| Self::matches(g, &info));
            // A new process: none of its CPU time has been counted yet.
            self.tracked.insert(
                pid,
                Tracked {
                    start_time: info.start_time,
                    group,
                    cpu_ms: 0,
                },
            );
        }
        self.tracked
            .iter()
            .filter(|(_, t)| t.group.is_some())
            .map(|(pid, _)| Pid::from_u32(*pid))
            .collect()
    }

    /// Update with the current process list from `sysinfo`; every process
    /// must have been classified by [`ProcessGroups::classify`].
    pub fn update(&mut self, processes: &HashMap<Pid, Process>) -> Vec<(&str, GroupStats)> {
        let infos: Vec<ProcInfo> = processes
            .values()
            .filter(|p| p.thread_kind().is_none())
            .map(|p| {
                let grouped = self
                    .tracked
                    .get(&p.pid().as_u32())
                    .is_some_and(|t| t.start_time == p.start_time() && t.group.is_some());
                ProcInfo {
                    pid: p.pid().as_u32(),
                    comm: String::new(),
                    exe_name: None,
                    cmdline: String::new(),
                    start_time: p.start_time(),
                    cpu_ms: p.accumulated_cpu_time(),
                    resident_bytes: if grouped { p.memory() } else { 0 },
                    // Counting fds costs a directory read: only for grouped processes.
                    open_files: if grouped { p.open_files() } else { None },
                }
            })
            .collect();
        self.update_from(&infos)
    }

    /// Update with an explicit process list (used by tests).
    pub fn update_from(&mut self, procs: &[ProcInfo]) -> Vec<(&str, GroupStats)> {
        let mut stats: Vec<GroupStats> = vec![GroupStats::default(); self.groups.len()];
        let mut alive: HashMap<u32, Tracked> = HashMap::with_capacity(procs.len());
        for p in procs {
            let previous = self
                .tracked
                .get(&p.pid)
                .filter(|t| t.start_time == p.start_time);
            let group = match previous {
                Some(t) => t.group,
                None => self.groups.iter().position(|g| Self::matches(g, p)),
            };
            if let Some(gi) = group {
                // CPU time used since the last tick (or all of it for a new process).
                let before = previous.map_or(0, |t| t.cpu_ms);
                self.cpu_ms[gi] += p.cpu_ms.saturating_sub(before);
                let s = &mut stats[gi];
                s.processes += 1;
                s.resident_bytes += p.resident_bytes;
                if let Some(n) = p.open_files {
                    *s.open_files.get_or_insert(0) += n;
                }
                s.oldest_start = Some(s.oldest_start.map_or(p.start_time, |o| o.min(p.start_time)));
            }
            alive.insert(
                p.pid,
                Tracked {
                    start_time: p.start_time,
                    group,
                    cpu_ms: p.cpu_ms,
                },
            );
        }
        for (pid, t) in &self.tracked {
            let gone = alive.get(pid).is_none_or(|a| a.start_time != t.start_time);
            if gone && let Some(gi) = t.group {
                self.exits[gi] += 1;
            }
        }
        self.tracked = alive;
        self.groups
            .iter()
            .zip(stats)
            .enumerate()
            .map(|(i, (g, mut s))| {
                s.cpu_seconds = self.cpu_ms[i] as f64 / 1000.0;
                s.exits = self.exits[i];
                (g.name.as_str(), s)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::Pattern;

    fn group(name: &str) -> ProcessGroupConfig {
        ProcessGroupConfig {
            name: name.into(),
            comm: vec![],
            exe: vec![],
            cmdline: vec![],
            pids: vec![],
        }
    }

    fn proc(pid: u32, comm: &str, cmdline: &str, start: u64, cpu_ms: u64) -> ProcInfo {
        ProcInfo {
            pid,
            comm: comm.into(),
            exe_name: None,
            cmdline: cmdline.into(),
            start_time: start,
            cpu_ms,
            resident_bytes: 100,
            open_files: Some(3),
        }
    }

    #[test]
    fn a_group_that_never_started_is_reported_down() {
        let mut g = group("db");
        g.comm = vec!["postgres".into()];
        let mut groups = ProcessGroups::new(vec![g]);
        let out = groups.update_from(&[proc(1, "init", "/sbin/init", 10, 5)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "db");
        assert_eq!(out[0].1.processes, 0);
        assert_eq!(out[0].1.oldest_start, None);
    }

    #[test]
    fn matches_by_comm_cmdline_and_pid_first_group_wins() {
        let mut web = group("web");
        web.cmdline = vec![Pattern::new(".*gunicorn.*").unwrap()];
        let mut init = group("init");
        init.pids = vec![1];
        let mut shells = group("shells");
        shells.comm = vec!["bash".into()];
        let mut groups = ProcessGroups::new(vec![web, init, shells]);
        let out = groups.update_from(&[
            proc(1, "bash", "bash", 1, 0),
            proc(7, "python3", "python3 /usr/bin/gunicorn app", 2, 0),
            proc(8, "bash", "bash", 3, 0),
        ]);
        let n: Vec<(&str, usize)> = out.iter().map(|(n, s)| (*n, s.processes)).collect();
        assert_eq!(n, vec![("web", 1), ("init", 1), ("shells", 1)]);
    }

    #[test]
    fn cpu_counter_stays_monotonic_when_processes_exit_and_restart() {
        let mut g = group("w");
        g.comm = vec!["worker".into()];
        let mut groups = ProcessGroups::new(vec![g]);
        let a = groups.update_from(&[
            proc(10, "worker", "", 100, 1000),
            proc(11, "worker", "", 90, 500),
        ]);
        assert_eq!(a[0].1.cpu_seconds, 1.5);
        assert_eq!(a[0].1.oldest_start, Some(90));
        assert_eq!(a[0].1.open_files, Some(6));
        // pid 11 exits, pid 10 keeps running.
        let b = groups.update_from(&[proc(10, "worker", "", 100, 1200)]);
        assert_eq!(b[0].1.cpu_seconds, 1.7);
        assert_eq!(b[0].1.exits, 1);
        // pid 10 is reused by a new process (new start time): the old one exited.
        let c = groups.update_from(&[proc(10, "worker", "", 200, 50)]);
        assert_eq!(c[0].1.cpu_seconds, 1.75);
        assert_eq!(c[0].1.exits, 2);
        assert_eq!(c[0].1.processes, 1);
    }
}
