//! The systems under load, behind one `send` so the runner treats them alike.

#[cfg(feature = "embedded")]
use quiver_client::EntityId;
use quiver_client::proto::GetFeaturesRequest;
use quiver_client::{ClientOptions, KeyType, QuiverClient, TlsOptions};

use crate::args::{Args, TargetKind};

#[cfg(feature = "embedded")]
use std::sync::Arc;

pub enum Target {
    /// One client per connection; the raw API, so decoding cost is not counted.
    Quiver { clients: Vec<QuiverClient>, key_type: KeyType, views: Vec<String>, decode: bool },
    /// One multiplexed connection per `--connections`.
    Redis { connections: Vec<redis::aio::MultiplexedConnection> },
    /// The snapshot root read in this process; the raw API too (lookups and the response a
    /// server would send, decoded from protobuf as a gRPC client does, but not into values), or
    /// with `decode` the typed `get_features`.
    #[cfg(feature = "embedded")]
    Embedded { reader: Arc<quiver_client::EmbeddedReader>, key_type: KeyType, views: Vec<String>, decode: bool },
}

impl Target {
    pub async fn connect(args: &Args) -> Result<Target, String> {
        match args.target {
            TargetKind::Quiver => {
                let mut options = ClientOptions::default();
                if let Some(tls) = &args.tls {
                    let mut t = TlsOptions::from_files(&tls.ca).map_err(|e| format!("--tls-ca: {e}"))?;
                    if let Some((cert, key)) = &tls.identity {
                        t = t.with_identity_files(cert, key).map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
                    }
                    if let Some(domain) = &tls.domain {
                        t = t.with_domain(domain);
                    }
                    options.tls = Some(t);
                }
                // Several addresses (comma-separated) are used round-robin: a server with N workers
                // on Unix sockets listens on PATH, PATH.1, ... since sockets cannot share a port.
                let addrs: Vec<&str> = args.addr.split(',').filter(|a| !a.is_empty()).collect();
                let count = args.connections.max(addrs.len());
                let mut clients = Vec::with_capacity(count);
                for i in 0..count {
                    // A separate connect() is a separate HTTP/2 connection, which the kernel can
                    // hand to a different SO_REUSEPORT process.
                    let addr = addrs[i % addrs.len()];
                    clients.push(QuiverClient::connect_with(addr, &options).await.map_err(|e| e.to_string())?);
                }
                let schema = clients[0].schema("").await.map_err(|e| e.to_string())?;
                for v in &args.views {
                    if schema.view(v).is_none() {
                        return Err(format!("--views: {v} is not a view of version {}", schema.version));
                    }
                }
                Ok(Target::Quiver {
                    clients,
                    key_type: sendable(schema.key_type)?,
                    views: args.views.clone(),
                    decode: args.decode,
                })
            }
            TargetKind::Redis => {
                let client =
                    redis::Client::open(args.addr.as_str()).map_err(|e| format!("--addr {}: {e}", args.addr))?;
                let mut connections = Vec::with_capacity(args.connections);
                for _ in 0..args.connections {
                    let c = client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
                    connections.push(c);
                }
                Ok(Target::Redis { connections })
            }
            #[cfg(feature = "embedded")]
            TargetKind::Embedded => {
                let mut options = quiver_client::EmbeddedOptions {
                    block_cache_bytes: args.cache_mb << 20,
                    poll_interval: None,
                    ..Default::default()
                };
                for o in &args.read_options {
                    match o.as_str() {
                        "no-verify-checksums" => options.read.verify_checksums = false,
                        "no-fill-cache" => options.read.fill_cache = false,
                        "no-mmap" => options.mmap_reads = false,
                        _ => unreachable!("checked by args"),
                    }
                }
                let reader = quiver_client::EmbeddedReader::open(&args.addr, options).map_err(|e| e.to_string())?;
                let schema = reader.schema("").map_err(|e| e.to_string())?;
                for v in &args.views {
                    if schema.view(v).is_none() {
                        return Err(format!("--views: {v} is not a view of version {}", schema.version));
                    }
                }
                Ok(Target::Embedded {
                    reader: Arc::new(reader),
                    key_type: sendable(schema.key_type)?,
                    views: args.views.clone(),
                    decode: args.decode,
                })
            }
            #[cfg(not(feature = "embedded"))]
            TargetKind::Embedded => {
                Err("--target embedded: this quiver-loadgen was built without the cargo feature `embedded`".into())
            }
        }
    }

