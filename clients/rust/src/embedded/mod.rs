//! The embedded reader (feature `embedded`): reads a snapshot root in-process, with no gRPC hop.
//!
//! It follows `ROOT/CURRENT` as the server does (service/snapshots.py): a new version is opened
//! read-only and checked against its manifest before it is served; a bad one is refused (a log
//! line and a counter) while the version already open keeps serving. The previous version stays
//! open for pinned reads and rollback. Values decode with the schema in the version's manifest.

mod manifest;
mod read;
mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rocksdb::Cache;
use tonic::Status;

use crate::client::build_request;
use crate::decode::FeatureBatch;
use crate::error::{Error, Result, SnapshotError};
use crate::proto::{GetFeaturesRequest, GetFeaturesResponse, GetSnapshotInfoResponse, VersionInfo};
use crate::schema::Schema;
use crate::value::EntityId;

pub use manifest::FORMAT_VERSION;
use store::{OpenVersion, open_version};

/// Per-read RocksDB options (`ReadOptions`); the defaults are RocksDB's.
#[derive(Debug, Clone)]
pub struct ReadTuning {
    /// Verify each block's checksum as it is read from a file (not from the block cache).
    pub verify_checksums: bool,
    /// Insert blocks read from files into the block cache.
    pub fill_cache: bool,
}

impl Default for ReadTuning {
    fn default() -> Self {
        ReadTuning { verify_checksums: true, fill_cache: true }
    }
}

/// How an [`EmbeddedReader`] opens and follows a root.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// One LRU block cache of this size, shared by every version the reader holds open (index
    /// and filter blocks count against it); the page cache holds the rest of the data.
    pub block_cache_bytes: usize,
    /// How often a background thread follows `ROOT/CURRENT`; `None`: only on
    /// [`EmbeddedReader::refresh`].
    pub poll_interval: Option<Duration>,
    /// Check each new version's online files against the manifest's sha256 (reads every byte
    /// once) on top of the sizes, SST set and row counts that are always checked.
    pub verify_checksums: bool,
    /// Read SST files through mmap (as `quiver serve` does): uncompressed blocks are then read
    /// straight from the page cache, not copied into the block cache.
    pub mmap_reads: bool,
    pub read: ReadTuning,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            block_cache_bytes: 256 << 20,
            poll_interval: Some(Duration::from_secs(5)),
            verify_checksums: false,
            mmap_reads: true,
            read: ReadTuning::default(),
        }
    }
}

/// What the reader serves and what it refused, for metrics and health checks.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReaderStats {
    pub current: String,
    pub previous: Option<String>,
    /// Versions still open: current, previous, and retired ones that calls were reading when
    /// they were swapped out (closed at the next refresh after their last call finishes).
    pub open_versions: usize,
    /// Swaps to a new current version since open (rollbacks included).
    pub swaps: u64,
    /// Versions refused since open (each counted once).
    pub refused: u64,
    /// Why the last refused version was refused.
    pub last_refusal: Option<String>,
    /// Online files of the current version that its check hashed (with `verify_checksums`): the
    /// files its verified.json did not prove, as written by the loader or sync (FORMAT.md).
    pub current_files_hashed: usize,
}

/// The versions a reader serves. Replaced as a whole on a swap.
struct Served {
    current: Arc<OpenVersion>,
    previous: Option<Arc<OpenVersion>>,
}

struct Inner {
    root: PathBuf,
    options: EmbeddedOptions,
    cache: Cache,
    served: ArcSwap<Served>,
    /// Serialises refreshes (background and explicit); holds what they remember.
    refresh: Mutex<RefreshState>,
    swaps: AtomicU64,
    refused: AtomicU64,
}

#[derive(Default)]
struct RefreshState {
    /// A version that failed its checks: not retried until CURRENT names another one.
    refused: Option<String>,
    last_refusal: Option<String>,
    /// Swapped out while calls may still read them; dropped (closed) once nothing else holds them.
    retired: Vec<Arc<OpenVersion>>,
}

/// Reads features from a snapshot root on local disk, in-process. `Send + Sync`: share one per
/// process (in an `Arc`) across every thread that reads; calls run concurrently without locks.
pub struct EmbeddedReader {
    inner: Arc<Inner>,
    /// Dropping the sender stops the watcher thread.
    watcher: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl std::fmt::Debug for EmbeddedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedReader").field("root", &self.inner.root).finish_non_exhaustive()
    }
}

