//! A clone is a fork the programs in it never see: every process in it goes on with the random
//! state its user-space generator had in the snapshot, the same as in each sibling clone.
//!
//! Generators that keep state in user space notice a fork through a page marked
//! `MADV_WIPEONFORK` (BoringSSL, in every Chromium process: its TLS randoms and keys, its
//! tokens): the kernel gives a child that page zeroed, and the generator, finding its mark gone,
//! reseeds from the kernel on its next use. After a clone's reseed the agent does what a fork
//! would: it zeroes each such page in every process, so each generator reseeds from the
//! reseeded kernel, and the processes keep running (stopping and restarting Chromium's services
//! instead cost seconds under emulation and left the other processes' generators as they were).
//!
//! Zeroing such a page is always allowed to its owner: it is what a fork does to it. A mapping
//! larger than [`MAX_WIPE`] is left alone (and logged): writing it would populate memory the
//! process only reserved.

use std::fs;
use std::os::unix::fs::FileExt;

use tracing::{debug, warn};

/// The largest wipe-on-fork mapping zeroed (a generator's mark is one page).
const MAX_WIPE: u64 = 64 * 1024;

/// What [`wipe_all`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wiped {
    /// Processes with at least one page zeroed.
    pub processes: usize,
    /// Pages zeroed, in all.
    pub pages: u64,
}

/// Zeroes the wipe-on-fork pages of every process but the agent.
pub fn wipe_all() -> Wiped {
    let me = std::process::id();
    let mut wiped = Wiped::default();
    for pid in crate::system::pids().into_iter().filter(|p| *p != me) {
        let Ok(smaps) = fs::read_to_string(format!("/proc/{pid}/smaps")) else {
            continue; // gone, or a kernel thread's
        };
        let ranges = wipe_on_fork_ranges(&smaps);
        if ranges.is_empty() {
            continue;
        }
        match zero(pid, &ranges) {
            Ok(0) => {}
            Ok(pages) => {
                wiped.processes += 1;
                wiped.pages += pages;
            }
            // A process that ended meanwhile has no state left to share.
            Err(e) => debug!(pid, error = %e, "wipe-on-fork pages not zeroed"),
        }
    }
    wiped
}

/// Zeroes `ranges` in process `pid`'s memory; returns the pages zeroed.
fn zero(pid: u32, ranges: &[(u64, u64)]) -> std::io::Result<u64> {
    let mem = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    let page = [0u8; 4096];
    let mut pages = 0;
    for &(start, end) in ranges {
        if end - start > MAX_WIPE {
            warn!(
                pid,
                bytes = end - start,
                "a large wipe-on-fork mapping was left alone"
            );
            continue;
        }
        let mut at = start;
        while at < end {
            let len = usize::try_from((end - at).min(page.len() as u64)).unwrap_or(page.len());
            mem.write_all_at(&page[..len], at)?;
            at += len as u64;
            pages += 1;
        }
    }
    Ok(pages)
}

/// The address ranges of a `/proc/<pid>/smaps` text whose flags include `wf` (wipe on fork).
fn wipe_on_fork_ranges(smaps: &str) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let mut current = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(range) = current.take() {
                if flags.split_whitespace().any(|f| f == "wf") {
                    ranges.push(range);
                }
            }
        } else if let Some(range) = mapping_range(line) {
            current = Some(range);
        }
    }
    ranges
}

/// The range of a mapping's header line (`7f00-7f01 rw-p ...`); `None` for the other lines.
fn mapping_range(line: &str) -> Option<(u64, u64)> {
    let (range, _) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 1234                       /usr/lib/chromium/chromium
Size:                  4 kB
Rss:                   4 kB
VmFlags: rd mr mw me sd
7f3a10000000-7f3a10001000 rw-p 00000000 00:00 0 
Size:                  4 kB
Rss:                   4 kB
VmFlags: rd wr mr mw me ac sd wf
7f3a20000000-7f3a20002000 rw-p 00000000 00:00 0                          [heap]
Size:                  8 kB
VmFlags: rd wr mr mw me ac sd
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac wf
";

    #[test]
    fn only_mappings_flagged_wipe_on_fork_are_found() {
        assert_eq!(
            wipe_on_fork_ranges(SMAPS),
            vec![
                (0x7f3a_1000_0000, 0x7f3a_1000_1000),
                (0x7ffd_0000_0000, 0x7ffd_0002_1000)
            ]
        );
    }

    #[test]
    fn broken_text_finds_nothing() {
        assert!(wipe_on_fork_ranges("VmFlags: wf\nzz-yy rw-p\nVmFlags: wf\n").is_empty());
        assert!(wipe_on_fork_ranges("").is_empty());
    }

    #[test]
    fn a_wipe_on_fork_page_of_a_real_process_is_zeroed() {
        // This test's own child: a page marked as BoringSSL marks its own, holding a 1.
        // SAFETY: a fresh private anonymous mapping, written and advised before the child
        // exists; the child only reads it.
        let page = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::madvise(p, 4096, libc::MADV_WIPEONFORK), 0);
            *(p as *mut u32) = 1;
            p as *mut u32
        };
        let smaps = fs::read_to_string("/proc/self/smaps").expect("smaps");
        let ranges = wipe_on_fork_ranges(&smaps);
        let at = page as u64;
        assert!(
            ranges.contains(&(at, at + 4096)),
            "{at:x} not in {ranges:x?}"
        );
        // Zeroed through /proc/self/mem, as the agent zeroes another process's.
        assert_eq!(
            zero(std::process::id(), &[(at, at + 4096)]).expect("zero"),
            1
        );
        // SAFETY: the mapping is still ours and mapped.
        assert_eq!(unsafe { std::ptr::read_volatile(page) }, 0);
    }
}
