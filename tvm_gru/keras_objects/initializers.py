"""Weight initializers with tf_keras 2.x names, formulas and serialization.

Every initializer is called as ``init(shape, dtype="float32", rng=None)`` and
returns a numpy array of that shape and dtype.  Random initializers draw from
``rng`` (a ``np.random.Generator``) when it is given, else from
``np.random.default_rng(self.seed)``; so a seeded initializer returns the same
array on every call, as a seeded tf_keras initializer does.  The values are
not bit-identical to TensorFlow's (its stateless RNG is not reproduced), only
the distributions are.

Random values are drawn in float64 and then cast, so one seed gives the same
numbers (up to rounding) whatever the requested dtype.
"""

import inspect
import math
import numbers

import numpy as np

from .registry import Registry, jsonable

__all__ = [
    "Initializer",
    "Zeros",
    "Ones",
    "Constant",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "GlorotUniform",
    "GlorotNormal",
    "HeNormal",
    "HeUniform",
    "LecunNormal",
    "LecunUniform",
    "Orthogonal",
    "Identity",
    "compute_fans",
    "get",
    "serialize",
    "deserialize",
]

# Standard deviation of a unit normal truncated to [-2, 2]
# (scipy.stats.truncnorm.std(a=-2, b=2)); tf_keras divides by it so that the
# truncated samples end up with the requested standard deviation.
_TRUNCNORM_STD = 0.87962566103423978


def _normalize_shape(shape):
    """Return ``shape`` as a tuple of non-negative Python ints."""
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        dims = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"`shape` must be a tuple of ints, got {shape!r}.") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"`shape` must not have negative dims, got {shape!r}.")
    return dims


def _float_dtype(dtype):
    """Resolve ``dtype`` (None means float32, Keras' floatx) and check it is float."""
    dtype = np.dtype("float32" if dtype is None else dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"Expected a floating point dtype, got {dtype}.")
    return dtype


