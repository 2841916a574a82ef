//! One node-wide index of the idempotency keys of recent requests.
//!
//! A key is bound to a fingerprint of the request that first used it (its
//! endpoint, database, precision, `accept_partial`, encoding and body as
//! sent). Before anything is appended the key is claimed here, whichever
//! address or proxy the request came through, so that:
//!
//! - a retry of a stored request (same key, same fingerprint) is answered as
//!   the first was and stores nothing again, even when it arrives from
//!   another address and would land in another partition;
//! - the same key with another request is refused (422), never stored twice
//!   nor dropped behind a 204;
//! - the same key while its first request is still being handled is refused
//!   with 409, and the client retries once that one has its answer.
//!
//! What a sender can rely on: a stored request's key is remembered for
//! `window` after it was stored, unless its owner (the token it was sent
//! with, or its address when it had none) has stored `keys_per_owner_max`
//! keyed requests since, or the node holds `keys_max` keys and that owner
//! holds the most of them. One busy sender thus pushes out only its own keys.
//! A key past those bounds may still be recognised by the log of the
//! partition its request went to (which keeps the last keys of each partition
//! for 15 minutes, with their fingerprints): then a retry is still stored once
//! and another request with it still refused with 422, only from the address
//! the first came from. A key whose request stored nothing (refused, or failed) is forgotten at
//! once and may be sent again. After a restart the index starts from the keys
//! the log still remembers, with their fingerprints.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use nublar_bus::Fingerprint;

use crate::limits::IdempotencyConfig;

/// What a request with a key may do.
pub(crate) enum Claim<'a> {
    /// The key is new: go on, and say through the ticket whether it stored.
    Fresh(Ticket<'a>),
    /// The same request was stored: answer as it was, store nothing.
    Replay,
    /// The first request with this key is still being handled.
    InFlight,
    /// The key was used for another request.
    Reused,
}

pub(crate) struct KeyIndex {
    config: IdempotencyConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Arc<str>, Entry>,
    /// Every entry in the order it was made, for expiry; an item whose serial
    /// is not its entry's any more is a leftover, skipped and dropped.
    order: VecDeque<(u64, Arc<str>)>,
    /// Each owner's entries in the order they were made.
    owners: HashMap<Arc<str>, VecDeque<(u64, Arc<str>)>>,
    /// Each owner's live entries, to find the owner holding the most.
    counts: HashMap<Arc<str>, usize>,
    by_count: BTreeSet<(usize, Arc<str>)>,
    serial: u64,
}

struct Entry {
    serial: u64,
    /// `None` for a key the log remembered without one (written before
    /// fingerprints): any request with it is taken for a retry.
    fingerprint: Option<Fingerprint>,
    /// `None` for keys restored from the log, which counts no owner.
    owner: Option<Arc<str>>,
    stored: bool,
    /// When it was stored (or claimed), in ms since the epoch.
    at_ms: i64,
}

/// A fresh claim; dropping it without [`Ticket::stored`] forgets the key.
pub(crate) struct Ticket<'a> {
    index: &'a KeyIndex,
    key: Arc<str>,
    serial: u64,
    stored: bool,
}

impl Ticket<'_> {
    /// The request's batch is in the log: from now on the key answers retries.
    pub fn stored(mut self) {
        self.stored = true;
        let mut state = self.index.state.lock().unwrap();
        if let Some(entry) = state.entries.get_mut(&self.key)
            && entry.serial == self.serial
        {
            entry.stored = true;
            entry.at_ms = now_ms();
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.stored {
            let mut state = self.index.state.lock().unwrap();
            if state
                .entries
                .get(&self.key)
                .is_some_and(|entry| entry.serial == self.serial)
            {
                state.remove(&self.key);
            }
        }
    }
}

impl KeyIndex {
    pub fn new(config: IdempotencyConfig) -> KeyIndex {
        KeyIndex {
            config,
            state: Mutex::default(),
        }
    }

