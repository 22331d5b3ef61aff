//! Throttling of credential checks: per client address (a token bucket over
//! sign-ups and log-ins) and per account (after repeated wrong passwords the
//! account is locked for a growing time). In memory: a restart forgets it,
//! which only ever errs on the side of letting a user in. With several nodes
//! the account lock-out is kept in the shared database instead
//! (`Cluster::login_failed`), by the same rules ([`LoginGuard::lock_after`]),
//! and the address limit is also counted in the shared store
//! (`Service::throttle_address`), so it holds for the whole cluster.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::presence::RateLimit;
use crate::domain::Email;

/// Entries kept per map before it is cleared (bounds memory under a flood).
const MAX_TRACKED: usize = 100_000;

/// Throttling parameters (from `[auth]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    /// Sign-up and log-in attempts per client address per minute (after a burst of as many).
    pub attempts_per_minute: u32,
    /// Consecutive wrong passwords before an account is locked.
    pub max_failures: u32,
    /// First lock-out; it doubles with every further failure, up to 15 minutes.
    pub lockout: Duration,
}

#[derive(Debug)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

pub struct LoginGuard {
    config: GuardConfig,
    addresses: Mutex<HashMap<IpAddr, RateLimit>>,
    accounts: Mutex<HashMap<Email, Failures>>,
}

/// Longest lock-out of an account.
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);

impl LoginGuard {
    pub fn new(config: GuardConfig) -> Self {
        Self { config, addresses: Mutex::new(HashMap::new()), accounts: Mutex::new(HashMap::new()) }
    }

    /// One credential attempt from `addr`.
    ///
    /// # Errors
    /// How long to wait when the address is over its rate.
    pub fn attempt_from(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = self.addresses.lock().expect("guard lock");
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
        let per_minute = self.config.attempts_per_minute.max(1);
        map.entry(addr).or_insert_with(|| RateLimit::new(f64::from(per_minute) / 60.0, per_minute)).take(now)
    }

    /// Whether the account is locked now.
    ///
    /// # Errors
    /// How long it stays locked.
    pub fn check_account(&self, email: &Email, now: Instant) -> Result<(), Duration> {
        let map = self.accounts.lock().expect("guard lock");
        match map.get(email).and_then(|f| f.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records the outcome of a password check for `email`.
    pub fn record(&self, email: &Email, success: bool, now: Instant) {
        let mut map = self.accounts.lock().expect("guard lock");
        if success {
            map.remove(email);
            return;
        }
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
        let f = map.entry(email.clone()).or_insert(Failures { count: 0, locked_until: None });
        f.count += 1;
        if let Some(lock) = self.lock_after(f.count) {
            f.locked_until = Some(now + lock);
        }
    }

    /// How long an account is locked after `failures` consecutive wrong
    /// passwords: from the `max_failures`-th on, `lockout` doubling with each
    /// further one, at most 15 minutes.
    pub fn lock_after(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.config.max_failures)?;
        Some(self.config.lockout.saturating_mul(1 << over.min(16)).min(MAX_LOCKOUT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> LoginGuard {
        LoginGuard::new(GuardConfig { attempts_per_minute: 3, max_failures: 2, lockout: Duration::from_secs(10) })
    }

    #[test]
    fn addresses_get_a_burst_then_a_rate() {
        let g = guard();
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        for _ in 0..3 {
            assert!(g.attempt_from(a, t).is_ok());
        }
        let wait = g.attempt_from(a, t).unwrap_err();
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(g.attempt_from(b, t).is_ok(), "other addresses are unaffected");
        assert!(g.attempt_from(a, t + Duration::from_secs(20)).is_ok(), "refilled");
    }

    #[test]
    fn accounts_lock_after_failures_with_doubling_and_success_resets() {
        let g = guard();
        let e = Email::parse("a@example.org").unwrap();
        let t = Instant::now();
        g.record(&e, false, t);
        assert!(g.check_account(&e, t).is_ok());
        g.record(&e, false, t);
        assert_eq!(g.check_account(&e, t), Err(Duration::from_secs(10)));
        assert!(g.check_account(&e, t + Duration::from_secs(10)).is_ok(), "expired");
        g.record(&e, false, t);
        assert_eq!(g.check_account(&e, t), Err(Duration::from_secs(20)), "doubled");
        g.record(&e, true, t);
        assert!(g.check_account(&e, t).is_ok());
    }
}
