//! Access patterns over a range of pages: sequential, reverse (sequential from the end), uniform
//! random, zipfian (scrambled, so the hot pages are spread over the range as in YCSB) and strided.

use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

/// Which pages a thread touches, in which order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// 0, 1, 2, ... wrapping around.
    Sequential,
    /// n-1, n-2, ..., 0, wrapping around (an array walked backwards).
    Reverse,
    /// Uniformly random pages.
    Random,
    /// Zipfian popularity (parameter theta), hot pages scattered over the range.
    Zipfian,
    /// Every `stride`-th page, then the same shifted by one, ...
    Strided,
}

impl Pattern {
    /// All patterns, in the order reports list them.
    pub const ALL: [Pattern; 5] = [
        Pattern::Sequential,
        Pattern::Reverse,
        Pattern::Random,
        Pattern::Zipfian,
        Pattern::Strided,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Sequential => "sequential",
            Pattern::Reverse => "reverse",
            Pattern::Random => "random",
            Pattern::Zipfian => "zipfian",
            Pattern::Strided => "strided",
        }
    }
}

/// An endless sequence of page indices in `0..pages`.
pub struct Pages {
    kind: Kind,
    k: u64,
    pages: u64,
}

enum Kind {
    Sequential,
    Reverse,
    Random(rand::rngs::StdRng),
    Zipfian(rand::rngs::StdRng, Zipf<f64>, Vec<u32>),
    Strided(u64),
}

impl Pages {
    /// The sequence `pattern` over `pages` pages, reproducible from `seed`.
    pub fn new(pattern: Pattern, pages: usize, seed: u64, theta: f64, stride: usize) -> Self {
        assert!(pages > 0, "no pages to touch");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let kind = match pattern {
            Pattern::Sequential => Kind::Sequential,
            Pattern::Reverse => Kind::Reverse,
            Pattern::Random => Kind::Random(rng),
            Pattern::Zipfian => {
                let zipf = Zipf::new(pages as f64, theta).expect("theta must be >= 0");
                let mut perm: Vec<u32> = (0..pages as u32).collect();
                perm.shuffle(&mut rng);
                Kind::Zipfian(rng, zipf, perm)
            }
            Pattern::Strided => Kind::Strided(stride.max(1) as u64),
        };
        Self {
            kind,
            k: 0,
            pages: pages as u64,
        }
    }
}

impl Iterator for Pages {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let k = self.k;
        self.k += 1;
        let n = self.pages;
        let page = match &mut self.kind {
            Kind::Sequential => k % n,
            Kind::Reverse => n - 1 - k % n,
            Kind::Random(rng) => rng.random_range(0..n),
            Kind::Zipfian(rng, zipf, perm) => {
                let rank = zipf.sample(rng) as u64; // 1..=n
                u64::from(perm[(rank.clamp(1, n) - 1) as usize])
            }
            Kind::Strided(s) => {
                // Pages p ≡ lane (mod s), lane by lane.
                let s = (*s).min(n);
                let per_lane = n.div_ceil(s);
                let round = k % (per_lane * s);
                let (lane, i) = (round / per_lane, round % per_lane);
                let p = lane + i * s;
                if p < n {
                    p
                } else {
                    // Past the end of a short lane: wrap into the next lane's start.
                    (lane + 1) % s
                }
            }
        };
        Some(page as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_and_strided_cover_every_page() {
        for (pattern, pages) in [
            (Pattern::Sequential, 100),
            (Pattern::Reverse, 100),
            (Pattern::Strided, 64),
        ] {
            let seen: std::collections::BTreeSet<usize> = Pages::new(pattern, pages, 1, 0.99, 16)
                .take(pages)
                .collect();
            assert_eq!(seen.len(), pages, "{pattern:?}");
        }
        let first: Vec<usize> = Pages::new(Pattern::Strided, 64, 1, 0.99, 16)
            .take(5)
            .collect();
        assert_eq!(first, [0, 16, 32, 48, 1]);
        let back: Vec<usize> = Pages::new(Pattern::Reverse, 3, 1, 0.99, 1)
            .take(4)
            .collect();
        assert_eq!(back, [2, 1, 0, 2]);
    }

    #[test]
    fn zipfian_is_skewed_and_random_is_not() {
        let count_top = |pattern| {
            let mut hits = vec![0u32; 1000];
            for p in Pages::new(pattern, 1000, 7, 0.99, 1).take(100_000) {
                hits[p] += 1;
            }
            hits.sort_unstable_by(|a, b| b.cmp(a));
            hits[..10].iter().sum::<u32>()
        };
        // The 1 % hottest pages take a large share under zipfian, about 1 % under random.
        assert!(count_top(Pattern::Zipfian) > 20_000);
        assert!(count_top(Pattern::Random) < 3_000);
    }

    #[test]
    fn reproducible_and_in_range() {
        let a: Vec<usize> = Pages::new(Pattern::Random, 50, 3, 0.99, 1)
            .take(200)
            .collect();
        let b: Vec<usize> = Pages::new(Pattern::Random, 50, 3, 0.99, 1)
            .take(200)
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|p| *p < 50));
    }
}
