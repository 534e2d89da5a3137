//! The system source: CPU, memory, swap, filesystems, network interfaces,
//! uptime, temperatures and process groups, read with `sysinfo`.
//!
//! The `sysinfo` handles live across ticks (CPU usage needs two refreshes;
//! process CPU time is accumulated per pid). Every tick sends one snapshot
//! batch, so a mount, interface or sensor that disappears loses its series.

use std::sync::Arc;
use std::time::Duration;

use sysinfo::{
    Components, CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks,
    ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System, UpdateKind,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use serde::Deserialize;

use super::process::{GroupStats, ProcessGroupConfig, ProcessGroups};
use super::{Failure, Health, Outcome};
use crate::key_error::KeyError;
use crate::model::{Batch, BatchMode, FamilyMeta, Labels, MetricKind, Sample, now_ms};
use crate::select::Pattern;

/// `[system]`: the host collectors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemConfig {
    pub enabled: bool,
    /// Collection interval of CPU, memory, disks, network, sensors and
    /// process groups.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub cpu: CpuConfig,
    pub filesystems: FilesystemConfig,
    pub network: NetworkConfig,
    pub temperatures: bool,
    /// Which groups of system series are exported
    /// (`--collector.<name>` / `--no-collector.<name>`).
    pub collectors: Collectors,
}

/// The system collectors, by node_exporter's names where vitals has the
/// same one; all on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Collectors {
    pub cpu: bool,
    pub loadavg: bool,
    pub meminfo: bool,
    pub filesystem: bool,
    pub netdev: bool,
    pub uptime: bool,
    /// Temperatures (also switched off by `system.temperatures = false`).
    pub hwmon: bool,
    /// The `[[process_groups]]`.
    pub processgroups: bool,
}

impl Default for Collectors {
    fn default() -> Self {
        Collectors {
            cpu: true,
            loadavg: true,
            meminfo: true,
            filesystem: true,
            netdev: true,
            uptime: true,
            hwmon: true,
            processgroups: true,
        }
    }
}

impl Collectors {
    /// Every collector off (`--collector.disable-defaults`).
    pub fn none() -> Self {
        Collectors {
            cpu: false,
            loadavg: false,
            meminfo: false,
            filesystem: false,
            netdev: false,
            uptime: false,
            hwmon: false,
            processgroups: false,
        }
    }

    /// Switch the collector `name`; false for an unknown name.
    pub fn set(&mut self, name: &str, on: bool) -> bool {
        let field = match name {
            "cpu" => &mut self.cpu,
            "loadavg" => &mut self.loadavg,
            "meminfo" => &mut self.meminfo,
            "filesystem" => &mut self.filesystem,
            "netdev" => &mut self.netdev,
            "uptime" => &mut self.uptime,
            "hwmon" => &mut self.hwmon,
            "processgroups" => &mut self.processgroups,
            _ => return false,
        };
        *field = on;
        true
    }

