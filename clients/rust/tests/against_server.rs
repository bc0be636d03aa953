//! End-to-end tests: the real `quiver` CLI generates data, loads a snapshot and serves it; this
//! crate reads it over TCP and over a Unix socket, and every decoded value is compared with the
//! source Parquet. Needs the Python side installed (`make setup`), found at $QUIVER_BIN.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use quiver_client::proto::GetFeaturesRequest;
use quiver_client::{EntityId, FeatureBatch, FeatureType, KeyType, QuiverClient, Value};
use support::reshape::{add_profile_feature, string_key, to_string_keys};
use support::server::{Dataset, SEED, Server, USERS, dataset, generate, load, load_at, serial};
use support::source::{Definitions, expected_view, expected_view_by_string, read_definitions};

/// Each test holds the serial lock for its whole run, outside its own runtime.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

struct Expected {
    defs: Definitions,
    /// view -> entity -> values in schema order
    views: HashMap<String, HashMap<i64, Vec<Value>>>,
}

impl Expected {
    /// The values a reader must find, from a data set's features.yaml and Parquet.
    fn read(dir: &Path) -> Expected {
        let defs = read_definitions(&dir.join("features.yaml"));
        let views = defs.views.iter().map(|v| (v.name.clone(), expected_view(dir, v))).collect();
        Expected { defs, views }
    }
}

fn expected(data: &Dataset) -> &'static Expected {
    static EXPECTED: OnceLock<Expected> = OnceLock::new();
    EXPECTED.get_or_init(|| Expected::read(&data.dir))
}

/// What a comparison covered.
#[derive(Default)]
struct Counts {
    compared: usize,
    nulls: usize,
    nans: usize,
    absent: usize,
}

/// Compares every view of every row of `batch` (the answer for `ids`, all views in schema order)
/// with the source values in `exp`; appends what differs to `mismatches`.
fn compare<K: std::fmt::Display + std::hash::Hash + Eq>(
    batch: &FeatureBatch,
    ids: &[K],
    exp_views: &HashMap<String, HashMap<K, Vec<Value>>>,
    defs: &Definitions,
    counts: &mut Counts,
    mismatches: &mut Vec<String>,
) {
    // Lengths first: zip stops at the shorter side, and an empty answer would compare nothing.
    assert_eq!(batch.len(), ids.len(), "one row per requested id");
    let names: Vec<&str> = batch.views().iter().map(|v| v.name.as_str()).collect();
    let want: Vec<&str> = defs.views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, want, "the answer's views, in schema order");
    for (id, row) in ids.iter().zip(batch.rows()) {
        for def in &defs.views {
            match (exp_views[&def.name].get(id), row.view(&def.name)) {
                (None, None) => counts.absent += 1,
                (Some(_), None) => mismatches.push(format!("{id}: not found in {}", def.name)),
                (None, Some(_)) => mismatches.push(format!("{id}: found in {}, not in its source", def.name)),
                (Some(want), Some(got)) => {
                    if got.values().len() != def.features.len() {
                        mismatches.push(format!(
                            "{id}, {}: {} values decoded, {} features",
                            def.name,
                            got.values().len(),
                            def.features.len()
                        ));
                        continue;
                    }
                    for (f, w) in def.features.iter().zip(want) {
                        let g = got.get(&f.name).expect("feature in decoded view");
                        counts.compared += 1;
                        counts.nulls += usize::from(w.is_null());
                        counts.nans += usize::from(matches!(w, Value::Float32(x) if x.is_nan()));
                        if !g.bit_eq(w) {
                            mismatches.push(format!("{id}, {}.{}: got {g:?}, source {w:?}", def.name, f.name));
                        }
                    }
                }
            }
        }
    }
}

