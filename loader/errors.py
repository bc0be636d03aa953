"""The errors a load ends with: the classes for their meaning (base/errors.py draws the one tree, with
exit codes) and the loader's own names for two of them. Each carries the note that nothing was published.
A busy root is the snapshot's RootBusy (9)."""

import errno

from quiver.base.errors import NOT_PUBLISHED, ChecksFailed, DataError, DiskFull, SourceError, UsageError

__all__ = ["ChecksFailed", "DataError", "DefinitionError", "LoadDiskFull", "SourceError", "disk_full"]


class DefinitionError(UsageError):
    """features.yaml is wrong: the message names file, view and feature."""

    note = NOT_PUBLISHED


class LoadDiskFull(DiskFull):
    """No space left on the device while staging the version; the staging folder is removed."""

    note = NOT_PUBLISHED


def disk_full(e: BaseException) -> bool:
    """ENOSPC, also from pyarrow's writers, which say it only in the message: a write failed, not a read, so
    it must not be reported as a bad source."""
    return isinstance(e, OSError) and (e.errno == errno.ENOSPC or "[errno 28]" in str(e))
