//! The embedded reader (feature `embedded`) against the real loader and the real server: the
//! `quiver` CLI generates data and loads snapshots (one storage group, and several), and every
//! value the reader returns is compared with the source Parquet and with what `quiver serve`
//! answers for the same request. Needs the Python side installed (`make setup`), at $QUIVER_BIN.
#![cfg(feature = "embedded")]

// Shared with the other end-to-end tests; this binary uses part of it.
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use prost::Message;
use quiver_client::proto::GetFeaturesRequest;
use quiver_client::{
    AnySource, EmbeddedOptions, EmbeddedReader, EntityId, Error, FeatureBatch, FeatureSource, Schema, SnapshotError,
    Value,
};
use support::server::{Server, USERS, dataset, load, quiver_bin, run, serial};
use support::source::{Definitions, expected_view, read_definitions};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Runs a Python snippet with the virtualenv's interpreter (pyarrow and yaml are there).
fn python(script: &str, args: &[&Path]) {
    let out = Command::new(quiver_bin().with_file_name("python")).arg("-c").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The generated views in three storage groups: `user` = profile, embedding, ads (not adjacent
/// in schema order), `activity` alone.
const GROUPED_YAML: &str = r#"
import sys, yaml
src, dst = sys.argv[1], sys.argv[2]
d = yaml.safe_load(open(src))
for v in d["views"]:
    v["group"] = "activity" if v["name"] == "activity" else "user"
yaml.safe_dump(d, open(dst, "w"), sort_keys=False)
"#;

/// The generated data with string keys: id n becomes "u000042" ("ü000045" when n % 5 == 0, so
/// keys are UTF-8 beyond ASCII), same rows and values otherwise.
const STRING_KEYS: &str = r#"
import glob, os, sys, yaml
import pyarrow as pa, pyarrow.parquet as pq
src, out = sys.argv[1], sys.argv[2]
d = yaml.safe_load(open(os.path.join(src, "features.yaml")))
d["entity"]["key_type"] = "string"
for v in d["views"]:
    col = v.get("entity_column") or d["entity"]["name"]
    for f in sorted(glob.glob(os.path.join(src, v["source"]))):
        t = pq.read_table(f)
        i = t.schema.get_field_index(col)
        keys = pa.array([("\u00fc" if k % 5 == 0 else "u") + f"{k:06d}" for k in t.column(i).to_pylist()], pa.string())
        dst = os.path.join(out, os.path.relpath(f, src))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        pq.write_table(t.set_column(i, col, keys), dst)
yaml.safe_dump(d, open(os.path.join(out, "features.yaml"), "w"), sort_keys=False)
"#;

fn string_key(id: i64) -> String {
    format!("{}{id:06}", if id % 5 == 0 { "ü" } else { "u" })
}

/// Three roots over the same generated users: one group (int64 keys), three groups (int64
/// keys), one group (string keys).
struct Roots {
    single: PathBuf,
    grouped: PathBuf,
    strings: PathBuf,
}

fn roots() -> &'static Roots {
    static ROOTS: OnceLock<Roots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let data = dataset();
        let base = data.root.parent().unwrap();
        let grouped_yaml = data.dir.join("features-grouped.yaml");
        python(GROUPED_YAML, &[&data.features_yaml(), &grouped_yaml]);
        let grouped = base.join("root-grouped");
        load(&grouped_yaml, &grouped);
        let string_dir = base.join("source-strings");
        python(STRING_KEYS, &[&data.dir, &string_dir]);
        let strings = base.join("root-strings");
        load(&string_dir.join("features.yaml"), &strings);
        Roots { single: data.root.clone(), grouped, strings }
    })
}

struct Expected {
    defs: Definitions,
    views: HashMap<String, HashMap<i64, Vec<Value>>>,
}

fn expected() -> &'static Expected {
    static EXPECTED: OnceLock<Expected> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let data = dataset();
        let defs = read_definitions(&data.features_yaml());
        let views = defs.views.iter().map(|v| (v.name.clone(), expected_view(&data.dir, v))).collect();
        Expected { defs, views }
    })
}

