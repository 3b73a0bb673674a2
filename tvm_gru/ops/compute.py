"""The GRU step as a TVM tensor expression: what is computed, with no target and no schedule.

Stages are named so schedules can find them with ``sch.get_sblock(name)``:

``x_proj`` (B, NB, 3, V) / ``x_proj_z``, ``x_proj_r``, ``x_proj_h``
    input products: one reduction with a gate axis over the gate-interleaved packing (every SIMD target,
    both implementations), or one per gate (implementation 1 with the V = 1 gate-major packing).
``h_proj`` (B, NB, G, V) / ``h_proj_z``, ``h_proj_r`` [, ``h_proj_h``]
    recurrent products for the gates that do not depend on r (all three when ``reset_after``).
``gates`` (reset_after=False only)
    (B, 3, Hp): z, r and the candidate's input pre-activation ``x K_h + b_h``.
``rh``, ``hh_proj`` / ``hh_proj_h`` (reset_after=False only)
    ``r * h`` and its product with ``R_h``: the candidate needs r before its recurrent product.
``h_new``
    (B, H) the new state ``z * h + (1 - z) * hh`` (z, r inline when ``reset_after``).

Weights arrive packed (see :mod:`tvm_gru.runtime.packing`), in ``spec.storage_dtype``: the cell dtype, or float16 for a
float32 cell (each weight widened to float32 before its multiply-add; accumulation, bias and gate math float32), or
int8 (widened the same way; each product ``sum_k x * float(q)`` is multiplied by its column's ``weight_scale`` once,
in the epilogue that reads it).
"""

from __future__ import annotations

from tvm import te, tirx

from ..runtime import packing
from . import activations
from .config import StepSpec

__all__ = ["step_tensors", "step_primfunc", "ANCHORS"]

# Blocks whose loops the schedules hang the products under: phase 1, then phase 2.
ANCHORS = {False: ("gates", "h_new"), True: ("h_new",)}
GATES = ("z", "r", "h")


