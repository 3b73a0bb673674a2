"""Weight constraints with tf_keras 2.x names, formulas and serialization.

A constraint maps a weight array to a projected array of the same shape and
dtype, applied after each optimizer update.  Formulas follow tf_keras
exactly, including its ``epsilon = 1e-7`` in the denominators, so e.g. a
column already inside the MaxNorm ball is scaled by ``norm / (norm + 1e-7)``.
"""


import numpy as np

from .registry import Registry

__all__ = [
    "Constraint",
    "MaxNorm",
    "NonNeg",
    "UnitNorm",
    "MinMaxNorm",
    "RadialConstraint",
    "get",
    "serialize",
    "deserialize",
]

# tf_keras backend.epsilon() default.
EPSILON = 1e-7


def _as_float_array(w):
    """Return ``w`` as a float array, keeping float dtypes and using float32 otherwise."""
    w = np.asarray(w)
    return w if np.issubdtype(w.dtype, np.floating) else w.astype(np.float32)


def _axis(axis):
    # Keras configs may hold a list of axes (e.g. [0, 1, 2] for conv kernels);
    # numpy needs a tuple.
    return tuple(axis) if isinstance(axis, (list, tuple)) else axis


def _norms(w, axis):
    """L2 norms of ``w`` along ``axis``, kept as broadcastable dims."""
    return np.sqrt(np.sum(np.square(w), axis=_axis(axis), keepdims=True))


def _clip(x, min_value, max_value):
    # backend.clip: a max below the min is raised to the min.
    if max_value < min_value:
        max_value = min_value
    return np.clip(x, min_value, max_value)


class Constraint:
    """Base class: ``c(w) -> projected w``; the base returns ``w`` unchanged."""

    def __call__(self, w):
        """Project ``w`` (np.ndarray of any shape); same shape and dtype out."""
        return w

    def get_config(self):
        """Constructor arguments as a JSON-safe dict."""
        return {}

    @classmethod
    def from_config(cls, config):
        """Build an instance from ``get_config()`` output."""
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class MaxNorm(Constraint):
    """Rescale slices whose L2 norm along ``axis`` exceeds ``max_value``.

    ``w * clip(n, 0, max_value) / (eps + n)`` with ``n = ||w||`` along
    ``axis``.  For a Dense/GRU kernel ``(input_dim, units)``, ``axis=0``
    constrains each unit's incoming weight vector.
    """

    def __init__(self, max_value=2, axis=0):
        self.max_value = max_value
        self.axis = axis

    def __call__(self, w):
        w = _as_float_array(w)
        norms = _norms(w, self.axis)
        desired = _clip(norms, 0, self.max_value)
        return (w * (desired / (EPSILON + norms))).astype(w.dtype)

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Zero out negative entries: ``w * (w >= 0)``."""

    def __call__(self, w):
        w = np.asarray(w)
        return w * (w >= 0).astype(w.dtype)


class UnitNorm(Constraint):
    """Scale slices along ``axis`` to unit L2 norm: ``w / (eps + ||w||)``."""

    def __init__(self, axis=0):
        self.axis = axis

    def __call__(self, w):
        w = _as_float_array(w)
        return (w / (EPSILON + _norms(w, self.axis))).astype(w.dtype)

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Pull slice norms along ``axis`` into ``[min_value, max_value]``.

    ``desired = rate * clip(n, min_value, max_value) + (1 - rate) * n`` and
    ``w * desired / (eps + n)``; ``rate=1`` enforces the bounds strictly.
    """

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value = min_value
        self.max_value = max_value
        self.rate = rate
        self.axis = axis

    def __call__(self, w):
        w = _as_float_array(w)
        norms = _norms(w, self.axis)
        desired = self.rate * _clip(norms, self.min_value, self.max_value) + (1 - self.rate) * norms
        return (w * (desired / (EPSILON + norms))).astype(w.dtype)

    def get_config(self):
        return {
            "min_value": self.min_value,
            "max_value": self.max_value,
            "rate": self.rate,
            "axis": self.axis,
        }


class RadialConstraint(Constraint):
    """Make each ``(height, width)`` conv kernel constant on square rings.

    ``w`` has shape ``(height, width, channels, kernels)`` (square kernels).
    Reproduces tf_keras' code, not its docstring: with ``s = height // 2``,
    the centre (1x1 for odd, 2x2 for even sizes) takes ``k[s-1, s-1]`` and
    the ``i``-th ring outwards takes ``k[s+i, s+i]`` (``i`` from 0 for odd
    sizes, from 1 for even ones).
    """

    def __call__(self, w):
        w = np.asarray(w)
        if w.ndim != 4:
            raise ValueError(f"The weight tensor must have rank 4. Received weight tensor with shape: {w.shape}")
        out = np.empty_like(w)
        for c in range(w.shape[2]):
            for k in range(w.shape[3]):
                out[:, :, c, k] = self._kernel_constraint(w[:, :, c, k])
        return out

    @staticmethod
    def _kernel_constraint(kernel):
        size = kernel.shape[0]
        start = size // 2
        centre = 1 if size % 2 else 2
        new = np.full((centre, centre), kernel[start - 1, start - 1], dtype=kernel.dtype)
        for i in range(0 if size % 2 else 1, start):
            new = np.pad(new, 1, constant_values=kernel[start + i, start + i])
        return new


# Name -> class: class names, snake_case names and tf_keras' legacy aliases.
ALL_OBJECTS = {
    "Constraint": Constraint,
    "MaxNorm": MaxNorm,
    "NonNeg": NonNeg,
    "UnitNorm": UnitNorm,
    "MinMaxNorm": MinMaxNorm,
    "RadialConstraint": RadialConstraint,
    "max_norm": MaxNorm,
    "non_neg": NonNeg,
    "unit_norm": UnitNorm,
    "min_max_norm": MinMaxNorm,
    "radial_constraint": RadialConstraint,
    "maxnorm": MaxNorm,
    "nonneg": NonNeg,
    "unitnorm": UnitNorm,
}

# Aliases usable as constructors, as in tf_keras (constraints.max_norm(2.0)).
max_norm = MaxNorm
non_neg = NonNeg
unit_norm = UnitNorm
min_max_norm = MinMaxNorm
radial_constraint = RadialConstraint


_REGISTRY = Registry("constraint", Constraint, ALL_OBJECTS, "keras.constraints")
get = _REGISTRY.get
deserialize = _REGISTRY.deserialize
serialize = _REGISTRY.serialize