/// A spread over the range, the edges, users missing from each view, and ids no view knows.
fn sample_ids(exp: &Expected) -> Vec<i64> {
    let n = USERS as i64;
    let mut ids: Vec<i64> = (0..n).step_by(5).collect();
    ids.extend([1, n - 1, n - 2]);
    for rows in exp.views.values() {
        ids.extend((0..n).filter(|id| !rows.contains_key(id)).take(15));
    }
    ids.extend([n, n + 1, 1 << 40, -1, i64::MIN, i64::MAX]);
    ids
}

fn options() -> EmbeddedOptions {
    EmbeddedOptions { block_cache_bytes: 16 << 20, poll_interval: None, ..Default::default() }
}

fn ids_of(ids: &[i64], strings: bool) -> Vec<EntityId> {
    ids.iter().map(|&id| if strings { EntityId::String(string_key(id)) } else { EntityId::Int64(id) }).collect()
}

/// Compares a batch for `ids` with the source Parquet; returns (values compared, nulls, absent
/// rows) and pushes every difference.
fn compare_with_source(batch: &FeatureBatch, ids: &[i64], exp: &Expected, bad: &mut Vec<String>) -> [usize; 3] {
    let mut counts = [0; 3];
    assert_eq!(batch.len(), ids.len());
    for (&id, row) in ids.iter().zip(batch.rows()) {
        for view in batch.views() {
            let def = exp.defs.views.iter().find(|d| d.name == view.name).unwrap();
            match (exp.views[&view.name].get(&id), row.view(&view.name)) {
                (None, None) => counts[2] += 1,
                (Some(_), None) => bad.push(format!("id {id}: not found in {}", view.name)),
                (None, Some(_)) => bad.push(format!("id {id}: found in {}, absent from its source", view.name)),
                (Some(want), Some(got)) => {
                    for (f, w) in def.features.iter().zip(want) {
                        let g = got.get(&f.name).expect("feature decoded");
                        counts[0] += 1;
                        counts[1] += usize::from(w.is_null());
                        if !g.bit_eq(w) {
                            bad.push(format!("id {id}, {}.{}: got {g:?}, source {w:?}", view.name, f.name));
                        }
                    }
                }
            }
        }
    }
    counts
}

fn assert_none(bad: &[String], what: &str) {
    assert!(bad.is_empty(), "{what}: {} mismatches, first:\n{}", bad.len(), bad[..bad.len().min(20)].join("\n"));
}

#[test]
fn every_value_equals_the_source_parquet_in_one_group_several_groups_and_string_keys() {
    let _one_at_a_time = serial();
    let (roots, exp) = (roots(), expected());
    let ids = sample_ids(exp);
    for (root, strings) in [(&roots.single, false), (&roots.grouped, false), (&roots.strings, true)] {
        let reader = EmbeddedReader::open(root, options()).unwrap();
        let mut bad = Vec::new();
        let mut totals = [0; 3];
        // batches (batched multi-get) and single ids (a pinned get), every view
        for chunk in ids.chunks(64).chain(ids.iter().take(40).map(std::slice::from_ref)) {
            let batch = reader.get_features(&ids_of(chunk, strings), &[]).unwrap();
            let counts = compare_with_source(&batch, chunk, exp, &mut bad);
            totals.iter_mut().zip(counts).for_each(|(t, c)| *t += c);
        }
        assert_none(&bad, &root.display().to_string());
        // the sample exercises what it claims: many values, nulls, rows absent from a view
        assert!(totals[0] > 50_000 && totals[1] > 0 && totals[2] > 0, "{totals:?}");
        eprintln!("{}: {totals:?} (values, nulls, absent rows)", root.display());
    }
}

