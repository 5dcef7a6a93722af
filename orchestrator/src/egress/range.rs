//! The configured port range.

use std::fmt;
use std::str::FromStr;

/// An inclusive range of egress proxy ports, `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

/// A range that does not parse or is empty.
#[derive(Debug, thiserror::Error)]
#[error("invalid egress port range {0:?} (want first-last, 1 <= first <= last <= 65535)")]
pub struct BadPortRange(String);

impl PortRange {
    /// `first..=last`; `None` when empty or starting at 0.
    pub fn new(first: u16, last: u16) -> Option<Self> {
        (first >= 1 && first <= last).then_some(Self { first, last })
    }

    /// Lowest port.
    pub fn first(self) -> u16 {
        self.first
    }

    /// Highest port.
    pub fn last(self) -> u16 {
        self.last
    }

    /// Number of ports.
    pub fn len(self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Where a search for `user`'s port starts: a hash of the user id (FNV-1a) into the range, so
    /// concurrent assignments for different users spread out instead of racing for the lowest port.
    pub(crate) fn start_for(self, user: &str) -> u16 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in user.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.offset(h % u64::from(self.len()))
    }

    /// The port after `port`, wrapping at the end of the range.
    pub(crate) fn next_after(self, port: u16) -> u16 {
        if port >= self.last || port < self.first {
            self.first
        } else {
            port + 1
        }
    }

    fn offset(self, n: u64) -> u16 {
        // n < len <= 65535, so this stays in range.
        self.first + u16::try_from(n).unwrap_or(0)
    }
}

impl Default for PortRange {
    /// 10001-19999, the range of the upstream proxy.
    fn default() -> Self {
        Self {
            first: 10001,
            last: 19999,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = BadPortRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPortRange(s.to_owned());
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let first = a.trim().parse().map_err(|_| bad())?;
        let last = b.trim().parse().map_err(|_| bad())?;
        PortRange::new(first, last).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            "10001-19999".parse::<PortRange>().expect("parse"),
            PortRange::default()
        );
        assert_eq!(" 5 - 7 ".parse::<PortRange>().expect("parse").len(), 3);
        for bad in ["", "7-5", "0-3", "1-70000", "abc", "5"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn search_starts_inside_the_range_and_wraps() {
        let r = PortRange::new(100, 104).expect("range");
        for u in ["a", "b", "alice", "user-999", ""] {
            assert!(r.contains(r.start_for(u)), "{u}");
        }
        assert_eq!(r.next_after(104), 100);
        assert_eq!(r.next_after(101), 102);
        assert_eq!(r.next_after(7), 100);
    }
}