    /// Claims `key` (already `<db>/<key>`) for a request with `fingerprint`
    /// from `owner`.
    pub fn claim(&self, key: &str, fingerprint: Fingerprint, owner: &str) -> Claim<'_> {
        let now = now_ms();
        let mut state = self.state.lock().unwrap();
        state.expire(now, self.config.window_ms);
        if let Some(entry) = state.entries.get(key) {
            return match (entry.stored, entry.fingerprint) {
                (false, _) => Claim::InFlight,
                (true, Some(first)) if first != fingerprint => Claim::Reused,
                (true, _) => Claim::Replay,
            };
        }
        let owner: Arc<str> = Arc::from(owner);
        if state.counts.get(&owner).copied().unwrap_or(0) >= self.config.keys_per_owner_max {
            state.evict_oldest_of(&owner);
        }
        if state.entries.len() >= self.config.keys_max {
            state.evict_from_largest();
        }
        let key: Arc<str> = Arc::from(key);
        let serial = state.insert(key.clone(), Some(fingerprint), Some(owner), false, now);
        Claim::Fresh(Ticket {
            index: self,
            key,
            serial,
            stored: false,
        })
    }

    /// A key the log remembers from before a restart.
    pub fn restore(&self, key: &str, fingerprint: Option<Fingerprint>, stored_ms: i64) {
        let now = now_ms();
        if now - stored_ms > self.config.window_ms {
            return;
        }
        let mut state = self.state.lock().unwrap();
        if state.entries.contains_key(key) {
            return;
        }
        if state.entries.len() >= self.config.keys_max {
            state.evict_from_largest();
        }
        state.insert(Arc::from(key), fingerprint, None, true, stored_ms);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }
}

impl State {
    fn insert(
        &mut self,
        key: Arc<str>,
        fingerprint: Option<Fingerprint>,
        owner: Option<Arc<str>>,
        stored: bool,
        at_ms: i64,
    ) -> u64 {
        self.serial += 1;
        let serial = self.serial;
        self.order.push_back((serial, key.clone()));
        if let Some(owner) = &owner {
            self.owners
                .entry(owner.clone())
                .or_default()
                .push_back((serial, key.clone()));
            self.change_count(owner, 1);
        }
        self.entries.insert(
            key,
            Entry {
                serial,
                fingerprint,
                owner,
                stored,
                at_ms,
            },
        );
        self.compact();
        serial
    }

    fn remove(&mut self, key: &Arc<str>) {
        if let Some(entry) = self.entries.remove(key)
            && let Some(owner) = entry.owner
        {
            self.change_count(&owner, -1);
        }
    }

    fn live(&self, serial: u64, key: &str) -> bool {
        self.entries
            .get(key)
            .is_some_and(|entry| entry.serial == serial)
    }

    /// Drops stored entries older than the window, oldest first. Entries in
    /// flight are bounded by the requests in flight and wait for their answer.
    fn expire(&mut self, now_ms: i64, window_ms: i64) {
        while let Some((serial, key)) = self.order.front().cloned() {
            if !self.live(serial, &key) {
                self.order.pop_front();
                continue;
            }
            let entry = &self.entries[&key];
            if !entry.stored || now_ms - entry.at_ms <= window_ms {
                break;
            }
            self.order.pop_front();
            self.remove(&key);
        }
    }

    fn evict_oldest_of(&mut self, owner: &Arc<str>) {
        let Some(queue) = self.owners.get_mut(owner) else {
            return;
        };
        while let Some((serial, key)) = queue.pop_front() {
            let live = self
                .entries
                .get(&key)
                .is_some_and(|entry| entry.serial == serial);
            if live {
                self.remove(&key);
                return;
            }
        }
    }

    /// Makes room for one more key at the cost of the owner holding the most,
    /// or, when only restored keys are left, of the oldest key.
    fn evict_from_largest(&mut self) {
        if let Some((_, owner)) = self.by_count.iter().next_back().cloned() {
            self.evict_oldest_of(&owner);
            return;
        }
        while let Some((serial, key)) = self.order.pop_front() {
            if self.live(serial, &key) {
                self.remove(&key);
                return;
            }
        }
    }

    fn change_count(&mut self, owner: &Arc<str>, by: isize) {
        let count = self.counts.entry(owner.clone()).or_default();
        self.by_count.remove(&(*count, owner.clone()));
        *count = count
            .checked_add_signed(by)
            .expect("counts never go below zero");
        if *count == 0 {
            self.counts.remove(owner);
            self.owners.remove(owner);
        } else {
            self.by_count.insert((*count, owner.clone()));
        }
    }