    /// Whether a system family is exported, by the collector its name
    /// belongs to.
    pub fn keeps(&self, family: &str) -> bool {
        let Some(rest) = family.strip_prefix("vitals_") else {
            return true;
        };
        let prefixes: [(&str, bool); 11] = [
            ("cpu", self.cpu),
            ("load", self.loadavg),
            ("memory_", self.meminfo),
            ("swap_", self.meminfo),
            ("filesystem_", self.filesystem),
            ("disk_", self.filesystem),
            ("network_", self.netdev),
            ("boot_time", self.uptime),
            ("uptime", self.uptime),
            ("temperature", self.hwmon),
            ("process_group_", self.processgroups),
        ];
        prefixes
            .iter()
            .find(|(p, _)| rest.starts_with(p))
            .is_none_or(|(_, on)| *on)
    }
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            cpu: CpuConfig::default(),
            filesystems: FilesystemConfig::default(),
            network: NetworkConfig::default(),
            temperatures: true,
            collectors: Collectors::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// Export one usage series per core as well as the total.
    pub per_core: bool,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig { per_core: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    /// Only mount points matching this (anchored) regex are exported.
    pub mount_points_include: Pattern,
    /// Mount points matching this regex are left out.
    pub mount_points_exclude: Pattern,
    /// Filesystem types matching this regex (pseudo filesystems) are left out.
    pub fs_types_exclude: Pattern,
    /// The host's root as mounted in a container (`--path.rootfs`): only
    /// mount points under it are exported, with this prefix removed.
    pub rootfs: Option<std::path::PathBuf>,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        FilesystemConfig {
            mount_points_include: Pattern::new(".*").expect("valid default"),
            mount_points_exclude: Pattern::new("/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/.*)")
                .expect("valid default"),
            fs_types_exclude: Pattern::new(
                "autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs|tmpfs|ramfs|nfsd|fuse\\.lxcfs|fuse\\.portal|fuse\\.gvfsd-fuse",
            )
            .expect("valid default"),
            rootfs: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Only interfaces matching this (anchored) regex are exported.
    pub interfaces_include: Pattern,
    /// Interfaces matching this regex are left out.
    pub interfaces_exclude: Pattern,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            interfaces_include: Pattern::new(".*").expect("valid default"),
            interfaces_exclude: Pattern::new("").expect("valid default"),
        }
    }
}

/// Families of the system source, created once.
struct Families {
    cpu_seconds: Arc<FamilyMeta>,
    cpu_usage: Arc<FamilyMeta>,
    cpu_core_usage: Arc<FamilyMeta>,
    cpu_count: Arc<FamilyMeta>,
    load1: Arc<FamilyMeta>,
    load5: Arc<FamilyMeta>,
    load15: Arc<FamilyMeta>,
    mem_total: Arc<FamilyMeta>,
    mem_used: Arc<FamilyMeta>,
    mem_available: Arc<FamilyMeta>,
    swap_total: Arc<FamilyMeta>,
    swap_used: Arc<FamilyMeta>,
    swap_free: Arc<FamilyMeta>,
    fs_size: Arc<FamilyMeta>,
    fs_avail: Arc<FamilyMeta>,
    fs_usage: Arc<FamilyMeta>,
    fs_readonly: Arc<FamilyMeta>,
    fs_files: Arc<FamilyMeta>,
    fs_files_free: Arc<FamilyMeta>,
    disk_read: Arc<FamilyMeta>,
    disk_written: Arc<FamilyMeta>,
    net_rx_bytes: Arc<FamilyMeta>,
    net_tx_bytes: Arc<FamilyMeta>,
    net_rx_packets: Arc<FamilyMeta>,
    net_tx_packets: Arc<FamilyMeta>,
    net_rx_errors: Arc<FamilyMeta>,
    net_tx_errors: Arc<FamilyMeta>,
    boot_time: Arc<FamilyMeta>,
    uptime: Arc<FamilyMeta>,
    temperature: Arc<FamilyMeta>,
    temperature_critical: Arc<FamilyMeta>,
    pg_up: Arc<FamilyMeta>,
    pg_procs: Arc<FamilyMeta>,
    pg_cpu: Arc<FamilyMeta>,
    pg_rss: Arc<FamilyMeta>,
    pg_open_files: Arc<FamilyMeta>,
    pg_oldest: Arc<FamilyMeta>,
    pg_exits: Arc<FamilyMeta>,
}

