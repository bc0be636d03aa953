//! The client's one error type. Server failures keep their gRPC status (the contract puts every
//! failure there, never in a response field); the client adds only what it can detect itself.

use std::fmt;

/// Everything that can go wrong in a call.
///
/// ```text
/// Error
/// ├── Connect   no channel to the address (bad address, refused, timeout)
/// ├── Status    the server answered with a gRPC status (NOT_FOUND view, FAILED_PRECONDITION version, ...)
/// ├── Request   the client refused to send it (mixed entity id types)
/// └── Protocol  the answer breaks the contract in quiver.proto (row count, missing slot, bad schema)
/// ```
#[derive(Debug)]
pub enum Error {
    Connect { addr: String, source: tonic::transport::Error },
    Status(tonic::Status),
    Request(String),
    Protocol(String),
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
            Error::Connect { addr, source } => {
                write!(f, "cannot connect to quiver at {addr}: {source}")?;
                let mut cause = std::error::Error::source(source);
                while let Some(c) = cause {
                    write!(f, ": {c}")?;
                    cause = c.source();
                }
                Ok(())
            }
            Error::Status(s) => write!(f, "quiver answered {:?}: {}", s.code(), s.message()),
            Error::Request(m) => write!(f, "invalid request: {m}"),
            Error::Protocol(m) => write!(f, "response breaks the quiver contract: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Status(s) => Some(s),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(s)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