fn assert_no_mismatches(what: &str, mismatches: &[String]) {
    assert!(
        mismatches.is_empty(),
        "{what}: {} mismatches, first ones:\n{}",
        mismatches.len(),
        mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn type_name(t: FeatureType) -> &'static str {
    match t {
        FeatureType::Bool => "bool",
        FeatureType::Int32 => "int32",
        FeatureType::Int64 => "int64",
        FeatureType::Float32 => "float32",
        FeatureType::Float64 => "float64",
        FeatureType::String => "string",
        FeatureType::Bytes => "bytes",
        FeatureType::Float32List => "list<float32>",
        FeatureType::Int64List => "list<int64>",
        FeatureType::Unspecified => "unspecified",
        other => panic!("{other:?}: a feature type this test does not know"),
    }
}

/// Ids to check: a spread over the whole range, the edges, users missing from some view, and
/// ids no view knows.
fn sample_ids(exp: &Expected) -> Vec<i64> {
    let n = USERS as i64;
    let mut ids: Vec<i64> = (0..n).step_by(7).collect();
    ids.extend([1, n - 1, n - 2]);
    for rows in exp.views.values() {
        ids.extend((0..n).filter(|id| !rows.contains_key(id)).take(15));
    }
    ids.extend([n, n + 1, 1 << 40, -1, i64::MIN, i64::MAX]);
    ids
}

async fn check_values(client: &QuiverClient, data: &Dataset, transport: &str) {
    let exp = expected(data);

    let schema = client.schema(&data.version).await.unwrap();
    assert_eq!(schema.version, data.version);
    assert_eq!(schema.entity_name, exp.defs.entity);
    assert_eq!(schema.key_type, if exp.defs.key_type == "int64" { KeyType::Int64 } else { KeyType::String });
    let names: Vec<&str> = schema.views.iter().map(|v| v.name.as_str()).collect();
    let def_names: Vec<&str> = exp.defs.views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, def_names, "views in schema order");
    for (view, def) in schema.views.iter().zip(&exp.defs.views) {
        let got: Vec<(&str, &str)> = view.features.iter().map(|f| (f.name.as_str(), type_name(f.ty))).collect();
        let want: Vec<(&str, &str)> = def.features.iter().map(|f| (f.name.as_str(), f.ty.as_str())).collect();
        assert_eq!(got, want, "features of view {}", view.name);
        assert_eq!(view.rows, exp.views[&view.name].len() as u64, "rows of view {}", view.name);
    }

    let ids = sample_ids(exp);
    let mut mismatches = Vec::new();
    let mut counts = Counts::default();
    for chunk in ids.chunks(50) {
        let request: Vec<EntityId> = chunk.iter().map(|&id| EntityId::Int64(id)).collect();
        let batch = client.get_features(&request, &[]).await.unwrap();
        assert_eq!(batch.version(), data.version);
        compare(&batch, chunk, &exp.views, &exp.defs, &mut counts, &mut mismatches);
    }
    assert_no_mismatches(transport, &mismatches);
    // The sample must exercise what it claims to.
    let Counts { compared, nulls, nans, absent } = counts;
    assert!(compared > 10_000 && nulls > 0 && nans > 0 && absent > 0, "{compared} {nulls} {nans} {absent}");
    eprintln!("{transport}: {compared} values equal to the source ({nulls} nulls, {nans} NaN), {absent} absent rows");
}

#[test]
fn decoded_values_match_the_source_parquet_over_tcp_and_unix_socket() {
    let _one_at_a_time = serial();
    runtime().block_on(decoded_values_match_the_source_parquet_over_tcp_and_unix_socket_async());
}

async fn decoded_values_match_the_source_parquet_over_tcp_and_unix_socket_async() {
    let data = dataset();
    let mut server = Server::start(data);
    let (tcp, uds) = (server.tcp.clone(), server.uds.clone());
    let client = server.ready_client(&tcp).await;
    check_values(&client, data, "tcp").await;
    let client = server.ready_client(&uds).await;
    check_values(&client, data, "unix socket").await;
}

#[test]
fn requests_follow_the_contract() {
    let _one_at_a_time = serial();
    runtime().block_on(requests_follow_the_contract_async());
}

