"""edgeft: train, quantise and serve frozen-backbone fish-species classifiers on edge devices."""

__version__ = "0.1.0"
