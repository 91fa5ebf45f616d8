"""matplotlib for the report pictures: the file-only Agg backend, loaded on first use (it is slow to import)."""

from __future__ import annotations

from typing import Any


def pyplot(optional: bool = False) -> Any | None:
    """matplotlib.pyplot on the Agg backend. optional=True: None when matplotlib is not installed (the picture
    is a convenience next to a JSON file that holds every number); otherwise the ImportError propagates."""
    try:
        import matplotlib
    except ImportError:
        if optional:
            return None
        raise
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
