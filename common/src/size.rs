//! Human-readable byte sizes such as `8GiB` for flags and config files.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A size in bytes that parses from and prints as `8GiB`, `512MiB`, `4096` and the like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid size {0:?}: expected a number with an optional unit such as 512MiB, 8GiB or 2G")]
pub struct SizeError(String);

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|_| SizeError(s.to_string()))
    }
}

impl TryFrom<String> for ByteSize {
    type Error = SizeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        b.to_string()
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec_short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!("8GiB".parse::<ByteSize>().unwrap().0, 8 << 30);
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert_eq!("1 KiB".parse::<ByteSize>().unwrap().0, 1024);
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("-1GiB".parse::<ByteSize>().is_err());
    }
}