/// The same request through the embedded reader and the server: the same version, views,
/// found flags and values (compared as re-encoded protobuf, so NaN bits count), and the same
/// schema.
#[test]
fn the_embedded_reader_answers_what_the_server_answers() {
    let _one_at_a_time = serial();
    runtime().block_on(async {
        let (roots, exp) = (roots(), expected());
        let ids = sample_ids(exp);
        for (root, strings) in [(&roots.grouped, false), (&roots.strings, true)] {
            let mut server = Server::start_on(root, &[]);
            let tcp = server.tcp.clone();
            let client = server.ready_client(&tcp).await;
            let reader = EmbeddedReader::open(root, options()).unwrap();
            let version = reader.stats().current;

            let (a, b) = (reader.schema("").unwrap(), client.schema("").await.unwrap());
            assert_eq!(schema_text(&a), schema_text(&b), "schema of {version}");
            let info = reader.snapshot_info();
            let server_info = client.snapshot_info().await.unwrap();
            assert_eq!(info.loaded, server_info.loaded, "GetSnapshotInfo of {version}");

            let selections: [&[&str]; 6] = [
                &[],
                &["ads", "profile"],
                &["activity"],
                &["embedding"],
                &["profile", "embedding", "ads"],
                &["ads", "activity", "profile"],
            ];
            for views in selections {
                for chunk in ids.chunks(100).chain([&ids[..1], &ids[ids.len() - 1..]]) {
                    let mut request = GetFeaturesRequest {
                        views: views.iter().map(|v| v.to_string()).collect(),
                        ..Default::default()
                    };
                    if strings {
                        request.string_ids = chunk.iter().map(|&id| string_key(id)).collect();
                    } else {
                        request.int64_ids = chunk.to_vec();
                    }
                    let local = reader.get_features_raw(&request).unwrap();
                    let remote = client.get_features_raw(request.clone()).await.unwrap();
                    assert_eq!(local.version, remote.version);
                    assert_eq!(local.views, remote.views);
                    assert!(
                        local.encode_to_vec() == remote.encode_to_vec(),
                        "{}: views {views:?}, ids {:?}: responses differ",
                        root.display(),
                        &chunk[..chunk.len().min(5)]
                    );
                    // typed rows: the embedded reader decodes stored rows itself, with no response
                    let typed_ids = ids_of(chunk, strings);
                    let local = reader.get_features(&typed_ids, views).unwrap();
                    let remote = client.get_features(&typed_ids, views).await.unwrap();
                    let mut bad = Vec::new();
                    same_rows(&local, &remote, &mut bad);
                    assert_none(&bad, &format!("{}: typed rows of views {views:?}", root.display()));
                }
                // typed rows, through the one trait, chosen by a setting
                let chunk = &ids[..50];
                let typed_ids = ids_of(chunk, strings);
                let by_path = AnySource::open(root.to_str().unwrap()).await.unwrap();
                let by_addr = AnySource::open(&tcp).await.unwrap();
                let (x, y) = (
                    by_path.get_features(&typed_ids, views).await.unwrap(),
                    by_addr.get_features(&typed_ids, views).await.unwrap(),
                );
                let mut bad = Vec::new();
                compare_with_source(&x, chunk, exp, &mut bad);
                compare_with_source(&y, chunk, exp, &mut bad);
                assert_none(&bad, "typed rows");
            }

            // The same error kinds for the same bad requests.
            let typed_ids = ids_of(&[3], strings);
            let wrong_type = ids_of(&[3], !strings);
            let unknown_pin = "20000101T000000Z-000000000000";
            let cases: [(&str, &[EntityId], &[&str], &str); 5] = [
                ("unknown view", &typed_ids, &["no_such_view"], ""),
                ("a view named twice", &typed_ids, &["ads", "activity", "ads"], ""),
                ("wrong key type", &wrong_type, &[], ""),
                ("pin to a version not open", &typed_ids, &[], unknown_pin),
                ("no ids", &[], &[], ""),
            ];
            for (case, ids, views, pin) in cases {
                let local = reader.get_features_at(ids, views, pin).unwrap_err();
                let remote = client.get_features_at(ids, views, pin).await.unwrap_err();
                assert!(local.code().is_some(), "{case}: {local}");
                assert_eq!(local.code(), remote.code(), "{case}: embedded {local} / server {remote}");
            }
            let mixed = [EntityId::Int64(1), EntityId::String("x".into())];
            assert!(matches!(reader.get_features(&mixed, &[]), Err(Error::Request(_))));
            assert!(matches!(client.get_features(&mixed, &[]).await, Err(Error::Request(_))));
            drop(server);
        }
    });
}

