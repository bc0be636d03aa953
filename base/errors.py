"""The one error tree: every error a command ends with is a QuiverError, and its exit code is the code of the
class for its meaning, one class per code. `quiver.cli.main` maps them in one place (the message on stderr, then
`note`, then the exit code); EXIT_CODES below is the table `quiver --help` and the README print.

    QuiverError                  1   the command failed (verify found a mismatch, get got an error from the server)
    ├── UnreadableLease          1   gc: a lease file is garbage, it might name any version (nothing removed)
    ├── UsageError               2   a flag, an argument or a file it names is wrong or unreadable
    │   └── DefinitionError      2   loader/errors.py: features.yaml is wrong: file, view and feature named
    ├── SourceError              3   load: a source file is missing, unreadable, truncated or empty
    ├── DataError                4   load: the data breaks the definitions: view, column and an example key named
    ├── StorageError            11   object storage refused, for another reason
    │   ├── AccessDenied         5   wrong or missing credentials, or the bucket policy
    │   ├── BucketNotFound       6   no such bucket
    │   ├── ObjectNotFound       7   nothing published there, or a manifest or file missing
    │   └── StorageUnreachable  12   the endpoint cannot be reached
    ├── IntegrityError           8   a file's size or checksum differs from its manifest
    ├── RootError                9   the snapshot root: missing, no such version, unreadable manifest
    │   ├── RootBusy             9   another load or sync holds the root's lock
    │   └── LocalSnapshotError   9   distribution/errors.py: publish or sync found no such version in the root
    ├── DiskFull                10   no space left on the snapshot root's device
    │   └── LoadDiskFull        10   loader/errors.py: while staging a new version (staging removed)
    ├── ChecksFailed            13   load: the version's feature checks failed, each named; nothing published
    └── AddressInUse            14   serve: a port or socket path it must listen on is taken or unusable

A class that sets `exit_code` is the class of that code's meaning, and is defined here; the others are names a
caller may catch (defined where they are raised, or here when shared) and inherit their code. Every class has one
base. tests/unit/test_cli_errors.py walks the tree against this docstring and EXIT_CODES, and README's table
against EXIT_CODES. The server answers gRPC calls with its own tree of status codes (service/errors.py).
"""

from __future__ import annotations

__all__ = ["EXIT_CODES", "NOT_PUBLISHED", "AccessDenied", "AddressInUse", "BucketNotFound", "ChecksFailed",
           "DataError", "DiskFull", "IntegrityError", "ObjectNotFound", "QuiverError", "RootBusy", "RootError",
           "SourceError", "StorageError", "StorageUnreachable", "UnreadableLease", "UsageError", "exit_code_table"]

# code -> what it means, for every command. README's table and `quiver --help` are this dict.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "failed: verify found a mismatch, gc found an unreadable lease, get got an error from the server, "
       "serve's workers could not start",
    2: "usage: a flag or argument is wrong, or a file it names is missing, unreadable or invalid "
       "(features.yaml, a certificate)",
    3: "source: a Parquet source is missing, unreadable, truncated or empty (load)",
    4: "data: the data breaks the definitions (load)",
    5: "object storage denied access: credentials or bucket policy",
    6: "no such bucket",
    7: "nothing published there, or a published file is missing",
    8: "integrity: a file's size or checksum differs from its manifest",
    9: "snapshot root: missing, no such version, unreadable manifest, or busy (another load or sync holds its lock)",
    10: "disk full on the snapshot root (load, sync)",
    11: "object storage refused, for another reason",
    12: "object storage unreachable: endpoint or network",
    13: "checks: the new version's feature checks failed; nothing was published"
        " (load; --accept-failed-checks publishes anyway)",
    14: "address: a port or Unix socket path the server must listen on is in use or cannot be bound (serve)",
}

# The note of every error that ends a load: a failed load leaves the root as it was.
NOT_PUBLISHED = "nothing was published; CURRENT is unchanged"


def exit_code_table() -> str:
    """The table as `quiver --help` prints it."""
    return "exit codes (every command):\n" + "\n".join(f"  {code:>2}  {text}" for code, text in EXIT_CODES.items())


class QuiverError(Exception):
    """Base of every error a command ends with. `note` is printed after the message (what was left as is)."""

    exit_code = 1
    note = ""


class UnreadableLease(QuiverError):
    note = "nothing was removed"


class UsageError(QuiverError):
    exit_code = 2


class SourceError(QuiverError):
    exit_code = 3
    note = NOT_PUBLISHED


class DataError(QuiverError):
    exit_code = 4
    note = NOT_PUBLISHED


class StorageError(QuiverError):
    exit_code = 11


class AccessDenied(StorageError):
    exit_code = 5


class BucketNotFound(StorageError):
    exit_code = 6


class ObjectNotFound(StorageError):
    exit_code = 7


class StorageUnreachable(StorageError):
    exit_code = 12


class IntegrityError(QuiverError):
    exit_code = 8


class RootError(QuiverError):
    exit_code = 9


class RootBusy(RootError):
    pass


class DiskFull(QuiverError):
    exit_code = 10


class ChecksFailed(QuiverError):
    exit_code = 13
    note = NOT_PUBLISHED


class AddressInUse(QuiverError):
    """A port or socket path `quiver serve` must listen on: taken by another process, or not bindable."""

    exit_code = 14
