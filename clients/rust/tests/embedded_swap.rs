//! The embedded reader following ROOT/CURRENT while threads read: two loads of different data
//! (distinct --as-of) swap under continuous reads with zero errors and every call's values
//! matching the version it names; a corrupt new version is refused while the old one serves.
#![cfg(feature = "embedded")]

// Shared with the other end-to-end tests; this binary uses part of it.
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use quiver_client::{EmbeddedOptions, EmbeddedReader, EntityId, Error, FeatureBatch, SnapshotError, Value};
use support::server::{Dataset, USERS, dataset, run, serial};
use support::source::{expected_view, read_definitions};

/// view -> entity -> values, for one source data set.
type Expected = HashMap<String, HashMap<i64, Vec<Value>>>;

fn expected_of(dir: &Path) -> Expected {
    let defs = read_definitions(&dir.join("features.yaml"));
    defs.views.iter().map(|v| (v.name.clone(), expected_view(dir, v))).collect()
}

/// A second data set: the same users and schema, other values (another seed).
fn other_data(data: &Dataset) -> PathBuf {
    let dir = data.dir.with_file_name("source-seed8");
    if !dir.join("features.yaml").is_file() {
        run(&["generate", "--events-per-user", "0", "--users", &USERS.to_string(), "--out", dir.to_str().unwrap(), "--seed", "8"]);
    }
    dir
}

fn load_as_of(source: &Path, root: &Path, as_of: &str) -> String {
    let out = run(&[
        "load",
        "--features",
        source.join("features.yaml").to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--as-of",
        as_of,
    ]);
    out.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap().to_owned()
}

/// Differences between a batch and the source it should come from.
fn differences(batch: &FeatureBatch, ids: &[i64], exp: &Expected) -> Vec<String> {
    let mut bad = Vec::new();
    for (&id, row) in ids.iter().zip(batch.rows()) {
        for view in batch.views() {
            match (exp[&view.name].get(&id), row.view(&view.name)) {
                (None, None) => {}
                (Some(want), Some(got)) => {
                    if want.len() != got.values().len() || !want.iter().zip(got.values()).all(|(w, g)| w.bit_eq(g)) {
                        bad.push(format!("id {id}: {} differs from its source", view.name));
                    }
                }
                (want, _) => bad.push(format!("id {id}: {} found={} in the source", view.name, want.is_some())),
            }
        }
    }
    bad
}

