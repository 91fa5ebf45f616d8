"""Typed documents: a malformed file is one paragraph naming the file, the field and the fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeft.core.errors import EdgeftError
from edgeft.core.hashing import classes_sha256
from edgeft.core.manifests import BundleManifest, ModelManifest, SplitsDoc
from edgeft.core.preprocess import PreprocessSpec


def _model_doc() -> dict:
    return ModelManifest(
        task="fish",
        name="x",
        backbone={"id": "tinynet", "arch": "edgeft:tinynet", "feature_dim": 64},
        classes=["Trout", "Shrimp"],
        preprocess=PreprocessSpec(input_size=32, resize_size=36),
        weights={"sha256": "abc"},
    ).model_dump(mode="json")


def _write(tmp_path, doc) -> None:
    (tmp_path / "model.json").write_text(json.dumps(doc))


def test_round_trip_and_class_hash(tmp_path):
    doc = _model_doc()
    assert doc["classes_sha256"] == classes_sha256(["Trout", "Shrimp"]) != classes_sha256(["Shrimp", "Trout"])
    _write(tmp_path, doc)
    assert ModelManifest.load(tmp_path).model_dump(mode="json") == doc


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda d: d.update(classes="Trout"), "field 'classes': Input should be a valid list (got 'Trout')"),
        (lambda d: d.update(colour="red"), "field 'colour': Extra inputs are not permitted"),
        (lambda d: d.update(classes=["Trout", "Trout"]), "class names must be unique"),
        (lambda d: d.update(classes=["Shrimp", "Trout"]), "classes_sha256 does not match the ordered class list"),
        (lambda d: d["preprocess"].update(interpolation="cubic"), "field 'preprocess.interpolation'"),
        (lambda d: d["backbone"].update(feature_dim=0), "field 'backbone.feature_dim'"),
        (lambda d: d.pop("weights"), "field 'weights': Field required"),
    ],
)
def test_malformed_model_json_names_file_field_and_fix(tmp_path, edit, needle):
    doc = _model_doc()
    edit(doc)
    _write(tmp_path, doc)
    with pytest.raises(EdgeftError) as info:
        ModelManifest.load(tmp_path)
    text = str(info.value)
    assert needle in text and str(tmp_path / "model.json") in text and "Fix: re-run `edgeft train`" in text


def test_not_json_and_missing_files(tmp_path):
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(EdgeftError, match="bundle.json is not valid JSON"):
        BundleManifest.load(tmp_path)
    with pytest.raises(EdgeftError, match="splits.json not found"):
        SplitsDoc.load(tmp_path)


def test_class_names_with_newlines_are_refused(tmp_path):
    doc = _model_doc()
    doc["classes"], doc["classes_sha256"] = ["Trout\nShrimp", "Sea Bass"], ""
    _write(tmp_path, doc)
    with pytest.raises(EdgeftError, match="single-line"):
        ModelManifest.load(tmp_path)


def test_cli_prints_one_paragraph_without_traceback(tmp_path):
    doc = _model_doc()
    doc["classes"] = "Trout"
    _write(tmp_path, doc)
    r = subprocess.run([sys.executable, "-m", "edgeft.cli", "eval", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    assert "field 'classes'" in r.stderr and "Fix:" in r.stderr
