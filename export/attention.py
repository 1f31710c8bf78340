"""Attention without score matrices on ONNX Runtime CPU: each ONNX ``Attention`` node of a UNet graph becomes
ONNX Runtime's ``com.microsoft.MultiHeadAttention``, whose CPU kernel runs float32 attention as FlashAttention
(MLAS: Dao et al. 2022, Algorithm 1, tiled to the L2 cache) when there is no mask, bias or KV cache, as in a
diffusers UNet's self- and cross-attention.

Why: torch.export writes ``scaled_dot_product_attention`` as one ONNX ``Attention`` node at opset >= 23
(below it, as MatMul + Softmax + MatMul). ONNX Runtime 1.32's CPU kernel for either materialises the
(B, heads, S, S) scores: at SD-1.5's 64x64 latents, guidance batch 2, 8 heads, S = 4096, that is 1 GiB of
float32 per self-attention, a main reason why the exported SD pipeline
peaked at 8.6 GB where diffusers eager stays at 5.7 GB. One such node alone: +1057 MiB peak RSS for
``Attention``, +31 MiB for ``MultiHeadAttention`` (benchmarks/results/attention).

onnxruntime's own optimizer (``onnxruntime.transformers.optimizer.optimize_model(model_type="unet")``) does this
fusion for graphs of the TorchScript exporter only: on torch.export graphs its patterns find nothing, and on
TorchScript ones it fails under numpy 2 (``int()`` of a 1-element array in fusion_attention_unet.py); its
packed-QKV layout is not implemented on CPU either. Starting from the single ``Attention`` node is simpler
than matching either decomposition: the rewrite below only changes layouts.

    Attention(q, k, v)   q (B, N, S, H), k, v (B, N, L, H)        -> (B, N, S, H)
    becomes
    MultiHeadAttention(q', k', v', num_heads=N)  q' (B, S, N*H) ... -> (B, S, N*H) -> (B, N, S, H)

with Transpose + Reshape around it; the graph's own Transpose/Reshape before and after are their inverses, and
ONNX Runtime's transpose optimizer cancels the pairs when it loads the graph. Weights are untouched, so the
rewritten graph reads the same external weights file as the portable one.

Torch-side helper of export/: imports onnx (not torch).
"""

MHA_DOMAIN = "com.microsoft"


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _fusable(node, shapes: dict):
    """The number of heads when ``node`` is an ONNX Attention of plain BNSH inputs that MultiHeadAttention computes
    the same way (no mask, past, causal masking, softcap or extra outputs; as many K/V heads as Q heads), else None."""
    if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.input) != 3 or len(node.output) != 1 or not all(node.input):
        return None
    if _attr(node, "is_causal", 0) or _attr(node, "softcap", 0.0) or _attr(node, "qk_matmul_output_mode", 0):
        return None
    q, k, v = (shapes.get(name) for name in node.input)
    if not all(s is not None and len(s) == 4 for s in (q, k, v)):
        return None
    heads = q[1]
    if not isinstance(heads, int) or heads <= 0 or k[1] != heads or v[1] != heads:
        return None
    if not isinstance(q[3], int) or not isinstance(v[3], int):  # MultiHeadAttention needs the head sizes
        return None
    return heads


