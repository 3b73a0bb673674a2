"""Keras-style lookup and (de)serialization shared by initializers, regularizers and constraints.

tf_keras resolves each of them the same way (``get``: None, a name, a serialized dict, an instance, a class
or a plain callable) and serializes them as ``{"class_name", "config"}``, with ``"module"`` and
``"registered_name"`` added by tf_keras >= 2.13 (both forms are read).
"""

from __future__ import annotations

import inspect

import numpy as np

__all__ = ["Registry", "jsonable"]


def jsonable(value):
    """Turn numpy scalars/arrays and tuples into plain JSON-safe Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


class Registry:
    """Name table + Keras ``get``/``deserialize``/``serialize`` for one kind of object.

    Parameters
    ----------
    kind : str
        "initializer", "regularizer" or "constraint" (used in error messages).
    base : type
        The base class of the kind.
    objects : dict
        Name -> class or factory function.
    module : str
        The ``"module"`` value tf_keras writes, e.g. "keras.initializers".
    wrap_callable : callable, optional
        Adapts a plain user function to the kind's API (initializers); None keeps callables as they are.
    """

    def __init__(self, kind, base, objects, module, wrap_callable=None):
        self.kind, self.base, self.objects, self.module = kind, base, objects, module
        self.wrap_callable = wrap_callable

    def lookup(self, name):
        try:
            return self.objects[name]
        except KeyError:
            raise ValueError(f"Unknown {self.kind}: {name!r}. Known names: {', '.join(sorted(self.objects))}.") \
                from None

    def deserialize(self, config):
        """Build an object from a name or a Keras serialized dict."""
        if isinstance(config, str):
            return self.lookup(config)()
        if not isinstance(config, dict) or "class_name" not in config:
            raise ValueError(f"Could not interpret {self.kind} config: {config!r}; expected a name "
                             "or a dict with 'class_name' and 'config'.")
        factory = self.lookup(config["class_name"])
        kwargs = dict(config.get("config") or {})
        return factory.from_config(kwargs) if inspect.isclass(factory) else factory(**kwargs)

    def get(self, identifier):
        """Resolve None, a name, a dict, an instance, a class or a callable (tf_keras ``get``).

        Raises
        ------
        ValueError
            Unknown name or malformed dict.
        TypeError
            Anything else.
        """
        if identifier is None:
            return None
        if isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, (str, dict)):
            return self.deserialize(identifier)
        if inspect.isclass(identifier) and issubclass(identifier, self.base):
            return identifier()
        if callable(identifier):
            return self.wrap_callable(identifier) if self.wrap_callable else identifier
        raise TypeError(f"Could not interpret {self.kind} identifier: {identifier!r} "
                        f"(type {type(identifier).__name__}).")

    def serialize(self, obj, with_module=False):
        """``{"class_name", "config"}`` (plus ``module``/``registered_name`` when ``with_module``).

        A plain function (or a wrapped one, which exposes it as ``fn``) serializes as its ``__name__``.
        """
        if obj is None:
            return None
        fn = getattr(obj, "fn", None) if isinstance(obj, self.base) else obj
        if fn is not None and not isinstance(fn, self.base):
            if callable(fn):
                return getattr(fn, "__name__", repr(fn))
            raise TypeError(f"Cannot serialize {obj!r}: not a {self.base.__name__}.")
        out = {"class_name": type(obj).__name__, "config": jsonable(obj.get_config())}
        if with_module:
            out = {"module": self.module, **out, "registered_name": None}
        return out
