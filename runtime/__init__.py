"""diffprune.runtime: torch-free sampling on ONNX Runtime / TensorRT.

This package never imports torch, nor anything from diffprune's torch side (diffprune/, export/).
"""
