//! The window of remembered batch keys of one partition.
//!
//! A retried batch whose key is still in the window is answered with the
//! offsets it got the first time. The window is bounded both by count and by
//! age (append time), so its memory is bounded. It survives restarts through a
//! snapshot file written at every segment roll and at a clean close, plus a
//! scan of the batches appended after the snapshot.
//!
//! Snapshot format (`keys-<offset>.snapshot`, big-endian):
//! `"NBKS"`, version u16 (2), covered-up-to offset i64, entry count u32, then per
//! entry: key length u16, key bytes, base offset i64, last offset i64, append
//! time ms i64, fingerprint flag u8 (0 or 1) and, when 1, the 16 fingerprint
//! bytes; finally CRC32C u32 of everything before it. Version 1, written before
//! keys had fingerprints, has neither flag nor fingerprint and is still read.

use std::collections::{HashMap, VecDeque};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub base_offset: i64,
    pub last_offset: i64,
    pub append_ms: i64,
    /// What the key stood for when it was appended, if the producer said.
    pub fingerprint: Option<crate::batch::Fingerprint>,
}

pub(crate) struct KeyWindow {
    keys_max: usize,
    window_ms: i64,
    entries: HashMap<String, KeyEntry>,
    /// Keys in append order, for eviction by age and count.
    order: VecDeque<(String, i64)>,
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"NBKS";
const SNAPSHOT_VERSION: u16 = 2;
const SNAPSHOT_VERSION_WITHOUT_FINGERPRINTS: u16 = 1;

impl KeyWindow {
    pub fn new(keys_max: usize, window_ms: i64) -> KeyWindow {
        KeyWindow {
            keys_max,
            window_ms,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn get(&self, key: &str, now_ms: i64) -> Option<KeyEntry> {
        self.entries
            .get(key)
            .copied()
            .filter(|entry| now_ms - entry.append_ms <= self.window_ms)
    }

    pub fn insert(&mut self, key: String, entry: KeyEntry, now_ms: i64) {
        if self.keys_max == 0 {
            return;
        }
        self.order.push_back((key.clone(), entry.base_offset));
        self.entries.insert(key, entry);
        self.evict(now_ms);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The keys remembered now, oldest first.
    pub fn remembered(&self, now_ms: i64) -> Vec<(String, KeyEntry)> {
        self.order
            .iter()
            .filter_map(|(key, base)| {
                let entry = self.get(key, now_ms)?;
                (entry.base_offset == *base).then(|| (key.clone(), entry))
            })
            .collect()
    }

    fn evict(&mut self, now_ms: i64) {
        while let Some((key, base_offset)) = self.order.front() {
            let entry = self.entries.get(key).copied();
            let stale = match entry {
                // A key re-inserted later has a newer entry; this one is just an
                // old place in the queue.
                Some(entry) if entry.base_offset != *base_offset => {
                    self.order.pop_front();
                    continue;
                }
                Some(entry) => now_ms - entry.append_ms > self.window_ms,
                None => true,
            };
            if !stale && self.entries.len() <= self.keys_max {
                break;
            }
            let (key, _) = self.order.pop_front().expect("front exists");
            if entry.is_some() {
                self.entries.remove(&key);
            }
        }
    }

    pub fn encode_snapshot(&self, covered_to_offset: i64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&covered_to_offset.to_be_bytes());
        let live: Vec<&(String, i64)> = self
            .order
            .iter()
            .filter(|(key, base)| {
                self.entries
                    .get(key)
                    .is_some_and(|entry| entry.base_offset == *base)
            })
            .collect();
        out.extend_from_slice(&(live.len() as u32).to_be_bytes());
        for (key, _) in live {
            let entry = self.entries[key];
            out.extend_from_slice(&(key.len() as u16).to_be_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&entry.base_offset.to_be_bytes());
            out.extend_from_slice(&entry.last_offset.to_be_bytes());
            out.extend_from_slice(&entry.append_ms.to_be_bytes());
            match entry.fingerprint {
                None => out.push(0),
                Some(fingerprint) => {
                    out.push(1);
                    out.extend_from_slice(&fingerprint);
                }
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Loads a snapshot; `None` if it is torn or corrupt (the caller then scans
    /// further back instead).
    pub fn decode_snapshot(&mut self, bytes: &[u8], now_ms: i64) -> Option<i64> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut rest = body.strip_prefix(SNAPSHOT_MAGIC)?;
        let mut take = |count: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(count)?;
            rest = tail;
            Some(head)
        };
        let version = u16::from_be_bytes(take(2)?.try_into().ok()?);
        if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_WITHOUT_FINGERPRINTS {
            return None;
        }
        let covered = i64::from_be_bytes(take(8)?.try_into().ok()?);
        let count = u32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut loaded = Vec::new();
        for _ in 0..count {
            let key_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
            let key = String::from_utf8(take(key_len)?.to_vec()).ok()?;
            let base_offset = i64::from_be_bytes(take(8)?.try_into().ok()?);
            let last_offset = i64::from_be_bytes(take(8)?.try_into().ok()?);
            let append_ms = i64::from_be_bytes(take(8)?.try_into().ok()?);
            let fingerprint = if version == SNAPSHOT_VERSION_WITHOUT_FINGERPRINTS {
                None
            } else {
                match take(1)?[0] {
                    0 => None,
                    1 => Some(take(16)?.try_into().ok()?),
                    _ => return None,
                }
            };
            loaded.push((
                key,
                KeyEntry {
                    base_offset,
                    last_offset,
                    append_ms,
                    fingerprint,
                },
            ));
        }
        for (key, entry) in loaded {
            self.insert(key, entry, now_ms);
        }
        Some(covered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(base_offset: i64, append_ms: i64) -> KeyEntry {
        KeyEntry {
            base_offset,
            last_offset: base_offset + 9,
            append_ms,
            fingerprint: (base_offset % 20 == 0).then_some([base_offset as u8; 16]),
        }
    }

    #[test]
    fn keys_expire_by_age_and_by_count() {
        let mut window = KeyWindow::new(2, 1000);
        window.insert("a".into(), entry(0, 0), 0);
        window.insert("b".into(), entry(10, 500), 500);
        assert_eq!(window.get("a", 900), Some(entry(0, 0)));
        assert_eq!(window.get("a", 1001), None, "older than the window");
        window.insert("c".into(), entry(20, 600), 600);
        assert_eq!(window.get("a", 600), None, "evicted by count");
        assert_eq!(window.get("c", 600), Some(entry(20, 600)));
        assert_eq!(window.len(), 2);
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let mut window = KeyWindow::new(10, 10_000);
        window.insert("x".into(), entry(0, 5), 5);
        window.insert("y".into(), entry(10, 6), 6);
        let bytes = window.encode_snapshot(20);
        let mut restored = KeyWindow::new(10, 10_000);
        assert_eq!(restored.decode_snapshot(&bytes, 7), Some(20));
        assert_eq!(restored.get("x", 7), Some(entry(0, 5)));
        assert!(entry(0, 5).fingerprint.is_some());
        assert_eq!(restored.get("y", 7), Some(entry(10, 6)));
        assert!(entry(10, 6).fingerprint.is_none());
        for cut in 0..bytes.len() {
            assert_eq!(
                KeyWindow::new(10, 10_000).decode_snapshot(&bytes[..cut], 7),
                None
            );
        }
        let mut flipped = bytes.clone();
        flipped[8] ^= 4;
        assert_eq!(
            KeyWindow::new(10, 10_000).decode_snapshot(&flipped, 7),
            None
        );
    }

    #[test]
    fn snapshots_written_before_fingerprints_are_still_read() {
        let mut bytes = b"NBKS".to_vec();
        bytes.extend_from_slice(&1u16.to_be_bytes());
        bytes.extend_from_slice(&30i64.to_be_bytes());
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&1u16.to_be_bytes());
        bytes.push(b'k');
        for value in [10i64, 19, 6] {
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        let mut window = KeyWindow::new(10, 10_000);
        assert_eq!(window.decode_snapshot(&bytes, 7), Some(30));
        assert_eq!(window.get("k", 7), Some(entry(10, 6)));
    }
}
