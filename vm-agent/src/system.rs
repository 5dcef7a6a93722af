//! Facts about the guest read from `/proc`: processes, boot id, memory, load.

use std::fs;

/// Every process's id, from `/proc`.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// Field `n` of `/proc/<pid>/stat` counted after the command name (0: state, 1: parent,
/// 3: session); the name may hold spaces and parentheses, so counting starts after its last `)`.
pub fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n)
        .map(str::to_owned)
}

/// A process's parent.
pub fn parent_pid(pid: u32) -> Option<u32> {
    stat_field(pid, 1)?.parse().ok()
}

/// Whether process `pid` is `ancestor` or descends from it (following parents in `/proc`; a
/// program the CLI started detached, in a session of its own, still descends from it).
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut at = pid;
    for _ in 0..64 {
        if at == ancestor {
            return true;
        }
        if at <= 1 {
            return false;
        }
        match parent_pid(at) {
            Some(p) => at = p,
            None => return false,
        }
    }
    false
}

/// The kernel's boot id, or `unknown` when `/proc` is not mounted.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// `bytes` random bytes as lowercase hex, from the kernel's random source (ids that must be
/// unique across agents and not guessable). Falls back to the clock and pid if `/dev/urandom`
/// cannot be read (never seen in practice; the ids stay unique, only not unguessable).
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    let read = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if read.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seed = nanos ^ (u128::from(std::process::id()) << 64);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
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

/// Unmaps the resident pages of the agent's own machine code once start-up is over (argument
/// parsing, the runtime, the hello, compiling the provider rules: code that runs once), so the
/// idle agent keeps resident only what it runs while idle; what it runs later comes back on
/// first use. Only the executable mapping: its pages are never written, so nothing is lost
/// (data and relocated read-only segments are left alone). Returns the bytes advised.
pub fn release_startup_code() -> std::io::Result<usize> {
    let here = release_startup_code as fn() -> std::io::Result<usize> as usize;
    let maps = fs::read_to_string("/proc/self/maps")?;
    let Some((lo, hi)) = maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next()?, fields.next()?);
        let (lo, hi) = range.split_once('-')?;
        let lo = usize::from_str_radix(lo, 16).ok()?;
        let hi = usize::from_str_radix(hi, 16).ok()?;
        (perms == "r-xp" && (lo..hi).contains(&here)).then_some((lo, hi))
    }) else {
        return Ok(0);
    };
    // SAFETY: `lo..hi` is the read-only, private, file-backed mapping of our own code (found by
    // an address inside it). MADV_DONTNEED only drops its page table entries; the next access
    // faults the same unmodified file pages back in, so running code is unaffected.
    let rc = unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
    if rc == 0 {
        Ok(hi - lo)
    } else {
        Err(std::io::Error::last_os_error())
    }
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
    fn startup_code_is_released_and_runs_on() {
        let advised = release_startup_code().expect("madvise");
        assert!(advised > 0, "the code mapping was found");
        // Code the test had run before runs again.
        assert_ne!(boot_id(), "unknown");
    }

    #[test]
    fn reads_this_process_and_machine() {
        assert!(self_rss_kb() > 0);
        let (total, avail) = meminfo_kb();
        assert!(total > 0 && avail <= total);
        assert_ne!(boot_id(), "unknown");
    }

    #[test]
    fn a_child_descends_from_this_process_by_its_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let (me, pid) = (std::process::id(), child.id());
        assert!(pids().contains(&pid));
        assert_eq!(parent_pid(pid), Some(me));
        assert!(matches!(stat_field(pid, 0).as_deref(), Some("S" | "R")));
        assert!(descends_from(pid, me));
        assert!(!descends_from(me, pid));
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
}
