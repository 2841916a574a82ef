//! The log's only door to the disk.
//!
//! Everything the log does to files goes through [`Storage`] and [`StorageFile`],
//! so that tests can put a fault-injecting, crash-simulating implementation
//! ([`sim::SimStorage`]) where the real file system ([`FsStorage`]) usually is.
//! The seam is deliberately small: positioned reads and writes, `fdatasync`,
//! truncation, and the directory operations the log needs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

pub trait Storage: Send + Sync + 'static {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// File and directory names directly inside `path`, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> bool;
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes the exclusive lock that says one process owns a directory. The
    /// lock lasts as long as the returned guard. A read-only lock writes
    /// nothing (not even the owner's pid).
    fn lock(
        &self,
        path: &Path,
        read_only: bool,
    ) -> io::Result<Box<dyn std::any::Any + Send + Sync>>;
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Reading only: what a read-only log uses, so it works on a read-only
    /// mount and cannot change a byte.
    Read,
    /// Reading and writing an existing file.
    Write,
    /// Reading and writing, creating the file if it does not exist.
    Create,
}

// `len` returns a `Result`; an `is_empty` beside it would add nothing.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync {
    fn len(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// May write fewer bytes than given, as `pwrite` may.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
}

impl dyn StorageFile + '_ {
    pub fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
                Ok(written) => {
                    buf = &buf[written..];
                    offset += written as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Reads until `buf` is full or the file ends; returns the bytes read.
    pub fn read_full_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(filled)
    }
}

impl dyn Storage + '_ {
    /// The whole content of a small file (metadata, indexes, snapshots).
    pub fn read_whole(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open(path, OpenMode::Read)?;
        let len = file.len()? as usize;
        let mut bytes = vec![0; len];
        let read = file.read_full_at(&mut bytes, 0)?;
        bytes.truncate(read);
        Ok(bytes)
    }
}

/// `ENOSPC` and `EDQUOT` are what a full disk looks like.
pub fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) || error.kind() == io::ErrorKind::StorageFull
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsStorage;

struct FsFile(File);

impl Storage for FsStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(mode != OpenMode::Read)
            .create(mode == OpenMode::Create)
            .open(path)?;
        Ok(Arc::new(FsFile(file)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn lock(
        &self,
        path: &Path,
        read_only: bool,
    ) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let file = if read_only {
            // The lock file of a log that was never opened for writing may
            // not exist; locking the directory itself then serves the same
            // purpose without creating anything.
            File::open(path).or_else(|_| File::open(path.parent().unwrap_or(Path::new("."))))?
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?
        };
        // A child that a process forks while it holds the lock holds a copy of it until the
        // child execs, which takes well under a millisecond: a held lock is asked again for a
        // moment before it is an error. The moment is short because the commands that find a
        // node's log locked then ask the node instead, and wait that long first.
        let patience = std::time::Instant::now() + LOCK_PATIENCE;
        let mut attempt = file.try_lock();
        while matches!(attempt, Err(fs::TryLockError::WouldBlock))
            && std::time::Instant::now() < patience
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
            attempt = file.try_lock();
        }
        match attempt {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let owner = fs::read_to_string(path).unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is locked by another process ({})",
                        path.display(),
                        owner.trim()
                    ),
                ));
            }
            Err(fs::TryLockError::Error(error)) => return Err(error),
        }
        if !read_only {
            file.set_len(0)?;
            file.write_all_at(format!("pid {}\n", std::process::id()).as_bytes(), 0)?;
        }
        Ok(Box::new(file))
    }
}

/// How long a lock held by another process is waited for before opening fails.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

impl StorageFile for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