fn read_current(root: &Path) -> Result<String, SnapshotError> {
    let path = root.join("CURRENT");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        _ => Err(SnapshotError::NoCurrent { path }),
    }
}

impl EmbeddedReader {
    /// Opens the version `root/CURRENT` names, checked against its manifest, and (with
    /// `poll_interval`) starts following CURRENT. Fails with [`Error::Snapshot`] naming the
    /// path when there is nothing servable.
    pub fn open(root: impl AsRef<Path>, options: EmbeddedOptions) -> Result<EmbeddedReader> {
        let root = root.as_ref().to_owned();
        let cache = Cache::new_lru_cache(options.block_cache_bytes)
            .map_err(|e| SnapshotError::Rocks { path: root.clone(), message: e.into_string() })?;
        let id = read_current(&root)?;
        let first = open_version(&root, &id, &cache, &options)?;
        log::info!(target: "quiver::embedded", "serving {id} from {}", root.display());
        let inner = Arc::new(Inner {
            root,
            cache,
            served: ArcSwap::from_pointee(Served { current: Arc::new(first), previous: None }),
            refresh: Mutex::default(),
            swaps: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            options,
        });
        let watcher = match inner.options.poll_interval {
            None => None,
            Some(every) => {
                let (stop, wait) = mpsc::channel::<()>();
                let weak = Arc::downgrade(&inner);
                let handle = std::thread::Builder::new()
                    .name("quiver-refresh".into())
                    .spawn(move || {
                        while let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(every) {
                            let Some(inner) = weak.upgrade() else { break };
                            // Refusals are logged and counted inside; nothing else to do here.
                            let _ = inner.refresh();
                        }
                    })
                    .map_err(|e| Error::Request(format!("cannot start the refresh thread: {e}")))?;
                Some((stop, handle))
            }
        };
        Ok(EmbeddedReader { inner, watcher })
    }

    /// Follows CURRENT once: `Ok(Some(version))` after a swap, `Ok(None)` when CURRENT still
    /// names a served (or already refused) version, `Err` when the new version was refused;
    /// the reader then keeps serving what it served.
    pub fn refresh(&self) -> Result<Option<String>> {
        self.inner.refresh().map_err(Error::Snapshot)
    }

    /// Features of `ids` in `views` (empty: every view, in schema order) from the current
    /// version; rows in request order. The same rows a [`crate::QuiverClient`] returns.
    pub fn get_features(&self, ids: &[EntityId], views: &[&str]) -> Result<FeatureBatch> {
        self.get_features_at(ids, views, "")
    }

    /// Like [`EmbeddedReader::get_features`], pinned to `version` (empty: the current one),
    /// which must be the current or the previous version.
    pub fn get_features_at(&self, ids: &[EntityId], views: &[&str], version: &str) -> Result<FeatureBatch> {
        let request = build_request(ids, views, version)?;
        let v = self.inner.pick(version)?;
        read::get_batch(&request, &v)
    }

    /// The undecoded response, exactly what a server would send for `request`.
    pub fn get_features_raw(&self, request: &GetFeaturesRequest) -> Result<GetFeaturesResponse> {
        let v = self.inner.pick(&request.version)?;
        read::get_features(request, &v)
    }

    /// The schema of `version` (empty: the current one), from its manifest.
    pub fn schema(&self, version: &str) -> Result<Arc<Schema>> {
        Ok(Arc::clone(&self.inner.pick(version)?.schema))
    }

    /// What a server's GetSnapshotInfo answers, for the versions this reader holds.
    pub fn snapshot_info(&self) -> GetSnapshotInfoResponse {
        let served = self.inner.served.load();
        let info = |v: &OpenVersion| {
            let m = &v.manifest;
            VersionInfo {
                version: v.id.clone(),
                created: m.created.clone(),
                as_of: m.as_of.clone(),
                rows: m.view_rows.iter().map(|(k, n)| (k.clone(), *n)).collect(),
                size_bytes: m.size_bytes(),
                content_checksum: m.content_checksum.clone(),
            }
        };
        let mut loaded = vec![info(served.current.as_ref())];
        loaded.extend(served.previous.as_deref().map(info));
        GetSnapshotInfoResponse {
            current_version: served.current.id.clone(),
            loaded,
            current_age_seconds: age_seconds(&served.current.manifest.as_of),
        }
    }

