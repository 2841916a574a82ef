//! The lake's object store on a local directory, durable before it answers.
//!
//! object_store's `LocalFileSystem`, which delta-rs uses for a path, never calls `fsync`: a
//! data file or a `_delta_log/N.json` it wrote may still be only in the page cache when the
//! sink commits its consumer group past the rows they hold. A power cut then loses rows the
//! log no longer keeps. This store writes the way `LocalFileSystem` does (a staging file
//! `<name>#<n>`, then a rename, or a hard link for create-if-absent) and makes each step
//! durable before the next: the staging file's data, then the directory that gains the
//! name, and every directory it had to create in its parent. Reads, listings and deletes
//! are `LocalFileSystem`'s own (a deleted file that comes back after a power cut is only a
//! file no version refers to, which VACUUM removes).
//!
//! The syncs go through [`Syncer`], so that a test can see which bytes and names were made
//! durable and cut the power on everything else.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use deltalake::logstore::object_store::local::LocalFileSystem;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::{
    CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result, UploadPart,
};
use futures::stream::BoxStream;

/// How the store makes a file's data or a directory's entries durable.
pub trait Syncer: Send + Sync + std::fmt::Debug + 'static {
    /// The file's data and length are on disk when this returns.
    fn sync_file(&self, file: &File) -> io::Result<()>;
    /// The directory's entries (creations, renames, links) are on disk when this returns.
    fn sync_dir(&self, dir: &FsPath) -> io::Result<()>;
}

/// The real thing: `fdatasync` for files, `fsync` for directories.
#[derive(Debug, Default)]
pub struct Fsync;

impl Syncer for Fsync {
    fn sync_file(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, dir: &FsPath) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[derive(Debug)]
pub struct DurableLocalStore {
    inner: LocalFileSystem,
    syncer: Arc<dyn Syncer>,
}

impl std::fmt::Display for DurableLocalStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "DurableLocalStore")
    }
}

/// Tells staging files of one process apart (several uploads of one name may overlap).
static STAGING: AtomicU64 = AtomicU64::new(0);

impl DurableLocalStore {
    /// A store rooted at `/` (as delta-rs wants its root store) syncing through `syncer`.
    pub fn new(syncer: Arc<dyn Syncer>) -> DurableLocalStore {
        DurableLocalStore {
            inner: LocalFileSystem::new(),
            syncer,
        }
    }

    /// The store every table of the node uses: real syncs, shared.
    pub fn shared() -> Arc<DurableLocalStore> {
        static SHARED: OnceLock<Arc<DurableLocalStore>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(DurableLocalStore::new(Arc::new(Fsync))))
            .clone()
    }

    /// Creates `dir` and its missing ancestors, each made durable in its parent.
    pub fn create_dir_all(&self, dir: &FsPath) -> io::Result<()> {
        create_dir_all(dir, self.syncer.as_ref())
    }

    fn filesystem_path(&self, location: &Path) -> Result<PathBuf> {
        self.inner.path_to_filesystem(location)
    }
}

fn create_dir_all(dir: &FsPath, syncer: &dyn Syncer) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no parent directory"))?;
    create_dir_all(parent, syncer)?;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Made by a concurrent upload, which makes it durable itself.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(error) => return Err(error),
    }
    syncer.sync_dir(parent)
}

fn generic(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Generic {
        store: "DurableLocalStore",
        source: Box::new(error),
    }
}

fn etag(file: &File) -> io::Result<String> {
    let metadata = file.metadata()?;
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    Ok(format!(
        "{:x}-{modified:x}-{:x}",
        metadata.ino(),
        metadata.len()
    ))
}

