"""The one source of truth for what a GRU step computes.

``GRUConfig`` holds the Keras v1 ``GRUCell`` arguments that change the math of a step (not the
initializers/regularizers, which only change the weights). Kernels, caches, tuning records and exported
artifacts are all keyed by it, so two cells with equal configs share compiled code.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

from . import activations

__all__ = ["GRUConfig", "StepSpec", "WeightStorage", "check_positive_int", "check_weight_dtype"]

_DTYPES = ("float32", "float64")
# Storage dtypes of the packed kernel and recurrent kernel, per cell dtype (the arithmetic stays the cell dtype).
WEIGHT_DTYPES = {"float32": ("float32", "float16", "int8"), "float64": ("float64",)}


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise naming ``name`` (bools and floats are refused, as Keras does)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Received an invalid value for argument `{name}`, expected a positive integer, "
                        f"got {value!r} of type {type(value).__name__}.")
    if value <= 0:
        raise ValueError(f"Received an invalid value for argument `{name}`, expected a positive integer, "
                         f"got {value}.")
    return int(value)


def _rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float in [0, 1], received {value!r} of type {type(value).__name__}")
    # Keras clamps silently: min(1, max(0, rate)).
    return float(min(1.0, max(0.0, float(value))))


def _dtype(value) -> str:
    import numpy as np  # noqa: PLC0415

    if isinstance(value, dict):  # Keras 2.21 may serialize a DTypePolicy
        value = value.get("config", {}).get("name", value)
    try:
        name = np.dtype(value).name
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise ValueError(f"`dtype` must be one of {_DTYPES}, received {value!r}")
    return name


def check_weight_dtype(dtype: str, value) -> str:
    """The storage dtype of the packed kernel/recurrent kernel for a cell of ``dtype`` (None: ``dtype`` itself).

    "float16" (float32 cells only) stores the two weight matrices as IEEE half and widens each element to
    float32 before its multiply-add: half the bytes a batch-1 step streams, float32 accumulation and gate math.
    "int8" (float32 cells only) stores them quantized, symmetric per output unit and gate (one float32 scale per
    Keras column, see :func:`tvm_gru.runtime.packing.quantize_int8`): a quarter of the bytes; each int8 is widened
    to float32 in the product's inner loop, the sum over k is multiplied by the column's scale once.
    """
    import numpy as np  # noqa: PLC0415

    if value is None:
        return dtype
    try:
        name = np.dtype(value).name if not isinstance(value, bool) else None
    except TypeError:
        name = None
    allowed = WEIGHT_DTYPES[dtype]
    if name not in allowed:
        raise ValueError(f"`weight_dtype` must be None or one of {allowed} for a {dtype} cell, received {value!r}")
    return name


@dataclass(frozen=True)
class GRUConfig:
    """What one GRU step computes (Keras v1 ``GRUCell`` semantics).

    Attributes
    ----------
    units : int
        H, the state width.
    activation, recurrent_activation : str
        Canonical activation names (g for the candidate, f for the z and r gates).
    use_bias : bool
    reset_after : bool
        False (v1 default): ``hh = g(x K_h + b_h + (r*h) R_h)``; True: ``g(x K_h + b_h + r*(h R_h + rb_h))``.
    implementation : int
        1 = per-gate products, 2 = fused products. ``recurrent_dropout > 0`` forces 1, as in Keras.
    dropout, recurrent_dropout : float
        Rates in [0, 1] (clamped like Keras).
    dtype : str
        "float32" or "float64".
    """

    units: int
    activation: str = "tanh"
    recurrent_activation: str = "hard_sigmoid"
    use_bias: bool = True
    reset_after: bool = False
    implementation: int = 1
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    dtype: str = "float32"

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "units", check_positive_int("units", self.units))
        set_(self, "activation", activations.canonical_name(self.activation))
        set_(self, "recurrent_activation", activations.canonical_name(self.recurrent_activation))
        for flag in ("use_bias", "reset_after"):
            if not isinstance(getattr(self, flag), (bool, numbers.Integral)):
                raise TypeError(f"`{flag}` must be a bool, received {getattr(self, flag)!r}")
            set_(self, flag, bool(getattr(self, flag)))
        impl = self.implementation
        if isinstance(impl, bool) or not isinstance(impl, numbers.Integral):
            raise TypeError(f"`implementation` must be 1 or 2, received {impl!r}")
        set_(self, "dropout", _rate("dropout", self.dropout))
        set_(self, "recurrent_dropout", _rate("recurrent_dropout", self.recurrent_dropout))
        # Keras: any value other than 1 takes the fused path; recurrent dropout forces per-gate products.
        set_(self, "implementation", 1 if (impl == 1 or self.recurrent_dropout != 0) else 2)
        set_(self, "dtype", _dtype(self.dtype))

    @property
    def bias_shape(self) -> tuple:
        """Keras bias shape: (3H,) or (2, 3H) with ``reset_after``; () when there is no bias."""
        if not self.use_bias:
            return ()
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def to_dict(self) -> dict:
        return asdict(self)


class WeightStorage:
    """The ``weight_dtype`` of a kernel spec (a frozen dataclass with ``config`` and ``weight_dtype`` fields):
    checked, and normalised to None for the cell dtype, so equal kernels compare and hash equal (and keep the
    keys they had before narrow storage existed)."""

    def __post_init__(self):
        name = check_weight_dtype(self.config.dtype, self.weight_dtype)
        object.__setattr__(self, "weight_dtype", None if name == self.config.dtype else name)

    @property
    def storage_dtype(self) -> str:
        """The dtype the packed kernel and recurrent kernel are stored in."""
        return self.weight_dtype or self.config.dtype


@dataclass(frozen=True)
class StepSpec(WeightStorage):
    """Everything a compiled step kernel is specialised on.

    Attributes
    ----------
    config : GRUConfig
    batch, input_dim : int
        Static shapes B and I (kernels are compiled per batch size).
    input_masks, recurrent_masks : int
        Number of dropout mask tensors the kernel multiplies in (0 = inference kernel).
        impl 1: 3 and 3 (one per gate); impl 2: 1 input mask shared by the gates, no recurrent mask.
    lanes : int
        Width V of the packed weight blocks (the SIMD width of the target, in elements of the cell dtype).
    weight_dtype : str or None
        Storage dtype of the packed kernel and recurrent kernel; None (normalised from ``config.dtype``) means
        the cell dtype. "float16": half-precision storage, widened to float32 before each multiply-add.
        "int8": per-column symmetric int8 storage plus float32 scales (``weight_scale``), widened to float32 in
        the inner loop and scaled once per product.
    """

    config: GRUConfig
    batch: int
    input_dim: int
    input_masks: int = 0
    recurrent_masks: int = 0
    lanes: int = 8
    weight_dtype: str | None = None

    @property
    def blocks(self) -> int:
        """NB = ceil(H / V), the number of packed column blocks."""
        return -(-self.config.units // self.lanes)

    def key(self) -> str:
        """A stable text key (used for the compile cache and artifact metadata)."""
        c = self.config
        return (f"H{c.units}-I{self.input_dim}-B{self.batch}-{c.dtype}-{c.activation}-{c.recurrent_activation}"
                f"-bias{int(c.use_bias)}-ra{int(c.reset_after)}-impl{c.implementation}"
                f"-mx{self.input_masks}-mh{self.recurrent_masks}-V{self.lanes}"
                + (f"-w{self.weight_dtype}" if self.weight_dtype else ""))  # unchanged key for the default
