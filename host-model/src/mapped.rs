//! A file mapped read-only into memory: reading a large file this way costs a few page
//! faults, where `read` into a fresh buffer faults in every page of the buffer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The first `len` bytes of a file, mapped read-only and private.
///
/// Whoever replaces the file must write a new one and rename it into place (as
/// `gpu-passthrough bookings import` does): a file truncated in place under a mapping
/// faults its reader.
#[derive(Debug)]
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    pub fn new(file: &File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh private read-only mapping of an open descriptor; the kernel
        // chooses the address, and the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes until `drop` unmaps them, and the
        // slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping `new` made; no slice outlives `self`.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a mapping of `path` is in this process's address space.
    fn mapped_now(path: &std::path::Path) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let name = path.to_str().expect("utf-8 path");
        maps.lines().any(|l| l.ends_with(name))
    }

    #[test]
    fn the_bytes_are_the_files_and_drop_unmaps_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bookings.json");
        std::fs::write(&path, b"{\"bookings\": []}\n").expect("write");
        let file = File::open(&path).expect("open");
        let mapped = Mapped::new(&file, 8).expect("map");
        assert_eq!(mapped.bytes(), b"{\"bookin");
        assert!(mapped_now(&path));
        drop(mapped);
        assert!(!mapped_now(&path), "drop left the mapping");
        let empty = Mapped::new(&file, 0).expect("no mapping");
        assert_eq!(empty.bytes(), b"");
    }
}
