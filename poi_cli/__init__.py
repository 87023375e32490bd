"""poi: noise-robust facial expression recognition with Prior-based Objective Inference."""

__version__ = "0.1.0"
