"""Keras weights <-> the packed layout the kernels stream.

Keras stores ``kernel`` (I, 3H) and ``recurrent_kernel`` (H, 3H) with gate-major columns [z | r | h].
At batch 1 a step is a weight-streaming GEMV, so the kernels read a blocked, gate-interleaved copy made
once at ``set_weights`` time:

    packed[n, k, g, v] = W[k, g*H + n*V + v]      (zero where n*V + v >= H)

shape (NB, K, G, V) with NB = ceil(H/V). For one block of V units the inner loop over k reads one
contiguous run of G*V values: the z, r and candidate columns of those units, so all gates come out
of one pass, each as one SIMD vector, and the gate math can run in the product's epilogue.
SIMD targets (V > 1) use this layout for both implementations: implementation 1 and 2 compute the same
column dot products, summed over k in the same order, and differ only in their dropout masks, which the
kernel applies per gate. With V = 1 (CUDA, one unit per warp), implementation 1 keeps one contiguous row
of K values per gate and unit: (G, H, K, 1).
The kernel and recurrent kernel may be stored as float16 for a float32 cell (``weight_dtype``); the
layout is the same (V stays the float32 SIMD width: V halves are one half-width load, widened in registers).
Or as int8 (``weight_dtype="int8"``, float32 cells): each Keras column (one output unit of one gate) is quantized
symmetrically, ``q = round(w / s)`` in [-127, 127] with ``s = max_k |w[k, col]| / 127``; the same layout holds
``q``, and the scales are packed like the bias as ``weight_scale`` (2, 3, Hp): row 0 the kernel's, row 1 the
recurrent kernel's. The kernel sums ``x * float(q)`` over k and multiplies by ``s`` once, after the sum.
Bias is packed as (2, 3, Hp): row 0 the input bias, row 1 the recurrent bias (zeros unless reset_after).
"""

from __future__ import annotations

import numpy as np

from .buffers import aligned_empty

__all__ = ["pack_matrix", "unpack_matrix", "pack_bias", "unpack_bias", "layout", "check_storable", "quantize_int8",
           "dequantize_int8", "int8_error_bound", "INT8_LEVELS", "storage_matrices", "scales_packed",
           "computed_matrices", "keras_matrices"]

INT8_LEVELS = 127  # symmetric: -127..127 (-128 unused, so negating a weight never saturates)


def layout(config, lanes: int) -> dict:
    """Which gates each packed weight holds, and whether they are interleaved.

    Returns ``{name: (source, gates, fused)}``: ``source`` is "kernel" or "recurrent_kernel", ``gates`` a
    tuple of gate indices (0=z, 1=r, 2=h), ``fused`` True for the gate-interleaved (NB, K, G, V) layout
    (implementation 2, and every SIMD target), False for the gate-major (G, NB, K, V) layout that
    implementation 1 keeps at ``lanes == 1`` (one contiguous stream per gate product). With
    reset_after=False the candidate's recurrent columns are a separate array, read in the second phase.
    """
    fused = config.implementation == 2 or lanes > 1
    out = {"kernel_packed": ("kernel", (0, 1, 2), fused)}
    if config.reset_after:
        out["recurrent_packed"] = ("recurrent_kernel", (0, 1, 2), fused)
    else:
        out["recurrent_packed"] = ("recurrent_kernel", (0, 1), fused)
        out["candidate_packed"] = ("recurrent_kernel", (2,), fused)
    return out


