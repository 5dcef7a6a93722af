//! Fixed-window rate limits by key (a client address, a user): enough to stop password guessing
//! and VM-booting floods; memory stays bounded by dropping expired windows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most: when full of live windows, new keys are refused (a flood of fresh
/// addresses is limited as a whole instead of growing the map).
const MAX_KEYS: usize = 10_000;

/// At most `limit` hits per key per `window`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    hits: Mutex<Hits>,
}

#[derive(Debug, Default)]
struct Hits {
    windows: HashMap<String, (Instant, u32)>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    /// A limiter of `limit` hits per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            hits: Mutex::new(Hits::default()),
        }
    }

    /// Counts a hit for `key`; `Err(wait)` when over the limit, with how long until it resets.
    pub fn hit(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.window;
        // Expired windows go at most once a window, not on every hit.
        if hits.windows.len() >= MAX_KEYS
            && hits
                .last_sweep
                .is_none_or(|t| now.duration_since(t) >= window)
        {
            hits.windows
                .retain(|_, (start, _)| now.duration_since(*start) < window);
            hits.last_sweep = Some(now);
        }
        if hits.windows.len() >= MAX_KEYS && !hits.windows.contains_key(key) {
            return Err(window);
        }
        let entry = hits.windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return Err(window.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_per_key_and_resets_with_the_window() {
        let limiter = RateLimiter::new(2, Duration::from_millis(200));
        assert!(limiter.hit("a").is_ok());
        assert!(limiter.hit("a").is_ok());
        assert!(limiter.hit("a").is_err(), "third hit in the window");
        assert!(limiter.hit("b").is_ok(), "another key has its own window");
        std::thread::sleep(Duration::from_millis(250));
        assert!(limiter.hit("a").is_ok(), "a new window");
    }

    #[test]
    fn a_flood_of_fresh_keys_is_refused_instead_of_growing_the_map() {
        let limiter = RateLimiter::new(5, Duration::from_secs(60));
        for i in 0..MAX_KEYS {
            assert!(limiter.hit(&i.to_string()).is_ok());
        }
        assert!(limiter.hit("one more").is_err());
        assert!(limiter.hit("0").is_ok(), "known keys keep their windows");
        let hits = limiter.hits.lock().unwrap();
        assert_eq!(hits.windows.len(), MAX_KEYS);
    }
}
