//! The client's one error type. Server failures keep their gRPC status (the contract puts every
//! failure there, never in a response field); the client adds only what it can detect itself.

use std::fmt;

/// Everything that can go wrong in a call.
///
/// ```text
/// Error
/// ├── Connect   no channel to the address (bad address, refused, timeout, TLS handshake failed)
/// ├── Tls       TLS settings unusable (file unreadable or not PEM, key does not fit certificate),
///               at odds with the address (TLS for http:// or unix://, https:// without TLS), or
///               the connection dropped right after the handshake (client certificate refused)
/// ├── Status    the server answered with a gRPC status (NOT_FOUND view, FAILED_PRECONDITION version, ...)
/// ├── Request   the client refused to send it (mixed entity id types)
/// ├── Protocol  the answer breaks the contract in quiver.proto (row count, missing slot, bad schema)
/// └── Snapshot  (embedded reader) a snapshot root or version that cannot be served: [`SnapshotError`]
/// ```
///
/// The embedded reader answers a bad request with the same kinds as a server: `Status` with
/// INVALID_ARGUMENT (no ids, ids of the wrong key type, a view named twice), NOT_FOUND (unknown view),
/// FAILED_PRECONDITION (a pin to a version it has not open), and `Request` for mixed id types.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    Connect { addr: String, source: tonic::transport::Error },
    Tls(String),
    Status(tonic::Status),
    Request(String),
    Protocol(String),
    Snapshot(SnapshotError),
}

/// Why the embedded reader cannot serve a snapshot root or one of its versions; every case names
/// the path at fault. Opening a root fails with it; a refresh that meets it keeps serving the
/// version already open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// `ROOT/CURRENT` is missing or empty: nothing has been published (or synced) there yet.
    NoCurrent { path: std::path::PathBuf },
    /// `CURRENT` names a version whose folder is not there (deleted, or not synced yet).
    MissingVersion { version: String, path: std::path::PathBuf },
    /// The manifest's `format_version` is not the one this reader implements (snapshot/FORMAT.md).
    UnknownFormat { path: std::path::PathBuf, found: String, expected: u32 },
    /// The manifest is missing, unreadable, or malformed.
    Manifest { path: std::path::PathBuf, problem: String },
    /// The files do not match the manifest (missing, size, checksum, SST set, row count).
    FilesMismatch { path: std::path::PathBuf, problems: Vec<String> },
    /// RocksDB refused to open a group's database, or failed to read from it.
    Rocks { path: std::path::PathBuf, message: String },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::NoCurrent { path } => {
                write!(f, "{}: missing or empty, so nothing is published in this root yet", path.display())
            }
            SnapshotError::MissingVersion { version, path } => {
                write!(f, "CURRENT names version {version}, but {} does not exist", path.display())
            }
            SnapshotError::UnknownFormat { path, found, expected } => write!(
                f,
                "{}: format_version {found}; this reader reads format {expected} (snapshot/FORMAT.md): \
                 rebuild the snapshot with `quiver load`",
                path.display()
            ),
            SnapshotError::Manifest { path, problem } => write!(f, "{}: {problem}", path.display()),
            SnapshotError::FilesMismatch { path, problems } => {
                let shown = problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
                let more = problems.len().saturating_sub(5);
                write!(f, "{}: files do not match the manifest: {shown}", path.display())?;
                if more > 0 {
                    write!(f, "; and {more} more")?;
                }
                Ok(())
            }
            SnapshotError::Rocks { path, message } => write!(f, "{}: RocksDB: {message}", path.display()),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<SnapshotError> for Error {
    fn from(e: SnapshotError) -> Self {
        Error::Snapshot(e)
    }
}

impl Error {
    /// The gRPC code of a server-side failure, `None` for client-side ones.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { addr, source } => write!(f, "cannot connect to quiver at {addr}: {}", chain(source)),
            Error::Tls(m) => write!(f, "TLS: {m}"),
            // A status with a source was made by the client from a transport failure (connection
            // reset, TLS alert): the causes say what happened.
            Error::Status(s) => match std::error::Error::source(s) {
                None => write!(f, "quiver answered {:?}: {}", s.code(), s.message()),
                Some(cause) => {
                    let causes = chain(cause);
                    match causes.strip_prefix(s.message()) {
                        Some(rest) => write!(f, "call to quiver failed, {:?}: {}{rest}", s.code(), s.message()),
                        None => write!(f, "call to quiver failed, {:?}: {}: {causes}", s.code(), s.message()),
                    }
                }
            },
            Error::Request(m) => write!(f, "invalid request: {m}"),
            Error::Protocol(m) => write!(f, "response breaks the quiver contract: {m}"),
            Error::Snapshot(e) => write!(f, "snapshot: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Status(s) => Some(s),
            Error::Snapshot(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(s)
    }
}

/// An error and its causes, `: `-separated (tonic's transport errors say little at the top level).
/// A cause that only repeats the text before it (an io::Error around a rustls error) is skipped.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