def packed_shape(depth: int, units: int, lanes: int, gates, fused: bool) -> tuple:
    nb = -(-units // lanes)
    return (nb, depth, len(gates), lanes) if fused else (len(gates), nb, depth, lanes)


def pack_matrix(w: np.ndarray, units: int, lanes: int, dtype, gates=(0, 1, 2), fused=True) -> np.ndarray:
    """(K, 3H) Keras matrix -> packed (NB, K, G, V) if ``fused`` else (G, NB, K, V), 64-byte aligned."""
    k = w.shape[0]
    nb = -(-units // lanes)
    padded = np.zeros((k, len(gates), nb * lanes), dtype=dtype)
    padded[:, :, :units] = w.reshape(k, 3, units)[:, list(gates)]
    blocked = padded.reshape(k, len(gates), nb, lanes)
    out = aligned_empty(packed_shape(k, units, lanes, gates, fused), dtype)
    out[...] = blocked.transpose(2, 0, 1, 3) if fused else blocked.transpose(1, 2, 0, 3)
    return out


def unpack_matrix(packed: np.ndarray, units: int, fused=True) -> np.ndarray:
    """Inverse of :func:`pack_matrix`: returns (K, G*H) for the packed gates."""
    blocked = packed.transpose(1, 2, 0, 3) if fused else packed.transpose(2, 0, 1, 3)
    k, g, nb, lanes = blocked.shape
    return blocked.reshape(k, g, nb * lanes)[:, :, :units].reshape(k, g * units)


def pack_bias(bias: np.ndarray | None, units: int, lanes: int, dtype) -> np.ndarray:
    """Keras bias ((3H,), (2, 3H) or None) -> (2, 3, Hp) packed."""
    nb = -(-units // lanes)
    out = aligned_empty((2, 3, nb * lanes), dtype)
    out[...] = 0
    if bias is not None:
        rows = np.reshape(bias, (-1, 3, units))
        out[: rows.shape[0], :, :units] = rows
    return out


def unpack_bias(packed: np.ndarray, units: int, reset_after: bool) -> np.ndarray:
    rows = packed[:, :, :units].reshape(2, 3 * units)
    return rows.copy() if reset_after else rows[0].copy()


def keras_matrices(kernel, recurrent_kernel, weight_scale, units: int, dtype) -> list:
    """Unpacked stored matrices ``kernel`` (I, 3H) and ``recurrent_kernel`` (H, 3H) -> the Keras-layout weights the
    kernel multiplies by, in ``dtype``: int8 ones dequantized with the packed column scales ``weight_scale``
    (2, 3, Hp; None for float storage), float16 ones widened (the inverse of :func:`storage_matrices` up to the
    storage's rounding)."""
    if weight_scale is not None:
        scales = unpack_bias(weight_scale, units, True)  # (2, 3H), laid out like the bias
        kernel = dequantize_int8(kernel, scales[0], dtype)
        recurrent_kernel = dequantize_int8(recurrent_kernel, scales[1], dtype)
    return [np.asarray(kernel).astype(dtype), np.asarray(recurrent_kernel).astype(dtype)]


def check_storable(weight_dtype, matrices: dict) -> None:
    """Refuse weights the storage dtype cannot hold (ValueError naming the matrix; nothing is changed).

    float16: finite |w| > 65504 would be stored as inf (smaller values round to nearest, below 6e-8 to zero, as
    float16 does; inf and NaN stay as they are). int8: every weight must be finite (a column's scale is its
    largest |w|, so one inf or NaN would wipe out the whole column). ``matrices``: ``{name: array}``.
    """
    dt = np.dtype(weight_dtype)
    if dt == np.int8:
        for name, w in matrices.items():
            bad = ~np.isfinite(np.asarray(w))
            if bad.any():
                k, col = (int(i) for i in np.argwhere(bad)[0])
                raise ValueError(f"`weight_dtype`='int8': the {name} holds {np.asarray(w)[k, col]} at [{k}, {col}]; "
                                 "int8 storage needs finite weights (keep weight_dtype='float32' for these weights)")
        return
    if dt != np.float16:
        return
    top = float(np.finfo(dt).max)
    for name, w in matrices.items():
        w = np.asarray(w)
        finite = np.abs(w[np.isfinite(w)])
        peak = float(finite.max()) if finite.size else 0.0
        if peak > top:
            raise ValueError(f"`weight_dtype`='float16': the {name} holds {peak:.6g}, beyond the largest float16 "
                             f"({top:.6g}); keep weight_dtype='float32' for these weights")


def quantize_int8(w: np.ndarray) -> tuple:
    """Symmetric per-column int8 quantization of a (K, N) matrix (N = 3H Keras columns: one output unit of one gate).

    Returns ``(q, scale)``: ``q`` (K, N) int8 in [-127, 127] and ``scale`` (N,) float32 with
    ``scale = max_k |w[k, n]| / 127`` and ``q = round(w / scale)`` (an all-zero column: scale 0, q 0). The
    dequantized weight ``float32(q) * scale`` is within ``scale / 2`` of ``w`` (plus float32 rounding).
    """
    w = np.asarray(w, np.float64)
    scale = (np.max(np.abs(w), axis=0, initial=0.0) / INT8_LEVELS).astype(np.float32)
    safe = np.where(scale > 0, scale.astype(np.float64), 1.0)
    q = np.clip(np.rint(w / safe), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, dtype="float32") -> np.ndarray:
    """``float(q) * scale`` per column: the weights an int8-storage kernel multiplies by (up to where the scale is
    applied: after the sum over k in the kernel, per product here)."""
    return (np.asarray(q).astype(dtype) * np.asarray(scale, dtype)).astype(dtype)


def int8_error_bound(kernel, recurrent_kernel, x, h) -> np.ndarray:
    """How far int8 storage can move each pre-activation of one step: (B, 3H), gate-major columns [z | r | h].

    Each stored weight is within ``s / 2`` of the float32 one (``s`` its column's scale, see :func:`quantize_int8`),
    so the pre-activation of column ``c`` moves by at most ``(s_K[c] ||x||_1 + s_R[c] ||h||_1) / 2``, plus float32
    rounding. ``x`` (B, I), ``h`` (B, H). For the candidate of ``reset_after=False`` the recurrent product reads
    ``r * h``, whose 1-norm is at most ``||h||_1`` when the recurrent activation maps into [0, 1].
    """
    s_k, s_r = quantize_int8(kernel)[1].astype(np.float64), quantize_int8(recurrent_kernel)[1].astype(np.float64)
    x1 = np.abs(np.asarray(x, np.float64)).sum(axis=1, keepdims=True)
    h1 = np.abs(np.asarray(h, np.float64)).sum(axis=1, keepdims=True)
    return 0.5 * (x1 * s_k + h1 * s_r)


def pack_weights(config, kernel, recurrent_kernel, bias, lanes: int, weight_dtype=None) -> dict:
    """All packed arrays a step kernel takes, by parameter name, in the kernel's argument order (see :func:`layout`).

    ``weight_dtype``: storage dtype of the kernel and recurrent kernel arrays (None: ``config.dtype``; "float16"
    rounds them to nearest half; "int8" quantizes them per column, see :func:`quantize_int8`, and adds
    ``weight_scale`` (2, 3, Hp) float32 after the bias); the bias stays in ``config.dtype``.
    """
    wdt, sources, scales = storage_matrices(config, kernel, recurrent_kernel, weight_dtype)
    out = {name: pack_matrix(sources[src], config.units, lanes, wdt, gates, fused)
           for name, (src, gates, fused) in layout(config, lanes).items()}
    if config.use_bias:
        out["bias_packed"] = pack_bias(bias, config.units, lanes, config.dtype)
    if scales is not None:
        out["weight_scale"] = scales_packed(scales, config, lanes)
    return out


def storage_matrices(config, kernel, recurrent_kernel, weight_dtype=None) -> tuple:
    """The two Keras weight matrices as they are stored for ``weight_dtype``, before packing (shared by the step
    and the sequence kernels' packers).

    Returns ``(dtype, {"kernel": (I, 3H), "recurrent_kernel": (H, 3H)}, scales)``: ``dtype`` the storage dtype
    (None: ``config.dtype``); the matrices unchanged for a float dtype (the packer rounds them to it), quantized
    to int8 per column for "int8" (:func:`quantize_int8`), and then ``scales`` (2, 3H) float32, row 0 the
    kernel's and row 1 the recurrent kernel's column scales (None otherwise). Weights the dtype cannot hold are
    refused first (:func:`check_storable`).
    """
    sources = {"kernel": kernel, "recurrent_kernel": recurrent_kernel}
    wdt = np.dtype(config.dtype if weight_dtype is None else weight_dtype).name
    check_storable(wdt, sources)
    if wdt != "int8":
        return wdt, sources, None
    quantized = {name: quantize_int8(w) for name, w in sources.items()}
    scales = np.stack([quantized["kernel"][1], quantized["recurrent_kernel"][1]])  # (2, 3H)
    return wdt, {name: q for name, (q, _) in quantized.items()}, scales


def computed_matrices(config, kernel, recurrent_kernel, weight_dtype=None) -> tuple:
    """``(kernel, recurrent_kernel)`` as a kernel with ``weight_dtype`` storage multiplies by them, in
    ``config.dtype``: unchanged for the cell dtype, rounded through float16, or int8-dequantized
    (:func:`dequantize_int8`; the kernel applies the scale after the sum, so equal up to float rounding).
    What a reference or an exporter with one weight dtype (ONNX) must use to compute what the kernel computes."""
    wdt, stored, scales = storage_matrices(config, kernel, recurrent_kernel, weight_dtype)
    names, dt = ("kernel", "recurrent_kernel"), config.dtype
    if scales is not None:
        return tuple(dequantize_int8(stored[n], scales[row], dt) for row, n in enumerate(names))
    return tuple(np.asarray(stored[n]).astype(wdt).astype(dt) for n in names)


def scales_packed(scales: np.ndarray, config, lanes: int) -> np.ndarray:
    """(2, 3H) column scales -> ``weight_scale`` (2, 3, Hp) in the cell dtype, laid out like the bias (padding
    units: scale 0)."""
    return pack_bias(scales, config.units, lanes, config.dtype)