impl Families {
    fn new() -> Self {
        use MetricKind::{Counter as C, Gauge as G};
        let f = FamilyMeta::new;
        Families {
            cpu_seconds: f(
                "vitals_cpu_seconds_total",
                C,
                "CPU time spent in each mode, per logical CPU (from /proc/stat).",
            ),
            cpu_usage: f(
                "vitals_cpu_usage_ratio",
                G,
                "Share of CPU time spent busy over the last interval, all cores (0-1).",
            ),
            cpu_core_usage: f(
                "vitals_cpu_core_usage_ratio",
                G,
                "Share of CPU time spent busy over the last interval, per core (0-1).",
            ),
            cpu_count: f("vitals_cpus", G, "Number of logical CPUs."),
            load1: f("vitals_load1", G, "1-minute load average."),
            load5: f("vitals_load5", G, "5-minute load average."),
            load15: f("vitals_load15", G, "15-minute load average."),
            mem_total: f("vitals_memory_total_bytes", G, "Total physical memory."),
            mem_used: f("vitals_memory_used_bytes", G, "Physical memory in use."),
            mem_available: f(
                "vitals_memory_available_bytes",
                G,
                "Physical memory available for new allocations without swapping.",
            ),
            swap_total: f("vitals_swap_total_bytes", G, "Total swap space."),
            swap_used: f("vitals_swap_used_bytes", G, "Swap space in use."),
            swap_free: f("vitals_swap_free_bytes", G, "Swap space free."),
            fs_size: f(
                "vitals_filesystem_size_bytes",
                G,
                "Size of a mounted filesystem.",
            ),
            fs_avail: f(
                "vitals_filesystem_available_bytes",
                G,
                "Space available to unprivileged users on a mounted filesystem.",
            ),
            fs_usage: f(
                "vitals_filesystem_usage_ratio",
                G,
                "Share of a mounted filesystem that is not available (0-1).",
            ),
            fs_readonly: f(
                "vitals_filesystem_readonly",
                G,
                "Whether a filesystem is mounted read-only (1) or not (0).",
            ),
            fs_files: f(
                "vitals_filesystem_files",
                G,
                "Inodes (file nodes) of a mounted filesystem.",
            ),
            fs_files_free: f(
                "vitals_filesystem_files_free",
                G,
                "Free inodes of a mounted filesystem.",
            ),
            disk_read: f(
                "vitals_disk_read_bytes_total",
                C,
                "Bytes read from the device behind a mounted filesystem.",
            ),
            disk_written: f(
                "vitals_disk_written_bytes_total",
                C,
                "Bytes written to the device behind a mounted filesystem.",
            ),
            net_rx_bytes: f(
                "vitals_network_receive_bytes_total",
                C,
                "Bytes received on a network interface.",
            ),
            net_tx_bytes: f(
                "vitals_network_transmit_bytes_total",
                C,
                "Bytes transmitted on a network interface.",
            ),
            net_rx_packets: f(
                "vitals_network_receive_packets_total",
                C,
                "Packets received on a network interface.",
            ),
            net_tx_packets: f(
                "vitals_network_transmit_packets_total",
                C,
                "Packets transmitted on a network interface.",
            ),
            net_rx_errors: f(
                "vitals_network_receive_errors_total",
                C,
                "Receive errors on a network interface.",
            ),
            net_tx_errors: f(
                "vitals_network_transmit_errors_total",
                C,
                "Transmit errors on a network interface.",
            ),
            boot_time: f(
                "vitals_boot_time_seconds",
                G,
                "Unix time the machine booted.",
            ),
            uptime: f(
                "vitals_uptime_seconds",
                G,
                "Seconds since the machine booted.",
            ),
            temperature: f(
                "vitals_hwmon_temperature_celsius",
                G,
                "Temperature of a hardware sensor.",
            ),
            temperature_critical: f(
                "vitals_hwmon_temperature_critical_celsius",
                G,
                "Critical temperature threshold of a hardware sensor.",
            ),
            pg_up: f(
                "vitals_process_group_up",
                G,
                "Whether a configured process group has at least one process (1) or none (0).",
            ),
            pg_procs: f(
                "vitals_process_group_processes",
                G,
                "Number of processes in a process group.",
            ),
            pg_cpu: f(
                "vitals_process_group_cpu_seconds_total",
                C,
                "CPU time used by the processes of a group, including ones that have exited.",
            ),
            pg_rss: f(
                "vitals_process_group_resident_memory_bytes",
                G,
                "Resident memory of the processes of a group.",
            ),
            pg_open_files: f(
                "vitals_process_group_open_files",
                G,
                "Open file descriptors of the processes of a group.",
            ),
            pg_oldest: f(
                "vitals_process_group_oldest_start_time_seconds",
                G,
                "Unix start time of the oldest process of a group.",
            ),
            pg_exits: f(
                "vitals_process_group_exits_total",
                C,
                "Processes of a group that have exited since vitals started.",
            ),
        }
    }
}

