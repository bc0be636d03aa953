//! The typed client: connect, fetch, decode with the answering version's schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::decode::{FeatureBatch, decode_response};
use crate::error::{Error, Result};
use crate::proto::feature_store_client::FeatureStoreClient;
use crate::proto::{
    GetFeaturesRequest, GetFeaturesResponse, GetSchemaRequest, GetSnapshotInfoRequest, GetSnapshotInfoResponse,
};
use crate::schema::Schema;
use crate::tls::TlsOptions;
use crate::value::EntityId;

/// Schemas kept per version; a replica holds two versions, so this bound is only a safety net
/// for a long-lived client that sees many swaps.
const MAX_CACHED_SCHEMAS: usize = 8;

/// Connection settings. The defaults suit a client beside the server: plaintext, no deadline.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Deadline of each call; `None`: no deadline.
    pub request_timeout: Option<Duration>,
    /// Largest response accepted (tonic's default is 4 MiB, too small for big batches of embeddings).
    pub max_response_bytes: usize,
    /// TLS (mutual TLS with a client identity) for `https://host:port` addresses; `None`:
    /// plaintext. An `https://` address needs it (no system roots are used), and `http://` or
    /// `unix://` addresses refuse it rather than silently sending plaintext.
    pub tls: Option<TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            max_response_bytes: 64 << 20,
            tls: None,
        }
    }
}

/// A quiver client over one HTTP/2 connection. Cloning is cheap and shares the connection and
/// the schema cache; concurrent calls are multiplexed.
#[derive(Clone)]
pub struct QuiverClient {
    grpc: FeatureStoreClient<Channel>,
    schemas: Arc<Mutex<HashMap<String, Arc<Schema>>>>,
}

/// Builds the endpoint for `http://host:port`, `https://host:port` (with [`ClientOptions::tls`])
/// or `unix:///path/to.sock`. Checks the TLS settings (files parse, key fits certificate) and that
/// they agree with the address, without connecting.
fn endpoint(addr: &str, options: &ClientOptions) -> Result<Endpoint> {
    let connect_err = |source| Error::Connect { addr: addr.to_owned(), source };
    let mut ep = Endpoint::from_shared(addr.to_owned())
        .map_err(connect_err)?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    if let Some(t) = options.request_timeout {
        ep = ep.timeout(t);
    }
    // tonic decides by the scheme alone: TLS settings on an http:// endpoint would be ignored.
    let https = !addr.starts_with("unix:") && ep.uri().scheme_str() == Some("https");
    match &options.tls {
        Some(tls) if https => {
            ep = ep
                .tls_config(tls.client_config()?)
                .map_err(|e| Error::Tls(format!("cannot set up TLS for {addr}: {}", crate::error::chain(&e))))?;
        }
        Some(_) if addr.starts_with("unix:") => {
            return Err(Error::Tls(format!(
                "{addr}: TLS options given for a Unix socket, which quiver serves in plaintext only \
                 (TLS is for TCP: use https://host:port)"
            )));
        }
        Some(_) => {
            return Err(Error::Tls(format!(
                "{addr}: TLS options given for a plaintext address: use https://host:port for TLS"
            )));
        }
        None if https => {
            return Err(Error::Tls(format!(
                "{addr}: https needs ClientOptions::tls with the CA that signed the server's certificate \
                 (system roots are not used)"
            )));
        }
        None => {}
    }
    Ok(ep)
}

impl QuiverClient {
    /// Connects to `http://host:port` or `unix:///path/to.sock` with default options (plaintext).
    pub async fn connect(addr: &str) -> Result<Self> {
        Self::connect_with(addr, &ClientOptions::default()).await
    }

    /// Connects with `options`; `https://host:port` with [`ClientOptions::tls`] for TLS.
    ///
    /// Over TLS this also makes one GetSnapshotInfo call (deadline: the connect timeout) before
    /// returning. Under TLS 1.3 a server judges the client certificate only after the handshake
    /// completed on the client's side, and a quiver server that refuses it (mutual TLS) just
    /// closes the connection: without this call the refusal would surface as a vague transport
    /// error on the first request instead of an [`Error::Tls`] here. A server certificate the CA
    /// did not sign fails the handshake itself ([`Error::Connect`]).
    pub async fn connect_with(addr: &str, options: &ClientOptions) -> Result<Self> {
        let channel = endpoint(addr, options)?
            .connect()
            .await
            .map_err(|source| Error::Connect { addr: addr.to_owned(), source })?;
        let client = Self::from_channel(channel, options);
        if let Some(tls) = &options.tls {
            let mut probe = tonic::Request::new(GetSnapshotInfoRequest {});
            probe.set_timeout(options.connect_timeout);
            // A status whose source is a transport error was made by the client from a broken
            // connection (its code varies with the moment the connection broke: Unknown,
            // Cancelled, ...); a status from the server, or a deadline, is not about TLS.
            if let Err(status) = client.grpc.clone().get_snapshot_info(probe).await
                && let Some(cause) = std::error::Error::source(&status)
                && cause.is::<tonic::transport::Error>()
            {
                let presented = match &tls.identity {
                    Some(id) => format!("did not accept the client certificate {}", id.cert.origin),
                    None => "requires a client certificate (TlsOptions::with_identity)".to_owned(),
                };
                return Err(Error::Tls(format!(
                    "{addr}: the TLS handshake completed but the connection failed on its first call ({}); \
                     if the server runs with --tls-client-ca (mutual TLS), it {presented}",
                    crate::error::chain(cause)
                )));
            }
        }
        Ok(client)
    }

