"""The whole-sequence GRU kernel: what it computes, its signature, its weights and its gate math (compiled by
:mod:`tvm_gru.build.sequence`).

One compiled function runs a whole sequence (any length: the time extent ``T`` is a symbolic variable):

1. the input projection of every step as one GEMM over ``T*B`` rows, into a workspace
   ``xp[t, b, n, g, :] = x[t, b] K_g[:, block n] + b_g`` (for ``reset_after`` the recurrent biases of
   z and r are folded in here too: they are plain sums);
2. the recurrence, a loop over t in TIR (``te.scan`` cannot be lowered in TVM 0.27), where each step
   streams only the recurrent weights, which stay in the cores' caches for the whole sequence.

This module holds the "what": :class:`SequenceSpec` (everything a kernel is specialised on), the packed
weight layout, the parameter list, and the gate math as TIR expressions. How the loops are tiled,
vectorised and split over cores is the schedule's business (:mod:`tvm_gru.schedules`).

The weight matrices may be stored as float16 or int8 (``SequenceSpec.weight_dtype``, packed by the step kernel's
mechanism: :func:`tvm_gru.runtime.packing.storage_matrices`); everything else stays in the cell dtype.

Masking follows Keras ``backend.rnn``: a masked step keeps the previous state; its output is the previous
*output* (zeros before the first unmasked step), or zeros with ``zero_output_for_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.buffers import aligned_empty
from ..runtime.packing import pack_bias, pack_matrix, scales_packed, storage_matrices
from . import activations
from .config import GRUConfig, WeightStorage

__all__ = ["SequenceSpec", "pack_sequence_weights", "GateMath", "padded_recurrent_mask"]


@dataclass(frozen=True)
class SequenceSpec(WeightStorage):
    """Everything a compiled sequence kernel is specialised on (the sequence length is not: it is symbolic).

    Attributes
    ----------
    config : GRUConfig
    batch, input_dim : int
        Static B and I.
    lanes : int
        V, the packed block width (SIMD width of the target in elements).
    time_major : bool
        ``x`` is (T, B, I) and ``sequence`` (T, B, H); otherwise (B, T, I) and (B, T, H) (Keras default).
    masked : bool
        The kernel takes a uint8 ``mask`` (B, T) (or (T, B) when time_major); nonzero = step is valid.
    zero_output_for_mask : bool
        Masked steps output zeros instead of the previous output (Keras RNN ``zero_output_for_mask``).
    return_sequences : bool
        The kernel writes every step's output to ``sequence``; otherwise only ``last``.
    input_masks, recurrent_masks : int
        Training dropout masks: 0, 1 (implementation 2) or 3 input masks (M, B, I); 0 or 3 recurrent masks
        (3, B, Hp) (padded to the packed width).
    weight_dtype : str or None
        Storage dtype of the packed kernel and recurrent kernel (as :class:`~tvm_gru.ops.config.StepSpec`'s):
        None (normalised from ``config.dtype``) the cell dtype; "float16" half precision, widened to float32 as
        each weight is read; "int8" symmetric per Keras column (:func:`tvm_gru.runtime.packing.quantize_int8`),
        widened the same way, each finished product multiplied by its column's scale (``weight_scale``) once.
        Inputs, states, bias, accumulation and gate math stay in the cell dtype.

    Notes
    -----
    The kernel's arguments, in order: ``x``, ``h0`` (B, H), [``mask``], the packed weights of
    :meth:`weight_shapes` in their order (``weight_scale`` last when the weights are int8), [``input_mask``],
    [``recurrent_mask``], [``sequence``] (outputs of every step, in processing order), ``last`` (B, H) (the last
    output), ``state`` (B, H) (the final state), and ``reverse`` (int: nonzero processes the sequence backwards, as
    ``go_backwards``). User arrays need only be element-aligned; ``T`` is read from ``x``.
    """

    config: GRUConfig
    batch: int
    input_dim: int
    lanes: int = 8
    time_major: bool = False
    masked: bool = False
    zero_output_for_mask: bool = False
    return_sequences: bool = True
    input_masks: int = 0
    recurrent_masks: int = 0
    weight_dtype: str | None = None

    @property
    def blocks(self) -> int:
        """NB = ceil(H / V)."""
        return -(-self.config.units // self.lanes)

    @property
    def padded_units(self) -> int:
        return self.blocks * self.lanes

    def key(self) -> str:
        c = self.config
        return (f"seq-H{c.units}-I{self.input_dim}-B{self.batch}-{c.dtype}-{c.activation}-{c.recurrent_activation}"
                f"-bias{int(c.use_bias)}-ra{int(c.reset_after)}-V{self.lanes}-tm{int(self.time_major)}"
                f"-m{int(self.masked)}{int(self.zero_output_for_mask)}-rs{int(self.return_sequences)}"
                f"-mx{self.input_masks}-mh{self.recurrent_masks}"
                + (f"-w{self.weight_dtype}" if self.weight_dtype else ""))  # the default's keys (records) unchanged

    def weight_shapes(self) -> dict:
        """Packed weight parameter shapes by name, in kernel order (see :func:`pack_sequence_weights`)."""
        return {name: shape for name, (shape, _) in self.weight_specs().items()}

    def weight_specs(self) -> dict:
        """``{name: (shape, dtype)}`` of the packed weight parameters, in kernel order: the matrices in
        :attr:`storage_dtype`, the bias and (int8) the column scales ``weight_scale`` (2, 3, Hp) in the cell
        dtype."""
        c, nb, v, i, h = self.config, self.blocks, self.lanes, self.input_dim, self.config.units
        wdt, dt = self.storage_dtype, c.dtype
        out = {"kernel_packed": ((nb, i, 3, v), wdt)}
        if c.reset_after:
            out["recurrent_packed"] = ((nb, h, 3, v), wdt)
        else:
            out["recurrent_packed"] = ((nb, h, 2, v), wdt)
            out["candidate_packed"] = ((h, nb, v), wdt)
        if c.use_bias:
            out["bias_packed"] = ((2, 3, nb * v), dt)
        if wdt == "int8":
            out["weight_scale"] = ((2, 3, nb * v), dt)
        return out


def pack_sequence_weights(config: GRUConfig, kernel, recurrent_kernel, bias, lanes: int, weight_dtype=None) -> dict:
    """Keras weights -> the packed arrays of a sequence kernel, by parameter name, in kernel order (64-byte aligned).

    ``kernel_packed[n, k, g, v] = kernel[k, g*H + n*V + v]`` (NB, I, 3, V): one block of V units of all
    three gates is one contiguous run per k, for the GEMM and the z/r(/h) recurrent products alike.
    With reset_after=False the candidate's recurrent columns are a separate array ``R_h`` (H, NB, V), row-major
    as Keras holds it (zero-padded to Hp columns): its product is split over the *input* units, so each part
    reads whole contiguous rows. The bias is (2, 3, Hp): input row, recurrent row.

    ``weight_dtype`` (None: ``config.dtype``; see :class:`SequenceSpec`): the storage dtype of the three matrix
    arrays, prepared by the step kernel's packer (:func:`tvm_gru.runtime.packing.storage_matrices`: float16
    rounded to nearest, int8 quantized per Keras column); with "int8" the column scales follow the bias as
    ``weight_scale`` (2, 3, Hp), row 0 the kernel's, row 1 the recurrent kernel's (the same arrays a step kernel
    takes). ValueError naming the matrix when the weights do not fit the dtype (nothing is packed).
    """
    h, dt = config.units, config.dtype
    wdt, sources, scales = storage_matrices(config, kernel, recurrent_kernel, weight_dtype)
    recurrent = sources["recurrent_kernel"]
    out = {"kernel_packed": pack_matrix(sources["kernel"], h, lanes, wdt, (0, 1, 2), fused=True)}
    if config.reset_after:
        out["recurrent_packed"] = pack_matrix(recurrent, h, lanes, wdt, (0, 1, 2), fused=True)
    else:
        out["recurrent_packed"] = pack_matrix(recurrent, h, lanes, wdt, (0, 1), fused=True)
        nb = -(-h // lanes)
        cand = aligned_empty((h, nb, lanes), wdt)
        cand[...] = 0
        cand.reshape(h, nb * lanes)[:, :h] = np.asarray(recurrent)[:, 2 * h:]
        out["candidate_packed"] = cand
    if config.use_bias:
        out["bias_packed"] = pack_bias(bias, h, lanes, dt)
    if scales is not None:
        out["weight_scale"] = scales_packed(scales, config, lanes)
    return out


class GateMath:
    """The element-wise GRU math of one step as TIR expressions (shared by every schedule).

    All arguments are scalar PrimExprs of the kernel dtype; schedules vectorise the loops around them.
    """

    def __init__(self, config: GRUConfig):
        from tvm import tirx  # noqa: PLC0415

        self._tirx = tirx
        self.f = activations.get(config.recurrent_activation).te
        self.g = activations.get(config.activation).te
        self.one = tirx.const(1.0, config.dtype)
        self.zero = tirx.const(0.0, config.dtype)

    def gate(self, x_pre, h_pre):
        """z or r: ``f(x K + b + h R (+ rb))``."""
        return self.f(x_pre + h_pre)

    def candidate_after(self, x_pre, r, h_rec):
        """reset_after=True: ``g(x K_h + b_h + r * (h R_h + rb_h))``."""
        return self.g(x_pre + r * h_rec)

    def candidate_before(self, x_pre, rh_rec):
        """reset_after=False: ``g(x K_h + b_h + (r*h) R_h)``."""
        return self.g(x_pre + rh_rec)

    def blend(self, z, h, hh):
        """``z * h + (1 - z) * hh`` (z keeps the old state), with z bound once."""
        return activations.let(z, lambda zv: zv * h + (self.one - zv) * hh)

    def keep_if_masked(self, valid, new, old):
        """``new`` where the step is valid (uint8 mask != 0), else ``old``."""
        return self._tirx.Select(valid != self._tirx.const(0, "uint8"), new, old)


def padded_recurrent_mask(mask: np.ndarray, lanes: int) -> np.ndarray:
    """(3, B, H) recurrent dropout masks -> (3, B, Hp) zero-padded (the kernel reads whole blocks)."""
    g, b, h = mask.shape
    hp = -(-h // lanes) * lanes
    out = np.zeros((g, b, hp), mask.dtype)
    out[:, :, :h] = mask
    return out
