//! Consumer groups: committed offsets, stored durably and atomically.
//!
//! Each group is one file, `groups/<group>.offsets`, replaced as a whole on
//! every commit: written to `<group>.tmp`, synced, renamed over the old file,
//! and the directory synced. A crash leaves either the old file or the new
//! one, never a mix, so reading back after a crash gives the last commit that
//! returned.
//!
//! File format (big-endian): `"NBGR"`, version u16 (1), required-topic count
//! u16 and per topic (name length u16, name), offset count u32 and per offset
//! (topic name length u16, name, partition u32, offset i64), then CRC32C u32
//! of everything before it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::LogError;
use crate::storage::{OpenMode, Storage};

const MAGIC: &[u8; 4] = b"NBGR";
const VERSION: u16 = 1;
const SUFFIX: &str = ".offsets";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Topics whose data retention must keep until this group has consumed it.
    pub required_topics: BTreeSet<String>,
    /// (topic, partition) → the next offset the group will read.
    pub offsets: BTreeMap<(String, u32), i64>,
}

pub(crate) struct Groups {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    groups: Mutex<BTreeMap<String, GroupState>>,
}

impl Groups {
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        read_only: bool,
    ) -> Result<Groups, LogError> {
        let io = |error| LogError::io(&dir, error);
        if !read_only {
            storage.create_dir_all(&dir).map_err(io)?;
        }
        let mut groups = BTreeMap::new();
        let names = if storage.exists(&dir) {
            storage.list_dir(&dir).map_err(io)?
        } else {
            Vec::new()
        };
        for name in names {
            let path = dir.join(&name);
            if name.ends_with(".tmp") {
                // An interrupted commit; the previous file is still whole.
                if !read_only {
                    let _ = storage.remove_file(&path);
                }
                continue;
            }
            let Some(group) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            let bytes = storage.read_whole(&path).map_err(io)?;
            let state = decode(&bytes).ok_or_else(|| LogError::CorruptMetadata {
                path: path.display().to_string(),
                detail: "group offsets file fails its checksum or layout".into(),
            })?;
            groups.insert(group.to_owned(), state);
        }
        Ok(Groups {
            dir,
            storage,
            groups: Mutex::new(groups),
        })
    }

    pub fn list(&self) -> BTreeMap<String, GroupState> {
        self.groups.lock().unwrap().clone()
    }

    pub fn get(&self, group: &str) -> Option<GroupState> {
        self.groups.lock().unwrap().get(group).cloned()
    }

    /// Applies `change` to the group and makes the result durable before
    /// returning; on failure the group keeps its previous state.
    pub fn update(
        &self,
        group: &str,
        change: impl FnOnce(&mut GroupState),
    ) -> Result<(), LogError> {
        let mut groups = self.groups.lock().unwrap();
        let mut state = groups.get(group).cloned().unwrap_or_default();
        change(&mut state);
        let written = self.write(group, &state);
        // Once the rename happened the file holds the new state, even if the
        // directory sync then failed: memory follows the file, and the caller
        // still hears of the failure.
        if matches!(written, Ok(()) | Err((true, _))) {
            groups.insert(group.to_owned(), state);
        }
        written.map_err(|(_, error)| error)
    }

    pub fn delete(&self, group: &str) -> Result<bool, LogError> {
        let mut groups = self.groups.lock().unwrap();
        if !groups.contains_key(group) {
            return Ok(false);
        }
        let path = self.dir.join(format!("{group}{SUFFIX}"));
        self.storage
            .remove_file(&path)
            .map_err(|error| LogError::io(&path, error))?;
        groups.remove(group);
        self.storage
            .sync_dir(&self.dir)
            .map_err(|error| LogError::io(&self.dir, error))?;
        Ok(true)
    }

    /// The lowest offset of `topic`/`partition` that some group requiring the
    /// topic has not consumed; `Some(0)` for a requiring group with no commit.
    pub fn required_floor(&self, topic: &str, partition: u32) -> Option<i64> {
        let groups = self.groups.lock().unwrap();
        groups
            .values()
            .filter(|state| state.required_topics.contains(topic))
            .map(|state| {
                state
                    .offsets
                    .get(&(topic.to_owned(), partition))
                    .copied()
                    .unwrap_or(0)
            })
            .min()
    }

    /// The highest offset any group committed for `topic`/`partition`:
    /// everything below it was once visible, so acknowledged.
    pub fn max_committed(&self, topic: &str, partition: u32) -> Option<i64> {
        let groups = self.groups.lock().unwrap();
        let key = (topic.to_owned(), partition);
        groups
            .values()
            .filter_map(|state| state.offsets.get(&key).copied())
            .max()
    }

    /// Groups requiring `topic` whose committed offset is below `offset`.
    pub fn required_groups_behind(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Vec<(String, i64)> {
        let groups = self.groups.lock().unwrap();
        groups
            .iter()
            .filter(|(_, state)| state.required_topics.contains(topic))
            .filter_map(|(name, state)| {
                let committed = state
                    .offsets
                    .get(&(topic.to_owned(), partition))
                    .copied()
                    .unwrap_or(0);
                (committed < offset).then(|| (name.clone(), committed))
            })
            .collect()
    }

    /// Replaces the group's file; on failure, says whether the rename had
    /// already happened (the file then holds the new state).
    fn write(&self, group: &str, state: &GroupState) -> Result<(), (bool, LogError)> {
        let path = self.dir.join(format!("{group}{SUFFIX}"));
        let temporary = self.dir.join(format!("{group}.tmp"));
        let bytes = encode(state);
        let io = |error| LogError::io(&path, error);
        let file = self
            .storage
            .open(&temporary, OpenMode::Create)
            .map_err(|error| (false, io(error)))?;
        let written = file
            .set_len(0)
            .and_then(|()| file.write_all_at(&bytes, 0))
            .and_then(|()| file.sync_data())
            .and_then(|()| self.storage.rename(&temporary, &path));
        if let Err(error) = written {
            let _ = self.storage.remove_file(&temporary);
            return Err((false, io(error)));
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|error| (true, io(error)))
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

fn encode(state: &GroupState) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(state.required_topics.len() as u16).to_be_bytes());
    for topic in &state.required_topics {
        put_name(&mut out, topic);
    }
    out.extend_from_slice(&(state.offsets.len() as u32).to_be_bytes());
    for ((topic, partition), offset) in &state.offsets {
        put_name(&mut out, topic);
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<GroupState> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut rest = body.strip_prefix(MAGIC)?;
    let mut take = |count: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(count)?;
        rest = tail;
        Some(head)
    };
    if u16::from_be_bytes(take(2)?.try_into().ok()?) != VERSION {
        return None;
    }
    let mut state = GroupState::default();
    let required = u16::from_be_bytes(take(2)?.try_into().ok()?);
    for _ in 0..required {
        let len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        state
            .required_topics
            .insert(String::from_utf8(take(len)?.to_vec()).ok()?);
    }
    let count = u32::from_be_bytes(take(4)?.try_into().ok()?);
    for _ in 0..count {
        let len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let topic = String::from_utf8(take(len)?.to_vec()).ok()?;
        let partition = u32::from_be_bytes(take(4)?.try_into().ok()?);
        let offset = i64::from_be_bytes(take(8)?.try_into().ok()?);
        state.offsets.insert((topic, partition), offset);
    }
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_files_round_trip_and_detect_damage() {
        let mut state = GroupState::default();
        state.required_topics.insert("telemetry".into());
        state.offsets.insert(("telemetry".into(), 3), 1234);
        state.offsets.insert(("_alerts".into(), 0), 7);
        let bytes = encode(&state);
        assert_eq!(decode(&bytes), Some(state));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None);
        }
        let mut flipped = bytes;
        flipped[10] ^= 1;
        assert_eq!(decode(&flipped), None);
    }
}