def _shapes(proto) -> dict:
    """Static or symbolic dims of every value in ``proto`` (ints where known, strings or None elsewhere)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    out = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = value.type.tensor_type
        if t.HasField("shape"):
            out[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return out


def group_norm_as_instance_norm(graph, shapes: dict) -> int:
    """Rewrite each ``GroupNormalization`` (opset 21: per-channel scale and bias) in ``graph``, in place, as the
    InstanceNormalization over (B, G, C/G*H*W) that torch.export writes below opset 21; returns how many.

    ONNX Runtime 1.32 has no CPU kernel for GroupNormalization-21 and runs it as its function body (two
    ReduceMeans, casts, ~10 passes over the tensor); InstanceNormalization is one kernel. This keeps the graph
    ONNX Runtime runs the same as the opset-18 export everywhere except attention."""
    import onnx
    from onnx import helper

    nodes, count, axes = [], 0, {}
    for node in graph.node:
        rank = len(shapes.get(node.input[0]) or []) if node.input else 0
        if node.op_type != "GroupNormalization" or node.domain not in ("", "ai.onnx") or len(node.input) != 3 or rank < 3:
            nodes.append(node)
            continue
        x, scale, bias = node.input
        # scale, bias (C,) -> (C, 1, ...) against x (B, C, *spatial): (C, 1, 1) for images, (C, 1) for diffusers
        # Attention's group norm over (B, C, H*W)
        if rank not in axes:
            axes[rank] = helper.make_tensor(f"gn_axes_rank{rank}", onnx.TensorProto.INT64, [rank - 2],
                                            list(range(1, rank - 1)))
        channel_axes = axes[rank]
        groups, eps = int(_attr(node, "num_groups")), float(_attr(node, "epsilon", 1e-5))
        tag = f"{node.name or node.output[0]}_in"
        ones = helper.make_tensor(f"{tag}_ones", onnx.TensorProto.FLOAT, [groups], [1.0] * groups)
        zeros = helper.make_tensor(f"{tag}_zeros", onnx.TensorProto.FLOAT, [groups], [0.0] * groups)
        groups_shape = helper.make_tensor(f"{tag}_groups", onnx.TensorProto.INT64, [3], [0, groups, -1])
        graph.initializer.extend([ones, zeros, groups_shape])
        nodes += [  # x (B, C, H, W) -> (B, G, C/G*H*W), normalised per group -> (B, C, H, W) * scale + bias
            helper.make_node("Shape", [x], [f"{tag}_shape"], name=f"{tag}_shape"),
            helper.make_node("Reshape", [x, groups_shape.name], [f"{tag}_grouped"], name=f"{tag}_group"),
            helper.make_node("InstanceNormalization", [f"{tag}_grouped", ones.name, zeros.name], [f"{tag}_normed"],
                             name=tag, epsilon=eps),
            helper.make_node("Reshape", [f"{tag}_normed", f"{tag}_shape"], [f"{tag}_back"], name=f"{tag}_ungroup"),
            helper.make_node("Unsqueeze", [scale, channel_axes.name], [f"{tag}_scale"], name=f"{tag}_scale"),
            helper.make_node("Unsqueeze", [bias, channel_axes.name], [f"{tag}_bias"], name=f"{tag}_bias"),
            helper.make_node("Mul", [f"{tag}_back", f"{tag}_scale"], [f"{tag}_scaled"], name=f"{tag}_mul"),
            helper.make_node("Add", [f"{tag}_scaled", f"{tag}_bias"], [node.output[0]], name=f"{tag}_add"),
        ]
        count += 1
    if count:
        graph.initializer.extend(axes.values())
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def fuse_attention(proto):
    """Return ``(proto_with_mha, report)``: a copy of ``proto`` with every fusable ONNX ``Attention`` node replaced
    by ``com.microsoft.MultiHeadAttention``. ``report``: {"op", "fused", "left"} (nodes rewritten, nodes left as
    they were). ``proto`` may hold external-data references; they are kept as they are."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    shapes = _shapes(out)
    graph = out.graph
    nodes, fused, left = [], 0, 0
    bnsh_to_bsd = helper.make_tensor("mha_shape_bsd", onnx.TensorProto.INT64, [3], [0, 0, -1])
    for node in graph.node:
        heads = _fusable(node, shapes) if node.op_type == "Attention" else None
        if heads is None:
            left += node.op_type == "Attention"
            nodes.append(node)
            continue
        tag = f"{node.name or node.output[0]}_mha"
        flat = []
        for name in node.input:  # (B, N, S, H) -> (B, S, N, H) -> (B, S, N*H)
            t = f"{tag}_{len(flat)}_bsnh"
            nodes.append(helper.make_node("Transpose", [name], [t], name=f"{t}_transpose", perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [t, bnsh_to_bsd.name], [f"{t}_flat"], name=f"{t}_reshape"))
            flat.append(f"{t}_flat")
        scale = _attr(node, "scale")
        kwargs = {"num_heads": heads, **({"scale": float(scale)} if scale is not None else {})}
        nodes.append(helper.make_node("MultiHeadAttention", flat, [f"{tag}_bsd"], name=tag, domain=MHA_DOMAIN, **kwargs))
        v_head = shapes[node.input[2]][3]
        split = helper.make_tensor(f"{tag}_shape_bsnh", onnx.TensorProto.INT64, [4], [0, 0, heads, v_head])
        graph.initializer.append(split)
        # (B, S, N*H) -> (B, S, N, H) -> (B, N, S, H), the Attention node's output as it was
        nodes.append(helper.make_node("Reshape", [f"{tag}_bsd", split.name], [f"{tag}_bsnh"], name=f"{tag}_split"))
        nodes.append(helper.make_node("Transpose", [f"{tag}_bsnh"], [node.output[0]], name=f"{tag}_transpose",
                                      perm=[0, 2, 1, 3]))
        fused += 1
    if fused:
        graph.initializer.append(bnsh_to_bsd)
        del graph.node[:]
        graph.node.extend(nodes)
        if not any(o.domain == MHA_DOMAIN for o in out.opset_import):
            out.opset_import.append(helper.make_opsetid(MHA_DOMAIN, 1))
    return out, {"op": f"{MHA_DOMAIN}.MultiHeadAttention", "fused": fused, "left": left}


def ort_cpu_graph(proto):
    """``(graph, report)``: ``proto`` as ONNX Runtime's CPU provider runs it best: attention fused
    (:func:`fuse_attention`) and GroupNormalization as InstanceNormalization (:func:`group_norm_as_instance_norm`).
    ``report`` also counts the group norms rewritten."""
    out, report = fuse_attention(proto)
    report["group_norms_as_instance_norm"] = group_norm_as_instance_norm(out.graph, _shapes(proto))
    return out, report