    /// Wraps a channel built with tonic (`Endpoint::connect_lazy`, say). Only
    /// [`ClientOptions::max_response_bytes`] applies here: the channel already has its address,
    /// timeouts and TLS.
    pub fn from_channel(channel: Channel, options: &ClientOptions) -> Self {
        let grpc = FeatureStoreClient::new(channel).max_decoding_message_size(options.max_response_bytes);
        QuiverClient { grpc, schemas: Arc::default() }
    }

    /// Features of `ids` in `views` (empty: every view) from the current version, decoded by
    /// feature name. Rows come back in request order.
    pub async fn get_features(&self, ids: &[EntityId], views: &[&str]) -> Result<FeatureBatch> {
        self.get_features_at(ids, views, "").await
    }

    /// Like [`QuiverClient::get_features`], pinned to `version` (empty: the current one).
    pub async fn get_features_at(&self, ids: &[EntityId], views: &[&str], version: &str) -> Result<FeatureBatch> {
        let request = build_request(ids, views, version)?;
        let response = self.get_features_raw(request).await?;
        self.decode(response).await
    }

    /// The undecoded response, for callers that measure the server or decode themselves.
    pub async fn get_features_raw(&self, request: GetFeaturesRequest) -> Result<GetFeaturesResponse> {
        Ok(self.grpc.clone().get_features(request).await?.into_inner())
    }

    /// Decodes a raw response with the schema of the version that answered it.
    pub async fn decode(&self, response: GetFeaturesResponse) -> Result<FeatureBatch> {
        let schema = self.schema(&response.version).await?;
        decode_response(&schema, response)
    }

    /// The schema of `version`, fetched once per version and cached. An empty `version` asks for
    /// the current one, which can change, so that call always goes to the server.
    pub async fn schema(&self, version: &str) -> Result<Arc<Schema>> {
        if !version.is_empty()
            && let Some(s) = self.schemas.lock().expect("schema cache poisoned").get(version)
        {
            return Ok(Arc::clone(s));
        }
        let response =
            self.grpc.clone().get_schema(GetSchemaRequest { version: version.to_owned() }).await?.into_inner();
        if !version.is_empty() && response.version != version {
            return Err(Error::Protocol(format!("asked the schema of {version}, got {}", response.version)));
        }
        let schema = Arc::new(Schema::from_proto(response)?);
        let mut cache = self.schemas.lock().expect("schema cache poisoned");
        if cache.len() >= MAX_CACHED_SCHEMAS {
            cache.clear();
        }
        cache.insert(schema.version.clone(), Arc::clone(&schema));
        Ok(schema)
    }

    /// Which versions the replica holds and which one it serves.
    pub async fn snapshot_info(&self) -> Result<GetSnapshotInfoResponse> {
        Ok(self.grpc.clone().get_snapshot_info(GetSnapshotInfoRequest {}).await?.into_inner())
    }
}

/// The wire request for typed ids; every id must have the same type.
pub(crate) fn build_request(ids: &[EntityId], views: &[&str], version: &str) -> Result<GetFeaturesRequest> {
    let mut request = GetFeaturesRequest {
        views: views.iter().map(|v| (*v).to_owned()).collect(),
        version: version.to_owned(),
        ..Default::default()
    };
    match ids.first() {
        None => {}
        Some(EntityId::Int64(_)) => {
            request.int64_ids = ids
                .iter()
                .map(|id| match id {
                    EntityId::Int64(v) => Ok(*v),
                    EntityId::String(s) => Err(Error::Request(format!("string id {s:?} among int64 ids"))),
                })
                .collect::<Result<_>>()?;
        }
        Some(EntityId::String(_)) => {
            request.string_ids = ids
                .iter()
                .map(|id| match id {
                    EntityId::String(s) => Ok(s.clone()),
                    EntityId::Int64(v) => Err(Error::Request(format!("int64 id {v} among string ids"))),
                })
                .collect::<Result<_>>()?;
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_uses_the_id_type_list_and_keeps_order() {
        let r =
            build_request(&[EntityId::Int64(3), EntityId::Int64(1), EntityId::Int64(3)], &["a", "b"], "v9").unwrap();
        assert_eq!(r.int64_ids, [3, 1, 3]);
        assert!(r.string_ids.is_empty());
        assert_eq!(r.views, ["a", "b"]);
        assert_eq!(r.version, "v9");
        let r = build_request(&["x".into(), "y".into()], &[], "").unwrap();
        assert_eq!(r.string_ids, ["x", "y"]);
        assert!(r.int64_ids.is_empty());
    }

    #[test]
    fn mixed_id_types_are_refused() {
        let err = build_request(&[EntityId::Int64(1), "x".into()], &[], "").unwrap_err();
        assert!(matches!(err, Error::Request(_)), "{err}");
    }

    #[test]
    fn both_address_forms_make_endpoints() {
        let o = ClientOptions::default();
        assert!(endpoint("http://127.0.0.1:50051", &o).is_ok());
        assert!(endpoint("unix:///tmp/quiver.sock", &o).is_ok());
        assert!(endpoint("not a uri", &o).is_err());
        // https without TLS settings (no system roots) is refused, not downgraded.
        assert!(matches!(endpoint("https://127.0.0.1:50051", &o), Err(Error::Tls(_))));
    }
}
