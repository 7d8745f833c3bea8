//! Reading a local object on the request's own thread, when the kernel can answer from memory.
//!
//! A read on Tokio's blocking pool costs two thread hand-offs (there and back); under a read
//! load, skipping them for objects already in memory raised the reads per second by about an
//! eighth (BENCHMARKS.md). But a request's thread serves many connections and must never wait
//! for a disk, so the fast path asks the kernel not to wait: `openat2` with `RESOLVE_CACHED`
//! fails unless every component of the path is in the directory-entry cache, and `preadv2`
//! with `RWF_NOWAIT` fails or reads short unless the data is in the page cache. Anything short
//! of the whole object (or a kernel or file system without these calls) answers `None`, and
//! the caller reads on the blocking pool as before.

use std::path::Path;

/// The whole file, if the kernel has all of it in memory; `None` otherwise (including when the
/// file does not exist: the caller's ordinary read reports that).
#[cfg(target_os = "linux")]
pub fn read_if_cached(path: &Path) -> Option<Vec<u8>> {
    use std::io::IoSliceMut;

    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    use rustix::io::{ReadWriteFlags, preadv2};

    let fd = openat2(CWD, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::CACHED).ok()?;
    let file = std::fs::File::from(fd);
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    let mut bytes = vec![0; len];
    let read = preadv2(&file, &mut [IoSliceMut::new(&mut bytes)], 0, ReadWriteFlags::NOWAIT).ok()?;
    (read == len).then_some(bytes)
}

#[cfg(not(target_os = "linux"))]
pub fn read_if_cached(_path: &Path) -> Option<Vec<u8>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_whole_file_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        let content: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        // Just written, so in the page cache wherever the calls exist; either way never a
        // partial or different answer.
        if let Some(bytes) = read_if_cached(&path) {
            assert_eq!(bytes, content);
        }
        assert_eq!(read_if_cached(&dir.path().join("missing")), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_just_written_is_read_from_memory_on_this_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        std::fs::write(&path, b"sealed bytes").unwrap();
        let _ = std::fs::read(&path).unwrap();
        let probe = rustix::fs::openat2(
            rustix::fs::CWD,
            &path,
            rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
            rustix::fs::ResolveFlags::CACHED,
        );
        // Kernels before 5.12 have no RESOLVE_CACHED: the fast path is off there, by design.
        if probe.is_ok() {
            assert_eq!(read_if_cached(&path).as_deref(), Some(&b"sealed bytes"[..]));
        }
    }
}
