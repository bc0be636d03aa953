"""The CLI's failure shape: every error a command ends with is a QuiverError carrying its exit code.

`quiver.cli.main` maps them in one place (message on stderr, then the class's exit code); each code
means one thing for every command (EXIT_CODES, printed by `quiver --help` and in the README).
tests/unit/test_cli_errors.py checks that every class below has a code in the table.

    QuiverError                    1   the command failed (a mismatch found, a server error, ...)
    ├── UsageError                 2   a flag, an argument or a file it names is wrong or unreadable
    │                                  (the loader's DefinitionError: features.yaml is wrong)
    ├── RootError                  9   the snapshot root: missing, no such version, unreadable manifest
    │   └── RootBusy               9   another load or sync holds the root's lock
    ├── UnreadableLease            1   a lease file is garbage: it might hold any version
    └── AddressInUse              14   serve: a port or socket path it must listen on is taken or unusable

The loader's tree (loader/errors.py) uses 3 and 4, distribution's (distribution/errors.py) 5 to 12.
"""

from __future__ import annotations

__all__ = ["EXIT_CODES", "AddressInUse", "QuiverError", "RootBusy", "RootError", "UnreadableLease", "UsageError",
           "exit_code_table"]

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


def exit_code_table() -> str:
    """The table as `quiver --help` prints it."""
    return "exit codes (every command):\n" + "\n".join(f"  {code:>2}  {text}" for code, text in EXIT_CODES.items())


class QuiverError(Exception):
    """Base of every error a command ends with. `note` is printed after the message (what was left as is)."""

    exit_code = 1
    note = ""


class UsageError(QuiverError):
    exit_code = 2


class RootError(QuiverError):
    exit_code = 9


class RootBusy(RootError):
    exit_code = 9


class UnreadableLease(QuiverError):
    exit_code = 1
    note = "nothing was removed"


class AddressInUse(QuiverError):
    """A port or socket path `quiver serve` must listen on: taken by another process, or not bindable."""

    exit_code = 14