/// Pushes every difference between two typed answers: version, views, rows, found, and each
/// value by its bits.
fn same_rows(x: &FeatureBatch, y: &FeatureBatch, bad: &mut Vec<String>) {
    let names = |b: &FeatureBatch| b.views().iter().map(|v| v.name.clone()).collect::<Vec<_>>();
    if (x.version(), names(x), x.len()) != (y.version(), names(y), y.len()) {
        bad.push(format!(
            "{} {:?} {} rows / {} {:?} {} rows",
            x.version(),
            names(x),
            x.len(),
            y.version(),
            names(y),
            y.len()
        ));
        return;
    }
    for (i, (a, b)) in x.rows().iter().zip(y.rows()).enumerate() {
        for (view, (va, vb)) in names(x).iter().zip(a.views().iter().zip(b.views())) {
            match (va, vb) {
                (None, None) => {}
                (Some(va), Some(vb)) => {
                    let same = va.iter().count() == vb.iter().count()
                        && va.iter().zip(vb.iter()).all(|((n, p), (m, q))| n == m && p.bit_eq(q));
                    if !same {
                        bad.push(format!("row {i}, {view}: {:?} / {:?}", va.values(), vb.values()));
                    }
                }
                _ => bad.push(format!("row {i}, {view}: found {} / {}", va.is_some(), vb.is_some())),
            }
        }
    }
}

/// Everything GetSchema carries, as text (Schema holds maps, so no derived Debug comparison).
fn schema_text(s: &Schema) -> String {
    let mut out = format!("{} {} {:?}\n", s.version, s.entity_name, s.key_type);
    for v in &s.views {
        out += &format!("{} rows={} ts={}\n", v.name, v.rows, v.event_timestamp_column);
        for f in &v.features {
            out += &format!(
                "  {} {:?} len={} field={} index={} pos={} default={}\n",
                f.name, f.ty, f.list_length, f.group_field, f.group_index, f.position, f.default_json
            );
        }
    }
    out
}

/// A copy of a root whose current version can be damaged without touching the shared one.
fn copy_root(from: &Path, name: &str) -> PathBuf {
    let to = from.with_file_name(name);
    let _ = std::fs::remove_dir_all(&to);
    let status = Command::new("cp").arg("-a").arg(from).arg(&to).status().unwrap();
    assert!(status.success());
    to
}

fn current(root: &Path) -> String {
    std::fs::read_to_string(root.join("CURRENT")).unwrap().trim().to_owned()
}

fn open_err(root: &Path, options: EmbeddedOptions) -> SnapshotError {
    match EmbeddedReader::open(root, options) {
        Err(Error::Snapshot(e)) => e,
        other => panic!("{}: expected a snapshot error, got {other:?}", root.display()),
    }
}

fn first_sst(version_dir: &Path) -> PathBuf {
    let dir = version_dir.join("online").join("default");
    let mut ssts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect();
    ssts.sort();
    ssts.remove(0)
}

#[test]
fn roots_that_cannot_be_served_are_typed_errors_naming_the_path() {
    let _one_at_a_time = serial();
    let roots = roots();

    let empty = roots.single.with_file_name("root-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = open_err(&empty, options());
    assert!(matches!(&e, SnapshotError::NoCurrent { path } if path == &empty.join("CURRENT")), "{e}");
    assert!(e.to_string().contains(&empty.display().to_string()));

    let root = copy_root(&roots.single, "root-bad");
    let version = current(&root);
    let vdir = root.join("versions").join(&version);

    std::fs::write(root.join("CURRENT"), "20991231T000000Z-0123456789ab\n").unwrap();
    let e = open_err(&root, options());
    assert!(
        matches!(&e, SnapshotError::MissingVersion { path, .. } if path.ends_with("versions/20991231T000000Z-0123456789ab")),
        "{e}"
    );
    std::fs::write(root.join("CURRENT"), format!("{version}\n")).unwrap();

    // format 1 (or any other): refused by its format_version, naming the manifest
    let manifest_path = vdir.join("manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, manifest.replace("\"format_version\": 2", "\"format_version\": 1")).unwrap();
    let e = open_err(&root, options());
    assert!(
        matches!(&e, SnapshotError::UnknownFormat { path, found, expected: 2 } if path == &manifest_path && found == "1"),
        "{e}"
    );
    std::fs::write(&manifest_path, manifest.replace("\"version\": \"", "\"version\": \"x")).unwrap();
    let e = open_err(&root, options());
    assert!(matches!(&e, SnapshotError::FilesMismatch { path, .. } if path == &vdir), "{e}");
    std::fs::write(&manifest_path, "{not json").unwrap();
    assert!(matches!(open_err(&root, options()), SnapshotError::Manifest { path, .. } if path == manifest_path));
    std::fs::write(&manifest_path, &manifest).unwrap();
    EmbeddedReader::open(&root, options()).expect("the restored manifest opens");

    // an SST one byte shorter than the manifest says
    let sst = first_sst(&vdir);
    let bytes = std::fs::read(&sst).unwrap();
    std::fs::write(&sst, &bytes[..bytes.len() - 1]).unwrap();
    let e = open_err(&root, options());
    match &e {
        SnapshotError::FilesMismatch { path, problems } => {
            assert_eq!(path, &vdir);
            assert!(problems[0].contains(sst.file_name().unwrap().to_str().unwrap()), "{problems:?}");
        }
        other => panic!("{other}"),
    }
    // same size, one byte changed: only the full checksum sees it
    let mut flipped = bytes.clone();
    flipped[100] ^= 0xff;
    std::fs::write(&sst, &flipped).unwrap();
    let full = EmbeddedOptions { verify_checksums: true, ..options() };
    assert!(matches!(open_err(&root, full), SnapshotError::FilesMismatch { .. }));
    std::fs::write(&sst, &bytes).unwrap();

    // the group's key count in the manifest differs from the entries of the SST files RocksDB
    // opens (the content checksum covers files, not counts, so only this check sees it)
    let mut json: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let rows = &mut json["groups"]["default"]["rows"];
    *rows = serde_json::Value::from(rows.as_u64().unwrap() + 1);
    std::fs::write(&manifest_path, serde_json::to_vec(&json).unwrap()).unwrap();
    match open_err(&root, options()) {
        SnapshotError::FilesMismatch { problems, .. } => assert!(problems[0].contains("entries"), "{problems:?}"),
        other => panic!("{other}"),
    }
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&empty);
}

