//! Facts about the guest read from `/proc`: boot id, memory, load.

use std::fs;

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
}
