"""Graph hygiene for every exported ONNX file: simplify, check, annotate, save.

Every graph goes through `finish_graph` after `torch.onnx.export`, in this order:

1. **Constant folding**: first `CastLike(constant, x)` is folded by `fold_castlike` (the exporter's Conv
   translation builds its zero bias as `Expand(CastLike(0, x), [C])`, which no folder touches because `x`
   is a graph value), then with onnxsim (`onnxsim.simplify`): it folds the frozen-weight arithmetic the backward
   pass leaves behind (flipped/transposed adjoint kernels, weight norms) into initializers and drops dead
   nodes. Chosen over ONNX Runtime's offline "basic" optimisation because that one stamps ORT-private opset
   imports (`com.microsoft`, `ai.onnx.training`, ...) into the saved model, which TensorRT's parser rejects,
   and over onnxscript's optimiser (already run by the dynamo exporter) because that one only folds small
   tensors. When onnxsim is not installed the exporter keeps the onnxscript-optimised graph and records
   `simplifier: none` in the metadata (it still passes every check below).
   A Conv/ConvTranspose bias that folded to all zeros is removed (`drop_zero_bias`).
2. **Constants as initializers**: any `Constant` node left is turned into an initializer (TensorRT wants the
   axes of Squeeze/Unsqueeze/Reduce* and the shapes of fixed-size graphs as initializers).
3. **Shape inference** (strict, with data propagation) and `onnx.checker.check_model(full_check=True)`.
4. **Op policy**: no ScatterND/ScatterElements/Scatter (the backward of in-graph slice assignment; slow and
   badly supported on TensorRT), no training ops, no non-standard domains; the axes inputs listed in
   `_STATIC_INPUTS` must be initializers (all shape-like inputs when the graph has fixed shapes).
5. **Metadata**: a subset of the manifest in `metadata_props`, so a lone `.onnx` file still says what it is.
"""

from __future__ import annotations

import collections
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# Ops whose presence means the export went wrong (see docs/design.md "How a backward graph becomes ONNX").
FORBIDDEN_OPS = frozenset({"ScatterND", "ScatterElements", "Scatter", "Gradient", "Momentum", "Adagrad", "Adam"})
ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})

# op type -> input indices that must be initializers in every graph (axes, steps) ...
_STATIC_INPUTS: dict[str, tuple[int, ...]] = {
    "Squeeze": (1,), "Unsqueeze": (1,), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,),
    "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL2": (1,), "ReduceSumSquare": (1,), "Split": (1,),
    "Slice": (3, 4), "Pad": (1, 2, 3), "TopK": (1,),
}
# ... and, in graphs whose shapes are all fixed (step graphs), these shape inputs too.
_STATIC_INPUTS_FIXED: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Slice": (1, 2, 3, 4), "Resize": (1, 2, 3),
}

MAX_INLINE_BYTES = 2**31 - 1  # protobuf limit: above it weights must go to external data


class GraphPolicyError(RuntimeError):
    """An exported graph breaks the op policy (forbidden op, dynamic axes, foreign domain)."""


