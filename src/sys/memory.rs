//! The master's memory housekeeping, once it is idle: what it touched to start up or to hand
//! over need not stay mapped, and what the allocator holds free can go back to the kernel.

use std::io;

/// What [`trim_resident`] gave back, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trimmed {
    /// Clean pages of read-only file mappings (code, constants) unmapped from this process;
    /// they stay in the page cache, shared with the workers that run the same binary, and are
    /// mapped again on their next use.
    pub(crate) file_kib: u64,
}

/// glibc gives every thread that allocates an arena of its own; the master is one thread with
/// a few short-lived helpers, so one arena is enough. Call before any thread starts.
pub(crate) fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX with a positive value is
    // valid at any time, and the return value (0 on failure) changes nothing we rely on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Unmaps the clean pages of this process's read-only private file mappings (its code and
/// constants, and those of the shared libraries), and returns the allocator's free memory to
/// the kernel. Only mappings without a single private (copied-on-write) page are touched, so
/// nothing is lost: the kernel maps each page again from the file when it is next used.
pub(crate) fn trim_resident() -> io::Result<Trimmed> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut trimmed = Trimmed::default();
    for mapping in clean_read_only_mappings(&smaps) {
        // SAFETY: the range is a whole mapping of this process, private, read-only and backed
        // by a file, with no anonymous (copied) page: MADV_DONTNEED only drops its page-table
        // entries, and every later access faults the same bytes back in from the file. No
        // Rust reference can observe a difference.
        let dropped = unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.end - mapping.start,
                libc::MADV_DONTNEED,
            )
        };
        if dropped == 0 {
            trimmed.file_kib += mapping.rss_kib;
        }
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory at the top of the heaps to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    Ok(trimmed)
}

#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The mappings of `smaps` that are private, not writable, backed by a file (an inode), and
/// hold no anonymous page.
fn clean_read_only_mappings(smaps: &str) -> Vec<Mapping> {
    let mut found = Vec::new();
    let mut current: Option<(Mapping, bool)> = None;
    let mut finish = |current: &mut Option<(Mapping, bool)>| {
        if let Some((mapping, true)) = current.take() {
            found.push(mapping);
        }
    };
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, end)) = first.split_once('-').and_then(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        }) {
            finish(&mut current);
            let perms = words.next().unwrap_or("");
            let inode = words.nth(2).unwrap_or("0");
            let candidate = perms.starts_with('r')
                && !perms.contains('w')
                && perms.ends_with('p')
                && inode != "0";
            let mapping = Mapping {
                start,
                end,
                rss_kib: 0,
            };
            current = Some((mapping, candidate));
            continue;
        }
        let Some((mapping, candidate)) = current.as_mut() else {
            continue;
        };
        let kib = words.next().and_then(|v| v.parse::<u64>().ok());
        match (first, kib) {
            ("Rss:", Some(kib)) => mapping.rss_kib = kib,
            // A private page that is not anonymous is the file's own (in the page cache, dirty
            // or not): dropping its mapping loses nothing. An anonymous one is a copy.
            ("Anonymous:" | "Swap:", Some(kib)) if kib > 0 => *candidate = false,
            _ => {}
        }
    }
    finish(&mut current);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5600-5700 r--p 00000000 08:01 42 /srv/app/app
Rss:                  64 kB
Private_Dirty:         4 kB
Anonymous:             0 kB
5700-5900 r-xp 00100000 08:01 42 /srv/app/app
Rss:                 512 kB
Anonymous:             0 kB
5900-5a00 r--p 00300000 08:01 42 /srv/app/app
Rss:                  60 kB
Private_Dirty:        60 kB
Anonymous:            60 kB
5a00-5b00 rw-p 00400000 08:01 42 /srv/app/app
Rss:                   4 kB
Anonymous:             4 kB
7f00-7f10 r--s 00000000 08:01 43 /dev/shm/x
Rss:                   4 kB
Anonymous:             0 kB
7f10-7f20 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_private_read_only_file_mappings_are_trimmed() {
        let found = clean_read_only_mappings(SMAPS);
        assert_eq!(
            found,
            vec![
                Mapping {
                    start: 0x5600,
                    end: 0x5700,
                    rss_kib: 64
                },
                Mapping {
                    start: 0x5700,
                    end: 0x5900,
                    rss_kib: 512
                },
            ],
            "the relocated (copied) constants, the data, a shared mapping and the vDSO stay"
        );
    }

    #[test]
    fn trimming_this_process_keeps_it_running() {
        let trimmed = trim_resident().unwrap();
        assert!(trimmed.file_kib > 0, "{trimmed:?}");
        // Code runs and constants read the same after their pages were dropped.
        let text = format!("{:?}", (1..5).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(text, "[2, 4, 6, 8]");
    }
}
