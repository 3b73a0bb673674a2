"""``Bidirectional``: the Keras ``Bidirectional`` wrapper around :class:`tvm_gru.GRU`.

Mirrors tf_keras ``layers.Bidirectional(layer, merge_mode="concat", weights=None, backward_layer=None)``:

- the forward layer is a copy of ``layer`` (rebuilt from its config), the backward one a copy with
  ``go_backwards`` flipped, or the given ``backward_layer``; they are named ``forward_<name>`` and
  ``backward_<name>``, and both return zeros at masked steps when they return sequences (Keras forces
  ``zero_output_for_mask = return_sequences`` on them);
- a call runs both on the same inputs and mask; the backward output sequence is reversed back into input time
  order, then merged (``concat`` on the last axis, ``sum``, ``ave``, ``mul``, or None for ``[y, y_rev]``);
- ``initial_state`` is a list of two states, the forward layer's then the backward layer's; with
  ``return_state`` the outputs are ``[output, h_forward, h_backward]`` (``[y, y_rev, h_forward, h_backward]``
  for ``merge_mode=None``);
- weights are the forward layer's then the backward layer's, in Keras order.

The call and merge code is :class:`tvm_gru.runtime.bidirectional_calls.BidirectionalCalls`, shared with the
deployed wrapper that :meth:`Bidirectional.export` writes and :func:`tvm_gru.load` returns.
Each direction is a whole-sequence kernel call of its own (the two run one after the other, each on all cores).
An ONNX ``direction="bidirectional"`` GRU node imports as this wrapper (:func:`tvm_gru.from_onnx`) and
:meth:`Bidirectional.to_onnx` writes one.
"""

from __future__ import annotations

import threading

from ..runtime.bidirectional_calls import MERGE_MODES, BidirectionalCalls
from . import hooks
from .cell import unwrap_config
from .gru import GRU

__all__ = ["Bidirectional"]

_COUNTER = [0]


def _copy(layer: GRU, go_backwards: bool, name: str) -> GRU:
    """A new GRU from ``layer``'s config (fresh weights, as Keras recreates the layer), ``go_backwards`` set.

    A seeded layer's backward copy takes the next seed, so the two directions do not start from equal weights.
    """
    config = layer.get_config()
    if go_backwards:
        config["go_backwards"] = not config["go_backwards"]
        if isinstance(config.get("seed"), int):
            config["seed"] += 1
    config["name"] = name
    return GRU.from_config(config, target=layer.cell.target)