pub mod sim {
    //! In-memory storage that fails on purpose and forgets on a crash.
    //!
    //! Each file keeps two images: what was written, and what had reached
    //! "stable storage" at its last `sync_data`. Directory entries are durable
    //! only after `sync_dir` of their directory. [`SimStorage::crash`] replaces
    //! every file by its durable image plus a random part of the bytes written
    //! after it, and drops entries whose directory was never synced: what a
    //! machine losing power may leave behind.

    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// Faults the next operations will meet. Shared by all files of one storage.
    #[derive(Default)]
    pub struct Faults {
        /// Bytes that may still be written before ENOSPC.
        pub space_left_bytes: AtomicU64,
        pub space_limited: AtomicBool,
        /// The next `sync_data` fails with EIO.
        pub fail_next_sync: AtomicBool,
        /// The next `sync_data` fails with EIO the way ext4 and XFS may fail
        /// it: the pages that did not reach the disk stay in the page cache,
        /// marked clean, so reads still return them and later syncs report
        /// success without ever writing them.
        pub fail_next_sync_keeping_pages: AtomicBool,
        /// Writes stop short at a pseudo-random length (they still make progress).
        pub short_writes: AtomicBool,
    }

    impl Faults {
        pub fn limit_space(&self, bytes: u64) {
            self.space_left_bytes.store(bytes, Ordering::SeqCst);
            self.space_limited.store(true, Ordering::SeqCst);
        }

        pub fn unlimited_space(&self) {
            self.space_limited.store(false, Ordering::SeqCst);
        }

        fn take_space(&self, wanted: u64) -> u64 {
            if !self.space_limited.load(Ordering::SeqCst) {
                return wanted;
            }
            let mut left = self.space_left_bytes.load(Ordering::SeqCst);
            loop {
                let granted = wanted.min(left);
                match self.space_left_bytes.compare_exchange(
                    left,
                    left - granted,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => return granted,
                    Err(actual) => left = actual,
                }
            }
        }
    }

    #[derive(Default)]
    struct Inode {
        data: Vec<u8>,
        durable: Vec<u8>,
        /// Bytes whose write-back failed and that the cache now calls clean:
        /// the disk keeps `lost_image`'s bytes there (zeros past its end)
        /// until they are written again.
        lost: Vec<bool>,
        lost_image: Vec<u8>,
    }

    impl Inode {
        /// What the disk holds after a sync that succeeds.
        fn synced_image(&self) -> Vec<u8> {
            let mut image = self.data.clone();
            for (at, _) in self.lost.iter().enumerate().filter(|(_, lost)| **lost) {
                if let Some(byte) = image.get_mut(at) {
                    *byte = self.lost_image.get(at).copied().unwrap_or(0);
                }
            }
            image
        }
    }

    #[derive(Default)]
    struct State {
        next_inode: u64,
        inodes: BTreeMap<u64, Arc<Mutex<Inode>>>,
        /// The namespace as processes see it: path to inode.
        live: BTreeMap<PathBuf, u64>,
        /// The namespace as it would be after a crash.
        durable: BTreeMap<PathBuf, u64>,
        dirs: BTreeSet<PathBuf>,
        locked: BTreeSet<PathBuf>,
    }

    #[derive(Clone, Default)]
    pub struct SimStorage {
        state: Arc<Mutex<State>>,
        pub faults: Arc<Faults>,
    }

    struct SimFile {
        inode: Arc<Mutex<Inode>>,
        faults: Arc<Faults>,
        write_counter: AtomicU64,
    }

    struct SimLock {
        state: Arc<Mutex<State>>,
        path: PathBuf,
    }

