"""A Triton Inference Server model repository built from the bundle's accepted artifacts.

triton/<name>_<8 hex of the weights>_onnx (onnxruntime backend), ..._openvino (openvino backend) and
..._tensorrt (tensorrt_plan, when a plan was built): each has config.pbtxt, 1/<model file(s)> and labels.txt.
Configs are Triton's own `ModelConfig` protobuf messages (`triton_proto`), written with `text_format` and
parsed back before they are kept, so a config Triton would refuse is never written.

The ONNX and OpenVINO models take images: input "image", uint8, NHWC, the model's S x S crop (resize and
centre-crop are the client's, as for every Triton image model); the cast, the NCHW transpose and the
normalisation are inside the graph, so a client never has to know edgeft's mean and std. TensorRT plans
cannot be re-wrapped and keep the float NCHW "input".
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.core.files import write_text_atomic
from edgeft.core.preprocess import PreprocessSpec
from edgeft.export.context import Built, ExportContext
from edgeft.export.tensorrt_build import PROFILE
from edgeft.export.triton_proto import enum_value, message_class
from edgeft.models.onnx import INPUT_NAME, OUTPUT_NAME

DIR = "triton"
MAX_BATCH = PROFILE["max"]
PREFERRED_BATCH = (8, 16)
QUEUE_DELAY_US = 2000
ARTIFACT_PARAMETER = "edgeft_artifact"
IMAGE_INPUT = "image"


def _scale_bias(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """x_uint8 * scale + bias == (x / 255 - mean) / std, per channel."""
    std = np.asarray(spec.std, np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-np.asarray(spec.mean, np.float64) / std).astype(np.float32)


def onnx_image_model(src: Path, dst: Path, spec: PreprocessSpec) -> None:
    """The ONNX model with a uint8 NHWC "image" input: Cast, Transpose, Mul, Add, then the original graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    old = graph.input[0]
    scale, bias = _scale_bias(spec)
    s = spec.input_size
    pre = [
        helper.make_node("Cast", [IMAGE_INPUT], ["edgeft_image_f32"], to=TensorProto.FLOAT, name="edgeft_cast"),
        helper.make_node(
            "Transpose", ["edgeft_image_f32"], ["edgeft_image_nchw"], perm=[0, 3, 1, 2], name="edgeft_nchw"
        ),
        helper.make_node("Mul", ["edgeft_image_nchw", "edgeft_scale"], ["edgeft_image_scaled"], name="edgeft_scale"),
        helper.make_node("Add", ["edgeft_image_scaled", "edgeft_bias"], [old.name], name="edgeft_normalise"),
    ]
    graph.initializer.extend(
        [
            numpy_helper.from_array(scale.reshape(1, 3, 1, 1), "edgeft_scale"),
            numpy_helper.from_array(bias.reshape(1, 3, 1, 1), "edgeft_bias"),
        ]
    )
    for i, node in enumerate(pre):
        graph.node.insert(i, node)
    graph.input.remove(old)
    graph.input.insert(0, helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["batch", s, s, 3]))
    onnx.save(model, str(dst))