    /// A cheap handle for request `i`'s task: connections are picked round-robin.
    pub fn handle(&self, i: u64) -> Handle {
        match self {
            Target::Quiver { clients, key_type, views, decode } => Handle::Quiver {
                client: clients[(i % clients.len() as u64) as usize].clone(),
                key_type: *key_type,
                views: views.clone(),
                decode: *decode,
            },
            Target::Redis { connections } => {
                Handle::Redis { connection: connections[(i % connections.len() as u64) as usize].clone() }
            }
            #[cfg(feature = "embedded")]
            Target::Embedded { reader, key_type, views, decode } => Handle::Embedded {
                reader: Arc::clone(reader),
                key_type: *key_type,
                views: views.clone(),
                decode: *decode,
            },
        }
    }
}

pub enum Handle {
    Quiver {
        client: QuiverClient,
        key_type: KeyType,
        views: Vec<String>,
        decode: bool,
    },
    Redis {
        connection: redis::aio::MultiplexedConnection,
    },
    #[cfg(feature = "embedded")]
    Embedded {
        reader: Arc<quiver_client::EmbeddedReader>,
        key_type: KeyType,
        views: Vec<String>,
        decode: bool,
    },
}

/// The key types quiver-loadgen makes ids of (id `n` is `n`, or its decimal string).
fn sendable(key_type: KeyType) -> Result<KeyType, String> {
    match key_type {
        KeyType::Int64 | KeyType::String => Ok(key_type),
        other => Err(format!("entity key type {other:?}: quiver-loadgen sends int64 or string ids only")),
    }
}

fn request(ids: Vec<u64>, key_type: KeyType, views: Vec<String>) -> GetFeaturesRequest {
    let mut request = GetFeaturesRequest { views, ..Default::default() };
    match key_type {
        KeyType::Int64 => request.int64_ids = ids.into_iter().map(|id| id as i64).collect(),
        KeyType::String => request.string_ids = ids.into_iter().map(|id| id.to_string()).collect(),
        _ => unreachable!("checked by sendable"),
    }
    request
}

#[cfg(feature = "embedded")]
fn entity_ids(ids: Vec<u64>, key_type: KeyType) -> Vec<EntityId> {
    match key_type {
        KeyType::Int64 => ids.into_iter().map(|id| EntityId::Int64(id as i64)).collect(),
        KeyType::String => ids.into_iter().map(|id| EntityId::String(id.to_string())).collect(),
        _ => unreachable!("checked by sendable"),
    }
}

impl Handle {
    /// One request for `ids`; an `Err` is counted, never fatal.
    pub async fn send(self, ids: Vec<u64>) -> Result<(), String> {
        match self {
            Handle::Quiver { client, key_type, views, decode } => {
                let n = ids.len();
                let response =
                    client.get_features_raw(request(ids, key_type, views)).await.map_err(|e| match e.code() {
                        Some(code) => format!("grpc {code:?}"),
                        None => e.to_string(),
                    })?;
                if response.rows.len() != n {
                    return Err(format!("{} rows for {n} ids", response.rows.len()));
                }
                if decode {
                    client.decode(response).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Handle::Redis { mut connection } => {
                // One hash per user (`user:{id}`), one field per view holding its ViewRow bytes.
                if ids.len() == 1 {
                    redis::cmd("HGETALL")
                        .arg(format!("user:{}", ids[0]))
                        .query_async::<redis::Value>(&mut connection)
                        .await
                        .map_err(|e| format!("redis {:?}", e.kind()))?;
                } else {
                    let mut pipe = redis::pipe();
                    for id in &ids {
                        pipe.cmd("HGETALL").arg(format!("user:{id}"));
                    }
                    let replies: Vec<redis::Value> =
                        pipe.query_async(&mut connection).await.map_err(|e| format!("redis {:?}", e.kind()))?;
                    if replies.len() != ids.len() {
                        return Err(format!("{} replies for {} ids", replies.len(), ids.len()));
                    }
                }
                Ok(())
            }
            #[cfg(feature = "embedded")]
            handle @ Handle::Embedded { .. } => handle.call(ids),
        }
    }

    /// One embedded read on the calling thread (quiver-loadgen runs these on its reader threads,
    /// not on tokio: main.rs `run_inline`).
    #[cfg(feature = "embedded")]
    pub fn call(self, ids: Vec<u64>) -> Result<(), String> {
        let Handle::Embedded { reader, key_type, views, decode } = self else {
            return Err("call() reads the embedded target only".into());
        };
        let n = ids.len();
        let failed = |e: quiver_client::Error| match e.code() {
            Some(code) => format!("status {code:?}"),
            None => e.to_string(),
        };
        let rows = if decode {
            let views: Vec<&str> = views.iter().map(String::as_str).collect();
            reader.get_features(&entity_ids(ids, key_type), &views).map_err(failed)?.len()
        } else {
            reader.get_features_raw(&request(ids, key_type, views)).map_err(failed)?.rows.len()
        };
        if rows != n {
            return Err(format!("{rows} rows for {n} ids"));
        }
        Ok(())
    }
}
