"""Inference: sliding-window prediction, CPU fast paths, post-processing and case prediction.

Submodules are imported on demand (``from attnseg.infer.sliding_window import
SlidingWindowInferer``) so that importing the package stays cheap.
"""
