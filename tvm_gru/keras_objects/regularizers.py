"""Weight regularizers with tf_keras 2.x names, formulas and serialization.

A regularizer maps a weight array to a scalar penalty
``l1 * sum(|w|) + l2 * sum(w ** 2)``.

As in tf_keras, factors are stored rounded to float32 (Keras'
``backend.cast_to_floatx``), so ``L2(0.01).get_config()`` is
``{"l2": 0.009999999776482582}``, exactly what tf_keras writes.  The penalty
itself is returned as a Python float computed in float64.
"""

import math
import numbers

import numpy as np

from .registry import Registry

__all__ = ["Regularizer", "L1", "L2", "L1L2", "l1", "l2", "l1_l2", "get", "serialize", "deserialize"]


def _check_factor(name, value):
    """Validate a penalty factor and round it to float32 like tf_keras.

    tf_keras itself only rejects non-numbers, NaN and inf; negative factors
    are rejected here as well because they turn the penalty into a reward.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a float, got {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative finite number, got {value!r}.")
    return float(np.float32(value))


def _as_float64(w):
    return np.asarray(w, dtype=np.float64)


class Regularizer:
    """Base class: ``reg(w) -> float`` penalty; the base penalty is 0."""

    def __call__(self, w):
        """Penalty for weight ``w`` (array_like of any shape) as a Python float."""
        return 0.0

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


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w ** 2)``.

    Note the class defaults are 0.0; the name ``"l1_l2"`` (and the ``l1_l2``
    function) default to 0.01 for both, as in tf_keras.
    """

    def __init__(self, l1=0.0, l2=0.0):
        # None means "no penalty", as in tf_keras.
        self.l1 = _check_factor("l1", 0.0 if l1 is None else l1)
        self.l2 = _check_factor("l2", 0.0 if l2 is None else l2)

    def __call__(self, w):
        w = _as_float64(w)
        penalty = 0.0
        if self.l1:
            penalty += self.l1 * float(np.sum(np.abs(w)))
        if self.l2:
            penalty += self.l2 * float(np.sum(np.square(w)))
        return penalty

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(Regularizer):
    """``l1 * sum(|w|)``.  ``l`` is accepted as an old name for ``l1``."""

    def __init__(self, l1=0.01, **kwargs):
        l1 = kwargs.pop("l", l1)  # backwards-compatible keyword, as in tf_keras
        if kwargs:
            raise TypeError(f"Argument(s) not recognized: {kwargs}")
        self.l1 = _check_factor("l1", 0.01 if l1 is None else l1)

    def __call__(self, w):
        return self.l1 * float(np.sum(np.abs(_as_float64(w))))

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """``l2 * sum(w ** 2)``.  ``l`` is accepted as an old name for ``l2``."""

    def __init__(self, l2=0.01, **kwargs):
        l2 = kwargs.pop("l", l2)
        if kwargs:
            raise TypeError(f"Argument(s) not recognized: {kwargs}")
        self.l2 = _check_factor("l2", 0.01 if l2 is None else l2)

    def __call__(self, w):
        return self.l2 * float(np.sum(np.square(_as_float64(w))))

    def get_config(self):
        return {"l2": self.l2}


def l1_l2(l1=0.01, l2=0.01):
    """``L1L2`` with tf_keras' function defaults (0.01 each)."""
    return L1L2(l1=l1, l2=l2)


# Lower-case aliases, as tf_keras' module has them.
l1 = L1
l2 = L2

# Name -> factory taking the config as keyword arguments.
ALL_OBJECTS = {
    "Regularizer": Regularizer,
    "L1": L1,
    "L2": L2,
    "L1L2": L1L2,
    "l1": L1,
    "l2": L2,
    "l1_l2": l1_l2,
}


_REGISTRY = Registry("regularizer", Regularizer, ALL_OBJECTS, "keras.regularizers")
get = _REGISTRY.get
deserialize = _REGISTRY.deserialize
serialize = _REGISTRY.serialize
