"""INT8 search: the fastest Q/DQ INT8 graph whose top-1 answers agree with FP32 on the search images.

The search images are images the head never learnt from: the calib split, plus val when the head was not
refitted on train+val; never test. The gate judges the chosen graph on the test split afterwards, on images
the search never saw. (A head is confident on its own training images: INT8 looks flawless there.)

1. Sensitivity: the all-INT8 graph and the FP32 graph run side by side on a few search images with every
   Conv/Gemm/Add output exposed; a node's damage is the signal-to-quantization-noise ratio (dB) it loses
   relative to the node that feeds it. This ranking is reported (tradeoff.json) for the user.
2. Float layers: the first k Convs from the input stay float for k = 0, 1, 2, 3, 5, 8, ... until agreement
   on the search images reaches the search target (halfway between the gate's floor and 1: 0.995 for a 0.99
   gate, so sampling noise on the test split does not undo the choice); it stops early when three points in a
   row gain nothing. Measured on EfficientNet-Lite0 (EGU fish, U8S8): the SQNR ranking's top 5 in float
   reach 87.5% agreement, the first 5 convs 94.7%: the error that matters starts at the input, so the
   candidates are input-side prefixes.
   Whether a point still pays is decided from the graph, not from a stopwatch: the share of the multiply-adds
   left float and a nominal INT8 rate give a modelled speedup over FP32, which must reach MIN_MODELLED_SPEEDUP.
   (Timings on a shared CPU swing 2x with the load; a decision taken on them shipped a 99.9%-float graph as
   "INT8" on one run and not on the next.) Every point is still timed, for the report.
3. Every point and the FP32 graph go to tradeoff.json and tradeoff.png, the chosen point marked.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeft.core.plotting import pyplot
from edgeft.engines.base import Engine, has_module
from edgeft.engines.onnxruntime import OnnxRuntimeEngine
from edgeft.engines.openvino import OpenVinoEngine
from edgeft.export.quant import ort as ort_quant

SENSITIVITY_IMAGES = 16
SPEED_IMAGES = 64
# What an INT8 multiply-add gains over a float one on each engine searched on, as measured on EfficientNet-Lite0
# at batch 8 on an AVX-512 VNNI CPU (4x the lanes): OpenVINO's INT8 IR ran 2.99x its FP32 engine (LSFD run);
# ONNX Runtime's U8S8 Q/DQ graph with only the stem float ran 1.9x its FP32 graph (default run, quiet machine).
# ONNX Runtime's x86 kernels run the S8S8 graph (made for OpenVINO and TensorRT) slower than FP32: no gain.
INT8_MAC_SPEEDUP = {"openvino": 3.0, "onnxruntime": 2.0, "onnxruntime-s8s8": 1.0}
# A point ships only if its modelled speedup over FP32 reaches this: a third to a half of the multiply-adds float.
MIN_MODELLED_SPEEDUP = 1.5
MAX_SEARCH_IMAGES = 640  # calib first, then val: enough to see a 0.5% flip rate, bounded time per point
SPEED_BATCH = 8
SQNR_CAP_DB = 80.0  # an exact tensor (the graph input, a float layer) has infinite SQNR
# The ops whose quantization the search ranks and can undo (the convs, the classifier head, the residual adds).
RANKED_OPS = ("Conv", "Gemm", "MatMul", "Add")


def modelled_speedup(float_mac_share: float, engine: str) -> float:
    """Over the FP32 graph, from the float share of multiply-adds: deterministic, unlike a timing."""
    gain = INT8_MAC_SPEEDUP.get(engine, min(INT8_MAC_SPEEDUP.values()))
    return 1.0 / (float_mac_share + (1.0 - float_mac_share) / gain)


@dataclass
class Point:
    """One INT8 graph of the search: how many Convs stayed float, its agreement and its speed."""

    n_float: int
    float_nodes: list[str]
    agreement: float
    n_flipped: int
    images_per_s: float  # measured, for the report only: it swings with the machine's load
    float_mac_share: float = 0.0  # of the graph's Conv/Gemm/MatMul multiply-adds
    modelled_speedup: float = 1.0  # over the FP32 graph on the search engine (`modelled_speedup`): decides


@dataclass
class SearchResult:
    artifact: str
    target: float
    search_images: int
    points: list[Point] = field(default_factory=list)
    chosen: int | None = None  # index into points: the point that reached the target and pays
    reached: int | None = None  # index into points: the first to reach the target, whether or not it pays
    fp32_images_per_s: float | None = None  # measured, for the report
    engine: str = "onnxruntime"  # what the points were run and timed on
    min_speedup: float = MIN_MODELLED_SPEEDUP  # a point ships only if its modelled speedup reaches this
    ranking: list[tuple[str, float]] = field(default_factory=list)  # (conv, dB lost), most damaging first

    @property
    def best(self) -> Point:
        """The chosen point; when none reached the target, the best-agreeing point that still pays (an "INT8"
        graph that is mostly float only costs), else the all-INT8 one."""
        if self.chosen is not None:
            return self.points[self.chosen]
        faster = [p for p in self.points if self.pays(p)] or self.points[:1]
        return max(faster, key=lambda p: (p.agreement, -p.n_float))

    def pays(self, p: Point) -> bool:
        return p.modelled_speedup >= self.min_speedup

    def why_not_chosen(self) -> str:
        """One line for the export notes when no point was chosen: the target was out of reach, or too costly."""
        best = f"{self.best.agreement:.2%} with {self.best.n_float} float convs"
        if self.reached is None:
            return (
                f"{self.artifact}: no INT8 graph reached {self.target:.1%} agreement on the {self.search_images} "
                f"held-out search images (best {best}); see tradeoff.png"
            )
        hit = self.points[self.reached]
        return (
            f"{self.artifact}: {hit.agreement:.2%} agreement on the {self.search_images} held-out search images needed "
            f"{hit.n_float} float convs ({hit.float_mac_share:.0%} of the multiply-adds: modelled "
            f"{hit.modelled_speedup:.2f}x FP32 < {self.min_speedup}x); kept the best graph that pays ({best}); "
            "see tradeoff.png"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranking"] = [{"node": n, "db_lost": round(db, 3)} for n, db in self.ranking[:40]]
        for p in d["points"]:
            p["float_nodes"] = p["float_nodes"][:60]
            p["float_mac_share"], p["modelled_speedup"] = (
                round(p["float_mac_share"], 4),
                round(p["modelled_speedup"], 3),
            )
        d["reached_target"] = self.reached is not None
        return d


def search_target(min_agreement: float) -> float:
    """Halfway between the gate's floor and perfect agreement."""
    return 1.0 - (1.0 - min_agreement) / 2.0