/// State kept between ticks.
pub struct SystemCollector {
    cfg: SystemConfig,
    system: System,
    disks: Disks,
    networks: Networks,
    components: Option<Components>,
    groups: ProcessGroups,
    families: Families,
}

/// Why a collection failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("sysinfo cannot read this system: {0}")]
    Unsupported(String),
}

impl SystemCollector {
    pub fn new(cfg: SystemConfig, groups: &[ProcessGroupConfig]) -> Result<Self, SystemError> {
        let unsupported = |e: sysinfo::Error| SystemError::Unsupported(e.to_string());
        let mut system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything()),
        )
        .map_err(unsupported)?;
        system.refresh_cpu_usage();
        let disks =
            Disks::new_with_refreshed_list_specifics(disk_refresh()).map_err(unsupported)?;
        let networks = Networks::new_with_refreshed_list().map_err(unsupported)?;
        let components = if cfg.temperatures {
            Components::new_with_refreshed_list().ok()
        } else {
            None
        };
        Ok(SystemCollector {
            cfg,
            system,
            disks,
            networks,
            components,
            groups: ProcessGroups::new(groups.to_vec()),
            families: Families::new(),
        })
    }

    /// Refresh everything and return one snapshot.
    pub fn collect(&mut self) -> Vec<Sample> {
        let ts = now_ms();
        let mut out = Vec::with_capacity(128);
        let fam = &self.families;
        let mut push = |family: &Arc<FamilyMeta>, labels: Labels, value: f64| {
            out.push(Sample {
                family: family.clone(),
                labels,
                value,
                timestamp_ms: ts,
            });
        };

        // CPU: time per mode as counters (a scrape at any interval sees all
        // of it through rate()), and the busy share over the last interval
        // (the live dashboard's and the shipped alerts' gauges).
        if cfg!(target_os = "linux") {
            match std::fs::read_to_string("/proc/stat") {
                Ok(text) => {
                    for (labels, secs) in cpu_seconds(&text, self.cfg.cpu.per_core) {
                        push(&fam.cpu_seconds, labels, secs);
                    }
                }
                Err(error) => tracing::debug!(%error, "Cannot read /proc/stat."),
            }
        }
        self.system.refresh_cpu_usage();
        push(
            &fam.cpu_usage,
            Labels::empty(),
            f64::from(self.system.global_cpu_usage()) / 100.0,
        );
        push(
            &fam.cpu_count,
            Labels::empty(),
            self.system.cpus().len() as f64,
        );
        if self.cfg.cpu.per_core {
            for (i, cpu) in self.system.cpus().iter().enumerate() {
                push(
                    &fam.cpu_core_usage,
                    Labels::from_pairs(&[("cpu", i.to_string())]),
                    f64::from(cpu.usage()) / 100.0,
                );
            }
        }
        if let Ok(load) = System::load_average() {
            push(&fam.load1, Labels::empty(), load.one);
            push(&fam.load5, Labels::empty(), load.five);
            push(&fam.load15, Labels::empty(), load.fifteen);
        }

        // Memory and swap
        self.system.refresh_memory();
        push(
            &fam.mem_total,
            Labels::empty(),
            self.system.total_memory() as f64,
        );
        push(
            &fam.mem_used,
            Labels::empty(),
            self.system.used_memory() as f64,
        );
        push(
            &fam.mem_available,
            Labels::empty(),
            self.system.available_memory() as f64,
        );
        push(
            &fam.swap_total,
            Labels::empty(),
            self.system.total_swap() as f64,
        );
        push(
            &fam.swap_used,
            Labels::empty(),
            self.system.used_swap() as f64,
        );
        push(
            &fam.swap_free,
            Labels::empty(),
            self.system.free_swap() as f64,
        );

        // Filesystems: the list is re-read so mounts that come and go are seen.
        self.disks.refresh_specifics(true, disk_refresh());
        let fs = &self.cfg.filesystems;
        let mut seen_mounts = std::collections::HashSet::new();
        for disk in &self.disks {
            let Some(mount) =
                host_mount_point(&disk.mount_point().to_string_lossy(), fs.rootfs.as_deref())
            else {
                continue;
            };
            let fstype = disk.file_system().to_string_lossy();
            if !fs.mount_points_include.is_match(&mount)
                || (!fs.mount_points_exclude.is_empty() && fs.mount_points_exclude.is_match(&mount))
                || (!fs.fs_types_exclude.is_empty() && fs.fs_types_exclude.is_match(&fstype))
                || !seen_mounts.insert(mount.to_string())
            {
                continue;
            }
            let device = disk.name().to_string_lossy();
            let labels = Labels::from_pairs(&[
                ("device", &*device),
                ("fstype", &*fstype),
                ("mountpoint", &*mount),
            ]);
            let total = disk.total_space() as f64;
            let avail = disk.available_space() as f64;
            push(&fam.fs_size, labels.clone(), total);
            push(&fam.fs_avail, labels.clone(), avail);
            if total > 0.0 {
                push(
                    &fam.fs_usage,
                    labels.clone(),
                    ((total - avail) / total).clamp(0.0, 1.0),
                );
            }
            push(
                &fam.fs_readonly,
                labels.clone(),
                if disk.is_read_only() { 1.0 } else { 0.0 },
            );
            // Inodes: sysinfo has no inode counts; statvfs(3) of the mount
            // point. A filesystem without inodes (btrfs, vfat) reports 0.
            if let Ok(st) = rustix::fs::statvfs(disk.mount_point()) {
                push(&fam.fs_files, labels.clone(), st.f_files as f64);
                push(&fam.fs_files_free, labels.clone(), st.f_ffree as f64);
            }
            let usage = disk.usage();
            push(
                &fam.disk_read,
                labels.clone(),
                usage.total_read_bytes as f64,
            );
            push(&fam.disk_written, labels, usage.total_written_bytes as f64);
        }

        // Network interfaces
        self.networks.refresh(true);
        let net = &self.cfg.network;
        for (name, data) in &self.networks {
            let name = name.to_string_lossy();
            let name = name.as_ref();
            if !net.interfaces_include.is_match(name)
                || (!net.interfaces_exclude.is_empty() && net.interfaces_exclude.is_match(name))
            {
                continue;
            }
            // `device`, as node_exporter and its mixin name it.
            let labels = Labels::from_pairs(&[("device", name)]);
            push(
                &fam.net_rx_bytes,
                labels.clone(),
                data.total_received() as f64,
            );
            push(
                &fam.net_tx_bytes,
                labels.clone(),
                data.total_transmitted() as f64,
            );
            push(
                &fam.net_rx_packets,
                labels.clone(),
                data.total_packets_received() as f64,
            );
            push(
                &fam.net_tx_packets,
                labels.clone(),
                data.total_packets_transmitted() as f64,
            );
            push(
                &fam.net_rx_errors,
                labels.clone(),
                data.total_errors_on_received() as f64,
            );
            push(
                &fam.net_tx_errors,
                labels,
                data.total_errors_on_transmitted() as f64,
            );
        }

        // Uptime
        if let Ok(boot) = System::boot_time() {
            push(&fam.boot_time, Labels::empty(), boot as f64);
        }
        if let Ok(up) = System::uptime() {
            push(&fam.uptime, Labels::empty(), up as f64);
        }

        // Temperatures: the sensor list is re-read so vanished sensors go away.
        if let Some(components) = self.components.as_mut() {
            components.refresh(true);
            for c in components.iter() {
                let labels = Labels::from_pairs(&[("sensor", c.label())]);
                if let Some(t) = c.temperature().filter(|t| t.is_finite()) {
                    push(&fam.temperature, labels.clone(), f64::from(t));
                }
                if let Some(t) = c.critical().filter(|t| t.is_finite() && *t > 0.0) {
                    push(&fam.temperature_critical, labels, f64::from(t));
                }
            }
        }

        // Process groups
        if !self.groups.is_empty() {
            // Discovery and CPU time for every process (one read of
            // /proc/PID/stat each); command line and executable only for
            // processes not classified yet; memory only for grouped ones.
            let base = ProcessRefreshKind::nothing().with_cpu().without_tasks();
            self.system
                .refresh_processes_specifics(ProcessesToUpdate::All, true, base);
            let (need_cmd, need_exe) = self.groups.needs();
            let new = self.groups.unclassified(self.system.processes());
            if !new.is_empty() && (need_cmd || need_exe) {
                let mut kind = ProcessRefreshKind::nothing().without_tasks();
                if need_cmd {
                    kind = kind.with_cmd(UpdateKind::OnlyIfNotSet);
                }
                if need_exe {
                    kind = kind.with_exe(UpdateKind::OnlyIfNotSet);
                }
                self.system
                    .refresh_processes_specifics(ProcessesToUpdate::Some(&new), false, kind);
            }
            let grouped = self.groups.classify(self.system.processes());
            if !grouped.is_empty() {
                self.system.refresh_processes_specifics(
                    ProcessesToUpdate::Some(&grouped),
                    false,
                    ProcessRefreshKind::nothing().with_memory().without_tasks(),
                );
            }
            for (name, stats) in self.groups.update(self.system.processes()) {
                let labels = Labels::from_pairs(&[("group", name)]);
                let GroupStats {
                    processes,
                    cpu_seconds,
                    resident_bytes,
                    open_files,
                    oldest_start,
                    exits,
                } = stats;
                push(
                    &fam.pg_up,
                    labels.clone(),
                    if processes > 0 { 1.0 } else { 0.0 },
                );
                push(&fam.pg_procs, labels.clone(), processes as f64);
                push(&fam.pg_cpu, labels.clone(), cpu_seconds);
                push(&fam.pg_rss, labels.clone(), resident_bytes as f64);
                push(&fam.pg_exits, labels.clone(), exits as f64);
                if let Some(n) = open_files {
                    push(&fam.pg_open_files, labels.clone(), n as f64);
                }
                if let Some(t) = oldest_start {
                    push(&fam.pg_oldest, labels, t as f64);
                }
            }
        }
        // `--no-collector.<name>`: drop the families of switched-off collectors.
        let collectors = self.cfg.collectors;
        out.retain(|s| collectors.keeps(&s.family.name));
        out
    }
}

