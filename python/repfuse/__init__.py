"""repfuse: structural re-parameterization of ConvNets, exactly, with proof.

A training-form network (RepVGG, MobileOne, FastViT, RepViT, ... exported to ONNX in
eval mode) is rewritten into its deploy form: every multi-branch conv/BN block becomes
one plain conv. Each rewrite is exact or refused with a reason, and ``fuse`` proves
the result by running the original and the fused model on seeded random inputs.

The engine is the Rust crate ``repfuse`` (weight arithmetic in WGSL through wgpu, or
its CPU reference); this package only moves models in and out of it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple, Union

from ._repfuse import RepfuseError, __version__
from . import _repfuse

__all__ = ["fuse", "verify", "inspect", "RepfuseError", "VerificationError", "__version__"]

#: What a model argument may be: an ``onnx.ModelProto``, ONNX bytes, or a file path.
Model = Union["onnx.ModelProto", bytes, bytearray, memoryview, str, "os.PathLike[str]"]  # noqa: F821


class VerificationError(RepfuseError):
    """The fused model is over tolerance; nothing was returned or written.

    ``report`` holds the whole result (errors per output, per engine, per region).
    """

    def __init__(self, message: str, report: Dict[str, Any]):
        super().__init__(message)
        self.report = report


def _split(model: Any, what: str) -> Tuple[str, Union[bytes, None], str]:
    """(kind, ONNX bytes or None, path): the native module takes bytes or a path."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return "bytes", bytes(model), f"<{what} bytes>.onnx"
    if isinstance(model, (str, os.PathLike)):
        return "path", None, os.fspath(model)
    if hasattr(model, "SerializeToString"):
        return "proto", model.SerializeToString(), f"<{what} ModelProto>.onnx"
    raise TypeError(f"{what} must be an onnx.ModelProto, ONNX bytes or a path, not {type(model).__name__}")


def _deploy_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.deploy{ext or '.onnx'}"


def fuse(
    model: Model,
    *,
    verify: bool = True,
    backend: str = "auto",
    widen_shortcuts: bool = False,
    output: Union[str, "os.PathLike[str]", None] = None,
    compose_cost_limit: float = 1.5,
    f32: bool = False,
    _inject_fault: bool = False,
) -> Tuple[Any, Dict[str, Any]]:
    """Fuse a training-form model into its deploy form.

    Returns ``(fused, report)`` with ``fused`` of the kind given: an
    ``onnx.ModelProto`` for a ModelProto, ``bytes`` for bytes, and for a path the path
    the deploy model was written to (``output``, by default ``<name>.deploy.onnx``
    beside the input; ``.json`` writes repfuse's native graph + safetensors).

    ``report`` is the dict ``repfuse fuse --json`` prints: ``report`` (fused regions,
    refusals with reasons, what is left and why, op counts before/after), ``backend``,
    ``verifications`` (the error per output, per engine) and ``regions``.

    With ``verify`` (the default) the original and the fused model run on seeded random
    inputs (the f64 CPU reference and the ONNX engine) and every fused region runs
    alone; a result over tolerance raises :class:`VerificationError` and nothing is
    returned or written. ``backend`` is ``"auto"``, ``"gpu"`` or ``"cpu"``.
    ``widen_shortcuts`` also absorbs ConvNeXt-style residual shortcuts (exact, more
    FLOPs). ``f32`` writes a float16/bfloat16 model as float32. ``_inject_fault``
    (for testing the verifier) perturbs one fused weight by 1e-3 so that it must fail.

    Raises :class:`RepfuseError` for bad or unsupported input (message names the file,
    node and field). The GIL is released while the engine works.
    """
    kind, data, path = _split(model, "model")
    out = None
    if kind == "path":
        out = os.fspath(output) if output is not None else _deploy_path(path)
    elif output is not None:
        raise ValueError("output= is for a model given as a path; write the returned model yourself")
    fused, doc = _repfuse.fuse(
        data, path, out, verify=verify, backend=backend, widen_shortcuts=widen_shortcuts,
        compose_cost_limit=float(compose_cost_limit), f32=f32, inject_fault=_inject_fault,
    )
    report = json.loads(doc)
    if not report["passed"]:
        raise VerificationError(
            f"the fused model is over tolerance (worst element at {_worst(report):.3g} of its bound); nothing was returned or written", report
        )
    if kind == "path":
        return (output if output is not None else out), report
    if kind == "proto":
        import onnx

        return onnx.load_model_from_string(fused), report
    return fused, report


def _worst(report: Dict[str, Any]) -> float:
    """The largest error over all checks, as a fraction of its bound."""
    ratios = [s["worst_ratio"] for v in report["verifications"] for _, s in v["verification"]["outputs"]]
    ratios += [r["error"]["worst_ratio"] for r in report["regions"] if r.get("error")]
    return max(ratios, default=0.0)


def verify(a: Model, b: Model, *, seed: int = 7) -> Dict[str, Any]:
    """Run two models on the same seeded random inputs and compare every output.

    Returns ``{"passed": bool, "verifications": [{"engine", "verification", "passed"}]}``;
    the f64 CPU reference runs when it can run both graphs, the ONNX engine when both
    are ONNX. Raises :class:`RepfuseError` when the models take different inputs or
    neither engine can run them.
    """
    _, a_data, a_path = _split(a, "first model")
    _, b_data, b_path = _split(b, "second model")
    return json.loads(_repfuse.verify(a_data, a_path, b_data, b_path, seed))


def inspect(model: Model) -> Dict[str, Any]:
    """What ``fuse`` would do, without computing or writing anything.

    Returns ``{"inputs", "outputs", "nodes", "report", "unrunnable_ops"}``, ``report``
    as in :func:`fuse` (fused regions, refusals with reasons, counts).
    """
    _, data, path = _split(model, "model")
    return json.loads(_repfuse.inspect(data, path))
