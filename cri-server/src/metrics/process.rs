//! skiffd's process metrics from `/proc/self` (the names of Prometheus' client libraries).
//! [`Process::read`] does blocking reads: call it on a blocking thread.

use std::fmt::Write as _;

#[derive(Debug, Default, Clone)]
pub struct Process {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
}

impl Process {
    /// Reads `/proc/self`; fields that cannot be read stay 0.
    pub fn read() -> Self {
        let mut p = Process::default();
        for line in std::fs::read_to_string("/proc/self/status").unwrap_or_default().lines() {
            let kb = |l: &str| -> u64 {
                l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024
            };
            if line.starts_with("VmRSS:") {
                p.resident_bytes = kb(line);
            } else if line.starts_with("VmSize:") {
                p.virtual_bytes = kb(line);
            } else if let Some(v) = line.strip_prefix("Threads:") {
                p.threads = v.trim().parse().unwrap_or(0);
            }
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
        for line in std::fs::read_to_string("/proc/self/limits").unwrap_or_default().lines() {
            if let Some(rest) = line.strip_prefix("Max open files") {
                p.max_fds = rest.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name (which may hold spaces) in parentheses; utime is field 14.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // rest starts at field 3 (state): field n is f[n - 3].
            p.cpu_seconds = (num(14 - 3) + num(15 - 3)) / ticks;
            let btime = std::fs::read_to_string("/proc/stat")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))
                .unwrap_or(0.0);
            p.start_time_seconds = btime + num(22 - 3) / ticks;
        }
        p
    }

    pub fn render(&self, out: &mut String) {
        let metrics: [(&str, &str, &str, f64); 7] = [
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", self.resident_bytes as f64),
            ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", self.virtual_bytes as f64),
            ("process_open_fds", "gauge", "Number of open file descriptors.", self.open_fds as f64),
            ("process_max_fds", "gauge", "Maximum number of open file descriptors.", self.max_fds as f64),
            ("process_threads", "gauge", "Number of OS threads.", self.threads as f64),
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                self.cpu_seconds,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch in seconds.",
                self.start_time_seconds,
            ),
        ];
        for (name, kind, help, v) in metrics {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let p = super::Process::read();
        assert!(p.resident_bytes > 0 && p.open_fds > 0 && p.threads >= 1, "{p:?}");
        assert!(p.start_time_seconds > 1.0e9, "{p:?}");
    }
}
