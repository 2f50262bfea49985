//! The text corpus of `compare`'s `xz` workload: deterministic, word-based pseudo-random text
//! (a generated vocabulary drawn with a Zipf law, in sentences and lines), so that `xz -9` finds
//! real matches and does real work, unlike on random bytes. The same seed and size always give
//! the same bytes.

use std::{io::Write, path::Path};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The seed of the corpus `compare` writes.
pub const SEED: u64 = 0x007a_636f_7270;

/// Words in the generated vocabulary.
const VOCABULARY: usize = 20_000;

/// `bytes` of text from `seed`: words of 1–12 letters drawn from a vocabulary with a Zipf law
/// (s = 1.1, as in natural language), sentences of 4–24 words, lines of at most 78 characters.
pub fn text(bytes: usize, seed: u64) -> anyhow::Result<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let letters = b"etaoinshrdlcumwfgypbvkjxqz";
    let vocabulary: Vec<Vec<u8>> = (0..VOCABULARY)
        .map(|_| {
            let len = rng.random_range(1..=12);
            // Skewed towards the frequent letters, so that words look like words to a compressor.
            (0..len)
                .map(|_| {
                    let a: usize = rng.random_range(0..letters.len());
                    let b: usize = rng.random_range(0..letters.len());
                    letters[a.min(b)]
                })
                .collect()
        })
        .collect();
    let zipf = Zipf::new(VOCABULARY as f64, 1.1).context("the corpus's Zipf law")?;
    let mut out = Vec::with_capacity(bytes + 80);
    let mut line = 0;
    while out.len() < bytes {
        let words = rng.random_range(4..=24);
        for i in 0..words {
            let w = &vocabulary[(zipf.sample(&mut rng) as usize - 1).min(VOCABULARY - 1)];
            if line + w.len() + 2 > 78 {
                out.push(b'\n');
                line = 0;
            } else if line > 0 {
                out.push(b' ');
                line += 1;
            }
            let start = out.len();
            out.extend_from_slice(w);
            if i == 0 {
                out[start] = out[start].to_ascii_uppercase();
            }
            line += w.len();
        }
        out.push(if rng.random_bool(0.1) { b'?' } else { b'.' });
        line += 1;
        if rng.random_bool(0.05) {
            out.extend_from_slice(b"\n\n");
            line = 0;
        }
    }
    out.truncate(bytes);
    Ok(out)
}

/// Writes `bytes` of [`text`] from `seed` to `path`.
pub fn write(path: &Path, bytes: usize, seed: u64) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&text(bytes, seed)?)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_text_of_the_size_asked() {
        let a = text(100_000, 1).unwrap();
        assert_eq!(a.len(), 100_000);
        assert_eq!(a, text(100_000, 1).unwrap());
        assert_ne!(a, text(100_000, 2).unwrap());
        assert!(a
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n'));
        assert!(a.split(|b| *b == b'\n').all(|l| l.len() <= 78));
    }
}