    pub fn stats(&self) -> ReaderStats {
        let state = self.inner.refresh.lock().unwrap_or_else(|e| e.into_inner());
        let served = self.inner.served.load();
        ReaderStats {
            current: served.current.id.clone(),
            previous: served.previous.as_ref().map(|v| v.id.clone()),
            open_versions: 1 + usize::from(served.previous.is_some()) + state.retired.len(),
            swaps: self.inner.swaps.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
            last_refusal: state.last_refusal.clone(),
            current_files_hashed: served.current.files_hashed,
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

impl Drop for EmbeddedReader {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.watcher.take() {
            drop(stop);
            let _ = handle.join();
        }
    }
}

impl Inner {
    fn pick(&self, pin: &str) -> Result<Arc<OpenVersion>> {
        let served = self.served.load();
        if pin.is_empty() || pin == served.current.id {
            return Ok(Arc::clone(&served.current));
        }
        if let Some(prev) = &served.previous
            && prev.id == pin
        {
            return Ok(Arc::clone(prev));
        }
        let loaded: Vec<&str> = std::iter::once(served.current.id.as_str())
            .chain(served.previous.as_ref().map(|v| v.id.as_str()))
            .collect();
        Err(Error::Status(Status::failed_precondition(format!(
            "version {pin:?} is not loaded by this reader (loaded: {})",
            loaded.join(", ")
        ))))
    }

    fn refresh(&self) -> Result<Option<String>, SnapshotError> {
        let mut state = self.refresh.lock().unwrap_or_else(|e| e.into_inner());
        // Close retired versions whose last call has finished: only `retired` holds them now
        // (a version leaves `served` before it is retired, so no new call can pick it).
        state.retired.retain(|v| Arc::strong_count(v) > 1);
        let target = match read_current(&self.root) {
            Ok(t) => t,
            // CURRENT briefly absent (a hand-made root being rewritten): keep serving.
            Err(_) => return Ok(None),
        };
        let served = self.served.load_full();
        if target == served.current.id || state.refused.as_deref() == Some(target.as_str()) {
            return Ok(None);
        }
        let new = match &served.previous {
            Some(prev) if prev.id == target => Arc::clone(prev), // rollback: already open and checked
            _ => match open_version(&self.root, &target, &self.cache, &self.options) {
                Ok(v) => Arc::new(v),
                Err(e) => {
                    log::error!(target: "quiver::embedded", "refused {target}: {e}; still serving {}", served.current.id);
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    state.refused = Some(target);
                    state.last_refusal = Some(e.to_string());
                    return Err(e);
                }
            },
        };
        // The swap is this one store: a call holds the Arc of the version it picked, so the one
        // retired here stays open until the last call reading it has finished.
        self.served.store(Arc::new(Served { current: Arc::clone(&new), previous: Some(Arc::clone(&served.current)) }));
        if let Some(old) = &served.previous
            && old.id != new.id
        {
            state.retired.push(Arc::clone(old));
        }
        drop(served);
        state.retired.retain(|v| Arc::strong_count(v) > 1);
        state.refused = None;
        self.swaps.fetch_add(1, Ordering::Relaxed);
        log::info!(target: "quiver::embedded", "serving {target} from {}", self.root.display());
        Ok(Some(target))
    }
}

/// Seconds since an RFC 3339 UTC time (`2026-12-01T00:00:00Z`); 0 when it does not parse.
fn age_seconds(as_of: &str) -> f64 {
    let parse = || -> Option<i64> {
        let (date, time) = as_of.trim_end_matches('Z').split_once('T')?;
        let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let mut t = time.split(':').map(|p| p.split('.').next()?.parse::<i64>().ok());
        let (hh, mm, ss) = (t.next()??, t.next()??, t.next().flatten().unwrap_or(0));
        // days from civil (Howard Hinnant's algorithm)
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
    };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    parse().map_or(0.0, |t| now - t as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<EmbeddedReader>();
    }

    #[test]
    fn age_of_an_rfc3339_time() {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
        let age = age_seconds("1970-01-02T00:00:00Z");
        assert!((now - 86_400.0 - age).abs() < 5.0, "{age}");
        assert_eq!(age_seconds("garbage"), 0.0);
    }
}