def _exposed(model_path: Path, names: list[str], out: Path) -> Path:
    """A copy of the graph with `names` added as float outputs."""
    import onnx

    model = onnx.load(str(model_path))
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in have
    )
    onnx.save(model, str(out))
    return out


def _activations(model_path: Path, names: list[str], x: np.ndarray) -> dict[str, list[np.ndarray]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(x), 4):
        for n, v in zip(names, sess.run(names, {feed: x[i : i + 4]}), strict=True):
            got[n].append(v)
    return got


def _sqnr(f: list[np.ndarray], q: list[np.ndarray]) -> float:
    a, b = np.concatenate(f).astype(np.float64), np.concatenate(q).astype(np.float64)
    noise = float(((a - b) ** 2).sum())
    signal = float((a**2).sum())
    if noise <= 0.0 or signal <= 0.0:
        return SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))


def conv_outputs(model_path: Path) -> dict[str, str]:
    """Ranked node name -> its output tensor (the quantizer keeps node names but may rename tensors)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return {n.name: n.output[0] for n in graph.node if n.op_type in RANKED_OPS}


def conv_feeders(model_path: Path) -> dict[str, str | None]:
    """Ranked node name -> the nearest ranked node upstream on its data input (None for the first)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    feeders: dict[str, str | None] = {}
    for node in graph.node:
        if node.op_type not in RANKED_OPS:
            continue
        tensor, up = node.input[0], None
        for _ in range(64):  # walk back through activations, pooling, Q/DQ pairs
            prev = producer.get(tensor)
            if prev is None:
                break
            if prev.op_type in RANKED_OPS:
                up = prev.name
                break
            tensor = prev.input[0]
        feeders[node.name] = up
    return feeders


def rank_convs(fp32: Path, qdq: Path, x: np.ndarray, exclude: list[str]) -> list[tuple[str, float]]:
    """Ranked nodes ordered by the SQNR they lose in the all-INT8 graph (most damaging first)."""
    f_out, q_out = conv_outputs(fp32), conv_outputs(qdq)
    feeders = {k: v for k, v in conv_feeders(fp32).items() if k not in exclude and k in q_out}
    convs = sorted({c for conv, up in feeders.items() for c in (conv, up) if c and c in q_out})
    with tempfile.TemporaryDirectory(prefix="edgeft-sens-") as tmp:
        f_names, q_names = [f_out[c] for c in convs], [q_out[c] for c in convs]
        f = _activations(_exposed(fp32, f_names, Path(tmp) / "f.onnx"), f_names, x)
        q = _activations(_exposed(qdq, q_names, Path(tmp) / "q.onnx"), q_names, x)
    sqnr = {c: _sqnr(f[f_out[c]], q[q_out[c]]) for c in convs}
    lost = {conv: sqnr.get(up or "", SQNR_CAP_DB) - sqnr[conv] for conv, up in feeders.items()}
    return sorted(lost.items(), key=lambda kv: (-kv[1], kv[0]))


