//! The benchmark workload's memory: one anonymous mapping (made through libc's `mmap`, so the
//! node agent's preload shim registers it), with word access that the compiler cannot elide
//! and `mincore(2)` to tell a resident page from one that is not.

use std::ptr::NonNull;

/// Bytes in a page.
pub const PAGE: usize = 4096;

/// An anonymous private read-write mapping, unmapped on drop.
pub struct Region {
    base: NonNull<u8>,
    pages: usize,
}

// SAFETY: the region is plain memory owned by this value; threads touch it only through the
// volatile word accessors below, and the workload gives each thread its own pages.
unsafe impl Send for Region {}
// SAFETY: as above; shared access is by volatile reads and writes of aligned words.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `pages` pages.
    pub fn map(pages: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing overlaps
        // nothing of ours; the result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self { base, pages })
    }

    /// Pages mapped.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Start address.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn word_ptr(&self, page: usize, word: usize) -> *mut u64 {
        assert!(
            page < self.pages && word < PAGE / 8,
            "access outside the region"
        );
        // SAFETY: in bounds by the assertion; the mapping is page aligned, so the word is too.
        unsafe { self.base.as_ptr().add(page * PAGE + word * 8).cast::<u64>() }
    }

    /// Reads word `word` of page `page`.
    pub fn read(&self, page: usize, word: usize) -> u64 {
        // SAFETY: the pointer is in bounds and aligned (word_ptr); the mapping lives as long as
        // self; a volatile read so every touch really reaches memory.
        unsafe { std::ptr::read_volatile(self.word_ptr(page, word)) }
    }

    /// Writes word `word` of page `page`.
    pub fn write(&self, page: usize, word: usize, value: u64) {
        // SAFETY: as in `read`; each page is written by one thread only (the workload's split).
        unsafe { std::ptr::write_volatile(self.word_ptr(page, word), value) }
    }

    /// Whether page `page` is resident (mapped in this process) right now.
    pub fn resident(&self, page: usize) -> bool {
        let mut vec = 0u8;
        // SAFETY: one page in bounds of our mapping, one byte of output that lives on the stack.
        let r = unsafe { libc::mincore(self.word_ptr(page, 0).cast(), PAGE, &mut vec) };
        r == 0 && vec & 1 == 1
    }

    /// Resident pages of the whole region.
    pub fn resident_pages(&self) -> usize {
        let mut vec = vec![0u8; self.pages];
        // SAFETY: the whole mapping, with one output byte per page in `vec`.
        let r = unsafe {
            libc::mincore(
                self.base.as_ptr().cast(),
                self.pages * PAGE,
                vec.as_mut_ptr(),
            )
        };
        if r != 0 {
            return 0;
        }
        vec.iter().filter(|b| **b & 1 == 1).count()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference into it outlives self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.pages * PAGE) };
    }
}
