//! Broker process figures from /proc: CPU seconds and peak RSS.

pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// The sum over several processes (a cluster's brokers); None if any cannot be read.
pub fn sample_all(pids: &[u32]) -> Option<ProcessSample> {
    if pids.is_empty() {
        return None;
    }
    let mut total = ProcessSample {
        cpu_seconds: 0.0,
        peak_rss_bytes: 0,
    };
    for pid in pids {
        let one = sample(*pid)?;
        total.cpu_seconds += one.cpu_seconds;
        total.peak_rss_bytes += one.peak_rss_bytes;
    }
    Some(total)
}

pub fn sample(pid: u32) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(ProcessSample {
        cpu_seconds: (utime + stime) / ticks,
        peak_rss_bytes: hwm_kb * 1024,
    })
}