/// The modes of /proc/stat exported as `vitals_cpu_seconds_total{mode}`,
/// as node_exporter names them (guest time is already part of user time).
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// CPU seconds per mode from the text of /proc/stat, parsed by `procfs`:
/// per logical CPU (`cpu` label, the number of its `cpuN` line, so offline
/// CPUs leave gaps as in the kernel's numbering) or, with `per_core` off,
/// the machine's total. Nothing when the text does not parse.
pub fn cpu_seconds(stat: &str, per_core: bool) -> Vec<(Labels, f64)> {
    use procfs::FromBufReadSI as _;
    let Ok(stats) =
        procfs::KernelStats::from_buf_read(stat.as_bytes(), procfs::current_system_info())
    else {
        return Vec::new();
    };
    let times = |t: &procfs::CpuTime| -> [Option<u64>; 8] {
        [
            Some(t.user_ms()),
            Some(t.nice_ms()),
            Some(t.system_ms()),
            Some(t.idle_ms()),
            t.iowait_ms(),
            t.irq_ms(),
            t.softirq_ms(),
            t.steal_ms(),
        ]
    };
    let mut out = Vec::new();
    let mut push = |cpu: Option<&str>, t: &procfs::CpuTime| {
        for (mode, ms) in CPU_MODES.iter().zip(times(t)) {
            let Some(ms) = ms else { continue };
            let labels = match cpu {
                Some(cpu) => Labels::from_pairs(&[("cpu", cpu), ("mode", mode)]),
                None => Labels::from_pairs(&[("mode", *mode)]),
            };
            out.push((labels, ms as f64 / 1000.0));
        }
    };
    if per_core {
        // procfs keeps the `cpuN` lines in order but not their numbers.
        let ids = stat
            .lines()
            .filter_map(|l| l.strip_prefix("cpu"))
            .filter_map(|l| l.split(' ').next())
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        for (id, t) in ids.zip(&stats.cpu_time) {
            push(Some(id), t);
        }
    } else {
        push(None, &stats.total);
    }
    out
}