async fn requests_follow_the_contract_async() {
    let data = dataset();
    let mut server = Server::start(data);
    let tcp = server.tcp.clone();
    let client = server.ready_client(&tcp).await;
    let exp = expected(data);

    let info = client.snapshot_info().await.unwrap();
    assert_eq!(info.current_version, data.version);
    assert_eq!(info.loaded[0].version, data.version);
    for (view, rows) in &exp.views {
        assert_eq!(info.loaded[0].rows.get(view).copied(), Some(rows.len() as u64), "rows of {view}");
    }

    // Request order, duplicates and unknown ids; views in the requested order.
    let unknown = 10 * USERS as i64;
    let ids = [EntityId::Int64(5), EntityId::Int64(3), EntityId::Int64(5), EntityId::Int64(unknown)];
    let batch = client.get_features(&ids, &["ads", "profile"]).await.unwrap();
    let names: Vec<&str> = batch.views().iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["ads", "profile"]);
    assert_eq!(batch.len(), 4);
    let rows = batch.rows();
    assert!(rows[0].found("profile") && !rows[3].found("profile") && !rows[3].found("ads"));
    assert!(rows[0].get("profile", "country").is_some());
    assert_eq!(rows[0].view("profile").unwrap().values(), rows[2].view("profile").unwrap().values());
    assert_eq!(rows[1].get("profile", "signup_days"), exp.views["profile"][&3].get(7));
    assert!(rows[0].get("activity", "act_000").is_none(), "a view not requested is absent");

    // The raw API: all views in schema order when none are named, and decode() agrees.
    let raw =
        client.get_features_raw(GetFeaturesRequest { int64_ids: vec![3, 5], ..Default::default() }).await.unwrap();
    assert_eq!(raw.version, data.version);
    let all: Vec<&str> = exp.defs.views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(raw.views, all);
    assert_eq!(raw.rows.len(), 2);
    let decoded = client.decode(raw).await.unwrap();
    assert_eq!(decoded.rows()[0].get("profile", "signup_days"), rows[1].get("profile", "signup_days"));

    // Pinning the current version answers from it; an unknown version is FAILED_PRECONDITION.
    let pinned = client.get_features_at(&ids[..1], &[], &data.version).await.unwrap();
    assert_eq!(pinned.version(), data.version);
    let err = client.get_features_at(&ids[..1], &[], "20000101T000000Z-000000000000").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");

    // Failures travel as gRPC status codes.
    let err = client.get_features(&ids[..1], &["no_such_view"]).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    let err = client.get_features_raw(GetFeaturesRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    let err = client.get_features(&["3".into()], &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
}

#[cfg(feature = "loadgen")]
#[test]
fn loadgen_runs_against_the_server() {
    let _one_at_a_time = serial();
    runtime().block_on(loadgen_runs_against_the_server_async());
}

#[cfg(feature = "loadgen")]
async fn loadgen_runs_against_the_server_async() {
    let data = dataset();
    let mut server = Server::start(data);
    let (tcp, uds) = (server.tcp.clone(), server.uds.clone());
    server.ready_client(&tcp).await;
    for (addr, k) in [(&tcp, "100"), (&uds, "1")] {
        let out = std::env::temp_dir().join(format!("quiver-loadgen-{}-{k}.json", std::process::id()));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_quiver-loadgen"))
            .args(["--target", "quiver", "--addr", addr, "--rate", "100", "--duration", "1", "--warmup", "0.5"])
            .args(["--entities-per-request", k, "--users", &USERS.to_string(), "--connections", "2"])
            .args(["--views", "profile,embedding", "--json-out", out.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        let json = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert!(json.contains("\"count\": 100,") && json.contains("\"errors\": 0,"), "{addr}: {json}");
        assert!(json.contains("\"p99_9_us\": "), "{json}");
    }
}

#[test]
fn a_swap_keeps_the_previous_version_pinnable_and_decodes_each_with_its_schema() {
    let _one_at_a_time = serial();
    runtime().block_on(a_swap_async());
}

async fn a_swap_async() {
    let data = dataset();
    let base = data.root.with_file_name("swap");
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    // The second version holds other values (another seed) under another schema (a feature added to
    // profile): a server that ignored the pin, or a client that decoded one version with the other's
    // schema, answers wrongly for one of them.
    let second_src = base.join("source-8");
    generate(&second_src, SEED + 1);
    add_profile_feature(&second_src);
    let (exp1, exp2) = (expected(data), Expected::read(&second_src));
    let first = load_at(&data.features_yaml(), &root, "2026-01-01T00:00:00Z");
    let mut server = Server::start_on(&root, &["--poll-seconds", "0.2"]);
    let tcp = server.tcp.clone();
    let client = server.ready_client(&tcp).await;
    let n = USERS as i64;
    let ids: Vec<i64> = (0..n).step_by(13).chain([n - 1, n, -1]).collect();
    let request: Vec<EntityId> = ids.iter().map(|&id| EntityId::Int64(id)).collect();
    let mut mismatches = Vec::new();
    let mut counts = Counts::default();
    let before = client.get_features(&request, &[]).await.unwrap();
    assert_eq!(before.version(), first);
    compare(&before, &ids, &exp1.views, &exp1.defs, &mut counts, &mut mismatches);
    assert_no_mismatches("the first version", &mismatches);

    let second = load_at(&second_src.join("features.yaml"), &root, "2026-01-02T00:00:00Z");
    assert_ne!(first, second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while client.snapshot_info().await.unwrap().current_version != second {
        assert!(std::time::Instant::now() < deadline, "the server did not swap to {second}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let info = client.snapshot_info().await.unwrap();
    let loaded: Vec<&str> = info.loaded.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(loaded, [second.as_str(), first.as_str()], "current first, then the previous one");

    // Unpinned reads move to the new version (its schema fetched and cached); a pin still reads the
    // previous one, each equal to its own source.
    let after = client.get_features(&request, &[]).await.unwrap();
    assert_eq!(after.version(), second);
    compare(&after, &ids, &exp2.views, &exp2.defs, &mut counts, &mut mismatches);
    assert_no_mismatches("the second version, unpinned", &mismatches);
    let pinned = client.get_features_at(&request, &[], &first).await.unwrap();
    assert_eq!(pinned.version(), first);
    compare(&pinned, &ids, &exp1.views, &exp1.defs, &mut counts, &mut mismatches);
    assert_no_mismatches("the first version, pinned after the swap", &mismatches);
    // The two versions must differ where the test looks, or it could not tell them apart.
    let differ = ids
        .iter()
        .filter(|&id| match (exp1.views["profile"].get(id), exp2.views["profile"].get(id)) {
            (Some(a), Some(b)) => !a.iter().zip(b).all(|(x, y)| x.bit_eq(y)),
            (a, b) => a.is_some() != b.is_some(),
        })
        .count();
    assert!(differ > ids.len() / 2, "only {differ} of {} users differ between the versions", ids.len());
    assert!(after.rows()[0].get("profile", "logins_7d").is_some());
    assert!(pinned.rows()[0].get("profile", "logins_7d").is_none(), "the first version has no logins_7d");

    assert_eq!(client.schema(&first).await.unwrap().version, first);
    assert_eq!(client.schema(&second).await.unwrap().version, second);
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn string_keyed_entities_end_to_end() {
    let _one_at_a_time = serial();
    runtime().block_on(string_keyed_async());
}

async fn string_keyed_async() {
    let data = dataset();
    let base = data.root.with_file_name("string-keys");
    let _ = std::fs::remove_dir_all(&base);
    let (src, root) = (base.join("source"), base.join("root"));
    generate(&src, SEED);
    to_string_keys(&src);
    let defs = read_definitions(&src.join("features.yaml"));
    assert_eq!(defs.key_type, "string");
    let views: HashMap<String, HashMap<String, Vec<Value>>> =
        defs.views.iter().map(|v| (v.name.clone(), expected_view_by_string(&src, v))).collect();
    let version = load(&src.join("features.yaml"), &root);
    let mut server = Server::start_on(&root, &[]);
    let tcp = server.tcp.clone();
    let client = server.ready_client(&tcp).await;
    let schema = client.schema(&version).await.unwrap();
    assert_eq!(schema.key_type, KeyType::String);

    let n = USERS as i64;
    let mut keys: Vec<String> = (0..n).step_by(5).map(string_key).collect();
    // unknown keys: another prefix, a prefix of a real key, the empty string, an int64's decimal form
    keys.extend(["nobody".to_owned(), "user-".to_owned(), String::new(), "7".to_owned()]);
    let (mut mismatches, mut counts) = (Vec::new(), Counts::default());
    for chunk in keys.chunks(60) {
        let request: Vec<EntityId> = chunk.iter().map(|k| EntityId::String(k.clone())).collect();
        let batch = client.get_features(&request, &[]).await.unwrap();
        assert_eq!(batch.version(), version);
        compare(&batch, chunk, &views, &defs, &mut counts, &mut mismatches);
    }
    assert_no_mismatches("string keys", &mismatches);
    let Counts { compared, absent, .. } = counts;
    assert!(compared > 5_000 && absent >= 4 * defs.views.len(), "{compared} compared, {absent} absent");
    // an int64 id for a string-keyed entity is the caller's mistake, named as such
    let err = client.get_features(&[EntityId::Int64(7)], &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}
