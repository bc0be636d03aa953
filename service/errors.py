"""The server's exception tree; each class carries the gRPC status it is answered with. The
servicer maps them in one place (servicer.abort_with); tests check every class has a code.

    ServiceError
    ├── InvalidRequest      INVALID_ARGUMENT     malformed request, empty or oversized batch, wrong id type,
    │                                            a view named twice
    ├── UnknownView         NOT_FOUND            a view the answering version does not have
    ├── VersionNotLoaded    FAILED_PRECONDITION  a pin to a version this replica has not loaded
    ├── Overloaded          RESOURCE_EXHAUSTED   more GetFeatures calls at once than --max-concurrent, or
    │                                            more queued work ahead of a call than --max-queue-ms
    ├── DeadlineExpired     DEADLINE_EXCEEDED    the caller's deadline passed while the call waited
    └── NotReady            UNAVAILABLE          no snapshot loaded yet
"""

import grpc


class ServiceError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidRequest(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownView(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class VersionNotLoaded(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExpired(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotReady(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class VersionRefused(Exception):
    """A new version that failed its checks: logged and counted, never served."""