    /// Keeps the queues' leftovers (forgotten keys) from outgrowing the live
    /// entries: one pass over a queue each time it doubles past them.
    fn compact(&mut self) {
        let entries = &self.entries;
        let live = |item: &(u64, Arc<str>)| {
            entries
                .get(&item.1)
                .is_some_and(|entry| entry.serial == item.0)
        };
        if self.order.len() > 2 * self.entries.len() + 1024 {
            self.order.retain(live);
        }
        for (owner, queue) in self.owners.iter_mut() {
            let count = self.counts.get(owner).copied().unwrap_or(0);
            if queue.len() > 2 * count + 64 {
                queue.retain(live);
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_owner: usize, total: usize) -> IdempotencyConfig {
        IdempotencyConfig {
            window_ms: 60_000,
            keys_per_owner_max: per_owner,
            keys_max: total,
        }
    }

    fn store(index: &KeyIndex, key: &str, fingerprint: u8, owner: &str) {
        match index.claim(key, [fingerprint; 16], owner) {
            Claim::Fresh(ticket) => ticket.stored(),
            _ => panic!("{key} was not fresh"),
        }
    }

    #[test]
    fn a_key_answers_retries_refuses_other_requests_and_waits_for_its_first() {
        let index = KeyIndex::new(config(10, 100));
        let Claim::Fresh(ticket) = index.claim("park/a", [1; 16], "token:collars") else {
            panic!("fresh")
        };
        assert!(matches!(
            index.claim("park/a", [1; 16], "10.0.0.9"),
            Claim::InFlight
        ));
        ticket.stored();
        assert!(matches!(
            index.claim("park/a", [1; 16], "10.0.0.9"),
            Claim::Replay
        ));
        assert!(matches!(
            index.claim("park/a", [2; 16], "token:collars"),
            Claim::Reused
        ));
        // A request that stored nothing leaves its key free.
        let Claim::Fresh(ticket) = index.claim("park/b", [3; 16], "token:collars") else {
            panic!("fresh")
        };
        drop(ticket);
        assert!(matches!(
            index.claim("park/b", [4; 16], "token:collars"),
            Claim::Fresh(_)
        ));
    }

    #[test]
    fn a_busy_owner_pushes_out_only_its_own_keys() {
        let index = KeyIndex::new(config(50, 120));
        for quiet in 0..30 {
            store(
                &index,
                &format!("park/quiet-{quiet}"),
                1,
                &format!("sensor-{quiet}"),
            );
        }
        for busy in 0..10_000 {
            store(&index, &format!("park/busy-{busy}"), 1, "busy");
        }
        for quiet in 0..30 {
            assert!(
                matches!(
                    index.claim(&format!("park/quiet-{quiet}"), [1; 16], "x"),
                    Claim::Replay
                ),
                "quiet-{quiet} was pushed out"
            );
        }
        // The busy owner keeps its newest keys up to its share.
        assert!(matches!(
            index.claim("park/busy-9999", [1; 16], "busy"),
            Claim::Replay
        ));
        assert!(matches!(
            index.claim("park/busy-0", [1; 16], "busy"),
            Claim::Fresh(_)
        ));
        assert!(index.len() <= 120);
        // Many owners up to the total: the largest pays each time.
        for owner in 0..200 {
            store(
                &index,
                &format!("park/many-{owner}"),
                1,
                &format!("many-{owner}"),
            );
        }
        assert!(index.len() <= 120, "{}", index.len());
        let state = index.state.lock().unwrap();
        assert!(state.order.len() <= 2 * state.entries.len() + 1024);
    }

    #[test]
    fn stored_keys_expire_after_the_window_and_restored_ones_keep_their_time() {
        let index = KeyIndex::new(IdempotencyConfig {
            window_ms: 1000,
            ..config(10, 100)
        });
        index.restore("park/old", Some([1; 16]), now_ms() - 5000);
        index.restore("park/recent", Some([1; 16]), now_ms() - 10);
        index.restore("park/legacy", None, now_ms() - 10);
        assert!(matches!(
            index.claim("park/old", [2; 16], "o"),
            Claim::Fresh(_)
        ));
        assert!(matches!(
            index.claim("park/recent", [2; 16], "o"),
            Claim::Reused
        ));
        assert!(matches!(
            index.claim("park/legacy", [2; 16], "o"),
            Claim::Replay
        ));
    }
}
