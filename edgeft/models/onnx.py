"""THE torch -> ONNX exporter: the bundle's FP32 model and the feature cache's backbone both come from here.

Exporter choice (torch 2.14): `dynamo=True, external_data=False` yields one self-contained file with a clean
graph (Conv/Clip/Add/ReduceMean/Gemm): torch.export sees static H/W, so timm's TF-"same" padding folds into
the Conv pads. The legacy TorchScript exporter (`dynamo=False`) gives ~600 nodes with a Shape/Gather/Ceil/Pad
chain per strided conv that TensorRT and the quantizer handle worse, and is deprecated; it is kept only as a
fallback for models torch.export cannot trace.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

from edgeft.core.errors import EdgeftError
from edgeft.core.files import atomic_path

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_BATCH = 4096


def metadata(
    name: str, classes: list[str], preprocess: dict, weights_sha256: str, classes_sha256: str
) -> dict[str, str]:
    """ONNX metadata_props: what an ONNX file needs to be used without bundle.json (and to detect a mismatch)."""
    return {
        "edgeft.name": name,
        "edgeft.classes": json.dumps(list(classes)),
        "edgeft.classes_sha256": classes_sha256,
        "edgeft.preprocess": json.dumps(preprocess, sort_keys=True),
        "edgeft.weights_sha256": weights_sha256,
        "edgeft.input": INPUT_NAME,
        "edgeft.output": OUTPUT_NAME,
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _torch_onnx_export(model, dummy, out: Path, output_name: str, dynamo: bool) -> None:
    """The one call of torch.onnx.export in edgeft: dynamo, or the TorchScript fallback."""
    import torch

    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        kwargs = {"external_data": False, "optimize": True, "dynamic_shapes": ({0: batch},), "verbose": False}
    else:
        kwargs = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(out),
            dynamo=dynamo,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[output_name],
            **kwargs,
        )


def finalize(path: Path, meta: dict[str, str]) -> int:
    """Strip unused opset imports, embed metadata, check + shape-infer, save as one file; returns node count."""
    import onnx

    model = onnx.load(str(path))
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    props = {p.key: p.value for p in model.metadata_props if not p.key.startswith("edgeft.")}
    props.update(meta)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    if not model.producer_name:
        model.producer_name = "edgeft"
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises checker/inference errors of several types
        raise EdgeftError(
            f"exported ONNX graph is invalid ({type(exc).__name__}: {exc})",
            path=path,
            fix="report this with the run dir; the export of this model is broken",
        ) from None
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return len(model.graph.node)


def export_onnx(
    model,
    input_size: int,
    out: Path,
    meta: dict[str, str] | None = None,
    output_name: str = OUTPUT_NAME,
) -> dict:
    """Write an FP32 ONNX file (single file, dynamic batch, opset OPSET); returns artifact info.

    Callers check the file against torch through an engine (export's gate, the feature cache's probe).
    """
    import torch

    model = model.eval()
    dummy = torch.zeros(2, 3, input_size, input_size)
    exporter, first_error = "torch.onnx.export(dynamo=True)", None
    with atomic_path(out) as tmp:
        try:
            _torch_onnx_export(model, dummy, tmp, output_name, dynamo=True)
        except Exception as exc:  # torch.export raises many internal error types; fall back once
            first_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            exporter = "torch.onnx.export(dynamo=False)"
            try:
                _torch_onnx_export(model, dummy, tmp, output_name, dynamo=False)
            except Exception as exc2:
                raise EdgeftError(
                    f"ONNX export failed with both exporters (dynamo: {first_error}; "
                    f"torchscript: {type(exc2).__name__}: {exc2})",
                    fix="the model uses an operator ONNX cannot express; try another backbone",
                ) from None
        nodes = finalize(tmp, meta or {})
    info = {"exporter": exporter, "opset": OPSET, "nodes": nodes, "dynamic_axes": {INPUT_NAME: [0], output_name: [0]}}
    if first_error:
        info["dynamo_error"] = first_error
    return info
