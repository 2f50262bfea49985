//! Page frames carved out of large zeroed chunks, so a stored page costs 4 KiB plus a few bytes
//! of bookkeeping instead of one heap allocation each.

use yonder_common::PAGE_SIZE;

/// Frames per chunk: 1 MiB chunks, allocated zeroed so untouched frames cost no resident memory.
const CHUNK_FRAMES: usize = 256;

/// A pool of 4 KiB frames addressed by a `u32` index.
#[derive(Default)]
pub struct FramePool {
    chunks: Vec<Box<[u8]>>,
    free: Vec<u32>,
    fresh: u32,
}

impl FramePool {
    /// Hands out a frame: a recycled one if any, else the next never-used one.
    pub fn alloc(&mut self) -> u32 {
        if let Some(frame) = self.free.pop() {
            return frame;
        }
        if self.fresh as usize == self.chunks.len() * CHUNK_FRAMES {
            // calloc of a large block maps fresh zero pages lazily: only touched frames count.
            self.chunks
                .push(vec![0u8; CHUNK_FRAMES * PAGE_SIZE].into_boxed_slice());
        }
        self.fresh += 1;
        self.fresh - 1
    }

    /// Returns a frame to the pool; its old bytes are overwritten by the next write to it.
    pub fn release(&mut self, frame: u32) {
        self.free.push(frame);
    }

    fn locate(frame: u32) -> (usize, usize) {
        let f = frame as usize;
        (f / CHUNK_FRAMES, (f % CHUNK_FRAMES) * PAGE_SIZE)
    }

    /// The bytes of a frame.
    pub fn page(&self, frame: u32) -> &[u8] {
        let (chunk, off) = Self::locate(frame);
        &self.chunks[chunk][off..off + PAGE_SIZE]
    }

    /// The bytes of a frame, for writing.
    pub fn page_mut(&mut self, frame: u32) -> &mut [u8] {
        let (chunk, off) = Self::locate(frame);
        &mut self.chunks[chunk][off..off + PAGE_SIZE]
    }

    /// Frames currently handed out.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.fresh as usize - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_distinct_and_recycled() {
        let mut pool = FramePool::default();
        let frames: Vec<u32> = (0..600).map(|_| pool.alloc()).collect();
        for (i, &f) in frames.iter().enumerate() {
            pool.page_mut(f).fill(i as u8);
        }
        for (i, &f) in frames.iter().enumerate() {
            assert!(pool.page(f).iter().all(|&b| b == i as u8));
        }
        pool.release(frames[3]);
        assert_eq!(pool.in_use(), 599);
        assert_eq!(pool.alloc(), frames[3]);
        assert_eq!(pool.in_use(), 600);
    }
}
