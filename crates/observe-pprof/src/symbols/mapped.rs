//! A module's file, mapped read-only: the symbolizer reads its tables in place, so only the
//! pages it touches come into memory (and they are the file's, which the kernel can drop), and
//! unmapping gives them back.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::File;
use std::os::fd::AsRawFd;

/// A file mapped into memory, unmapped when dropped.
pub(crate) struct MappedFile {
    start: *mut c_void,
    len: usize,
}

impl MappedFile {
    /// Maps the file at `path`; `None` if it cannot be opened or mapped (or is empty).
    pub(crate) fn open(path: &str) -> Option<MappedFile> {
        let file = File::open(path).ok()?;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a fresh private read-only mapping of a file we opened; the kernel checks the
        // arguments. The mapping outlives the descriptor, which is closed below.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        (start != libc::MAP_FAILED).then_some(MappedFile { start, len })
    }

    /// Gives back the pages read so far (they are read again from the page cache if touched
    /// again): a reader that goes through the file piece by piece calls it between pieces, so
    /// the process holds one piece's pages at a time, not every page it has read.
    pub(crate) fn release_pages(&self) {
        // SAFETY: the range is this read-only private mapping, which no one writes: dropping
        // its pages changes nothing a reader sees.
        unsafe { libc::madvise(self.start, self.len, libc::MADV_DONTNEED) };
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, and lives as long as `self`. A file
        // changed under it changes these bytes, which the parsers read as untrusted input.
        unsafe { std::slice::from_raw_parts(self.start.cast::<u8>(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `open` and is unmapped once, here.
        unsafe { libc::munmap(self.start, self.len) };
    }
}
