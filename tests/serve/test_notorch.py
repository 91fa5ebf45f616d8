"""An edge device has no torch: engines, check and serve must work in an interpreter where importing torch fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeft.serve.predictor import Predictor

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# sitecustomize runs at interpreter start-up, before any test code: from then on these imports fail.
SITECUSTOMIZE = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("torch", "timm", "torchvision")


    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: this interpreter simulates an edge device without torch")
            return None


    sys.meta_path.insert(0, BlockTorch())
    """
)

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    try:
        import torch  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True

    from typer.testing import CliRunner

    import edgeft.serve.http
    import edgeft.serve.stream
    from edgeft.check.parity import run_parity
    from edgeft.engines.select import available_backends, open_bundle
    from edgeft.serve import Predictor
    from edgeft.serve.bench import BenchSettings, run_bench

    bundle, out, *images = sys.argv[1:]
    with Predictor(bundle, "onnxruntime", "fp32", batch_size=4) as p:
        preds = p.predict(images + [b"broken"])
        describe = p.describe()
    with open_bundle(bundle, "auto", "int8") as engine:
        auto = engine.describe()
    parity = run_parity(Path(bundle), backends=["onnx-int8"], out=Path(out))
    settings = BenchSettings(batches=[2], backends=["onnx-fp32"], seconds=0.01, warmup=0, min_iters=1, rounds=1, n_images=4)
    bench = run_bench(bundle, settings, Path(out) / "bench.json")
    from edgeft.cli.app import app  # every command module: `edgeft predict` must start on a device

    cli = CliRunner().invoke(app, ["predict", bundle, images[0]])
    print(json.dumps({
        "blocked": blocked,
        "torch_loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision")),
        "describe": describe,
        "auto": auto,
        "labels": [x.label for x in preds],
        "reasons": [x.reason for x in preds],
        "available": available_backends(),
        "parity_reference": parity.reference,
        "parity_note": parity.reference_note,
        "parity_passed": parity.passed,
        "bench_results": len(bench.results),
        "cli_exit": cli.exit_code,
        "cli_stdout": cli.stdout,
    }))
    """
)


def test_engines_check_and_serve_work_without_torch(tiny_bundle, test_images, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")])
    images = [str(p) for p, _ in test_images[:5]]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_bundle), str(tmp_path), *images],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"] is True, "the import hook did not block torch"
    assert result["torch_loaded"] == []
    assert result["describe"] == "onnxruntime:cpu fp32 (onnx-fp32)"
    assert result["auto"].startswith(("openvino:CPU int8", "onnxruntime:cpu int8"))
    with Predictor(tiny_bundle, "onnxruntime", "fp32") as here:
        assert result["labels"] == [p.label for p in here.predict(images)] + [None]
    assert result["reasons"][-1] == "not_an_image"
    assert "torch:cpu" not in result["available"]
    assert result["parity_reference"] == "onnxruntime:cpu/onnx-fp32"
    assert "torch" in result["parity_note"] and result["parity_passed"] is True
    assert result["bench_results"] == 1
    assert result["cli_exit"] == 0 and json.loads(result["cli_stdout"])["source"] == images[0]