def openvino_image_model(xml: Path, dst_xml: Path, spec: PreprocessSpec) -> None:
    """The IR with a uint8 NHWC "image" input, through OpenVINO's PrePostProcessor."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    model = ov.Core().read_model(str(xml))
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    std = [255.0 * v for v in spec.std]
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean([255.0 * v for v in spec.mean]).scale(std)
    model = ppp.build()
    model.inputs[0].get_tensor().set_names({IMAGE_INPUT})
    ov.save_model(model, str(dst_xml), compress_to_fp16=False)


@dataclass(frozen=True)
class Target:
    """One Triton model of the repository: which backend runs it and which accepted artifact it packages."""

    suffix: str
    key: str  # "backend" or "platform"
    value: str
    kind: str  # instance group kind
    preference: tuple[str, ...]  # artifact names, best first
    names: tuple[str, ...]  # file names Triton's backend expects in 1/
    image_input: bool = True  # uint8 NHWC "image" input with the preprocessing inside the graph


TARGETS = (
    Target("onnx", "backend", "onnxruntime", "KIND_CPU", ("onnx-int8-cpu", "onnx-int8", "onnx-fp32"), ("model.onnx",)),
    Target(
        "openvino",
        "backend",
        "openvino",
        "KIND_CPU",
        ("openvino-int8", "openvino-int8-qdq", "openvino-fp32"),
        ("model.xml", "model.bin"),
    ),
    Target(
        "tensorrt",
        "platform",
        "tensorrt_plan",
        "KIND_GPU",
        ("tensorrt-int8", "tensorrt-fp16"),
        ("model.plan",),
        image_input=False,
    ),
)


def model_prefix(name: str, weights_sha256: str = "") -> str:
    """A Triton-safe model name prefix: the run's name plus 8 hex digits of its weights, so two runs called
    `exp` never collide in one model repository."""
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").lower() or "model"
    return f"{safe}_{weights_sha256[:8]}" if weights_sha256 else safe


def label_line(name: str) -> str:
    """One labels.txt line per class whatever its name: backslashes, newlines and CRs are escaped."""
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def model_config(model: str, target: Target, input_size: int, num_classes: int, artifact: str) -> Any:
    """The `inference.ModelConfig` message for one model of the repository."""
    fp32 = enum_value("DataType", "TYPE_FP32")
    cfg = message_class("ModelConfig")(name=model, max_batch_size=MAX_BATCH)
    setattr(cfg, target.key, target.value)
    if target.image_input:
        cfg.input.add(
            name=IMAGE_INPUT,
            data_type=enum_value("DataType", "TYPE_UINT8"),
            format=enum_value("ModelInput.Format", "FORMAT_NHWC"),
            dims=[input_size, input_size, 3],
        )
    else:
        cfg.input.add(
            name=INPUT_NAME,
            data_type=fp32,
            format=enum_value("ModelInput.Format", "FORMAT_NCHW"),
            dims=[3, input_size, input_size],
        )
    cfg.output.add(name=OUTPUT_NAME, data_type=fp32, dims=[num_classes], label_filename="labels.txt")
    cfg.dynamic_batching.preferred_batch_size.extend(PREFERRED_BATCH)
    cfg.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    cfg.instance_group.add(count=1, kind=enum_value("ModelInstanceGroup.Kind", target.kind))
    cfg.parameters[ARTIFACT_PARAMETER].string_value = artifact
    return cfg


def parse_config(text: str, path: str | Path | None = None) -> Any:
    """config.pbtxt text -> ModelConfig message; anything Triton's schema refuses is a clear error."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, message_class("ModelConfig")())
    except text_format.ParseError as exc:
        raise EdgeftError(
            f"not a valid Triton model config ({exc})",
            path=path,
            fix="re-export the bundle with `edgeft export`; never edit config.pbtxt by hand",
        ) from None


def read_config(path: str | Path) -> Any:
    return parse_config(Path(path).read_text(), path)


def config_text(cfg: Any, artifact: str) -> str:
    """Text-format config, checked by parsing it back into an identical message."""
    from google.protobuf import text_format

    text = f"# written by edgeft export from bundle artifact {artifact}\n" + text_format.MessageToString(cfg)
    if parse_config(text) != cfg:
        raise EdgeftError(f"config.pbtxt of {cfg.name} does not read back as written", fix="report this bug")
    return text


def write_repository(ctx: ExportContext, accepted: list[Built]) -> list[str]:
    """Write triton/ from the accepted artifacts; returns the model names written."""
    by_name = {b.name: b for b in accepted}
    prefix = model_prefix(ctx.manifest.name, ctx.weights_sha256)
    written = []
    for target in TARGETS:
        art = next((by_name[n] for n in target.preference if n in by_name), None)
        if art is None:
            continue
        model = f"{prefix}_{target.suffix}"
        root = ctx.work / DIR / model
        (root / "1").mkdir(parents=True, exist_ok=True)
        if target.image_input and art.format == "onnx":
            onnx_image_model(ctx.work / art.path, root / "1" / target.names[0], ctx.spec)
        elif target.image_input and art.format == "openvino":
            openvino_image_model(ctx.work / art.path, root / "1" / target.names[0], ctx.spec)
        else:
            for src, dst in zip(art.files(), target.names, strict=True):
                shutil.copyfile(ctx.work / src, root / "1" / dst)
        write_text_atomic(root / "labels.txt", "".join(f"{label_line(c)}\n" for c in ctx.classes))
        cfg = model_config(model, target, ctx.spec.input_size, len(ctx.classes), art.name)
        write_text_atomic(root / "config.pbtxt", config_text(cfg, art.name))
        written.append(model)
    return written


def build(ctx: ExportContext) -> None:
    """Packaging step: runs after judging, over the artifacts that passed."""
    ctx.step("Triton model repository")
    models = write_repository(ctx, ctx.accepted)
    if not models:
        ctx.note("triton: no accepted artifact to package")
    ctx.packages["triton"] = models
