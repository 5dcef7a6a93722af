//! A writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Written here rather than by the `cpio` tool so the archive holds device nodes and root ownership
//! without running as root, and its bytes depend only on its inputs (fixed mtimes), which keeps the
//! image cache key honest.

use std::collections::BTreeSet;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// An archive being written, entry by entry, to `W`.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    /// Directories written so far: adding one twice is a no-op.
    dirs: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (parents must be added first); a directory already added is skipped.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        if !self.dirs.insert(path.to_owned()) {
            return Ok(());
        }
        self.entry(path, S_IFDIR | mode, 0, &[])
    }

    /// Adds a directory owned by `uid`:`gid` (a user's home).
    pub fn dir_owned(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
        if !self.dirs.insert(path.to_owned()) {
            return Ok(());
        }
        self.entry_owned(path, S_IFDIR | mode, 0, (uid, gid), &[])
    }

    /// Adds the missing ancestors of `path` (mode 0755), outermost first: the kernel's unpacker
    /// does not create them.
    pub fn parents(&mut self, path: &str) -> io::Result<()> {
        let ancestors: Vec<&str> = std::path::Path::new(path)
            .ancestors()
            .skip(1)
            .filter_map(|p| p.to_str())
            .filter(|p| !p.is_empty() && *p != "/")
            .collect();
        for dir in ancestors.into_iter().rev() {
            self.dir(dir, 0o755)?;
        }
        Ok(())
    }

    /// Adds a regular file with `data` as its content.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | mode, 0, data)
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 0, target.as_bytes())
    }

    /// Adds a character device node (e.g. `/dev/console`, which the kernel opens before `/init`).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | mode, (major << 8) | minor, &[])
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 0, &[])?;
        // Pad to a 512-byte block, as cpio tools do.
        let pad = (512 - (self.written % 512)) % 512;
        self.out.write_all(&vec![0u8; pad as usize])?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: u32, data: &[u8]) -> io::Result<()> {
        self.entry_owned(path, mode, rdev, (0, 0), data)
    }

    fn entry_owned(
        &mut self,
        path: &str,
        mode: u32,
        rdev: u32,
        (uid, gid): (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            mtime = 0,
            size = data.len(),
            dmaj = 0,
            dmin = 0,
            rmaj = rdev >> 8,
            rmin = rdev & 0xff,
            namesize = name.len() + 1,
            check = 0,
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.align4()?;
        self.put(data)?;
        self.align4()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn align4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4)) % 4;
        self.put(&[0u8; 3][..pad as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/bin", 0o755).unwrap();
        w.file("/bin/x", 0o755, b"hello").unwrap();
        w.symlink("/init", "/bin/x").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 512, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("TRAILER!!!"));
        // The second header starts 4-aligned.
        let second = text
            .find("070701")
            .and_then(|_| text[6..].find("070701"))
            .unwrap()
            + 6;
        assert_eq!(second % 4, 0);
    }
}
