"""The scheduled GRU step as TVM IR, for use inside your own TVM programs.

:func:`irmodule` returns an ``IRModule`` holding one scheduled TIR ``PrimFunc`` (the same kernel a
:class:`tvm_gru.GRUCell` runs), and :func:`packed_weights` the weight arrays it takes, in argument order.
Call it from Relax with ``call_tir`` (this example runs as ``tests/deploy/test_export.py::test_relax_call_tir``)::

    import numpy as np, tvm, tvm_gru
    from tvm import relax

    cell = tvm_gru.GRUCell(64, reset_after=True, recurrent_activation="sigmoid")
    cell.build((1, 32))
    step = tvm_gru.primfunc(cell, batch=1)             # scheduled PrimFunc (x, h, *weights, h_new)
    weights = tvm_gru.packed_weights(cell)             # {"kernel_packed": array, ...} in argument order

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32), "float32"))
    h = relax.Var("h", relax.TensorType((1, 64), "float32"))
    ws = [relax.Var(n, relax.TensorType(a.shape, "float32")) for n, a in weights.items()]
    with bb.function("main", [x, h, *ws]):
        gru = bb.add_func(step, "gru_step")
        with bb.dataflow():
            h1 = bb.emit(relax.call_tir(gru, [x, h, *ws], relax.TensorType((1, 64), "float32")))
            h2 = bb.emit(relax.call_tir(gru, [x, h1, *ws], relax.TensorType((1, 64), "float32")))
            out = bb.emit_output(h2)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=cell.target), tvm.cpu())
    args = [np.zeros((1, 32), "float32"), np.zeros((1, 64), "float32"), *weights.values()]
    h_after_two_steps = vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()

The argument order is ``x (B, I), h (B, H), *packed weights, h_new (B, H)`` (the output last, destination
passing); the packed weight layout is described in :mod:`tvm_gru.runtime.packing`.
"""

from __future__ import annotations

import tvm

from .. import targets
from ..ops.config import GRUConfig, StepSpec
from ..runtime.packing import pack_weights
from .step import scheduled_module

__all__ = ["primfunc", "irmodule", "packed_weights", "step_spec"]


def step_spec(cell_or_config, batch: int = 1, input_dim: int | None = None, target=None) -> StepSpec:
    """The :class:`StepSpec` of an inference step of a built cell, or of a :class:`GRUConfig` + ``input_dim``."""
    target = targets.resolve(target)
    if isinstance(cell_or_config, GRUConfig):
        config = cell_or_config
        if input_dim is None:
            raise ValueError("`input_dim` is required when passing a GRUConfig")
    else:
        config = cell_or_config.config
        input_dim = input_dim if input_dim is not None else cell_or_config.input_dim
        if input_dim is None:
            raise ValueError("the cell is not built: call cell.build(input_shape) or pass `input_dim`")
    return StepSpec(config, batch=batch, input_dim=input_dim, lanes=targets.lanes(target, config.dtype),
                    weight_dtype=getattr(cell_or_config, "weight_dtype", None))  # a cell's storage dtype


def irmodule(cell_or_config, batch: int = 1, input_dim: int | None = None, target=None, name: str = "gru_step"):
    """The scheduled step for ``target`` as an ``IRModule`` with one PrimFunc named ``name``.

    Parameters
    ----------
    cell_or_config : GRUCell or GRUConfig
        A built cell (its ``input_dim`` is used) or a config (then pass ``input_dim``).
    batch : int
        The static batch size B.
    input_dim : int, optional
        I; defaults to the cell's.
    target : None, str, dict or tvm.target.Target
        As for :func:`tvm_gru.targets.resolve` ("host", "x86", "aarch64", "cuda", dicts, Targets).
    name : str
        Global symbol of the PrimFunc.

    Returns
    -------
    tvm.IRModule
        ``{name: PrimFunc(x (B, I), h (B, H), *packed weights, h_new (B, H))}``, already scheduled (no
        further scheduling needed before ``tvm.compile``).
    """
    target = targets.resolve(target)
    spec = step_spec(cell_or_config, batch, input_dim, target)
    func = scheduled_module(spec, target)["main"].with_attr("global_symbol", name)
    return tvm.IRModule({name: func})


def primfunc(cell_or_config, batch: int = 1, input_dim: int | None = None, target=None, name: str = "gru_step"):
    """The scheduled step PrimFunc (see :func:`irmodule`)."""
    return irmodule(cell_or_config, batch, input_dim, target, name)[name]


def packed_weights(cell, target=None) -> dict:
    """The built cell's weights packed for ``target``, by parameter name, in the PrimFunc's argument order."""
    if not cell.built:
        raise ValueError("`packed_weights` needs a built cell: call build(input_shape) or set_weights first")
    target = targets.resolve(target)
    weights = cell.get_weights()
    bias = weights[2] if cell.config.use_bias else None
    return pack_weights(cell.config, weights[0], weights[1], bias, targets.lanes(target, cell.config.dtype),
                        cell.weight_dtype)