def conv_macs(model_path: Path, sample: np.ndarray) -> dict[str, int]:
    """Multiply-adds per image of each Conv/Gemm/MatMul with a constant weight.

    Conv output sizes come from ONNX shape inference; where it leaves them open (a "same" padding computed at
    run time, as the TorchScript exporter writes timm's), the graph runs once on `sample` (one image) with those
    outputs exposed, so no conv is ever counted by its weights alone."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(model_path))).graph
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
        for v in [*graph.value_info, *graph.output, *graph.input]
    }
    weights = {i.name: list(i.dims) for i in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1]
    nodes = [n for n in nodes if n.input[1] in weights]
    open_sizes = [n.output[0] for n in nodes if n.op_type == "Conv" and not _static(shapes.get(n.output[0], []))]
    if open_sizes:
        with tempfile.TemporaryDirectory(prefix="edgeft-macs-") as tmp:
            got = _activations(_exposed(model_path, open_sizes, Path(tmp) / "m.onnx"), open_sizes, sample[:1])
        shapes.update({name: list(arrays[0].shape) for name, arrays in got.items()})
    macs = {}
    for node in nodes:
        w = weights[node.input[1]]
        if node.op_type == "Conv":  # every output element (C_out x H x W) sums C_in/groups x kh x kw products
            macs[node.name] = math.prod(shapes[node.output[0]][1:]) * math.prod(w[1:])
        else:  # a matrix product: one multiply-add per weight per row
            macs[node.name] = max(math.prod(w), 1)
    return macs


def _static(shape: list[int]) -> bool:
    return len(shape) > 2 and all(shape[1:])


def float_share(macs: dict[str, int], float_nodes: list[str]) -> float:
    total = sum(macs.values())
    return sum(macs.get(n, 0) for n in set(float_nodes)) / total if total else 0.0


def input_side_convs(model_path: Path, exclude: list[str]) -> list[str]:
    """The Conv nodes in graph (topological) order, the input side first."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Conv" and n.name not in exclude]


def _ks(n: int) -> list[int]:
    ks, k = [0, 1, 2, 3], 3
    while k < n:
        k = math.ceil(k * 1.5)
        ks.append(min(k, n))
    return sorted({k for k in ks if k <= n})


def search_engine(variant: ort_quant.QuantVariant) -> type[Engine]:
    """The engine a variant is searched on: the one that serves it fastest on a CPU.

    The S8S8 graph is what OpenVINO (and TensorRT) consume; ONNX Runtime's x86 kernels run it slower than
    FP32, so it is searched on OpenVINO when installed. The U8S8 copy is ONNX Runtime's own.
    """
    if variant.activation == "int8" and has_module("openvino"):
        return OpenVinoEngine
    return OnnxRuntimeEngine


def _speed(engine: Engine, x: np.ndarray) -> float:
    sample = x[:SPEED_IMAGES]
    engine.run(sample[:SPEED_BATCH], SPEED_BATCH)  # warm-up
    start = time.perf_counter()
    engine.run(sample, SPEED_BATCH)
    return len(sample) / max(time.perf_counter() - start, 1e-9)


def _evaluate(
    path: Path, x: np.ndarray, ref_pred: np.ndarray, n_out: int, engine_cls: type[Engine] = OnnxRuntimeEngine
) -> tuple[float, int, float]:
    with engine_cls(path, precision="int8", input_shape=x.shape[1:], num_outputs=n_out) as engine:
        pred = engine.run(x, 32).argmax(1)
        speed = _speed(engine, x)
    flips = int((pred != ref_pred).sum())
    return 1.0 - flips / len(x), flips, speed


