//! The one module that touches RocksDB. An [`OpenVersion`] is one immutable snapshot version:
//! one read-only RocksDB per storage group, checked against its manifest at open. It closes when
//! its last `Arc` is dropped, so a read holding one always finishes on open handles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBPinnableSlice, DataBlockIndexType,
    Options, ReadOptions,
};

use crate::embedded::manifest::Manifest;
use crate::embedded::{EmbeddedOptions, ReadTuning};
use crate::error::SnapshotError;
use crate::schema::{Schema, ViewSchema};

/// The table options the loader writes (snapshot/rocks.py `table_options`), on the read side:
/// the reader must name the filter policy for RocksDB to use the files' bloom filters.
fn table_options(cache: &Cache) -> BlockBasedOptions {
    let mut b = BlockBasedOptions::default();
    b.set_block_size(8 << 10);
    b.set_bloom_filter(10.0, false);
    b.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    b.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    b.set_partition_filters(true);
    b.set_metadata_block_size(4096);
    b.set_block_cache(cache);
    // index and filter blocks count against the cache, so memory is bounded by its size
    b.set_cache_index_and_filter_blocks(true);
    b.set_pin_top_level_index_and_filter(true);
    b
}

fn db_options(cache: &Cache, mmap_reads: bool) -> Options {
    let mut o = Options::default();
    o.set_block_based_table_factory(&table_options(cache));
    // Every table reader open at once: no table-cache lookup per read, and every file's
    // statistics loaded at open (the row-count check below needs all of them).
    o.set_max_open_files(-1);
    // No info log: a read-only open never creates one (RocksDB's SanitizeOptions makes the
    // logger only for a writable DB), so the reader writes nothing, inside the root or out.
    // As snapshot/rocks.py `reader_options`: uncompressed blocks (the loader's default) come straight
    // from the mapping, with no pread and no copy into the block cache; compressed ones still go
    // through the block cache.
    o.set_allow_mmap_reads(mmap_reads);
    o
}

fn read_options(t: &ReadTuning) -> ReadOptions {
    let mut r = ReadOptions::default();
    r.set_verify_checksums(t.verify_checksums);
    r.fill_cache(t.fill_cache);
    r
}

struct Group {
    path: PathBuf,
    db: DB,
}

/// Where a view's ViewRow sits: its group, and its index among the group's views; with the
/// view's schema, which decodes it.
#[derive(Debug)]
pub struct Slot {
    pub group: usize,
    pub index: usize,
    pub view: Arc<ViewSchema>,
}

pub struct OpenVersion {
    pub id: String,
    pub manifest: Manifest,
    pub schema: Arc<Schema>,
    /// Views per group, in the order of their ViewRows in the stored value.
    pub group_views: Vec<usize>,
    pub slots: HashMap<String, Slot>,
    /// Online files its check had to hash: those its verified.json did not prove (0 without
    /// `verify_checksums`).
    pub files_hashed: usize,
    groups: Vec<Group>,
    read: ReadOptions,
}

impl std::fmt::Debug for OpenVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenVersion").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Stored values for a batch of keys in one group, borrowed from RocksDB (no copy).
pub type Values<'a> = Vec<Option<DBPinnableSlice<'a>>>;

impl OpenVersion {
    /// The stored EntityRow of each key in group `g` (`None`: absent from every view of it).
    pub fn get(&self, g: usize, keys: &[Vec<u8>]) -> Result<Values<'_>, SnapshotError> {
        let group = &self.groups[g];
        let failed = |e: rocksdb::Error| SnapshotError::Rocks { path: group.path.clone(), message: e.into_string() };
        if let [key] = keys {
            // a single lookup: get_pinned skips MultiGet's batching set-up
            return Ok(vec![group.db.get_pinned_opt(key, &self.read).map_err(failed)?]);
        }
        let cf = group.db.cf_handle("default").expect("opened with the default column family");
        group.db.batched_multi_get_cf_opt(cf, keys, false, &self.read).into_iter().map(|r| r.map_err(failed)).collect()
    }
}

/// Opens and checks `root/versions/<id>` (snapshot/FORMAT.md, "A reader checks a version").
pub fn open_version(
    root: &Path,
    id: &str,
    cache: &Cache,
    options: &EmbeddedOptions,
) -> Result<OpenVersion, SnapshotError> {
    let vdir = root.join("versions").join(id);
    if !vdir.is_dir() {
        return Err(SnapshotError::MissingVersion { version: id.to_owned(), path: vdir });
    }
    let manifest = Manifest::load(&vdir.join("manifest.json"))?;
    let mismatch = |problems: Vec<String>| SnapshotError::FilesMismatch { path: vdir.clone(), problems };
    if manifest.version != id {
        return Err(mismatch(vec![format!("its manifest names version {}", manifest.version)]));
    }
    // only the online form is read here: checking the offline Parquet would double the work
    // files the loader or sync proved (verified.json) are not hashed again
    let (problems, hashed) = manifest.verify_files(&vdir, options.verify_checksums, "online/");
    if !problems.is_empty() {
        return Err(mismatch(problems));
    }
    let opts = db_options(cache, options.mmap_reads);
    let mut groups = Vec::with_capacity(manifest.groups.len());
    for g in &manifest.groups {
        let path = vdir.join("online").join(&g.name);
        // The default column family named with these options: a read-only open without
        // descriptors can take RocksDB's CompactedDBImpl (MultiGet not batched), and one named
        // with default options would not use the shared block cache.
        let cf = ColumnFamilyDescriptor::new("default", opts.clone());
        let db = DB::open_cf_descriptors_read_only(&opts, &path, [cf], false)
            .map_err(|e| SnapshotError::Rocks { path: path.clone(), message: e.into_string() })?;
        let live =
            db.live_files().map_err(|e| SnapshotError::Rocks { path: path.clone(), message: e.into_string() })?;
        let prefix = format!("online/{}/", g.name);
        let mut listed: Vec<&str> = manifest
            .files
            .iter()
            .filter_map(|f| f.path.strip_prefix(&prefix))
            .filter(|name| name.ends_with(".sst") && !name.contains('/'))
            .collect();
        let mut opened: Vec<&str> = live.iter().map(|f| f.name.trim_start_matches('/')).collect();
        listed.sort_unstable();
        opened.sort_unstable();
        if opened != listed {
            return Err(mismatch(vec![format!(
                "group {} opens SST files {opened:?}, the manifest lists {listed:?}",
                g.name
            )]));
        }
        let entries: u64 = live.iter().map(|f| f.num_entries).sum();
        if entries != g.entries {
            return Err(mismatch(vec![format!(
                "group {} holds {entries} entries, the manifest says {}",
                g.name, g.entries
            )]));
        }
        groups.push(Group { path, db });
    }
    let mut slots = HashMap::new();
    for (gi, g) in manifest.groups.iter().enumerate() {
        for (index, name) in g.views.iter().enumerate() {
            // manifest.rs makes the groups from the schema's views, so each is there
            let view = Arc::clone(manifest.schema.view(name).expect("a group's views are the schema's"));
            slots.insert(name.clone(), Slot { group: gi, index, view });
        }
    }
    Ok(OpenVersion {
        id: id.to_owned(),
        schema: Arc::clone(&manifest.schema),
        group_views: manifest.groups.iter().map(|g| g.views.len()).collect(),
        slots,
        files_hashed: hashed,
        groups,
        read: read_options(&options.read),
        manifest,
    })
}
