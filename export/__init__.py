"""diffprune.export: pruned (or dense) UNets to validated ONNX, TensorRT engines and Triton repositories."""