class Bidirectional(BidirectionalCalls):
    """Keras ``Bidirectional`` over a :class:`tvm_gru.GRU`.

    Parameters
    ----------
    layer : GRU
        The forward direction's configuration (the wrapper holds a copy, as Keras does), its ``weight_dtype``
        included: a ``GRU(..., weight_dtype="int8")`` gives both directions int8 weight storage.
    merge_mode : {"concat", "sum", "ave", "mul", None}
        How the two directions' outputs combine; None returns both.
    weights : list of arrays, optional
        Initial weights: the forward layer's then the backward layer's (Keras order each).
    backward_layer : GRU, optional
        The backward direction, used as given; it must differ from ``layer`` in ``go_backwards`` and agree on
        ``stateful``, ``return_sequences`` and ``return_state``.
    name : str, optional

    Notes
    -----
    Threads: a stateful wrapper serialises concurrent calls with a lock of its own around both directions'
    calls (and :meth:`reset_states`, :attr:`states`), so the two directions' states always come from the same
    calls. Copies (``copy.deepcopy``, ``pickle``) hold the three layers as :class:`tvm_gru.GRU` copies them
    (weights, states), taken together under that lock.
    """

    _LAYERS = ("layer", "forward_layer", "backward_layer")

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, name=None):
        if not isinstance(layer, GRU):
            raise TypeError(f"`layer` must be a tvm_gru.GRU; received {type(layer).__name__}")
        if backward_layer is not None and not isinstance(backward_layer, GRU):
            raise TypeError(f"`backward_layer` must be a tvm_gru.GRU or None; received {type(backward_layer).__name__}")
        if not any(merge_mode is m or (m is not None and merge_mode == m) for m in MERGE_MODES):
            raise ValueError(f"`merge_mode` must be one of {MERGE_MODES}; received {merge_mode!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a str or None, received {name!r} of type {type(name).__name__}")
        if name is None:
            _COUNTER[0] += 1
            name = "bidirectional" if _COUNTER[0] == 1 else f"bidirectional_{_COUNTER[0] - 1}"
        self.name, self.merge_mode, self.layer = name, merge_mode, layer
        self._lock = threading.Lock()  # stateful: both directions' calls as one
        self.forward_layer = _copy(layer, False, f"forward_{layer.name}")
        if backward_layer is None:
            self.backward_layer = _copy(layer, True, f"backward_{layer.name}")
            self._backward_given = False
        else:
            self.backward_layer, self._backward_given = backward_layer, True
            backward_layer.name = f"backward_{backward_layer.name}"
        self._verify()
        for direction in (self.forward_layer, self.backward_layer):
            direction.zero_output_for_mask = direction.return_sequences  # as Keras forces it
        self.stateful, self.return_sequences = layer.stateful, layer.return_sequences
        self.return_state, self.time_major = layer.return_state, layer.time_major
        if weights is not None:
            self.set_weights(weights)

    def _verify(self) -> None:
        fw, bw = self.forward_layer, self.backward_layer
        if fw.go_backwards == bw.go_backwards:
            raise ValueError(f"the forward and backward layers must differ in `go_backwards`; forward_layer."
                             f"go_backwards = {fw.go_backwards}, backward_layer.go_backwards = {bw.go_backwards}")
        for key in ("stateful", "return_sequences", "return_state", "time_major"):
            if getattr(fw, key) != getattr(bw, key):
                raise ValueError(f"the forward and backward layers must have the same `{key}`; got "
                                 f"{getattr(fw, key)} (forward) and {getattr(bw, key)} (backward)")

    # ------------------------------------------------------------------ weights
    @property
    def built(self) -> bool:
        return self.forward_layer.built and self.backward_layer.built

    def build(self, input_shape) -> None:
        """Create both directions' weights for inputs of shape ``(batch, time, input_dim)``."""
        self.forward_layer.build(input_shape)
        self.backward_layer.build(input_shape)

    @property
    def weights(self) -> list:
        return self.forward_layer.weights + self.backward_layer.weights

    trainable_weights = weights

    @property
    def losses(self) -> list:
        return self.forward_layer.losses + self.backward_layer.losses

    def get_weights(self) -> list:
        """The forward layer's weights, then the backward layer's (Keras order)."""
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()

    def set_weights(self, weights) -> None:
        """``[forward weights..., backward weights...]``, each in Keras order; builds the layers if needed."""
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"`weights` must be a list of arrays; received {type(weights).__name__}")
        counts = [2 + d.cell.config.use_bias for d in (self.forward_layer, self.backward_layer)]
        if len(weights) != sum(counts):
            raise ValueError(f"`weights` must hold {sum(counts)} arrays ({counts[0]} for the forward layer, then "
                             f"{counts[1]} for the backward layer); received {len(weights)}")
        self.forward_layer.set_weights(list(weights[:counts[0]]))
        self.backward_layer.set_weights(list(weights[counts[0]:]))

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """The tf_keras ``Bidirectional.get_config()`` layout: ``layer`` (and ``backward_layer`` if one was given)."""
        config = {"name": self.name, "trainable": True, "dtype": self.forward_layer.cell.config.dtype,
                  "layer": {"class_name": "GRU", "config": self.layer.get_config()}, "merge_mode": self.merge_mode}
        if self._backward_given:
            config["backward_layer"] = {"class_name": "GRU", "config": self.backward_layer.get_config()}
        return config

    @classmethod
    def from_config(cls, config: dict, target=None) -> "Bidirectional":
        """Build the wrapper from :meth:`get_config` output, a tf_keras ``Bidirectional.get_config()`` dict or its
        serialised ``{"class_name": "Bidirectional", "config": {...}}`` form; the wrapped layer is a GRU or an
        ``RNN`` around a ``GRUCell``."""
        _, config = unwrap_config(config, "Bidirectional", ("Bidirectional",))

        def gru(key):
            entry = config.get(key)
            if entry is None:
                return None
            if not isinstance(entry, dict) or entry.get("class_name", "GRU") not in ("GRU", "GRUV1", "RNN"):
                got = entry.get("class_name") if isinstance(entry, dict) else type(entry).__name__
                raise ValueError(f"Bidirectional.from_config: `config[{key!r}]` must describe a GRU layer or an RNN "
                                 f"around a GRUCell; received class {got!r}")
            return GRU.from_config(entry if "class_name" in entry else entry.get("config", entry), target=target)

        if "layer" not in config:
            raise ValueError("`config` has no 'layer' entry (the wrapped GRU's config)")
        return cls(gru("layer"), merge_mode=config.get("merge_mode", "concat"), backward_layer=gru("backward_layer"),
                   name=config.get("name"))

    # ------------------------------------------------------------------ copies
    def __getstate__(self) -> dict:
        """The wrapper's attributes, with its three layers as their :meth:`GRU.__getstate__`."""
        state = {key: value for key, value in self.__dict__.items() if key not in (*self._LAYERS, "_lock")}
        with self._lock:  # both directions' states from between the same two calls
            state.update({key: getattr(self, key).__getstate__() for key in self._LAYERS})
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        for key in self._LAYERS:
            layer = GRU.__new__(GRU)
            layer.__setstate__(state.pop(key))
            setattr(self, key, layer)
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def export(self, path, target=None, batch=1, masking=True, overwrite=False, weight_dtype=None):
        """Write a deployable artifact of the wrapper (both directions' kernels in one library, their weights and
        ``merge_mode``; see :func:`tvm_gru.deploy.export.export_bidirectional`); returns its folder.

        ``target`` defaults to the forward layer's target; ``batch`` is one batch size or a list of them;
        ``weight_dtype`` ("float32"/"float16"/"int8") the storage dtype of both directions' exported weight
        matrices (None: each direction's own ``weight_dtype``).
        :func:`tvm_gru.load` returns a :class:`~tvm_gru.runtime.deployed_bidirectional.DeployedBidirectional`.
        """
        target = self.forward_layer.cell.target if target is None else target
        return hooks.writer("export_bidirectional")(self, path, target=target, batch=batch, masking=masking,
                                                    overwrite=overwrite, weight_dtype=weight_dtype)

    def to_onnx(self, path=None, opset: int = 14, batch=None):
        """Write both directions as one ONNX GRU node with ``direction="bidirectional"``.

        See :func:`tvm_gru.interop.onnx_export.bidirectional_to_onnx`: the node holds the two layers, not the merge.
        """
        return hooks.writer("bidirectional_to_onnx")(self, path, opset=opset, batch=batch)

    def __repr__(self) -> str:
        return f"Bidirectional({self.forward_layer!r}, merge_mode={self.merge_mode!r})"
