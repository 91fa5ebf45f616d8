"""One lifecycle for every inference engine: construct -> load() -> infer(batch) -> close().

An Engine runs ONE model file (an .onnx, an OpenVINO .xml, a TensorRT plan, or a run dir for torch) on one
device. It maps an input batch to float32 outputs and knows nothing about bundles, labels or images, so
the feature cache, export evaluation, parity, bench and serve all run models through the same classes.
Engine packages are imported inside `load()`: `import edgeft.engines` needs numpy alone and never torch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeft.core.errors import EdgeftError
from edgeft.core.versions import package_version


def has_module(name: str) -> bool:
    """True when `name` is importable, without importing it (find_spec never executes the package)."""
    if name in sys.modules:  # already imported (or explicitly blocked with None)
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def physical_cores() -> int:
    """Physical cores this process may use: SMT siblings slow small-batch CNN inference down."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    physical = None
    if has_module("psutil"):
        import psutil

        physical = psutil.cpu_count(logical=False)
    return max(1, min(allowed, physical or os.cpu_count() or 1))


@functools.cache
def installed_versions(distributions: tuple[str, ...], module: str) -> str:
    """'dist==version' of the installed distributions that provide `module` (e.g. onnxruntime-gpu), read from
    package metadata without importing the package; '' when none is installed."""
    from importlib.metadata import packages_distributions

    def found(names: tuple[str, ...] | list[str]) -> list[str]:
        return [f"{name}=={v}" for name in names if (v := package_version(name))]

    # the usual names first; the full scan of installed distributions is slow and only needed for rare builds
    return ",".join(found(distributions) or found(sorted(packages_distributions().get(module, []))))


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'openvino:CPU' -> ('openvino', 'CPU'); 'onnxruntime' -> ('onnxruntime', None)."""
    name, _, device = spec.strip().partition(":")
    return name.strip().lower(), (device.strip() or None)


def import_engine(module: str, who: str, pip: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EdgeftError(
            f"{who} needs the Python package {module!r}, which cannot be imported ({exc})",
            fix=f"pip install {pip}, or pick another backend",
        ) from None


def run_in_static_chunks(batch: np.ndarray, size: int, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Feed a model exported with a fixed batch size: pad the last chunk, drop the padding rows."""
    outs = []
    for start in range(0, batch.shape[0], size):
        chunk = batch[start : start + size]
        n = chunk.shape[0]
        if n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(run(chunk))[:n])
    return np.concatenate(outs)


