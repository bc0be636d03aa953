//! One interface over the gRPC client and the embedded reader, so an application picks where
//! its features come from by configuration, not by code.

use std::future::Future;
use std::sync::Arc;

use crate::client::QuiverClient;
use crate::decode::FeatureBatch;
use crate::error::Result;
use crate::schema::Schema;
use crate::value::EntityId;

/// Typed feature reads, whichever way they travel. Both implementations return the same rows,
/// decoded by the same code, and the same error kinds for the same bad request.
pub trait FeatureSource: Send + Sync {
    /// Features of `ids` in `views` (empty: every view) from the current version, in request order.
    fn get_features(&self, ids: &[EntityId], views: &[&str]) -> impl Future<Output = Result<FeatureBatch>> + Send {
        self.get_features_at(ids, views, "")
    }

    /// Like `get_features`, pinned to `version` (empty: the current one).
    fn get_features_at(
        &self,
        ids: &[EntityId],
        views: &[&str],
        version: &str,
    ) -> impl Future<Output = Result<FeatureBatch>> + Send;

    /// The schema of `version` (empty: the current one).
    fn schema(&self, version: &str) -> impl Future<Output = Result<Arc<Schema>>> + Send;
}

impl FeatureSource for QuiverClient {
    fn get_features_at(
        &self,
        ids: &[EntityId],
        views: &[&str],
        version: &str,
    ) -> impl Future<Output = Result<FeatureBatch>> + Send {
        QuiverClient::get_features_at(self, ids, views, version)
    }

    fn schema(&self, version: &str) -> impl Future<Output = Result<Arc<Schema>>> + Send {
        QuiverClient::schema(self, version)
    }
}

/// The embedded reader answers without waiting: its futures are ready at once. A read of many
/// entities holds the calling thread for its duration (about 1 ms per 100 entities from the page
/// cache); run such batches with `spawn_blocking` if that thread serves other tasks.
#[cfg(feature = "embedded")]
impl FeatureSource for crate::embedded::EmbeddedReader {
    fn get_features_at(
        &self,
        ids: &[EntityId],
        views: &[&str],
        version: &str,
    ) -> impl Future<Output = Result<FeatureBatch>> + Send {
        std::future::ready(crate::embedded::EmbeddedReader::get_features_at(self, ids, views, version))
    }

    fn schema(&self, version: &str) -> impl Future<Output = Result<Arc<Schema>>> + Send {
        std::future::ready(crate::embedded::EmbeddedReader::schema(self, version))
    }
}

/// A source chosen at run time from one setting (say `QUIVER_SOURCE`): `http://host:port`,
/// `https://...` or `unix:///path.sock` for a quiver server, and (feature `embedded`) a snapshot
/// root as an absolute path or `file:///path`.
#[derive(Clone)]
#[non_exhaustive]
pub enum AnySource {
    Grpc(QuiverClient),
    #[cfg(feature = "embedded")]
    Embedded(Arc<crate::embedded::EmbeddedReader>),
}

impl AnySource {
    /// Connects to a server, or opens a root with default [`crate::EmbeddedOptions`].
    pub async fn open(location: &str) -> Result<AnySource> {
        let path = location.strip_prefix("file://").or(location.starts_with('/').then_some(location));
        match path {
            #[cfg(feature = "embedded")]
            Some(root) => Ok(AnySource::Embedded(Arc::new(crate::embedded::EmbeddedReader::open(
                root,
                crate::embedded::EmbeddedOptions::default(),
            )?))),
            #[cfg(not(feature = "embedded"))]
            Some(_) => Err(crate::error::Error::Request(format!(
                "{location}: reading a snapshot root needs quiver-client's cargo feature `embedded`"
            ))),
            None => Ok(AnySource::Grpc(QuiverClient::connect(location).await?)),
        }
    }
}

impl FeatureSource for AnySource {
    async fn get_features_at(&self, ids: &[EntityId], views: &[&str], version: &str) -> Result<FeatureBatch> {
        match self {
            AnySource::Grpc(c) => c.get_features_at(ids, views, version).await,
            #[cfg(feature = "embedded")]
            AnySource::Embedded(r) => r.get_features_at(ids, views, version),
        }
    }

    async fn schema(&self, version: &str) -> Result<Arc<Schema>> {
        match self {
            AnySource::Grpc(c) => c.schema(version).await,
            #[cfg(feature = "embedded")]
            AnySource::Embedded(r) => r.schema(version),
        }
    }
}
