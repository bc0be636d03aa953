"""features.yaml parsing: every mistake names the file, the view and the feature."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from quiver.loader.definitions import load_definitions, parse_definitions
from quiver.loader.errors import DefinitionError
from quiver.snapshot import FeatureSet

ENTITY = {"name": "user_id", "key_type": "int64"}


def doc(*features: dict[str, Any], **view: Any) -> dict[str, Any]:
    return {"entity": ENTITY, "views": [{"name": "v", "source": "v.parquet", **view, "features": list(features)}]}


def test_every_type_parses_with_defaults() -> None:
    fs = parse_definitions(doc(
        {"name": "b", "type": "bool", "default": False}, {"name": "i", "type": "int32", "default": -(2**31)},
        {"name": "l", "type": "int64", "default": 2**63 - 1}, {"name": "f", "type": "float32", "default": 1},
        {"name": "d", "type": "float64", "default": float("inf")}, {"name": "s", "type": "string", "default": ""},
        {"name": "y", "type": "bytes", "default": "ab"},
        {"name": "e", "type": "list<float32>", "length": 2, "default": [0, 1.5]},
        {"name": "n", "type": "list<int64>", "default": []}), "f.yaml")
    v = fs.view("v")
    assert [f.type for f in v.features] == ["bool", "int32", "int64", "float32", "float64", "string", "bytes",
                                             "list<float32>", "list<int64>"]
    assert v.feature("e").length == 2 and v.feature("s").default == ""
    # layout: group field per type, index within the group, in schema order
    assert [(f.name, g, i) for f, g, i in v.layout()] == [
        ("b", 2, 0), ("i", 3, 0), ("l", 4, 0), ("f", 5, 0), ("d", 6, 0), ("s", 7, 0), ("y", 8, 0), ("e", 9, 0),
        ("n", 10, 0)]


def test_layout_indexes_within_each_group() -> None:
    v = parse_definitions(doc({"name": "a", "type": "float32"}, {"name": "b", "type": "int64"},
                              {"name": "c", "type": "float32"}, {"name": "d", "type": "int64"}), "f.yaml").view("v")
    assert [(f.name, g, i) for f, g, i in v.layout()] == [("a", 5, 0), ("b", 4, 0), ("c", 5, 1), ("d", 4, 1)]


@pytest.mark.parametrize(("feature", "message"), [
    ({"name": "x", "type": "float128"}, "type 'float128' must be one of"),
    ({"name": "x"}, "type None must be one of"),
    ({"name": "x", "type": "list<float32>"}, "positive integer 'length'"),
    ({"name": "x", "type": "list<float32>", "length": 0}, "positive integer 'length'"),
    ({"name": "x", "type": "list<float32>", "length": True}, "positive integer 'length'"),
    ({"name": "x", "type": "int64", "length": 3}, "'length' applies to list<float32> only"),
    ({"name": "x", "type": "bool", "default": 1}, "default 1 is not a valid bool"),
    ({"name": "x", "type": "int32", "default": 2**31}, "is not a valid int32"),
    ({"name": "x", "type": "int64", "default": -(2**63) - 1}, "is not a valid int64"),
    ({"name": "x", "type": "int64", "default": 1.5}, "is not a valid int64"),
    ({"name": "x", "type": "int64", "default": True}, "is not a valid int64"),
    ({"name": "x", "type": "float64", "default": "zero"}, "is not a valid float64"),
    ({"name": "x", "type": "float32", "default": float("nan")}, "is not a valid float32"),
    ({"name": "x", "type": "string", "default": 3}, "is not a valid string"),
    ({"name": "x", "type": "list<float32>", "length": 2, "default": [1.0]}, "not a valid list<float32> of length 2"),
    ({"name": "x", "type": "list<int64>", "default": [1, "2"]}, "is not a valid list<int64>"),
    ({"name": "x", "type": "int64", "colour": "red"}, "unknown key(s) ['colour']"),
    ({"name": "x", "type": "int64", "source_column": 5}, "'source_column' must be a column name"),
])
def test_feature_mistakes_name_file_view_and_feature(feature: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as e:
        parse_definitions(doc(feature), "conf/features.yaml")
    text = str(e.value)
    assert text.startswith("conf/features.yaml: view 'v', feature 'x': ") and message in text, text


@pytest.mark.parametrize(("document", "message"), [
    (doc({"name": "x", "type": "int64"}, {"name": "x", "type": "bool"}), "view 'v': feature 'x' is defined twice"),
    (doc({"name": "user_id", "type": "int64"}), "feature 'user_id' reads the key or timestamp column"),
    (doc({"name": "x", "type": "int64", "source_column": "ts"}, event_timestamp="ts"), "reads the key or timestamp"),
    (doc(), "view 'v': 'features' must be a non-empty list"),
    (doc({"name": "x", "type": "int64"}, source=""), "view 'v': 'source' must be a Parquet path or glob"),
    (doc({"name": "x", "type": "int64"}, color=1), "view 'v': unknown key(s) ['color']"),
    (doc({"name": "9x", "type": "int64"}), "name '9x' must match"),
    ({"entity": ENTITY, "views": [doc({"name": "x", "type": "int64"})["views"][0]] * 2}, "view 'v' is defined twice"),
    ({"entity": {"name": "u", "key_type": "uuid"}, "views": []}, "key_type 'uuid' must be one of"),
    ({"entity": ENTITY, "views": []}, "'views' must be a non-empty list"),
    ([1, 2], "expected a mapping"),
])
def test_view_and_file_mistakes(document: Any, message: str) -> None:
    with pytest.raises(DefinitionError) as e:
        parse_definitions(document, "conf/features.yaml")
    assert str(e.value).startswith("conf/features.yaml: ") and message in str(e.value), str(e.value)


def test_load_definitions_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="no such file"):
        load_definitions(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("entity: [unclosed\n")
    with pytest.raises(DefinitionError, match=f"{bad}: not valid YAML"):
        load_definitions(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(doc({"name": "x", "type": "list<int64>"})))
    fs = load_definitions(good)
    assert fs.source_file == str(good) and fs.view("v").feature("x").type == "list<int64>"


def test_json_round_trip_is_the_same_feature_set() -> None:
    fs = parse_definitions(doc({"name": "x", "type": "list<float32>", "length": 4, "default": [0, 0, 0, 1]},
                               {"name": "y", "type": "string", "source_column": "y_src"}, event_timestamp="ts",
                               entity_column="uid"), "f.yaml")
    assert FeatureSet.from_json(fs.to_json()) == fs
