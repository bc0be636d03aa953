"""One failure shape for the CLI: one error tree by meaning (base/errors.py), one class per exit code, the
tree in its docstring is the tree in the code, the table in README and `quiver --help` is EXIT_CODES, and
`quiver`'s main maps each class to its code and message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import quiver.distribution.errors  # noqa: F401  (defines LocalSnapshotError)
import quiver.loader.errors  # noqa: F401  (defines DefinitionError, LoadDiskFull)
from quiver import cli
from quiver.base import errors
from quiver.base.errors import EXIT_CODES, QuiverError

README = Path(__file__).parents[2] / "README.md"


def _all(cls: type[QuiverError]) -> list[type[QuiverError]]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _all(sub)]


cli.build_parser()  # imports every command module, so a class defined in any of them is in the walk
CLASSES = sorted(set(_all(QuiverError)), key=lambda c: (c.exit_code, c.__name__))


def _meaning(c: type[QuiverError]) -> bool:
    """The class of its code's meaning: the root, or a class that sets its own exit code."""
    return c is QuiverError or "exit_code" in vars(c)


def test_every_code_has_exactly_one_meaning_class_defined_in_base() -> None:
    meanings = [c for c in CLASSES if _meaning(c)]
    assert sorted(c.exit_code for c in meanings) == list(range(1, 15))
    assert {c.__module__ for c in meanings} == {"quiver.base.errors"}
    assert sorted(EXIT_CODES) == list(range(15)) and EXIT_CODES[0] == "success"


def test_no_class_has_two_bases_and_every_class_is_only_a_quiver_error() -> None:
    """One tree: a class that is also a ValueError, or a LoadError and a UsageError, has two meanings."""
    for c in CLASSES:
        assert len(c.__bases__) == 1, c
        assert [b for b in c.__mro__ if b not in CLASSES] == [Exception, BaseException, object], c


def test_codes_are_pinned() -> None:
    """Scripts and alerts match on these numbers: changing one is a breaking change, made here on purpose."""
    pinned = {
        "QuiverError": 1, "UnreadableLease": 1, "UsageError": 2, "DefinitionError": 2, "SourceError": 3,
        "DataError": 4, "AccessDenied": 5, "BucketNotFound": 6, "ObjectNotFound": 7, "IntegrityError": 8,
        "RootError": 9, "RootBusy": 9, "LocalSnapshotError": 9, "DiskFull": 10, "LoadDiskFull": 10,
        "StorageError": 11, "StorageUnreachable": 12, "ChecksFailed": 13, "AddressInUse": 14}
    assert {c.__name__: c.exit_code for c in CLASSES} == pinned


def test_the_docstring_tree_is_the_tree_in_the_code() -> None:
    """Each line `<branches><Name> <code>`: the branches' width is the depth, the parent the last line above
    one level up; every class of the tree is drawn once, under its base, with its code."""
    drawn: dict[str, tuple[str | None, int]] = {}
    parents: list[str] = []
    for prefix, name, code in re.findall(r"^ {4}([│├└─ ]*)(\w+) +(\d+)  ", errors.__doc__ or "", flags=re.M):
        depth = len(prefix) // 4
        del parents[depth:]
        assert name not in drawn, f"{name} is drawn twice"
        drawn[name] = (parents[-1] if parents else None, int(code))
        parents.append(name)
    assert drawn == {c.__name__: (None if c is QuiverError else c.__bases__[0].__name__, c.exit_code)
                     for c in CLASSES}


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
