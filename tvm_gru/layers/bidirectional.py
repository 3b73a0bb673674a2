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

Each direction is a whole-sequence kernel call of its own (the two run one after the other, each on all cores).
An ONNX ``direction="bidirectional"`` GRU node imports as this wrapper (:func:`tvm_gru.from_onnx`) and
:meth:`Bidirectional.to_onnx` writes one.
"""

from __future__ import annotations

import threading

import numpy as np

from ..runtime.layer_calls import split_inputs
from . import hooks
from .gru import GRU
from .inputs import as_array

__all__ = ["Bidirectional"]

MERGE_MODES = ("sum", "mul", "ave", "concat", None)
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


class Bidirectional:
    """Keras ``Bidirectional`` over a :class:`tvm_gru.GRU`.

    Parameters
    ----------
    layer : GRU
        The forward direction's configuration (the wrapper holds a copy, as Keras does).
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
        """Build the wrapper from :meth:`get_config` output or a tf_keras ``Bidirectional.get_config()`` dict."""
        if not isinstance(config, dict):
            raise TypeError(f"`config` must be a dict, received {type(config).__name__}")

        def gru(key):
            entry = config.get(key)
            if entry is None:
                return None
            if not isinstance(entry, dict) or entry.get("class_name", "GRU") != "GRU":
                raise ValueError(f"`config[{key!r}]` must describe a GRU layer; received {entry!r}")
            return GRU.from_config(entry.get("config", entry), target=target)

        if "layer" not in config:
            raise ValueError("`config` has no 'layer' entry (the wrapped GRU's config)")
        return cls(gru("layer"), merge_mode=config.get("merge_mode", "concat"), backward_layer=gru("backward_layer"),
                   name=config.get("name"))

    # ------------------------------------------------------------------ call
    def __call__(self, inputs, mask=None, training=None, initial_state=None):
        """Run both directions and merge.

        Parameters
        ----------
        inputs : (B, T, I) array ((T, B, I) when ``time_major``), or ``[inputs, h_forward, h_backward]``
        mask : (B, T) bool array ((T, B) when ``time_major``), optional
        training : bool or None
        initial_state : ``[h_forward (B, H), h_backward (B, H)]``, optional

        Returns
        -------
        The merged output: (B, T, 2H) for ``concat`` with ``return_sequences`` (else (B, 2H)), (.., H) for
        ``sum``/``ave``/``mul``, ``[y, y_rev]`` for None; with ``return_state`` followed by both final states.
        """
        if self.stateful:  # both directions' states advance by the same calls, one caller at a time
            with self._lock:
                return self._call(inputs, mask, training, initial_state)
        return self._call(inputs, mask, training, initial_state)

    def _call(self, inputs, mask, training, initial_state):
        inputs, initial_state = split_inputs(inputs, initial_state)
        fw_state = bw_state = None
        if initial_state is not None:
            if not isinstance(initial_state, (list, tuple)) or len(initial_state) != 2:
                got = len(initial_state) if isinstance(initial_state, (list, tuple)) else type(initial_state).__name__
                raise ValueError(f"`initial_state` of a Bidirectional GRU must be a list of 2 states (the forward "
                                 f"layer's, then the backward layer's); received {got}")
            fw_state, bw_state = initial_state
        y = self.forward_layer(inputs, mask=mask, training=training, initial_state=fw_state)
        y_rev = self.backward_layer(inputs, mask=mask, training=training, initial_state=bw_state)
        states = []
        if self.return_state:
            (y, h_fw), (y_rev, h_bw) = y, y_rev
            states = [h_fw, h_bw]
        if self.return_sequences:  # the backward layer returns processing order: back to input time order
            y_rev = np.flip(y_rev, axis=0 if self.time_major else 1)
        output = self._merge(y, y_rev)
        if not self.return_state:
            return output
        return (output if self.merge_mode is None else [output]) + states

    def _merge(self, y, y_rev):
        mode = self.merge_mode
        if mode is None:
            return [y, np.ascontiguousarray(y_rev)]
        if mode == "concat":
            return np.concatenate([y, y_rev], axis=-1)
        if mode == "sum":
            return y + y_rev
        if mode == "ave":
            return (y + y_rev) / y.dtype.type(2)
        return y * y_rev

    def compute_output_shape(self, input_shape):
        """Keras output shape(s) for an input shape of rank 3."""
        shape = self.forward_layer.compute_output_shape(input_shape)
        out, state = (shape[0], shape[1]) if self.return_state else (shape, None)
        merged = (*out[:-1], 2 * out[-1]) if self.merge_mode == "concat" else out
        outputs = [out, out] if self.merge_mode is None else [merged]
        if self.return_state:
            return outputs + [state, state]
        return outputs if self.merge_mode is None else merged

    # ------------------------------------------------------------------ states
    def reset_states(self, states=None) -> None:
        """Zero both directions' states (stateful), or set them to ``[h_forward, h_backward]``."""
        if not self.stateful:
            raise AttributeError("Layer must be stateful.")
        if states is not None and (not isinstance(states, (list, tuple)) or len(states) != 2):
            raise ValueError("`states` of a Bidirectional GRU must be a list of 2 states (forward, backward)")
        with self._lock:
            if states is None:
                self.forward_layer.reset_states()
                self.backward_layer.reset_states()
                return
            self.forward_layer.reset_states(as_array("states", states[0]))
            self.backward_layer.reset_states(as_array("states", states[1]))

    @property
    def states(self) -> list:
        with self._lock:
            return self.forward_layer.states + self.backward_layer.states

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

    def to_onnx(self, path=None, opset: int = 14, batch=None):
        """Write both directions as one ONNX GRU node with ``direction="bidirectional"``.

        See :func:`tvm_gru.interop.onnx_export.bidirectional_to_onnx`: the node holds the two layers, not the merge.
        """
        return hooks.writer("bidirectional_to_onnx")(self, path, opset=opset, batch=batch)

    def __repr__(self) -> str:
        return f"Bidirectional({self.forward_layer!r}, merge_mode={self.merge_mode!r})"
