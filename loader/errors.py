"""The loader's exception tree; each class carries the exit code `quiver load` ends with (a QuiverError:
`quiver`'s main maps it, quiver/errors.py has the table). A busy root is the snapshot's RootBusy (9).

    LoadError (1)
    ├── DefinitionError (2)   features.yaml is wrong: file, view and feature named
    ├── SourceError (3)       a source file is missing, unreadable, truncated or empty
    ├── DataError (4)         the data breaks the definitions: view, column and an example key named
    ├── LoadDiskFull (10)     no space left on the device while staging the version; staging removed
    └── ChecksFailed (13)     the version's feature checks failed: each named with feature, measured
                              value, limit and example keys; nothing published (--accept-failed-checks
                              publishes anyway). 13: codes up to 12 are taken by the CLI's table.
"""

import errno

from quiver.errors import QuiverError
from quiver.snapshot.schema import SchemaError


class LoadError(QuiverError):
    exit_code = 1
    note = "nothing was published; CURRENT is unchanged"


class DefinitionError(LoadError, SchemaError):
    exit_code = 2


class SourceError(LoadError):
    exit_code = 3


class DataError(LoadError):
    exit_code = 4


class LoadDiskFull(LoadError):
    exit_code = 10


class ChecksFailed(LoadError):
    exit_code = 13


def disk_full(e: BaseException) -> bool:
    """ENOSPC, also from pyarrow's writers, which say it only in the message: a write failed, not a read, so
    it must not be reported as a bad source."""
    return isinstance(e, OSError) and (e.errno == errno.ENOSPC or "[errno 28]" in str(e))
