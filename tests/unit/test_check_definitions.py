"""features.yaml `checks:`: parsed onto features and views, every mistake named by file, view, feature
and check; checks stay out of the definition that decides whether a view's data is reused."""

from typing import Any

import pytest

from quiver.loader.definitions import parse_definitions
from quiver.loader.errors import DefinitionError
from quiver.snapshot import FeatureSet

ENTITY = {"name": "user_id", "key_type": "int64"}


def doc(*features: dict[str, Any], **view: Any) -> dict[str, Any]:
    return {"entity": ENTITY, "views": [{"name": "v", "source": "v.parquet", **view, "features": list(features)}]}


def test_checks_parse_onto_features_and_views() -> None:
    fs = parse_definitions(doc(
        {"name": "age", "type": "int32", "checks": {"min": 0, "max": 120, "max_null_fraction": 0.05}},
        {"name": "plan", "type": "string", "checks": {"allowed": ["free", "pro"], "warn": True}},
        {"name": "emb", "type": "list<float32>", "length": 4, "checks": {"norm_between": [0.5, 2], "finite": True}},
        {"name": "ids", "type": "list<int64>", "checks": {"length_between": [0, 50], "warn": ["length_between"]}},
        checks={"min_rows": 1000, "max_row_change": 0.2, "max_null_fraction_change": 0.1}), "f.yaml")
    v = fs.view("v")
    assert v.feature("age").checks == {"min": 0, "max": 120, "max_null_fraction": 0.05}
    assert v.feature("plan").checks["warn"] is True
    assert v.checks == {"min_rows": 1000, "max_row_change": 0.2, "max_null_fraction_change": 0.1}
    # recorded in the manifest's schema, and read back
    assert FeatureSet.from_json(fs.to_json()) == fs
    assert fs.to_json()["views"][0]["checks"]["min_rows"] == 1000


def test_checks_do_not_change_the_view_definition() -> None:
    plain = parse_definitions(doc({"name": "age", "type": "int32"}), "f.yaml").view("v")
    checked = parse_definitions(doc({"name": "age", "type": "int32", "checks": {"min": 0}},
                                    checks={"min_rows": 1}), "f.yaml").view("v")
    assert plain.definition_json() == checked.definition_json()
    assert plain.to_json() != checked.to_json()


@pytest.mark.parametrize(("feature", "message"), [
    ({"name": "x", "type": "int32", "checks": {"minimum": 0}}, "feature 'x': checks: unknown check 'minimum'"),
    ({"name": "x", "type": "int32", "checks": {"min_rows": 5}},
     "unknown check 'min_rows' (a view check: put it under the view's checks"),
    ({"name": "x", "type": "string", "checks": {"min": 0}}, "feature 'x': checks: check 'min' does not apply to "
                                                           "type string"),
    ({"name": "x", "type": "bool", "checks": {"max": 1}}, "check 'max' does not apply to type bool"),
    ({"name": "x", "type": "int32", "checks": {"min": 10, "max": 5}}, "check 'min' 10 is greater than 'max' 5"),
    ({"name": "x", "type": "int32", "checks": {"min": "0"}}, "check 'min': '0' must be a number"),
    ({"name": "x", "type": "float32", "checks": {"max_null_fraction": 1.5}}, "must be a fraction between 0 and 1"),
    ({"name": "x", "type": "int64", "checks": {"finite": True}}, "check 'finite' does not apply to type int64"),
    ({"name": "x", "type": "float64", "checks": {"finite": False}}, "check 'finite': False must be true"),
    ({"name": "x", "type": "list<float32>", "length": 2, "checks": {"norm_between": [3, 1]}},
     "check 'norm_between': low 3 is greater than high 1"),
    ({"name": "x", "type": "list<float32>", "length": 2, "checks": {"norm_between": 3}}, "must be [low, high]"),
    ({"name": "x", "type": "list<float32>", "length": 2, "checks": {"length_between": [1, 2]}},
     "check 'length_between' does not apply to type list<float32>"),
    ({"name": "x", "type": "string", "checks": {"allowed": []}}, "must be a non-empty list"),
    ({"name": "x", "type": "string", "checks": {"allowed": ["a", 1]}}, "every value must be a string"),
    ({"name": "x", "type": "float32", "checks": {"allowed": [1]}}, "check 'allowed' does not apply to type float32"),
    ({"name": "x", "type": "int32", "checks": {"min": 0, "warn": ["max"]}}, "'warn' names check(s) ['max']"),
    ({"name": "x", "type": "int32", "checks": [{"min": 0}]}, "'checks' must be a mapping"),
])
def test_bad_feature_checks_name_file_view_feature_and_check(feature: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as e:
        parse_definitions(doc(feature), "defs/features.yaml")
    assert str(e.value).startswith("defs/features.yaml: view 'v', feature 'x': checks: ")
    assert message in str(e.value)


@pytest.mark.parametrize(("checks", "message"), [
    ({"min_row": 5}, "unknown check 'min_row'"),
    ({"min": 5}, "unknown check 'min' (a feature check"),
    ({"min_rows": -1}, "check 'min_rows': -1 must be a whole number"),
    ({"min_rows": 1.5}, "must be a whole number"),
    ({"max_row_change": -0.1}, "check 'max_row_change': -0.1 must be a number >= 0"),
    ({"max_null_fraction_change": 2}, "must be a fraction between 0 and 1"),
])
def test_bad_view_checks_name_file_view_and_check(checks: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as e:
        parse_definitions(doc({"name": "x", "type": "int32"}, checks=checks), "features.yaml")
    assert str(e.value).startswith("features.yaml: view 'v': checks: ")
    assert message in str(e.value)