/// Every file under the root, with size and modification time.
#[test]
fn files_the_loader_proved_are_not_hashed_again() {
    let _one_at_a_time = serial();
    let roots = roots();
    let full = EmbeddedOptions { verify_checksums: true, ..options() };
    // as the loader left it: its verified.json proves every online file, so none is read
    let reader = EmbeddedReader::open(&roots.single, full.clone()).unwrap();
    assert_eq!(reader.stats().current_files_hashed, 0);
    // a copy has other inodes than the record names: every online file is read
    let copy = copy_root(&roots.single, "root-copied");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(copy.join("versions").join(current(&copy)).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let online = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"].as_str().unwrap().starts_with("online/"))
        .count();
    assert!(online > 0);
    let reader = EmbeddedReader::open(&copy, full).unwrap();
    assert_eq!(reader.stats().current_files_hashed, online);
    drop(reader);
    let _ = std::fs::remove_dir_all(&copy);
}

fn tree(root: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn the_reader_never_writes_into_the_root() {
    let _one_at_a_time = serial();
    let root = &roots().grouped;
    let before = tree(root);
    {
        let reader = EmbeddedReader::open(root, options()).unwrap();
        let ids: Vec<EntityId> = (0..500).map(EntityId::Int64).collect();
        reader.get_features(&ids, &[]).unwrap();
        reader.get_features(&ids[..1], &["ads"]).unwrap();
        assert_eq!(reader.refresh().unwrap(), None);
    }
    assert_eq!(tree(root), before, "files, sizes and times under the root are unchanged");
}

/// The changes file `quiver load --changes VIEW=PATH` takes, from a plan (JSON): `set` gives each
/// target id the source row of another id (a target no view knows is a new entity), `removed` ids
/// are written with `_deleted` true.
const CHANGES: &str = r#"
import glob, json, os, sys
import pyarrow as pa, pyarrow.parquet as pq
src, plan, out = sys.argv[1], sys.argv[2], sys.argv[3]
p = json.load(open(plan))
key = p["key"]
source = pq.read_table(sorted(glob.glob(os.path.join(src, p["view"], "*.parquet"))))
at = {k: i for i, k in enumerate(source.column(key).to_pylist())}
def rows(ids, like, deleted):
    part = source.take(pa.array([at[i] for i in like], pa.int64()))
    part = part.set_column(part.schema.get_field_index(key), key, pa.array(ids, part.schema.field(key).type))
    return part.append_column("_deleted", pa.array([deleted] * len(ids), pa.bool_()))
pq.write_table(pa.concat_tables([
    rows([target for target, _ in p["set"]], [like for _, like in p["set"]], False),
    rows(p["removed"], p["removed"], True),
]), out)
"#;

/// A delta version (`quiver load --changes`) of `activity`, alone in its storage group: the base's
/// SST files plus one delta SST above them, holding other users' rows for changed users, new
/// entities, and tombstones for removed users (in no other view of the group). The reader follows
/// CURRENT to it and answers every view as the source Parquet with the changes applied; the base,
/// pinned, still answers as before; a reader opened on the delta version answers the same.
#[test]
fn a_delta_version_reads_as_its_base_with_the_changes_applied() {
    let _one_at_a_time = serial();
    let (roots, exp) = (roots(), expected());
    let root = copy_root(&roots.grouped, "root-delta");
    let base = current(&root);
    let n = USERS as i64;
    let present: Vec<i64> = (0..n).filter(|id| exp.views["activity"].contains_key(id)).collect();
    // (target, the user whose source row it gets): ~40 changed users, 3 ids no view knows
    let mut set: Vec<(i64, i64)> = present
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 50 == 10)
        .map(|(i, &id)| (id, present[present.len() - 1 - i]))
        .collect();
    let changed = set.len();
    set.extend([(n + 3, present[1]), (n + 50, present[2]), (1 << 40, present[3])]);
    let removed: Vec<i64> = present.iter().enumerate().filter(|(i, _)| i % 200 == 25).map(|(_, &id)| id).collect();
    assert!(changed >= 30 && removed.len() >= 5, "{changed} changed, {} removed", removed.len());

    let plan = root.with_file_name("delta-plan.json");
    let changes = root.with_file_name("delta-activity.parquet");
    let plan_json = serde_json::json!({"view": "activity", "key": exp.defs.entity, "set": set, "removed": removed});
    std::fs::write(&plan, plan_json.to_string()).unwrap();
    python(CHANGES, &[&dataset().dir, &plan, &changes]);

    // the oracle: the source rows with the plan applied
    let mut views = exp.views.clone();
    let activity = views.get_mut("activity").unwrap();
    for &(target, like) in &set {
        let row = exp.views["activity"][&like].clone();
        if let Some(old) = exp.views["activity"].get(&target) {
            assert!(old.iter().zip(&row).any(|(a, b)| !a.bit_eq(b)), "user {target} would not change");
        }
        activity.insert(target, row);
    }
    for id in &removed {
        activity.remove(id);
    }
    let after = Expected { defs: read_definitions(&dataset().features_yaml()), views };

    let reader = EmbeddedReader::open(&root, options()).unwrap();
    let out = run(&["load", "--root", root.to_str().unwrap(), "--changes", &format!("activity={}", changes.display())]);
    let delta = out.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap().to_owned();
    assert_eq!(current(&root), delta);
    assert_ne!(delta, base);

    // a delta version indeed: activity's group stands on the base, the other group is linked whole
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("versions").join(&delta).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let group = &manifest["groups"]["activity"];
    assert_eq!(group["delta"]["base"], base.as_str(), "{group}");
    assert_eq!(group["delta"]["keys"], set.len() + removed.len(), "{group}");
    assert!(manifest["groups"]["user"].get("delta").is_none(), "{}", manifest["groups"]["user"]);

    let swapped = reader.refresh().unwrap_or_else(|e| panic!("the delta version {delta} was refused: {e}"));
    assert_eq!(swapped.as_deref(), Some(delta.as_str()));
    let stats = reader.stats();
    assert_eq!((stats.current.as_str(), stats.previous.as_deref()), (delta.as_str(), Some(base.as_str())));
    let fresh = EmbeddedReader::open(&root, EmbeddedOptions { verify_checksums: true, ..options() })
        .unwrap_or_else(|e| panic!("opening the delta version {delta}: {e}"));

    let mut ids = sample_ids(exp);
    ids.extend(set.iter().map(|&(target, _)| target));
    ids.extend(&removed);
    for (reader, what) in [(&reader, "followed"), (&fresh, "opened")] {
        let mut bad = Vec::new();
        let mut totals = [0; 3];
        for chunk in ids.chunks(64).chain(ids.iter().rev().take(20).map(std::slice::from_ref)) {
            let batch = reader.get_features(&ids_of(chunk, false), &[]).unwrap();
            assert_eq!(batch.version(), delta, "{what}");
            let counts = compare_with_source(&batch, chunk, &after, &mut bad);
            totals.iter_mut().zip(counts).for_each(|(t, c)| *t += c);
        }
        assert_none(&bad, &format!("delta version {delta}, {what}"));
        assert!(totals[0] > 50_000 && totals[2] > 0, "{totals:?}");
    }

    // one of each, spelled out: a changed user, a new entity, a removed user, an untouched user
    let untouched = present[5];
    let probe = [set[0].0, n + 3, removed[0], untouched];
    let batch = reader.get_features(&ids_of(&probe, false), &["activity", "profile"]).unwrap();
    assert_eq!(batch.version(), delta);
    let rows = batch.rows();
    let activity = |i: usize| rows[i].view("activity").map(|v| v.values());
    assert!(same(activity(0), exp.views["activity"].get(&set[0].1)), "changed: {:?}", activity(0));
    assert!(same(activity(1), exp.views["activity"].get(&present[1])), "new: {:?}", activity(1));
    assert!(!rows[1].found("profile"), "a new entity has no profile");
    assert!(!rows[2].found("activity"), "a removed user's activity is gone");
    assert!(rows[2].found("profile"), "a removed user keeps its profile");
    assert!(same(activity(3), exp.views["activity"].get(&untouched)), "untouched: {:?}", activity(3));

    // pinned to the base: the values before the changes
    let mut bad = Vec::new();
    for chunk in ids.chunks(64) {
        let batch = reader.get_features_at(&ids_of(chunk, false), &[], &base).unwrap();
        assert_eq!(batch.version(), base);
        compare_with_source(&batch, chunk, exp, &mut bad);
    }
    assert_none(&bad, &format!("base {base}, pinned"));
    let batch = reader.get_features_at(&ids_of(&probe, false), &["activity"], &base).unwrap();
    let old = |i: usize| batch.rows()[i].view("activity").map(|v| v.values());
    assert!(same(old(0), exp.views["activity"].get(&probe[0])), "changed, pinned to the base: {:?}", old(0));
    assert!(old(1).is_none(), "new, pinned to the base: {:?}", old(1));
    assert!(same(old(2), exp.views["activity"].get(&probe[2])), "removed, pinned to the base: {:?}", old(2));

    drop((reader, fresh));
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&plan);
    let _ = std::fs::remove_file(&changes);
}

