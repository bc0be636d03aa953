"""Every loader error class carries its own non-zero exit code, and `quiver load` ends with it."""

from pathlib import Path

import pytest

from quiver.loader import commands
from quiver.loader.errors import DataError, DefinitionError, LoadError, SourceError
from quiver.snapshot import SchemaError


def _all(cls: type[LoadError]) -> list[type[LoadError]]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _all(sub)]


def test_every_class_has_a_distinct_non_zero_exit_code() -> None:
    classes = _all(LoadError)
    assert {DefinitionError, SourceError, DataError} <= set(classes)
    codes = [c.exit_code for c in classes]
    assert all(code > 0 for code in codes)
    assert len(set(codes)) == len(codes), dict(zip([c.__name__ for c in classes], codes, strict=True))


def test_definition_error_is_a_schema_error() -> None:
    assert issubclass(DefinitionError, SchemaError)


@pytest.mark.parametrize("cls", _all(LoadError))
def test_load_command_exits_with_the_class_code(cls: type[LoadError], monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from quiver.cli import main

    def fail(*args: object, **kwargs: object) -> None:
        raise cls("what went wrong, where")

    monkeypatch.setattr(commands, "load", fail)
    assert main(["load", "--features", "f.yaml", "--root", str(tmp_path)]) == cls.exit_code
    err = capsys.readouterr().err
    assert "quiver load: error: what went wrong, where" in err and "nothing was published" in err