    impl Drop for SimLock {
        fn drop(&mut self) {
            self.state.lock().unwrap().locked.remove(&self.path);
        }
    }

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found", path.display()),
        )
    }

    fn disk_full() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOSPC)
    }

    impl SimStorage {
        pub fn new() -> SimStorage {
            SimStorage::default()
        }

        /// Simulates a power loss. `seed` picks how much of each file's unsynced
        /// tail survives, and whether its last surviving bytes are garbage.
        pub fn crash(&self, seed: u64) {
            let mut state = self.state.lock().unwrap();
            let mut random = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move || {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                random
            };
            state.live = state.durable.clone();
            state.locked.clear();
            let reachable: BTreeSet<u64> = state.durable.values().copied().collect();
            state.inodes.retain(|id, _| reachable.contains(id));
            for inode in state.inodes.values() {
                let mut inode = inode.lock().unwrap();
                let durable_len = inode.durable.len();
                let extends =
                    inode.data.len() > durable_len && inode.data.starts_with(&inode.durable);
                let mut survivor = inode.durable.clone();
                if extends {
                    let unsynced = &inode.data[durable_len..];
                    let kept = (next() % (unsynced.len() as u64 + 1)) as usize;
                    survivor.extend_from_slice(&unsynced[..kept]);
                    // A torn page: the file's length reached the disk before its data.
                    if kept > 0 && next() % 4 == 0 {
                        let garbage = (next() % kept as u64) as usize;
                        let start = survivor.len() - garbage;
                        for byte in &mut survivor[start..] {
                            *byte = 0;
                        }
                    }
                }
                inode.data = survivor.clone();
                inode.durable = survivor;
                // The page cache is gone with the power.
                inode.lost.clear();
                inode.lost_image.clear();
            }
        }

        /// Bytes of the file at `path` as a process sees them.
        pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
            let state = self.state.lock().unwrap();
            let id = state.live.get(path)?;
            Some(state.inodes[id].lock().unwrap().data.clone())
        }

        /// Replaces the bytes of a file (and its durable image), as a disk that
        /// corrupts data would.
        pub fn overwrite_file(&self, path: &Path, data: Vec<u8>) {
            let state = self.state.lock().unwrap();
            let id = state.live[path];
            let mut inode = state.inodes[&id].lock().unwrap();
            inode.durable = data.clone();
            inode.data = data;
        }

        pub fn files(&self) -> Vec<PathBuf> {
            self.state.lock().unwrap().live.keys().cloned().collect()
        }

        fn parent_exists(state: &State, path: &Path) -> bool {
            path.parent()
                .is_none_or(|parent| parent.as_os_str().is_empty() || state.dirs.contains(parent))
        }
    }

    impl Storage for SimStorage {
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            // Directories survive crashes here: the log always syncs the parent
            // after creating one, and modelling lost directories adds nothing
            // that lost files do not already test.
            for ancestor in path.ancestors() {
                if !ancestor.as_os_str().is_empty() {
                    state.dirs.insert(ancestor.to_path_buf());
                }
            }
            Ok(())
        }

        fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
            let state = self.state.lock().unwrap();
            if !state.dirs.contains(path) {
                return Err(not_found(path));
            }
            let files = state
                .live
                .keys()
                .filter(|entry| entry.parent() == Some(path));
            let dirs = state
                .dirs
                .iter()
                .filter(|entry| entry.parent() == Some(path));
            Ok(files
                .chain(dirs)
                .map(|entry| entry.file_name().unwrap().to_string_lossy().into_owned())
                .collect())
        }

        fn exists(&self, path: &Path) -> bool {
            let state = self.state.lock().unwrap();
            state.live.contains_key(path) || state.dirs.contains(path)
        }

        fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
            let create = mode == OpenMode::Create;
            let mut state = self.state.lock().unwrap();
            if !Self::parent_exists(&state, path) {
                return Err(not_found(path));
            }
            let id = match state.live.get(path) {
                Some(id) => *id,
                None if create => {
                    state.next_inode += 1;
                    let id = state.next_inode;
                    state.inodes.insert(id, Arc::default());
                    state.live.insert(path.to_path_buf(), id);
                    id
                }
                None => return Err(not_found(path)),
            };
            Ok(Arc::new(SimFile {
                inode: state.inodes[&id].clone(),
                faults: self.faults.clone(),
                write_counter: AtomicU64::new(id),
            }))
        }

        fn remove_file(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            state
                .live
                .remove(path)
                .map(|_| ())
                .ok_or_else(|| not_found(path))
        }

        fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            state.live.retain(|entry, _| !entry.starts_with(path));
            state.durable.retain(|entry, _| !entry.starts_with(path));
            state.dirs.retain(|entry| !entry.starts_with(path));
            Ok(())
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            let id = state.live.remove(from).ok_or_else(|| not_found(from))?;
            state.live.insert(to.to_path_buf(), id);
            Ok(())
        }

        fn sync_dir(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            let live: Vec<(PathBuf, u64)> = state
                .live
                .iter()
                .filter(|(entry, _)| entry.parent() == Some(path))
                .map(|(entry, id)| (entry.clone(), *id))
                .collect();
            state
                .durable
                .retain(|entry, _| entry.parent() != Some(path));
            state.durable.extend(live);
            Ok(())
        }

        fn lock(
            &self,
            path: &Path,
            _read_only: bool,
        ) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
            let mut state = self.state.lock().unwrap();
            if !state.locked.insert(path.to_path_buf()) {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "locked"));
            }
            Ok(Box::new(SimLock {
                state: self.state.clone(),
                path: path.to_path_buf(),
            }))
        }
    }

    impl StorageFile for SimFile {
        fn len(&self) -> io::Result<u64> {
            Ok(self.inode.lock().unwrap().data.len() as u64)
        }

        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let inode = self.inode.lock().unwrap();
            let start = (offset as usize).min(inode.data.len());
            let end = (start + buf.len()).min(inode.data.len());
            buf[..end - start].copy_from_slice(&inode.data[start..end]);
            Ok(end - start)
        }

        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
            let mut inode = self.inode.lock().unwrap();
            let offset = offset as usize;
            let mut wanted = buf.len();
            if self.faults.short_writes.load(Ordering::SeqCst) && wanted > 1 {
                let counter = self.write_counter.fetch_add(1, Ordering::SeqCst);
                wanted = 1 + (counter.wrapping_mul(0x9E37_79B9) as usize % wanted);
            }
            let growth = (offset + wanted).saturating_sub(inode.data.len()) as u64;
            let granted = self.faults.take_space(growth);
            if granted < growth {
                wanted -= (growth - granted) as usize;
                if wanted == 0 {
                    return Err(disk_full());
                }
            }
            if inode.data.len() < offset + wanted {
                inode.data.resize(offset + wanted, 0);
            }
            inode.data[offset..offset + wanted].copy_from_slice(&buf[..wanted]);
            // Written again: dirty, and a sync writes them after all.
            let lost_end = inode.lost.len().min(offset + wanted);
            if offset < lost_end {
                inode.lost[offset..lost_end].fill(false);
            }
            Ok(wanted)
        }

        fn sync_data(&self) -> io::Result<()> {
            if self.faults.fail_next_sync.swap(false, Ordering::SeqCst) {
                // As Linux may: the pages that failed to reach the disk are
                // dropped, and the next sync would report nothing.
                let mut inode = self.inode.lock().unwrap();
                inode.data = inode.durable.clone();
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            if self
                .faults
                .fail_next_sync_keeping_pages
                .swap(false, Ordering::SeqCst)
            {
                let mut inode = self.inode.lock().unwrap();
                let image = inode.synced_image();
                let durable = inode.durable.clone();
                let mut lost = std::mem::take(&mut inode.lost);
                lost.resize(image.len(), false);
                for (at, byte) in image.iter().enumerate() {
                    if durable.get(at) != Some(byte) {
                        lost[at] = true;
                    }
                }
                inode.lost = lost;
                inode.lost_image = durable;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let mut inode = self.inode.lock().unwrap();
            inode.durable = inode.synced_image();
            Ok(())
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            let mut inode = self.inode.lock().unwrap();
            let growth = len.saturating_sub(inode.data.len() as u64);
            if self.faults.take_space(growth) < growth {
                return Err(disk_full());
            }
            inode.data.resize(len as usize, 0);
            let kept = inode.lost.len().min(len as usize);
            inode.lost.truncate(kept);
            Ok(())
        }
    }
}
