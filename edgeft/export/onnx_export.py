"""FP32 ONNX export of the eval-mode classifier, its metadata, and the graph hygiene every ONNX artifact gets.

Exporter choice (torch 2.15): `dynamo=True, external_data=False` yields one self-contained file with a clean
96-node graph (Conv/Clip/Add/ReduceMean/Gemm): torch.export sees static H/W, so timm's TF-"same" padding
folds into the Conv pads. The legacy TorchScript exporter (`dynamo=False`) gives 597 nodes, with a
Shape/Gather/Ceil/Pad chain per strided conv that TensorRT and the quantizer handle worse, and is
deprecated. It is kept only as a fallback for backbones torch.export cannot trace.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.export.context import Built, ExportContext
from edgeft.export.registry import ExportFormat, Runner, register

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PARITY_ATOL = 1e-4
MAX_BATCH = 4096


def metadata(name: str, classes: list[str], preprocess: dict, weights_sha256: str) -> dict[str, str]:
    """ONNX metadata_props: what an ONNX file needs to be used without bundle.json."""
    return {
        "edgeft.name": name,
        "edgeft.classes": json.dumps(list(classes)),
        "edgeft.preprocess": json.dumps(preprocess, sort_keys=True),
        "edgeft.weights_sha256": weights_sha256,
        "edgeft.input": INPUT_NAME,
        "edgeft.output": OUTPUT_NAME,
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _export_dynamo(model, dummy, out: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(out),
            dynamo=True,
            external_data=False,
            optimize=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )


def _export_torchscript(model, dummy, out: Path) -> None:
    import torch

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def export_onnx(model, input_size: int, out: Path, meta: dict[str, str]) -> dict:
    """Write the FP32 ONNX file (single file, dynamic batch, opset OPSET); returns artifact info."""
    import torch

    model = model.eval()
    dummy = torch.zeros(2, 3, input_size, input_size)
    exporter, first_error = "torch.onnx.export(dynamo=True)", None
    try:
        with torch.no_grad():
            _export_dynamo(model, dummy, out)
    except Exception as exc:  # torch.export raises many internal error types; fall back once
        first_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        exporter = "torch.onnx.export(dynamo=False)"
        try:
            with torch.no_grad():
                _export_torchscript(model, dummy, out)
        except Exception as exc2:
            raise EdgeftError(
                f"ONNX export failed with both exporters (dynamo: {first_error}; "
                f"torchscript: {type(exc2).__name__}: {exc2})",
                fix="the backbone uses an operator ONNX cannot express; try another backbone",
            ) from None
    nodes = finalize(out, meta)
    info = {"exporter": exporter, "opset": OPSET, "nodes": nodes, "dynamic_axes": {INPUT_NAME: [0], OUTPUT_NAME: [0]}}
    if first_error:
        info["dynamo_error"] = first_error
    return info


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
            fix="report this with the run dir; the export of this backbone is broken",
        ) from None
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp, save_as_external_data=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(model.graph.node)


def parity_problems(logits: np.ndarray, reference: np.ndarray, atol: float = PARITY_ATOL) -> list[str]:
    """Why two FP32 engines disagree: top-1 must agree on every image and logits within atol."""
    problems = []
    agree = float(np.mean(logits.argmax(1) == reference.argmax(1))) if len(reference) else 1.0
    diff = float(np.abs(logits - reference).max()) if len(reference) else 0.0
    if agree < 1.0:
        problems.append(f"top-1 agrees on {agree:.2%} of images (need 100%)")
    if not diff <= atol:
        problems.append(f"max |delta logit| = {diff:.3g} (need <= {atol:g})")
    return problems


def ort_session(path: Path):
    """A CPU ONNX Runtime session with full graph optimisation, as the runtime serves it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def runner(ctx: ExportContext, built: Built) -> Runner:
    session = ort_session(ctx.work / built.path)
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def build(ctx: ExportContext) -> None:
    """onnx-fp32 (checked against torch, else the export fails), then the Q/DQ INT8 variants."""
    from edgeft.export.errors import ExportParityError
    from edgeft.export.evaluate import run_batches

    ctx.step("ONNX FP32 export")
    path = ctx.work / "model.onnx"
    info = export_onnx(ctx.model, ctx.spec.input_size, path, ctx.metadata)
    built = ctx.add(Built("onnx-fp32", "onnx", "fp32", "model.onnx", info=info))
    ctx.step("ONNX FP32 parity vs PyTorch")
    logits = run_batches(runner(ctx, built), ctx.test.x)
    problems = parity_problems(logits, ctx.test.reference)
    if problems:
        raise ExportParityError(
            f"FP32 ONNX disagrees with PyTorch on the {ctx.test.split} images: " + "; ".join(problems),
            path=ctx.run_dir,
            fix="report this with the run dir; no bundle was written",
        )
    ctx.logits[built.name] = logits
    if ctx.options.int8:
        build_int8(ctx, path)


def build_int8(ctx: ExportContext, fp32: Path) -> None:
    """Q/DQ INT8 via ORT: the S8S8 copy for TensorRT/OpenVINO, plus the U8S8 CPU copy when it is the faster one."""
    from edgeft.calibration import ort_quant
    from edgeft.export.qdq_check import check_qdq_for_tensorrt

    cal = ctx.calibration_data()
    with tempfile.TemporaryDirectory(prefix="edgeft-quant-") as tmp:
        ctx.step("INT8: quant_pre_process")
        pre = ort_quant.pre_process(fp32, Path(tmp) / "model.pre.onnx")
        for variant in ort_quant.VARIANTS:
            if variant is ort_quant.U8S8_CPU and not ort_quant.EMIT_CPU_VARIANT:
                continue
            ctx.step(f"INT8: quantize_static {variant.artifact} ({cal.method}, {len(cal.tensors)} calib images)")
            out = ctx.work / variant.filename
            info = ort_quant.quantize(pre, out, variant, cal.tensors, cal.method, cal.ranges_cache)
            info["calibration_key"] = cal.key
            info["nodes"] = finalize(out, ctx.metadata)
            problems = check_qdq_for_tensorrt(out)
            info["tensorrt_compatible"] = not problems
            if variant is ort_quant.S8S8:
                info["tensorrt_qdq_problems"] = problems[:20]
                if problems:
                    ctx.note(
                        f"{variant.artifact}: Q/DQ graph breaks TensorRT rules: {problems[0]} (+{len(problems) - 1} more)"
                    )
            ctx.add(Built(variant.artifact, "onnx", "int8", variant.filename, info=info))


register(ExportFormat("onnx", "engine", lambda: None, build, runner, always=True))