def _products(name, vec, weight, gates, spec, fused, scale=None):
    """Products ``sum_k vec(g, b, k) * W_g[k, u]`` of the packed ``weight`` for each gate g in ``gates``.

    ``fused``: one reduction over the gate-interleaved (NB, K, G, V) weight, with a gate axis, so a
    schedule can keep all gates of a unit block in registers over one pass of k. ``vec`` may depend on the
    gate (implementation 1 applies a different dropout mask per gate); ``gates`` are consecutive.
    Otherwise (gate-major (G, NB, K, V) weight): one reduction per gate.
    ``scale``: ``scale(g, u)`` multiplies the finished product of gate g at unit u (int8 storage), or None.

    Returns ``get(g, b, u)``, reading the product of gate ``g`` at unit ``u``.
    """
    batch, nb, lanes = spec.batch, spec.blocks, spec.lanes
    depth = weight.shape[1] if fused else weight.shape[2]
    slot = {g: i for i, g in enumerate(gates)}
    dt = spec.config.dtype
    # Stored narrower than the cell dtype (float16, int8): widen each element before its multiply-add, so the products
    # accumulate in the cell dtype. Same dtype: no cast at all (the default's TE, and so its tuning records'
    # structural hashes, are unchanged).
    w = (lambda *i: weight[i]) if weight.dtype == dt else (lambda *i: weight[i].astype(dt))
    if fused:
        k = te.reduce_axis((0, depth), "k")
        prod = te.compute((batch, nb, len(gates), lanes),
                          lambda b, n, g, v: te.sum(vec(gates[0] + g, b, k) * w(n, k, g, v), axis=k),
                          name=name)
        return _scaled(lambda g, b, u: prod[b, u // lanes, slot[g], u % lanes], scale)

    def one_gate(g):
        k = te.reduce_axis((0, depth), "k")
        return te.compute((batch, nb, lanes),
                          lambda b, n, v: te.sum(vec(g, b, k) * w(slot[g], n, k, v), axis=k),
                          name=f"{name}_{GATES[g]}")

    stages = {g: one_gate(g) for g in gates}
    return _scaled(lambda g, b, u: stages[g][b, u // lanes, u % lanes], scale)


def _scaled(get, scale):
    return get if scale is None else (lambda g, b, u: get(g, b, u) * scale(g, u))


def step_tensors(spec: StepSpec):
    """Build the TE graph of one step.

    Parameters
    ----------
    spec : StepSpec

    Returns
    -------
    params : list of te.Tensor
        ``x`` (B, I), ``h`` (B, H), the packed weights of :func:`tvm_gru.runtime.packing.layout` in its order
        (``kernel_packed``, ``recurrent_packed`` [, ``candidate_packed``]), ``bias_packed`` (2, 3, Hp) if
        ``use_bias``, ``weight_scale`` (2, 3, Hp) if the weights are stored as int8, ``input_mask`` (Mx, B, I)
        if ``input_masks``, ``recurrent_mask`` (3, B, H) if ``recurrent_masks``, and last the output ``h_new``
        (B, H).
    """
    c = spec.config
    B, I, H, V, NB = spec.batch, spec.input_dim, c.units, spec.lanes, spec.blocks
    dt = c.dtype
    one = tirx.const(1.0, dt)
    x = te.placeholder((B, I), dt, "x")
    h = te.placeholder((B, H), dt, "h")
    depth = {"kernel": I, "recurrent_kernel": H}
    packed = packing.layout(c, V)
    weights = {name: te.placeholder(packing.packed_shape(depth[src], H, V, gates, fused), spec.storage_dtype, name)
               for name, (src, gates, fused) in packed.items()}
    bias = te.placeholder((2, 3, NB * V), dt, "bias_packed") if c.use_bias else None
    scales = te.placeholder((2, 3, NB * V), dt, "weight_scale") if spec.storage_dtype == "int8" else None
    mx = te.placeholder((spec.input_masks, B, I), dt, "input_mask") if spec.input_masks else None
    mh = te.placeholder((3, B, H), dt, "recurrent_mask") if spec.recurrent_masks else None
    params = [x, h, *weights.values()] + [t for t in (bias, scales, mx, mh) if t is not None]

    def x_in(g, b, k):  # impl 2 has one input mask shared by the gates; ``g`` may be an expression
        return x[b, k] * mx[g if spec.input_masks > 1 else 0, b, k] if mx is not None else x[b, k]

    def h_in(g, b, k):
        return h[b, k] * mh[g, b, k] if mh is not None else h[b, k]

    def add(a, b):
        return a if b is None else a + b

    f = activations.get(c.recurrent_activation).te
    act = activations.get(c.activation).te
    fused = packed["kernel_packed"][2]  # all packed weights share one layout
    def scale(row):  # row 0: the kernel's column scales, row 1: the recurrent kernel's
        return None if scales is None else (lambda g, u: scales[row, g, u])

    xp = _products("x_proj", x_in, weights["kernel_packed"], (0, 1, 2), spec, fused, scale(0))
    h_gates = (0, 1, 2) if c.reset_after else (0, 1)
    hp = _products("h_proj", h_in, weights["recurrent_packed"], h_gates, spec, fused, scale(1))

    def x_pre(g, b, u):  # x K_g + b_g
        return add(xp(g, b, u), bias[0, g, u] if bias is not None else None)

    def h_pre(g, b, u):  # h R_g (+ rb_g when reset_after)
        return add(hp(g, b, u), bias[1, g, u] if (bias is not None and c.reset_after) else None)

    if c.reset_after:
        def blend(b, u):
            r = f(x_pre(1, b, u) + h_pre(1, b, u))
            hh = act(x_pre(2, b, u) + r * h_pre(2, b, u))
            # z is used twice: bind it once (TE has no CSE, and a duplicated Let is ill-formed TIR)
            return activations.let(f(x_pre(0, b, u) + h_pre(0, b, u)), lambda z: z * h[b, u] + (one - z) * hh)

        return params + [te.compute((B, H), blend, name="h_new")]

    # reset_after=False: z, r and the candidate's input part first; r * h feeds the second product.
    gates = te.compute(
        (B, 3, NB * V),
        lambda b, g, u: tirx.if_then_else(
            g == 0, f(x_pre(0, b, u) + h_pre(0, b, u)),
            tirx.if_then_else(g == 1, f(x_pre(1, b, u) + h_pre(1, b, u)), x_pre(2, b, u))),
        name="gates")
    rh = te.compute((B, H), lambda b, u: gates[b, 1, u] * h_in(2, b, u), name="rh")
    hh_proj = _products("hh_proj", lambda g, b, k: rh[b, k], weights["candidate_packed"], (2,), spec, fused,
                        scale(1))

    def blend_before(b, u):
        z = gates[b, 0, u]
        hh = act(gates[b, 2, u] + hh_proj(2, b, u))
        return z * h[b, u] + (one - z) * hh

    return params + [te.compute((B, H), blend_before, name="h_new")]


# Arguments that come straight from users: numpy gives no 64-byte alignment guarantee (measured: a misaligned
# array segfaulted a kernel compiled with TVM's default assumption), so these are declared element-aligned.
# The packed weights are ours and always 64-byte aligned.
USER_ARGS = ("x", "h", "input_mask", "recurrent_mask", "h_new")


def unaligned(func: tirx.PrimFunc, names=USER_ARGS) -> tirx.PrimFunc:
    """Return ``func`` with the named buffer parameters declared element-aligned.

    TVM 0.27 has no Python API to change a parameter buffer's ``data_alignment`` (``specialize`` refuses),
    so the signature is rewritten in TVMScript and parsed back; the body is untouched.
    """
    import re  # noqa: PLC0415

    import tvm  # noqa: PLC0415

    pattern = re.compile(r'(\b(?:%s)): T\.Buffer\(\(([^)]*)\), "(\w+)"\)' % "|".join(names))
    src = pattern.sub(lambda m: f'{m[1]}: T.Buffer(({m[2]}), "{m[3]}", align={tvm.DataType(m[3]).bits // 8})',
                      func.script())
    return tvm.script.from_source(src)


def step_primfunc(spec: StepSpec) -> tirx.PrimFunc:
    """The unscheduled TIR PrimFunc of one step (argument order as in :func:`step_tensors`)."""
    return unaligned(te.create_prim_func(step_tensors(spec))).with_attr("global_symbol", "main")
