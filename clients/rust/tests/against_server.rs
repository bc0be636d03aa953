//! End-to-end tests: the real `quiver` CLI generates data, loads a snapshot and serves it; this
//! crate reads it over TCP and over a Unix socket, and every decoded value is compared with the
//! source Parquet. Needs the Python side installed (`make setup`), found at $QUIVER_BIN.

mod support;

use std::collections::HashMap;
use std::sync::OnceLock;

use quiver_client::proto::GetFeaturesRequest;
use quiver_client::{EntityId, FeatureType, KeyType, QuiverClient, Value};
use support::server::{Dataset, Server, USERS, dataset, load, serial};
use support::source::{Definitions, expected_view, read_definitions};

/// Each test holds the serial lock for its whole run, outside its own runtime.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

struct Expected {
    defs: Definitions,
    /// view -> entity -> values in schema order
    views: HashMap<String, HashMap<i64, Vec<Value>>>,
}

fn expected(data: &Dataset) -> &'static Expected {
    static EXPECTED: OnceLock<Expected> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let defs = read_definitions(&data.features_yaml());
        let views = defs.views.iter().map(|v| (v.name.clone(), expected_view(&data.dir, v))).collect();
        Expected { defs, views }
    })
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
    let (mut compared, mut nulls, mut nans, mut absent) = (0usize, 0usize, 0usize, 0usize);
    for chunk in ids.chunks(50) {
        let request: Vec<EntityId> = chunk.iter().map(|&id| EntityId::Int64(id)).collect();
        let batch = client.get_features(&request, &[]).await.unwrap();
        assert_eq!(batch.version(), data.version);
        assert_eq!(batch.len(), chunk.len());
        for (&id, row) in chunk.iter().zip(batch.rows()) {
            for def in &exp.defs.views {
                let want = exp.views[&def.name].get(&id);
                let got = row.view(&def.name);
                match (want, got) {
                    (None, None) => absent += 1,
                    (Some(_), None) => mismatches.push(format!("user {id}: not found in {}", def.name)),
                    (None, Some(_)) => mismatches.push(format!("user {id}: found in {}, not in its source", def.name)),
                    (Some(want), Some(got)) => {
                        for (f, w) in def.features.iter().zip(want) {
                            let g = got.get(&f.name).expect("feature in decoded view");
                            compared += 1;
                            nulls += usize::from(w.is_null());
                            nans += usize::from(matches!(w, Value::Float32(x) if x.is_nan()));
                            if !g.bit_eq(w) {
                                mismatches.push(format!("user {id}, {}.{}: got {g:?}, source {w:?}", def.name, f.name));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{transport}: {} mismatches, first ones:\n{}",
        mismatches.len(),
        mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    // The sample must exercise what it claims to.
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

#[test]
fn loadgen_runs_against_the_server() {
    let _one_at_a_time = serial();
    runtime().block_on(loadgen_runs_against_the_server_async());
}

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
    let root = data.root.with_file_name("root-swap");
    let _ = std::fs::remove_dir_all(&root);
    let first = load(&data.features_yaml(), &root);
    let mut server = Server::start_on(&root, &["--poll-seconds", "0.2"]);
    let tcp = server.tcp.clone();
    let client = server.ready_client(&tcp).await;
    let ids = [EntityId::Int64(11), EntityId::Int64(12)];
    let before = client.get_features(&ids, &[]).await.unwrap();
    assert_eq!(before.version(), first);

    let second = load(&data.features_yaml(), &root);
    assert_ne!(first, second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.snapshot_info().await.unwrap().current_version != second {
        assert!(std::time::Instant::now() < deadline, "the server did not swap to {second}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let info = client.snapshot_info().await.unwrap();
    let loaded: Vec<&str> = info.loaded.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(loaded, [second.as_str(), first.as_str()], "current first, then the previous one");

    // Unpinned reads move to the new version (its schema fetched and cached); a pin still
    // reads the previous one. Same source data, so the same values.
    let after = client.get_features(&ids, &[]).await.unwrap();
    assert_eq!(after.version(), second);
    let pinned = client.get_features_at(&ids, &[], &first).await.unwrap();
    assert_eq!(pinned.version(), first);
    for batch in [&after, &pinned] {
        for (b, a) in batch.rows().iter().zip(before.rows()) {
            for (x, y) in b.views().iter().zip(a.views()) {
                let (x, y) = (x.as_ref().map(|v| v.values()), y.as_ref().map(|v| v.values()));
                assert!(match (x, y) {
                    (Some(x), Some(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.bit_eq(q)),
                    (None, None) => true,
                    _ => false,
                });
            }
        }
    }
    assert_eq!(client.schema(&first).await.unwrap().version, first);
    assert_eq!(client.schema(&second).await.unwrap().version, second);
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}