/// Whether a view's decoded values are `want`, value by value by their bits (both absent: true).
fn same(got: Option<&[Value]>, want: Option<&Vec<Value>>) -> bool {
    match (got, want) {
        (None, None) => true,
        (Some(g), Some(w)) => g.len() == w.len() && g.iter().zip(w).all(|(a, b)| a.bit_eq(b)),
        _ => false,
    }
}

#[cfg(feature = "loadgen")]
#[test]
fn loadgen_reads_a_root_in_process() {
    let _one_at_a_time = serial();
    let root = &roots().grouped;
    let out = root.with_file_name("loadgen-embedded.json");
    // the raw API, then typed values (--decode)
    for (k, decode) in [("1", None), ("100", None), ("100", Some("--decode"))] {
        let status = Command::new(env!("CARGO_BIN_EXE_quiver-loadgen"))
            .args(["--target", "embedded", "--root", root.to_str().unwrap(), "--rate", "200", "--duration", "1"])
            .args(["--warmup", "0.2", "--entities-per-request", k, "--users", &USERS.to_string(), "--pin-cpus", "0"])
            .args(["--cache-mb", "8", "--read-option", "no-verify-checksums", "--json-out", out.to_str().unwrap()])
            .args(decode)
            .status()
            .unwrap();
        assert!(status.success());
        let json = std::fs::read_to_string(&out).unwrap();
        assert!(json.contains("\"count\": 200,") && json.contains("\"errors\": 0,"), "k={k}: {json}");
        assert!(json.contains("\"target\": \"embedded\"") && json.contains("\"rss_kb\": "), "{json}");
    }
    // a view the root does not have is refused before the run
    let status = Command::new(env!("CARGO_BIN_EXE_quiver-loadgen"))
        .args(["--target", "embedded", "--root", root.to_str().unwrap(), "--views", "nope", "--duration", "0.1"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}
