"""Runtime: load an exported bundle on the fastest backend here, predict, batch requests, check parity, benchmark.

Torch-free: importing this package (and every non-torch backend) needs only numpy, Pillow and the engine.
"""

from edgeft.runtime.backends import Backend, available_backends, open_backend
from edgeft.runtime.predictor import BatcherStats, DynamicBatcher, Prediction, Predictor, QueueFull

__all__ = [
    "Backend",
    "BatcherStats",
    "DynamicBatcher",
    "Prediction",
    "Predictor",
    "QueueFull",
    "available_backends",
    "open_backend",
]
