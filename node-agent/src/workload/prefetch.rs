//! Runs of remote faults (pure, no I/O): which run a fault continues, in which direction, and how
//! long it is, so that the fault path can prefetch the pages that come next.

use crate::pages::PAGE;

/// Runs of remote faults tracked per process.
pub(super) const STREAMS: usize = 8;

/// Finds the run a remote fault at `page` continues (else starts one, forgetting the least
/// recently used beyond [`STREAMS`]), moves it to the front as `(page, run, down)`, and returns
/// its new length and direction.
pub(super) fn track_stream(streams: &mut Vec<(u64, u32, bool)>, page: u64) -> (u32, bool) {
    let found = streams.iter().enumerate().find_map(|(i, &s)| {
        let (run, down) = continue_run(s, page);
        (run > 0).then_some((i, run, down))
    });
    let (run, down) = match found {
        Some((i, run, down)) => {
            streams.remove(i);
            (run, down)
        }
        None => {
            streams.truncate(STREAMS - 1);
            (0, false)
        }
    };
    streams.insert(0, (page, run, down));
    (run, down)
}

/// The run a remote fault at `page` makes after `(end of the last fetch, run, down)`: one longer
/// if it is the next page in the run's direction (either, when no run is under way), else none.
fn continue_run((last, run, down): (u64, u32, bool), page: u64) -> (u32, bool) {
    if page == last.wrapping_add(PAGE) && (run == 0 || !down) {
        (run + 1, false)
    } else if page == last.wrapping_sub(PAGE) && (run == 0 || down) {
        (run + 1, true)
    } else {
        (0, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_fault_runs_go_either_way_and_continue_after_a_prefetch() {
        let p = 100 * PAGE;
        // Up: p, p+1, p+2 make a run of 2 (the prefetch threshold).
        let (r, d) = continue_run((0, 0, false), p);
        assert_eq!((r, d), (0, false));
        let (r, d) = continue_run((p, r, d), p + PAGE);
        let (r, d) = continue_run((p + PAGE, r, d), p + 2 * PAGE);
        assert_eq!((r, d), (2, false));
        // After a prefetch that ended at p+6, a fault at p+7 continues the run.
        assert_eq!(continue_run((p + 6 * PAGE, r, d), p + 7 * PAGE), (3, false));
        // Down, the same.
        let (r, d) = continue_run((p, 0, false), p - PAGE);
        let (r, d) = continue_run((p - PAGE, r, d), p - 2 * PAGE);
        assert_eq!((r, d), (2, true));
        // A turn or a jump ends a run.
        assert_eq!(continue_run((p, 3, true), p + PAGE), (0, false));
        assert_eq!(continue_run((p, 3, false), p + 9 * PAGE), (0, false));
    }

    #[test]
    fn two_threads_walking_their_own_pages_keep_their_own_runs() {
        let (a, b) = (100 * PAGE, 5000 * PAGE);
        let mut s = Vec::new();
        let mut last = (0, false);
        for i in 0..3 {
            last = track_stream(&mut s, a + i * PAGE);
            track_stream(&mut s, b - i * PAGE);
        }
        assert_eq!(
            last,
            (2, false),
            "the upward run survives the other thread's faults"
        );
        assert_eq!(track_stream(&mut s, b - 3 * PAGE), (3, true));
        // Random faults start runs of their own and push the oldest out, at most STREAMS.
        for i in 0..20 {
            track_stream(&mut s, (10_000 + 7 * i) * PAGE);
        }
        assert_eq!(s.len(), STREAMS);
        assert_eq!(track_stream(&mut s, a + 3 * PAGE), (0, false));
    }
}