def has_onnxsim() -> bool:
    """Whether the onnxsim constant folder is importable."""
    return importlib.util.find_spec("onnxsim") is not None


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Count of each op type in the main graph, most frequent first (ties by name).

    Args:
        model: the model.

    Returns:
        `{op_type: count}` in descending count order.
    """
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Constant-fold and clean `model` with onnxsim when it is installed.

    Args:
        model: the exported model.

    Returns:
        `(model, simplifier)` where `simplifier` names the tool used ("onnxsim <version>" or "none").

    Raises:
        RuntimeError: onnxsim ran but could not validate its result.
    """
    if not has_onnxsim():
        return model, "none"
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        msg = "onnxsim could not validate the simplified graph"
        raise RuntimeError(msg)
    return simplified, f"onnxsim {getattr(onnxsim, '__version__', '?')}"


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Replace every `Constant` node of the main graph by an initializer of the same name (in place).

    Args:
        model: the model to edit.

    Returns:
        The number of nodes replaced.
    """
    graph, keep, moved = model.graph, [], 0
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ALLOWED_DOMAINS:
            keep.append(node)
            continue
        graph.initializer.append(numpy_helper.from_array(_constant_value(node), node.output[0]))
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named value, after shape inference (inputs, outputs, value_info, initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def fold_castlike(model: onnx.ModelProto) -> int:
    """Replace `CastLike(initializer, x)` by an initializer of x's element type (in place).

    Args:
        model: the model to edit.

    Returns:
        The number of nodes folded.
    """
    inits = {t.name: t for t in model.graph.initializer}
    if not any(n.op_type == "CastLike" and n.input[0] in inits for n in model.graph.node):
        return 0
    types, keep, folded = _elem_types(model), [], 0
    for node in model.graph.node:
        target = types.get(node.input[1], 0) if node.op_type == "CastLike" else 0
        if node.op_type != "CastLike" or node.input[0] not in inits or not target:
            keep.append(node)
            continue
        value = numpy_helper.to_array(inits[node.input[0]])
        dtype = onnx.helper.tensor_dtype_to_np_dtype(target)
        model.graph.initializer.append(numpy_helper.from_array(value.astype(dtype), node.output[0]))
        folded += 1
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return folded


def drop_zero_bias(model: onnx.ModelProto) -> int:
    """Remove the bias input of Conv/ConvTranspose nodes whose bias is an all-zero initializer (in place).

    Args:
        model: the model to edit.

    Returns:
        The number of biases removed.
    """
    inits = {t.name: t for t in model.graph.initializer}
    dropped = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) == 3 and node.input[2] in inits:
            if not numpy_helper.to_array(inits[node.input[2]]).any():
                del node.input[2]
                dropped += 1
    return dropped


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    value = onnx.helper.get_attribute_value(attr)
    dtypes = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if attr.name not in dtypes:
        msg = f"Constant node {node.name!r} has unsupported attribute {attr.name!r}"
        raise GraphPolicyError(msg)
    return np.asarray(value, dtype=dtypes[attr.name])


def check_policy(model: onnx.ModelProto, *, fixed_shapes: bool) -> None:
    """Enforce the op policy (module docstring, step 4).

    Args:
        model: the finished model.
        fixed_shapes: the graph has no symbolic dimension, so every shape input must be an initializer.

    Raises:
        GraphPolicyError: naming the first offending node and why.
    """
    inits = {i.name for i in model.graph.initializer}
    static = dict(_STATIC_INPUTS)
    if fixed_shapes:
        for op, idx in _STATIC_INPUTS_FIXED.items():
            static[op] = tuple(sorted(set(static.get(op, ())) | set(idx)))
    for node in model.graph.node:
        where = f"node {node.name or '?'} ({node.op_type})"
        if node.domain not in ALLOWED_DOMAINS:
            msg = f"{where} is in domain {node.domain!r}; only standard ONNX ops are allowed"
            raise GraphPolicyError(msg)
        if node.op_type in FORBIDDEN_OPS:
            msg = f"{where} is forbidden in exported graphs ({', '.join(sorted(FORBIDDEN_OPS))})"
            raise GraphPolicyError(msg)
        for i in static.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] and node.input[i] not in inits:
                msg = f"{where} input {i} ({node.input[i]!r}) must be an initializer (TensorRT needs static axes)"
                raise GraphPolicyError(msg)


def set_metadata(model: onnx.ModelProto, meta: Mapping[str, str]) -> None:
    """Replace the model's `metadata_props` with `meta` (in place; keys sorted for stable files)."""
    del model.metadata_props[:]
    for k in sorted(meta):
        model.metadata_props.add(key=k, value=str(meta[k]))


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's `metadata_props` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def finish_graph(model: onnx.ModelProto, *, meta: Mapping[str, str], fixed_shapes: bool) -> onnx.ModelProto:
    """Run the whole hygiene pipeline (module docstring) and return the finished model.

    Args:
        model: the model straight from `torch.onnx.export`.
        meta: metadata to store in `metadata_props` (the simplifier used is added as `simplifier`).
        fixed_shapes: whether every dimension is static (step graphs).

    Returns:
        The simplified, checked, annotated model.

    Raises:
        GraphPolicyError: the graph breaks the op policy.
        onnx.checker.ValidationError: the graph is not valid ONNX.
    """
    constants_to_initializers(model)
    fold_castlike(model)
    model, simplifier = simplify(model)
    constants_to_initializers(model)
    drop_zero_bias(model)
    _drop_unused_initializers(model)
    del model.graph.value_info[:]  # re-inferred below from the final graph
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(model, full_check=True)
    check_policy(model, fixed_shapes=fixed_shapes)
    set_metadata(model, {**meta, "simplifier": simplifier})
    return model


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write `model` with its weights inside the file; external data only past the 2 GB protobuf limit.

    Args:
        model: the model.
        path: destination `.onnx` path.

    Returns:
        The written path.
    """
    path = Path(path)
    external = model.ByteSize() > MAX_INLINE_BYTES
    onnx.save_model(model, str(path), save_as_external_data=external,
                    location=f"{path.name}.data" if external else None)
    return path


def io_signature(model: onnx.ModelProto) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Inputs and outputs (name, shape with symbolic dims as names, dtype) as the manifest lists them.

    Args:
        model: the model.

    Returns:
        `(inputs, outputs)`, each a list of `{"name", "shape", "dtype"}` dicts.
    """
    inits = {i.name for i in model.graph.initializer}

    def spec(v: onnx.ValueInfoProto) -> dict[str, object]:
        t = v.type.tensor_type
        shape: list[object] = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    ins = [spec(v) for v in model.graph.input if v.name not in inits]
    return ins, [spec(v) for v in model.graph.output]
