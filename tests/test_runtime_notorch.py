"""The runtime must work on a device without torch/timm/torchvision: prove it in a subprocess that blocks them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

try:
    from runtime_fixtures import tiny_bundle  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.runtime_fixtures import tiny_bundle  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

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

    import edgeft.runtime
    from edgeft.runtime import Predictor, available_backends, open_backend
    from edgeft.runtime.parity import run_parity
    import edgeft.runtime.bench, edgeft.runtime.commands  # noqa: E401

    bundle, out, *images = sys.argv[1:]
    with Predictor(bundle, backend="onnxruntime", precision="fp32", batch_size=4) as p:
        preds = p.predict(images + [b"broken"])
        describe = p.describe()
    with open_backend(bundle, "auto", "int8") as be:
        auto = be.describe()
    report = run_parity(Path(bundle), backends=["onnx-int8"], out=Path(out))
    print(json.dumps({
        "blocked": blocked,
        "torch_loaded": any(m.split(".")[0] in ("torch", "timm", "torchvision") for m in sys.modules),
        "describe": describe,
        "auto": auto,
        "labels": [x.label for x in preds],
        "errors": [x.error for x in preds],
        "available": available_backends(),
        "parity_reference": report.reference,
        "parity_note": report.reference_note,
        "parity_passed": report.passed,
    }))
    """
)


def test_runtime_works_without_torch(tiny_bundle, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")])
    images = [str(p) for p in tiny_bundle.test_images[:5]]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_bundle.bundle_dir), str(tmp_path), *images],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"] is True, "the import hook did not block torch"
    assert result["torch_loaded"] is False
    assert result["describe"] == "onnxruntime:cpu fp32 (onnx-fp32)"
    assert result["auto"].startswith(("openvino:CPU int8", "onnxruntime:cpu int8"))
    assert result["labels"] == tiny_bundle.test_labels[:5] + [None]
    assert result["errors"][-1].startswith("not_an_image:")
    assert "torch:cpu" not in result["available"]
    assert result["parity_reference"] == "onnxruntime:cpu/onnx-fp32"
    assert "torch" in result["parity_note"] and result["parity_passed"] is True
