"""A graph's inputs and outputs as model.json records them: name, dtype, shape (a symbolic axis by its name).

Its own small module so that export/onnx.py (which writes model.json) and export/validate.py (which checks a
graph against it) both import it without importing each other."""


def io_specs(proto) -> dict:
    """``{"inputs": [...], "outputs": [...]}`` of the ONNX ``proto``, each ``{name, dtype, shape}``."""
    import onnx

    def spec(value):
        t = value.type.tensor_type
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}

    return {"inputs": [spec(v) for v in proto.graph.input], "outputs": [spec(v) for v in proto.graph.output]}
