"""Every error a load ends with (loader/errors.py) has its own non-zero exit code and the note that nothing was
published, and `quiver load` ends with both."""

from pathlib import Path

import pytest

from quiver.base.errors import NOT_PUBLISHED, QuiverError
from quiver.loader import commands, errors

LOAD_ERRORS: list[type[QuiverError]] = [c for c in map(vars(errors).get, errors.__all__)
                                        if isinstance(c, type) and issubclass(c, QuiverError)]


def test_every_class_has_a_distinct_non_zero_exit_code_and_says_nothing_was_published() -> None:
    assert {c.__name__ for c in LOAD_ERRORS} == {"ChecksFailed", "DataError", "DefinitionError", "LoadDiskFull",
                                                 "SourceError"}
    codes = [c.exit_code for c in LOAD_ERRORS]
    assert all(code > 0 for code in codes)
    assert len(set(codes)) == len(codes), {c.__name__: c.exit_code for c in LOAD_ERRORS}
    assert {c.note for c in LOAD_ERRORS} == {NOT_PUBLISHED}


@pytest.mark.parametrize("cls", LOAD_ERRORS, ids=lambda c: c.__name__)
def test_load_command_exits_with_the_class_code(cls: type[QuiverError], monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from quiver.cli import main

    def fail(*args: object, **kwargs: object) -> None:
        raise cls("what went wrong, where")

    monkeypatch.setattr(commands, "load", fail)
    assert main(["load", "--features", "f.yaml", "--root", str(tmp_path)]) == cls.exit_code
    err = capsys.readouterr().err
    assert err.splitlines() == ["quiver load: error: what went wrong, where",
                                "quiver load: nothing was published; CURRENT is unchanged"]