def search(
    pre: Path,
    out: Path,
    variant: ort_quant.QuantVariant,
    calib: np.ndarray,
    method: str,
    ranges_cache: Path,
    x: np.ndarray,
    ref_logits: np.ndarray,
    min_agreement: float,
    step: Callable[[str], None] = lambda _: None,
    min_speedup: float = MIN_MODELLED_SPEEDUP,
) -> tuple[dict, SearchResult]:
    """Write `out` as the fewest-float-Convs INT8 graph that reaches the search target while still at least
    `min_speedup` x the FP32 graph's modelled speed; returns (info, result)."""
    target = search_target(min_agreement)
    x, ref_logits = x[:MAX_SEARCH_IMAGES], ref_logits[:MAX_SEARCH_IMAGES]
    engine_cls = search_engine(variant)
    result = SearchResult(variant.artifact, target, len(x), engine=engine_cls.name, min_speedup=min_speedup)
    ref_pred = ref_logits.argmax(1)
    stem = ort_quant.stem_conv(pre) if ort_quant.FLOAT_STEM else []
    with tempfile.TemporaryDirectory(prefix="edgeft-search-") as tmp:
        work = Path(tmp)
        with engine_cls(pre, precision="fp32", input_shape=x.shape[1:], num_outputs=ref_logits.shape[1]) as e:
            result.fp32_images_per_s = _speed(e, x)
        info = ort_quant.quantize(pre, work / "k0.onnx", variant, calib, method, ranges_cache, float_nodes=stem)
        step(f"INT8 search {variant.artifact}: per-layer sensitivity on {min(len(x), SENSITIVITY_IMAGES)} images")
        result.ranking = rank_convs(pre, work / "k0.onnx", x[:SENSITIVITY_IMAGES], stem)
        order = input_side_convs(pre, stem)
        macs = conv_macs(pre, x)
        s8s8_on_ort = variant.activation == "int8" and engine_cls is OnnxRuntimeEngine
        gain_key = "onnxruntime-s8s8" if s8s8_on_ort else result.engine
        stale = 0
        for k in _ks(len(order)):
            nodes = stem + order[:k]
            path = work / f"k{k}.onnx"
            if k:
                ort_quant.quantize(pre, path, variant, calib, method, ranges_cache, float_nodes=nodes)
            step(f"INT8 search {variant.artifact}: the first {k} conv(s) after the stem float")
            agreement, flips, speed = _evaluate(path, x, ref_pred, ref_logits.shape[1], engine_cls)
            best_so_far = max((p.agreement for p in result.points), default=-1.0)
            share = float_share(macs, nodes)
            point = Point(len(nodes), nodes, agreement, flips, speed, share, modelled_speedup(share, gain_key))
            result.points.append(point)
            if agreement >= target:
                # more float convs only get slower: stop here, and keep it only if INT8 still pays
                result.reached = len(result.points) - 1
                if result.pays(point):
                    result.chosen = len(result.points) - 1
                break
            stale = stale + 1 if agreement <= best_so_far else 0
            if stale >= 3:
                break
        best = result.best
        shutil.copyfile(work / f"k{best.n_float - len(stem)}.onnx", out)
    info.update(
        {
            "float_nodes": best.float_nodes,
            "search": {
                "target": target,
                "images": len(x),
                "agreement": best.agreement,
                "reached_target": result.reached is not None,
                "chosen": result.chosen is not None,
                "points": len(result.points),
            },
        }
    )
    return info, result


def write_tradeoff(results: list[SearchResult], min_agreement: float, out_dir: Path) -> list[str]:
    """tradeoff.json (every point) and tradeoff.png (agreement against speed, chosen points starred)."""
    from edgeft.core.files import write_json_atomic

    doc = {
        "what": "top-1 agreement with the FP32 graph on held-out search images (calib, plus val when the head was not "
        "refitted on it; never test) against img/s at "
        f"batch {SPEED_BATCH} on the CPU engine that serves it, for each INT8 graph the search tried",
        "gate_min_agreement": min_agreement,
        "search_target": search_target(min_agreement),
        "artifacts": [r.to_dict() for r in results],
    }
    write_json_atomic(out_dir / "tradeoff.json", doc)
    files = ["tradeoff.json"]
    plt = pyplot(optional=True)
    if plt is None:  # the plot is a convenience; the JSON holds every number
        return files
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in results:
        xs, ys = [p.images_per_s for p in r.points], [100 * p.agreement for p in r.points]
        (line,) = ax.plot(xs, ys, "o-", label=f"{r.artifact} on {r.engine}")
        for p in r.points:
            ax.annotate(
                f"{p.n_float} ({p.modelled_speedup:.1f}x)",
                (p.images_per_s, 100 * p.agreement),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        if r.chosen is not None:
            c = r.points[r.chosen]
            ax.plot([c.images_per_s], [100 * c.agreement], "*", ms=16, color=line.get_color())
        if r.fp32_images_per_s:
            ax.plot([r.fp32_images_per_s], [100.0], "s", color=line.get_color())
    ax.axhline(100 * min_agreement, color="red", ls="--", lw=1, label=f"gate {min_agreement:.1%}")
    ax.axhline(100 * search_target(min_agreement), color="orange", ls=":", lw=1, label="search target")
    ax.set_xlabel(f"images/s (batch {SPEED_BATCH}, CPU); squares: the FP32 graph on the same engine")
    ax.set_ylabel("top-1 agreement with FP32 (%), held-out search images")
    ax.set_title("INT8 search: float convs (modelled speedup) vs agreement and speed; star = chosen")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out_dir / "tradeoff.png")
    plt.close(fig)
    return [*files, "tradeoff.png"]