class Engine:
    """One model file on one engine and device (Polygraphy-runner style: load -> infer -> close).

    input_shape/input_dtype: what one input row must be, e.g. (3, 224, 224) float32 (None: not checked).
    num_outputs: the expected width of the output rows (None: not checked).
    """

    name: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()
    default_device: ClassVar[str] = ""
    option_names: ClassVar[tuple[str, ...]] = ()
    distributions: ClassVar[tuple[str, ...]] = ()  # pip names of the engine package (default: the engine name)

    def __init__(
        self,
        model_path: str | Path,
        *,
        precision: str = "fp32",
        device: str | None = None,
        input_shape: tuple[int, ...] | None = None,
        input_dtype: str = "float32",
        num_outputs: int | None = None,
        output_name: str | None = None,
        label: str | None = None,
        classes_sha256: str | None = None,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise EdgeftError(
                f"{self.name} does not take option(s) {unknown}; it takes {list(self.option_names)}",
                fix="drop the unknown options",
            )
        self.model_path = Path(model_path)
        self.precision = precision
        self.device = self.normalize_device(device)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.input_dtype = np.dtype(input_dtype)
        self.num_outputs = num_outputs
        self.output_name = output_name
        self.label = label or self.model_path.name
        self.options = options
        self.classes_sha256 = classes_sha256  # what bundle.json says; checked against the model file's own
        self.loaded = False

    def check_classes(self, in_model: str | None) -> None:
        """Refuse a model file whose embedded class-list hash differs from the one bundle.json promises."""
        if self.classes_sha256 and in_model and in_model != self.classes_sha256:
            raise EdgeftError(
                "the class list in bundle.json differs from the one embedded in the model file (edgeft.classes "
                "metadata): its labels would be wrong",
                path=self.model_path,
                fix="re-export the bundle with `edgeft export`; never edit the classes in bundle.json",
            )

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def normalize_device(cls, device: str | None) -> str:
        return device or cls.default_device

    def computes_on_cpu(self) -> bool:
        """Whether inference runs on this machine's CPU cores (then decoding must not overlap it; see
        serve/predictor.py). TensorRT and any GPU/NPU device say no."""
        return self.device.split(":")[0].split(".")[0].lower() == "cpu"

    @classmethod
    def default_options(cls, batch_size: int) -> dict[str, Any]:
        """Options suited to a batch size (OpenVINO: LATENCY hint for single images, THROUGHPUT otherwise)."""
        return {}

    @classmethod
    def is_installed(cls) -> bool:
        """True when the engine's Python package can be imported here (checked without importing it)."""
        raise NotImplementedError

    @classmethod
    def devices(cls) -> list[str]:
        """Devices this engine can use on this machine (empty when not installed)."""
        raise NotImplementedError

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.device}" if self.device else self.name

    def used_options(self) -> dict[str, Any]:
        return dict(self.options)

    @classmethod
    def library_version(cls) -> str:
        """The installed engine package as 'dist==version' (its version can change the outputs)."""
        return installed_versions(cls.distributions or (cls.name,), cls.name)

    def numerics(self) -> dict[str, Any]:
        """Every setting, besides the model file, the device and the input, that can change this engine's outputs,
        resolved (defaults filled in): cached outputs are keyed by it. Known before `load()`."""
        return {"precision": self.precision}

    def model_files(self) -> list[Path]:
        return [self.model_path]

    def model_bytes(self) -> int:
        """Bytes on disk of the model and its side files (e.g. the OpenVINO .bin)."""
        return sum(f.stat().st_size for f in self.model_files() if f.is_file())

    def describe(self) -> str:
        """Human-readable identity, e.g. 'openvino:CPU int8 (openvino-int8)'."""
        return f"{self.spec} {self.precision} ({self.label})"

    def load(self) -> Engine:
        """Create the engine session (idempotent); returns self so `Engine(...).load()` chains."""
        if not self.loaded:
            self._load()
            self.loaded = True
        return self

    def close(self) -> None:
        """Release the engine session and its memory; the object can be loaded again."""
        if self.loaded:
            self._close()
            self.loaded = False

    def __enter__(self) -> Engine:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} loaded={self.loaded}>"

    # -- inference -------------------------------------------------------------------------------
    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        """Refuse input of the wrong type, dtype or shape: silent casts hide preprocessing bugs."""
        want = f"({', '.join(['N', *map(str, self.input_shape)])})" if self.input_shape else "(N, ...)"
        expected = f"expected a {want} {self.input_dtype} array"
        if not isinstance(batch, np.ndarray):
            raise EdgeftError(f"{self.spec}: got {type(batch).__name__}; {expected}", fix="pass a numpy array")
        if batch.dtype != self.input_dtype:
            raise EdgeftError(
                f"{self.spec}: got dtype {batch.dtype}; {expected}",
                fix="pass the resized uint8 RGB images (edgeft.core.preprocess with raw=True)"
                if self.input_dtype == np.uint8
                else "preprocess with edgeft.core.preprocess (float32) or cast with .astype",
            )
        if self.input_shape is not None and (
            batch.ndim != len(self.input_shape) + 1 or batch.shape[1:] != self.input_shape
        ):
            raise EdgeftError(
                f"{self.spec}: got shape {tuple(batch.shape)}; {expected}",
                fix="stack single images with np.stack, or add a batch axis with x[None]",
            )
        return np.ascontiguousarray(batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, *input_shape) -> (N, num_outputs) float32."""
        batch = self.check_batch(batch)
        if not self.loaded:
            raise EdgeftError(f"{self.describe()} is not loaded", fix="call .load() or use it as a context manager")
        if batch.shape[0] == 0:
            return np.zeros((0, self.num_outputs or 0), np.float32)
        return self.check_output(self._infer(batch), batch.shape[0])

    def check_output(self, out: np.ndarray, n: int) -> np.ndarray:
        """Rows must be (n, num_outputs): anything else means the model and its manifest disagree."""
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != n or (self.num_outputs is not None and out.shape[1] != self.num_outputs):
            raise EdgeftError(
                f"{self.describe()} returned shape {out.shape}, expected {(n, self.num_outputs or 'D')}",
                path=self.model_path,
                fix="the model does not match its manifest (e.g. bundle.json's classes); re-export it",
            )
        return out

    def infer_many(self, batches: Iterable[np.ndarray]) -> list[np.ndarray]:
        """Run several batches; engines with parallel requests (OpenVINO) overlap them."""
        return [self.infer(b) for b in batches]

    def run(self, x: np.ndarray, batch_size: int = 32, advance: Callable[[int], None] | None = None) -> np.ndarray:
        """Outputs for a whole array, batch_size rows per engine call: the one batch-runner helper."""
        if x.shape[0] == 0:
            return np.zeros((0, self.num_outputs or 0), np.float32)
        outs: list[np.ndarray] = []
        group = max(1, 4 * batch_size)  # several batches per infer_many call keep OpenVINO's requests busy
        for start in range(0, x.shape[0], group):
            chunk = x[start : start + group]
            outs += self.infer_many([chunk[i : i + batch_size] for i in range(0, chunk.shape[0], batch_size)])
            if advance:
                advance(chunk.shape[0])
        return np.concatenate(outs)

    def _load(self) -> None:
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        pass


ENGINES: dict[str, type[Engine]] = {}


def register_engine(cls: type[Engine]) -> type[Engine]:
    """Class decorator: make an engine reachable by its `name` in backend specs and `auto`."""
    ENGINES[cls.name] = cls
    return cls


def engine_class(name: str) -> type[Engine]:
    """The registered class for an engine name, or an error listing the known ones."""
    from edgeft.engines import load_all

    load_all()
    if name not in ENGINES:
        raise EdgeftError(
            f"unknown backend {name!r}; known backends are {sorted(ENGINES)} (or 'auto')",
            fix="pick one of them, e.g. --backend onnxruntime:cpu",
        )
    return ENGINES[name]
