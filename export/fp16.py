"""float16 graphs for TensorRT's strongly typed mode (TensorRT 10.12+ ignores builder FP16 flags: the
precision must live in the graph).

ONNX Runtime's float16 converter (the maintained one, shipped with onnxruntime; onnxconverter-common's
is the same code) with float32 graph inputs and outputs, and the ops whose fp16 arithmetic overflows
or loses too much kept in float32: normalisation statistics (GroupNorm is exported as
InstanceNormalization over reshaped groups), softmax, the reductions and powers of hand-written norms,
and the sinusoidal timestep embedding (timesteps up to 1000 times frequencies lose digits in fp16).
"""

from diffprune.errors import DiffPruneError

KEEP_FP32 = [
    "InstanceNormalization", "GroupNormalization", "LayerNormalization", "Softmax",
    "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Reciprocal", "Sin", "Cos", "Exp", "Range", "Resize",
]


def to_fp16(proto, keep=None):
    """``proto`` in float16 with float32 I/O; ``keep`` adds op types to :data:`KEEP_FP32`."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxconverter_common.float16 import convert_float_to_float16
        except ImportError:
            raise DiffPruneError(
                "fp16 export needs onnxruntime (pip install 'diffprune[cpu]') or onnxconverter-common; "
                "neither is installed."
            ) from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns for every value it clamps to fp16 range
        proto = convert_float_to_float16(proto, keep_io_types=True, op_block_list=KEEP_FP32 + list(keep or []))
    # The converter appends the input casts at the end of the node list; ONNX wants nodes in order.
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(proto)
    model.topological_sort()
    # Intermediate type annotations can be stale after conversion; they are optional, so drop them
    # and let shape inference (part of validation) recompute them.
    del model.model.graph.value_info[:]
    return model.model
