"""One failure shape for the CLI: every error class carries an exit code from the one table, the table in
README and `quiver --help` is that table, and `quiver`'s main maps each class to its code and message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import quiver.distribution  # noqa: F401  (registers its error classes)
import quiver.loader.errors  # noqa: F401
from quiver import cli, errors
from quiver.errors import EXIT_CODES, QuiverError

README = Path(__file__).parents[2] / "README.md"


def _all(cls: type[QuiverError]) -> list[type[QuiverError]]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _all(sub)]


CLASSES = sorted(set(_all(QuiverError)), key=lambda c: (c.exit_code, c.__name__))


def test_every_error_class_has_a_code_from_the_table() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"LoadError", "DefinitionError", "SourceError", "DataError",
            "UsageError", "RootError", "RootBusy", "UnreadableLease", "DistributionError", "StorageError",
            "StorageUnreachable", "AccessDenied", "BucketNotFound", "ObjectNotFound", "IntegrityError",
            "LocalSnapshotError", "DiskFull", "AddressInUse"} <= names
    for c in CLASSES:
        assert c.exit_code in EXIT_CODES and c.exit_code != 0, c


def test_codes_are_pinned() -> None:
    """Scripts and alerts match on these numbers: changing one is a breaking change, made here on purpose."""
    pinned = {
        "QuiverError": 1, "UsageError": 2, "RootError": 9, "RootBusy": 9, "UnreadableLease": 1,
        "LoadError": 1, "DefinitionError": 2, "SourceError": 3, "DataError": 4,
        "DistributionError": 1, "AccessDenied": 5, "BucketNotFound": 6, "ObjectNotFound": 7, "IntegrityError": 8,
        "LocalSnapshotError": 9, "DiskFull": 10, "StorageError": 11, "StorageUnreachable": 12, "ChecksFailed": 13,
        "LoadDiskFull": 10, "AddressInUse": 14}
    assert {c.__name__: c.exit_code for c in CLASSES if c.__name__ in pinned} == pinned
    assert sorted(EXIT_CODES) == list(range(15))


def test_the_docstring_tree_names_every_base_class_with_its_code() -> None:
    documented = dict(re.findall(r"^ {4}(?:[│├└─ ]+)?(\w+)\s+(\d+)  ", errors.__doc__ or "", flags=re.M))
    assert documented == {c.__name__: str(c.exit_code) for c in _all(QuiverError)
                          if c.__module__ == "quiver.errors"}


def test_readme_and_help_show_the_table() -> None:
    section = README.read_text().split("### Exit codes", 1)[1]
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", section, flags=re.M))
    assert {int(k): v for k, v in rows.items()} == EXIT_CODES
    text = cli.build_parser().format_help()
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>2}  {meaning}" in text


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_main_maps_each_class_to_its_code_and_message(cls: type[QuiverError], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import quiver.gc

    def fail(*args: object, **kwargs: object) -> None:
        raise cls(f"{tmp_path}: what went wrong")

    monkeypatch.setattr(quiver.gc, "collect", fail)
    assert cli.main(["gc", "--root", str(tmp_path), "--keep", "1"]) == cls.exit_code
    err = capsys.readouterr().err
    assert f"quiver gc: error: {tmp_path}: what went wrong" in err
    assert (cls.note in err) if cls.note else True
