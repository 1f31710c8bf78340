"""Optional graph cleaning with onnxslim (constant folding, dead-node and shape-op elimination)."""

from diffprune.errors import DiffPruneError


def slim_graph(proto):
    """Return ``(slimmed_proto, report)``; the export's validation then checks the slimmed graph."""
    try:
        import onnxslim
    except ImportError:
        raise DiffPruneError("--slim needs onnxslim, which is not installed: pip install onnxslim.") from None
    before = len(proto.graph.node)
    slimmed = onnxslim.slim(proto)
    return slimmed, {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": before,
                     "nodes_after": len(slimmed.graph.node)}