def compute_fans(shape):
    """Number of input and output units of a weight shape, as tf_keras does.

    Parameters
    ----------
    shape : tuple of int
        ``()`` -> (1, 1); ``(n,)`` -> (n, n); ``(fan_in, fan_out)``;
        conv kernels ``(*receptive_field, in_depth, out_depth)`` multiply
        both fans by the receptive field size.

    Returns
    -------
    (int, int)
        ``(fan_in, fan_out)``.
    """
    shape = _normalize_shape(shape)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _truncated_standard_normal(rng, shape):
    """Standard normal samples with |z| > 2 redrawn (tf.random.truncated_normal)."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z


class Initializer:
    """Base class: ``init(shape, dtype="float32", rng=None) -> np.ndarray``.

    Subclasses implement ``_generate(shape, dtype, rng)`` with an already
    normalized shape tuple, ``np.dtype`` and ``np.random.Generator``.
    """

    seed = None

    def __call__(self, shape, dtype="float32", rng=None):
        """Return a new array of ``shape`` and ``dtype``.

        Parameters
        ----------
        shape : int or tuple of int
            Shape of the weight, e.g. ``(input_dim, 3 * units)`` for a GRU kernel.
        dtype : str or np.dtype, optional
            Output dtype; ``None`` means float32 (Keras' default floatx).
        rng : np.random.Generator or int, optional
            Source of randomness; an int is used as a seed.  If None, a
            generator seeded with ``self.seed`` is made for this call.

        Returns
        -------
        np.ndarray
            Array of shape ``shape`` and dtype ``dtype``.
        """
        shape = _normalize_shape(shape)
        dtype = np.dtype("float32" if dtype is None else dtype)
        if rng is None or isinstance(rng, numbers.Integral):
            rng = np.random.default_rng(self.seed if rng is None else int(rng))
        elif not isinstance(rng, np.random.Generator):
            raise TypeError(f"`rng` must be a np.random.Generator, got {type(rng).__name__}.")
        return self._generate(shape, dtype, rng)

    def _generate(self, shape, dtype, rng):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `_generate(shape, dtype, rng)`."
        )

    def get_config(self):
        """Constructor arguments as a JSON-safe dict (Keras ``get_config``)."""
        return {}

    @classmethod
    def from_config(cls, config):
        """Build an instance from ``get_config()`` output (a ``dtype`` key is ignored)."""
        config = dict(config)
        config.pop("dtype", None)  # tf_keras drops it too
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    """All zeros (any numeric dtype)."""

    def _generate(self, shape, dtype, rng):
        return np.zeros(shape, dtype)


class Ones(Initializer):
    """All ones (any numeric dtype)."""

    def _generate(self, shape, dtype, rng):
        return np.ones(shape, dtype)


class Constant(Initializer):
    """Fill with ``value``.

    Parameters
    ----------
    value : scalar or array_like
        A scalar fills the whole shape; an array with exactly ``prod(shape)``
        elements is reshaped to ``shape`` (as ``tf.constant(value, shape=...)``).
    """

    def __init__(self, value=0):
        self.value = value

    def _generate(self, shape, dtype, rng):
        value = np.asarray(self.value, dtype=dtype)
        if value.size == 1:
            return np.full(shape, value.reshape(()), dtype=dtype)
        if value.size == math.prod(shape):
            return value.reshape(shape).copy()
        raise ValueError(
            f"Constant value with {value.size} elements does not fit shape {shape}."
        )

    def get_config(self):
        return {"value": jsonable(self.value)}


class RandomUniform(Initializer):
    """Uniform on ``[minval, maxval)``; integer dtypes draw integers."""

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval = minval
        self.maxval = maxval
        self.seed = seed

    def _generate(self, shape, dtype, rng):
        if np.issubdtype(dtype, np.integer):
            return rng.integers(self.minval, self.maxval, size=shape).astype(dtype)
        dtype = _float_dtype(dtype)
        return rng.uniform(self.minval, self.maxval, size=shape).astype(dtype)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class RandomNormal(Initializer):
    """Normal with ``mean`` and ``stddev``."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean = mean
        self.stddev = stddev
        self.seed = seed

    def _generate(self, shape, dtype, rng):
        dtype = _float_dtype(dtype)
        return (self.mean + self.stddev * rng.standard_normal(shape)).astype(dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class TruncatedNormal(Initializer):
    """Normal with ``mean``/``stddev``; draws beyond 2 stddev are redrawn.

    ``stddev`` is the standard deviation *before* truncation; the samples'
    own standard deviation is about ``0.8796 * stddev``.
    """

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean = mean
        self.stddev = stddev
        self.seed = seed

    def _generate(self, shape, dtype, rng):
        dtype = _float_dtype(dtype)
        z = _truncated_standard_normal(rng, shape)
        return (self.mean + self.stddev * z).astype(dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class VarianceScaling(Initializer):
    """Scale the variance to the weight's fans (tf_keras ``VarianceScaling``).

    With ``n`` = fan_in, fan_out or their mean (``mode``) and
    ``s = scale / max(1, n)``:

    - ``"truncated_normal"``: truncated normal, stddev ``sqrt(s) / 0.8796...``
      before truncation, so ``sqrt(s)`` after;
    - ``"untruncated_normal"``: normal with stddev ``sqrt(s)``;
    - ``"uniform"``: uniform on ``[-sqrt(3 s), sqrt(3 s)]``.

    ``"normal"`` is accepted as ``"truncated_normal"`` (as tf_keras does).
    """

    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTRIBUTIONS = ("uniform", "truncated_normal", "untruncated_normal")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        if not scale > 0.0:
            raise ValueError(f"`scale` must be a positive float. Received: scale={scale}.")
        if mode not in self._MODES:
            raise ValueError(f"Invalid `mode` argument: {mode!r}. Use one of {self._MODES}.")
        distribution = str(distribution).lower()
        if distribution == "normal":
            distribution = "truncated_normal"
        if distribution not in self._DISTRIBUTIONS:
            raise ValueError(
                f"Invalid `distribution` argument: {distribution!r}. "
                f"Use one of {self._DISTRIBUTIONS}."
            )
        self.scale = scale
        self.mode = mode
        self.distribution = distribution
        self.seed = seed

    def _generate(self, shape, dtype, rng):
        dtype = _float_dtype(dtype)
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        if self.distribution == "truncated_normal":
            stddev = math.sqrt(scale) / _TRUNCNORM_STD
            values = stddev * _truncated_standard_normal(rng, shape)
        elif self.distribution == "untruncated_normal":
            values = math.sqrt(scale) * rng.standard_normal(shape)
        else:
            limit = math.sqrt(3.0 * scale)
            values = rng.uniform(-limit, limit, size=shape)
        return values.astype(dtype)

    def get_config(self):
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            "seed": self.seed,
        }


class _FixedVarianceScaling(VarianceScaling):
    """VarianceScaling preset whose only argument (and config) is ``seed``."""

    _PRESET = {}

    def __init__(self, seed=None):
        super().__init__(seed=seed, **self._PRESET)

    def get_config(self):
        return {"seed": self.seed}


class GlorotUniform(_FixedVarianceScaling):
    """Uniform on ``[-l, l]``, ``l = sqrt(6 / (fan_in + fan_out))``."""

    _PRESET = {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform"}


class GlorotNormal(_FixedVarianceScaling):
    """Truncated normal with stddev ``sqrt(2 / (fan_in + fan_out))`` after truncation."""

    _PRESET = {"scale": 1.0, "mode": "fan_avg", "distribution": "truncated_normal"}


class LecunNormal(_FixedVarianceScaling):
    """Truncated normal with stddev ``sqrt(1 / fan_in)`` after truncation."""

    _PRESET = {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal"}


class LecunUniform(_FixedVarianceScaling):
    """Uniform on ``[-l, l]``, ``l = sqrt(3 / fan_in)``."""

    _PRESET = {"scale": 1.0, "mode": "fan_in", "distribution": "uniform"}


class HeNormal(_FixedVarianceScaling):
    """Truncated normal with stddev ``sqrt(2 / fan_in)`` after truncation."""

    _PRESET = {"scale": 2.0, "mode": "fan_in", "distribution": "truncated_normal"}


class HeUniform(_FixedVarianceScaling):
    """Uniform on ``[-l, l]``, ``l = sqrt(6 / fan_in)``."""

    _PRESET = {"scale": 2.0, "mode": "fan_in", "distribution": "uniform"}


class Orthogonal(Initializer):
    """Orthogonal matrix times ``gain`` (tf_keras algorithm).

    The shape is flattened to ``(rows, cols) = (prod(shape[:-1]), shape[-1])``.
    A standard normal matrix of shape ``(max(rows, cols), min(rows, cols))``
    is QR-factorized, ``q`` is multiplied column-wise by ``sign(diag(r))``
    (making the result uniformly distributed), transposed if
    ``rows < cols``, scaled by ``gain`` and reshaped.  So columns are
    orthonormal when ``rows >= cols``, rows otherwise.
    """

    def __init__(self, gain=1.0, seed=None):
        self.gain = gain
        self.seed = seed

    def _generate(self, shape, dtype, rng):
        dtype = _float_dtype(dtype)
        if len(shape) < 2:
            raise ValueError(
                "The tensor to initialize must be at least two-dimensional. "
                f"Received: shape={shape} of rank {len(shape)}."
            )
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)  # reduced ("economic") QR, like full_matrices=False
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(dtype)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


class Identity(Initializer):
    """``gain * eye(rows, cols)``; only for 2-D shapes."""

    def __init__(self, gain=1.0):
        self.gain = gain

    def _generate(self, shape, dtype, rng):
        dtype = _float_dtype(dtype)
        if len(shape) != 2:
            raise ValueError(
                "Identity matrix initializer can only be used for 2D matrices. "
                f"Received: shape={shape} of rank {len(shape)}."
            )
        return (self.gain * np.eye(*shape)).astype(dtype)

    def get_config(self):
        return {"gain": self.gain}


class _FunctionInitializer(Initializer):
    """Adapts a plain function ``f(shape, dtype=None)`` to the Initializer API.

    If ``f`` takes an ``rng`` argument it receives the generator too.
    """

    def __init__(self, fn):
        self.fn = fn
        try:
            self._takes_rng = "rng" in inspect.signature(fn).parameters
        except (TypeError, ValueError):  # builtins without a signature
            self._takes_rng = False

    def _generate(self, shape, dtype, rng):
        if self._takes_rng:
            out = self.fn(shape, dtype=dtype, rng=rng)
        else:
            out = self.fn(shape, dtype=dtype)
        out = np.asarray(out, dtype=dtype)
        if out.shape != shape:
            raise ValueError(f"Initializer function returned shape {out.shape}, expected {shape}.")
        return out

    def __repr__(self):
        return f"_FunctionInitializer({getattr(self.fn, '__name__', self.fn)!r})"


_CLASSES = (
    Zeros, Ones, Constant, RandomNormal, RandomUniform, TruncatedNormal,
    VarianceScaling, GlorotUniform, GlorotNormal, HeNormal, HeUniform,
    LecunNormal, LecunUniform, Orthogonal, Identity,
)


def _snake_case(name):
    """``"GlorotUniform"`` -> ``"glorot_uniform"`` (tf_keras ``to_snake_case``)."""
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


# Name -> class, the way tf_keras fills ALL_OBJECTS in TF2 mode: class names,
# their snake_case, the "...V2" compatibility names and a few short aliases.
ALL_OBJECTS = {}
for _cls in _CLASSES:
    ALL_OBJECTS[_cls.__name__] = _cls
    ALL_OBJECTS[_snake_case(_cls.__name__)] = _cls
    ALL_OBJECTS[_cls.__name__ + "V2"] = _cls
for _name in ("glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
              "lecun_normal", "lecun_uniform"):
    ALL_OBJECTS[_name + "V2"] = ALL_OBJECTS[_name]
ALL_OBJECTS.update(
    normal=RandomNormal, uniform=RandomUniform, one=Ones, zero=Zeros,
)
del _cls, _name


_REGISTRY = Registry("initializer", Initializer, ALL_OBJECTS, "keras.initializers", wrap_callable=_FunctionInitializer)
get = _REGISTRY.get
deserialize = _REGISTRY.deserialize
serialize = _REGISTRY.serialize
