//! Facts about the guest read from `/proc`: boot id, memory, load.

use std::fs;

/// The kernel's boot id, or `unknown` when `/proc` is not mounted.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Resident set size of this process, KiB.
pub fn self_rss_kb() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| field_kb(&s, "VmRSS:"))
        .unwrap_or(0)
}

/// `(total, available)` guest memory, KiB.
pub fn meminfo_kb() -> (u64, u64) {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    (
        field_kb(&text, "MemTotal:").unwrap_or(0),
        field_kb(&text, "MemAvailable:").unwrap_or(0),
    )
}

/// Load averages over 1, 5 and 15 minutes.
pub fn load_avg() -> [f64; 3] {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

fn field_kb(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_machine() {
        assert!(self_rss_kb() > 0);
        let (total, avail) = meminfo_kb();
        assert!(total > 0 && avail <= total);
        assert_ne!(boot_id(), "unknown");
    }
}