fn fresh(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_swap_under_continuous_multithreaded_reads_has_no_errors_and_each_call_reads_one_version() {
    let _one_at_a_time = serial();
    let data = dataset();
    let (dir_a, dir_b) = (data.dir.clone(), other_data(data));
    let (exp_a, exp_b) = (Arc::new(expected_of(&dir_a)), Arc::new(expected_of(&dir_b)));
    // The two data sets must differ, or a call answered from the wrong version would pass.
    let differing = (0..200).filter(|id| exp_a["activity"].get(id) != exp_b["activity"].get(id)).count();
    assert!(differing > 150, "seed 7 and seed 8 data differ for only {differing} of 200 users");

    let root = data.root.with_file_name("root-swap");
    fresh(&root);
    let first = load_as_of(&dir_a, &root, "2026-11-01T00:00:00Z");
    let options = EmbeddedOptions {
        block_cache_bytes: 8 << 20,
        poll_interval: Some(Duration::from_millis(20)),
        ..Default::default()
    };
    let reader = Arc::new(EmbeddedReader::open(&root, options).unwrap());
    let sources: Arc<RwLock<HashMap<String, Arc<Expected>>>> =
        Arc::new(RwLock::new(HashMap::from([(first.clone(), Arc::clone(&exp_a))])));
    let stop = Arc::new(AtomicBool::new(false));

    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (reader, sources, stop) = (Arc::clone(&reader), Arc::clone(&sources), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut calls: HashMap<String, u64> = HashMap::new();
                let mut problems = Vec::new();
                let mut state = t * 7919 + 1;
                while !stop.load(Ordering::Relaxed) {
                    let k = if state % 3 == 0 { 1 } else { 25 };
                    let ids: Vec<i64> = (0..k)
                        .map(|_| {
                            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            ((state >> 33) % USERS) as i64
                        })
                        .collect();
                    let typed: Vec<EntityId> = ids.iter().map(|&i| EntityId::Int64(i)).collect();
                    let batch = match reader.get_features(&typed, &[]) {
                        Ok(b) => b,
                        Err(e) => {
                            problems.push(format!("call failed: {e}"));
                            continue;
                        }
                    };
                    // The version may have been published a moment ago: wait for its source.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let exp = loop {
                        if let Some(e) = sources.read().unwrap().get(batch.version()) {
                            break Arc::clone(e);
                        }
                        assert!(Instant::now() < deadline, "a call named unknown version {}", batch.version());
                        std::thread::sleep(Duration::from_millis(1));
                    };
                    problems.extend(
                        differences(&batch, &ids, &exp).into_iter().map(|d| format!("{}: {d}", batch.version())),
                    );
                    *calls.entry(batch.version().to_owned()).or_default() += 1;
                }
                (calls, problems)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    // `quiver load` publishes by moving CURRENT, so readers may see the new version before its
    // source is registered here: they wait for it.
    let second = load_as_of(&dir_b, &root, "2026-11-02T00:00:00Z");
    sources.write().unwrap().insert(second.clone(), Arc::clone(&exp_b));
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.stats().current != second {
        assert!(Instant::now() < deadline, "the reader did not swap to {second}");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);

    let mut calls: HashMap<String, u64> = HashMap::new();
    let mut problems = Vec::new();
    for t in threads {
        let (c, p) = t.join().unwrap();
        c.into_iter().for_each(|(v, n)| *calls.entry(v).or_default() += n);
        problems.extend(p);
    }
    assert!(
        problems.is_empty(),
        "{} problems, first:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
    assert!(calls.get(&first).copied().unwrap_or(0) > 10 && calls.get(&second).copied().unwrap_or(0) > 10, "{calls:?}");
    eprintln!("calls per version: {calls:?}");

    let stats = reader.stats();
    assert_eq!(
        (stats.current.as_str(), stats.previous.as_deref(), stats.swaps),
        (second.as_str(), Some(first.as_str()), 1)
    );
    // The previous version stays open for pinned reads, with its own values.
    let ids = [3i64, 4, 5];
    let typed: Vec<EntityId> = ids.iter().map(|&i| EntityId::Int64(i)).collect();
    let pinned = reader.get_features_at(&typed, &[], &first).unwrap();
    assert_eq!(pinned.version(), first);
    assert!(differences(&pinned, &ids, &exp_a).is_empty());
    drop(reader);
    fresh(&root);
}

#[test]
fn a_corrupt_new_version_is_refused_while_the_old_one_keeps_serving() {
    let _one_at_a_time = serial();
    let data = dataset();
    let (dir_a, dir_b) = (data.dir.clone(), other_data(data));
    let (exp_a, exp_b) = (expected_of(&dir_a), expected_of(&dir_b));
    let root = data.root.with_file_name("root-corrupt");
    fresh(&root);
    let first = load_as_of(&dir_a, &root, "2026-11-01T00:00:00Z");
    let reader = EmbeddedReader::open(&root, EmbeddedOptions { poll_interval: None, ..Default::default() }).unwrap();

    let bad = load_as_of(&dir_b, &root, "2026-11-03T00:00:00Z");
    let sst_dir = root.join("versions").join(&bad).join("online").join("default");
    let sst = std::fs::read_dir(&sst_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .unwrap();
    let bytes = std::fs::read(&sst).unwrap();
    std::fs::write(&sst, &bytes[..bytes.len() / 2]).unwrap();

    match reader.refresh() {
        Err(Error::Snapshot(SnapshotError::FilesMismatch { path, problems })) => {
            assert!(path.ends_with(&bad), "{}", path.display());
            assert!(problems.iter().any(|p| p.contains(sst.file_name().unwrap().to_str().unwrap())), "{problems:?}");
        }
        other => panic!("expected the corrupt version to be refused, got {other:?}"),
    }
    let ids = [1i64, 2, 3, 40, 41];
    let typed: Vec<EntityId> = ids.iter().map(|&i| EntityId::Int64(i)).collect();
    let check = |reader: &EmbeddedReader, version: &str, exp: &Expected| {
        let batch = reader.get_features(&typed, &[]).unwrap();
        assert_eq!(batch.version(), version);
        let bad = differences(&batch, &ids, exp);
        assert!(bad.is_empty(), "{bad:?}");
    };
    check(&reader, &first, &exp_a);
    let stats = reader.stats();
    assert_eq!((stats.current.as_str(), stats.refused, stats.swaps), (first.as_str(), 1, 0));
    assert!(stats.last_refusal.unwrap().contains(&bad));
    // Not retried while CURRENT names it; the counter counts versions, not polls.
    assert_eq!(reader.refresh().unwrap(), None);
    assert_eq!(reader.stats().refused, 1);
    assert!(
        matches!(reader.get_features_at(&typed, &[], &bad), Err(e) if e.code() == Some(tonic::Code::FailedPrecondition))
    );

    // The next good version swaps in; the previous one is the version that was serving.
    let good = load_as_of(&dir_b, &root, "2026-11-04T00:00:00Z");
    assert_eq!(reader.refresh().unwrap().as_deref(), Some(good.as_str()));
    check(&reader, &good, &exp_b);
    let stats = reader.stats();
    assert_eq!((stats.previous.as_deref(), stats.swaps, stats.open_versions), (Some(first.as_str()), 1, 2));

    // Rolling CURRENT back swaps to the previous version without reopening it.
    std::fs::write(root.join("CURRENT"), format!("{first}\n")).unwrap();
    assert_eq!(reader.refresh().unwrap().as_deref(), Some(first.as_str()));
    check(&reader, &first, &exp_a);
    assert_eq!(reader.stats().previous.as_deref(), Some(good.as_str()));
    drop(reader);
    fresh(&root);
}