/// A new staging file beside `dest`: `<dest>#<n>`, a name listings pass over.
fn staging_file(dest: &FsPath) -> io::Result<(File, PathBuf)> {
    loop {
        let serial = STAGING.fetch_add(1, Ordering::Relaxed);
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{serial}"));
        let staging = PathBuf::from(name);
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(file) => return Ok((file, staging)),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Puts the durable staging file in `dest`'s place (create-if-absent or overwrite) and makes
/// the name durable.
fn publish(staging: &FsPath, dest: &FsPath, create: bool, syncer: &dyn Syncer) -> Result<()> {
    let placed = if create {
        std::fs::hard_link(staging, dest).map(|()| {
            let _ = std::fs::remove_file(staging);
        })
    } else {
        std::fs::rename(staging, dest)
    };
    if let Err(error) = placed {
        let _ = std::fs::remove_file(staging);
        return Err(if error.kind() == io::ErrorKind::AlreadyExists {
            Error::AlreadyExists {
                path: dest.display().to_string(),
                source: Box::new(error),
            }
        } else {
            generic(error)
        });
    }
    let parent = dest.parent().unwrap_or(FsPath::new("/"));
    syncer.sync_dir(parent).map_err(generic)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| Error::JoinError { source })?
}

#[async_trait]
impl ObjectStore for DurableLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let create = match opts.mode {
            PutMode::Overwrite => false,
            PutMode::Create => true,
            PutMode::Update(_) => {
                return Err(Error::NotImplemented {
                    operation: "`put_opts` with mode `PutMode::Update`".into(),
                    implementer: self.to_string(),
                });
            }
        };
        if !opts.attributes.is_empty() {
            return Err(Error::NotImplemented {
                operation: "`put_opts` with attributes".into(),
                implementer: self.to_string(),
            });
        }
        let dest = self.filesystem_path(location)?;
        let syncer = self.syncer.clone();
        blocking(move || {
            if let Some(parent) = dest.parent() {
                create_dir_all(parent, syncer.as_ref()).map_err(generic)?;
            }
            let (mut file, staging) = staging_file(&dest).map_err(generic)?;
            let written = payload
                .iter()
                .try_for_each(|chunk| file.write_all(chunk))
                .and_then(|()| syncer.sync_file(&file))
                .and_then(|()| etag(&file));
            let e_tag = match written {
                Ok(e_tag) => e_tag,
                Err(error) => {
                    let _ = std::fs::remove_file(&staging);
                    return Err(generic(error));
                }
            };
            drop(file);
            publish(&staging, &dest, create, syncer.as_ref())?;
            Ok(PutResult {
                e_tag: Some(e_tag),
                version: None,
            })
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if !opts.attributes.is_empty() {
            return Err(Error::NotImplemented {
                operation: "`put_multipart_opts` with attributes".into(),
                implementer: self.to_string(),
            });
        }
        let dest = self.filesystem_path(location)?;
        let syncer = self.syncer.clone();
        let (file, staging) = blocking({
            let (dest, syncer) = (dest.clone(), syncer.clone());
            move || {
                if let Some(parent) = dest.parent() {
                    create_dir_all(parent, syncer.as_ref()).map_err(generic)?;
                }
                staging_file(&dest).map_err(generic)
            }
        })
        .await?;
        Ok(Box::new(DurableUpload {
            file: Arc::new(file),
            staging,
            dest,
            written: 0,
            syncer,
            finished: false,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        let dest = self.filesystem_path(to)?;
        let syncer = self.syncer.clone();
        blocking(move || {
            let file = File::open(&dest).map_err(generic)?;
            syncer.sync_file(&file).map_err(generic)?;
            let parent = dest.parent().unwrap_or(FsPath::new("/"));
            syncer.sync_dir(parent).map_err(generic)
        })
        .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        let (source, dest) = (self.filesystem_path(from)?, self.filesystem_path(to)?);
        let syncer = self.syncer.clone();
        blocking(move || {
            for dir in [dest.parent(), source.parent()].into_iter().flatten() {
                syncer.sync_dir(dir).map_err(generic)?;
            }
            Ok(())
        })
        .await
    }
}

/// A multipart upload into a staging file, written at each part's offset, synced and put in
/// place at `complete`.
#[derive(Debug)]
struct DurableUpload {
    file: Arc<File>,
    staging: PathBuf,
    dest: PathBuf,
    /// Bytes handed to parts so far: where the next part goes.
    written: u64,
    syncer: Arc<dyn Syncer>,
    finished: bool,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let at = self.written;
        self.written += data.content_length() as u64;
        let file = self.file.clone();
        Box::pin(blocking(move || {
            let mut position = at;
            for chunk in data.iter() {
                file.write_all_at(chunk, position).map_err(generic)?;
                position += chunk.len() as u64;
            }
            Ok(())
        }))
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.finished = true;
        let (file, staging, dest) = (self.file.clone(), self.staging.clone(), self.dest.clone());
        let syncer = self.syncer.clone();
        blocking(move || {
            let synced = syncer.sync_file(&file).and_then(|()| etag(&file));
            let e_tag = match synced {
                Ok(e_tag) => e_tag,
                Err(error) => {
                    let _ = std::fs::remove_file(&staging);
                    return Err(generic(error));
                }
            };
            publish(&staging, &dest, false, syncer.as_ref())?;
            Ok(PutResult {
                e_tag: Some(e_tag),
                version: None,
            })
        })
        .await
    }

    async fn abort(&mut self) -> Result<()> {
        self.finished = true;
        let staging = self.staging.clone();
        blocking(move || std::fs::remove_file(&staging).map_err(generic)).await
    }
}

impl Drop for DurableUpload {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}