/// With `--path.rootfs`, the mount point as the host sees it, or `None`
/// for a mount outside the host root (the container's own).
fn host_mount_point(mount: &str, rootfs: Option<&std::path::Path>) -> Option<String> {
    let Some(root) = rootfs.filter(|r| *r != std::path::Path::new("/")) else {
        return Some(mount.to_string());
    };
    let rest = std::path::Path::new(mount).strip_prefix(root).ok()?;
    Some(format!("/{}", rest.display()))
}

fn disk_refresh() -> DiskRefreshKind {
    DiskRefreshKind::nothing().with_storage().with_io_usage()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  200 10 100 5000 30 1 2 3 0 0
cpu0 100 5 50 2500 15 1 1 2 0 0
cpu2 100 5 50 2500 15 0 1 1 0 0
intr 1 2 3
ctxt 12345
btime 1700000000
processes 99
procs_running 1
procs_blocked 0
";

    #[test]
    fn cpu_seconds_are_counters_per_cpu_and_mode_like_node_exporter() {
        let tps = procfs::ticks_per_second() as f64;
        let per_cpu = cpu_seconds(STAT, true);
        assert_eq!(per_cpu.len(), 16);
        let get = |cpu: &str, mode: &str| {
            per_cpu
                .iter()
                .find(|(l, _)| {
                    l.get("cpu").as_deref() == Some(cpu) && l.get("mode").as_deref() == Some(mode)
                })
                .map(|(_, v)| *v)
        };
        // Numbered as the kernel numbers them (cpu1 is offline).
        assert_eq!(get("2", "user"), Some(100.0 / tps));
        assert_eq!(get("0", "idle"), Some(2500.0 / tps));
        assert_eq!(get("0", "steal"), Some(2.0 / tps));
        assert_eq!(get("1", "user"), None);
        let total = cpu_seconds(STAT, false);
        assert_eq!(total.len(), 8);
        assert_eq!(total[0].0.as_str(), r#"{mode="user"}"#);
        assert_eq!(total[0].1, 200.0 / tps);
        assert!(cpu_seconds("garbage", true).is_empty());
    }
}

/// The system source as it runs: `[system]` and the `[[process_groups]]`
/// it exports (the [`super::SourceConfig::System`] variant).
#[derive(Debug, Clone)]
pub struct SystemSource {
    pub system: SystemConfig,
    pub process_groups: Vec<ProcessGroupConfig>,
}

impl super::Source for SystemSource {
    const KIND: &'static str = "system";
    type Built = ();

    fn name(&self) -> &str {
        Self::KIND
    }

    /// Keys are from the top of the file (`system.interval`,
    /// `process_groups[0].name`): the system source is not a `[[sources]]` table.
    fn build(&self) -> Result<(), KeyError> {
        if self.system.interval < Duration::from_millis(100) {
            return Err(KeyError::new("system.interval", "must be at least 100ms"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, g) in self.process_groups.iter().enumerate() {
            let key = format!("process_groups[{i}]");
            if g.name.is_empty() {
                return Err(KeyError::new(format!("{key}.name"), "must not be empty"));
            }
            if !names.insert(g.name.as_str()) {
                return Err(KeyError::new(
                    format!("{key}.name"),
                    format!("group {:?} is defined twice", g.name),
                ));
            }
            if g.comm.is_empty() && g.exe.is_empty() && g.cmdline.is_empty() && g.pids.is_empty() {
                return Err(KeyError::new(
                    key,
                    "needs at least one matcher: comm, exe, cmdline or pids",
                ));
            }
        }
        Ok(())
    }

    fn start(&self, _: &(), ctx: super::SourceContext, health: Health) -> super::Started {
        super::Started::task(run(
            self.system.clone(),
            self.process_groups.clone(),
            ctx.tx,
            health,
            ctx.shutdown,
        ))
    }
}

/// Run the system source until `shutdown` fires.
pub async fn run(
    cfg: SystemConfig,
    groups: Vec<ProcessGroupConfig>,
    tx: mpsc::Sender<Batch>,
    health: Health,
    shutdown: CancellationToken,
) {
    let source = health.source().clone();
    let interval = cfg.interval;
    let collector = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || SystemCollector::new(cfg, &groups)).await
    };
    let mut collector = match collector {
        Ok(Ok(c)) => Some(c),
        Ok(Err(error)) => {
            health.down(Some(Failure::new("unsupported", error)));
            return;
        }
        Err(error) => {
            health.down(Some(Failure::new("panic", error)));
            return;
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first CPU reading needs a previous one; wait a little so the first
    // tick already has a meaningful usage ratio.
    tokio::select! {
        _ = tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.min(Duration::from_millis(250))) => {}
        _ = shutdown.cancelled() => return,
    }
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // One collection: read the host on a blocking thread, hand the
        // snapshot to the pipeline.
        let go_on = health
            .collect(async {
                let Some(mut c) = collector.take() else {
                    return (false, Outcome::Stopped);
                };
                let result = tokio::task::spawn_blocking(move || {
                    let samples = c.collect();
                    (c, samples)
                })
                .await;
                let samples = match result {
                    Ok((c, samples)) => {
                        collector = Some(c);
                        samples
                    }
                    // A panic inside sysinfo: report it and stop this source only.
                    Err(error) => {
                        return (false, Outcome::Down(vec![Failure::new("panic", error)]));
                    }
                };
                let batch = Batch {
                    source: source.clone(),
                    mode: BatchMode::Snapshot,
                    samples,
                };
                tokio::select! {
                    sent = tx.send(batch) => if sent.is_err() { return (false, Outcome::Stopped) },
                    _ = shutdown.cancelled() => return (false, Outcome::Stopped),
                }
                (true, Outcome::Ok)
            })
            .await;
        if !go_on {
            return;
        }
    }
}

#[cfg(test)]
mod rootfs_tests {
    use super::host_mount_point;
    use std::path::Path;

    #[test]
    fn rootfs_prefix_is_removed_and_other_mounts_left_out() {
        let root = Some(Path::new("/host"));
        assert_eq!(host_mount_point("/host", root).as_deref(), Some("/"));
        assert_eq!(
            host_mount_point("/host/boot", root).as_deref(),
            Some("/boot")
        );
        assert_eq!(host_mount_point("/", root), None);
        assert_eq!(host_mount_point("/hostile", root), None);
        assert_eq!(host_mount_point("/etc/hosts", root), None);
        assert_eq!(host_mount_point("/data", None).as_deref(), Some("/data"));
        assert_eq!(
            host_mount_point("/data", Some(Path::new("/"))).as_deref(),
            Some("/data")
        );
    }
}
