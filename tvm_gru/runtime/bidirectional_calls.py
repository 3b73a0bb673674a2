"""The Keras ``Bidirectional`` wrapper's call conventions, shared by the in-process wrapper and the deployed one.

:class:`tvm_gru.Bidirectional` (two compiled :class:`tvm_gru.GRU` layers) and
:class:`~.deployed_bidirectional.DeployedBidirectional` (two :class:`~.deployed_layer.DeployedGRU` on the
kernels of one artifact) run both directions on the same inputs and mask, reverse the backward output sequence
into input time order and merge, as tf_keras ``Bidirectional.call`` does. That code lives here once, so the two
give the same numbers from the same kernels. Part of the bundled runtime: numpy only.

A class using :class:`BidirectionalCalls` provides ``forward_layer`` and ``backward_layer`` (called like the
Keras GRU layer), ``merge_mode``, ``return_sequences``, ``return_state``, ``time_major``, ``stateful`` and
``_lock`` (a ``threading.Lock``: a stateful wrapper's calls and state changes, both directions as one).
"""

from __future__ import annotations

import numpy as np

from .arrays import as_array
from .layer_calls import split_inputs

__all__ = ["MERGE_MODES", "BidirectionalCalls", "merge", "direction_states"]

MERGE_MODES = ("sum", "mul", "ave", "concat", None)


def merge(mode, y, y_rev):
    """Merge the forward output ``y`` and the backward output ``y_rev`` (both in input time order).

    Parameters
    ----------
    mode : {"concat", "sum", "ave", "mul", None}
    y, y_rev : (B, T, H) arrays ((T, B, H) time-major), or (B, H) when only the last output is returned

    Returns
    -------
    (.., 2H) for ``concat``, (.., H) for ``sum`` / ``ave`` / ``mul``, ``[y, y_rev]`` for None.
    """
    if mode is None:
        return [y, np.ascontiguousarray(y_rev)]
    if mode == "concat":
        return np.concatenate([y, y_rev], axis=-1)
    if mode == "sum":
        return y + y_rev
    if mode == "ave":
        return (y + y_rev) / y.dtype.type(2)
    return y * y_rev


def direction_states(initial_state) -> tuple:
    """``initial_state`` of a wrapper call as ``(forward state, backward state)``, each None when not given.

    Raises
    ------
    ValueError
        Unless ``initial_state`` is None or a list (tuple) of two states.
    """
    if initial_state is None:
        return None, None
    if not isinstance(initial_state, (list, tuple)) or len(initial_state) != 2:
        got = len(initial_state) if isinstance(initial_state, (list, tuple)) else type(initial_state).__name__
        raise ValueError(f"`initial_state` of a Bidirectional GRU must be a list of 2 states (the forward "
                         f"layer's, then the backward layer's); received {got}")
    return initial_state[0], initial_state[1]


class BidirectionalCalls:
    """Keras ``Bidirectional`` call, states and output shapes over two GRU layers (see the module docstring)."""

    def __call__(self, inputs, mask=None, training=None, initial_state=None):
        """Run both directions and merge.

        Parameters
        ----------
        inputs : (B, T, I) array or host DLPack tensor ((T, B, I) when ``time_major``), or
            ``[inputs, h_forward, h_backward]``
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

    def reset_states(self, states=None) -> None:
        """Zero both directions' states (stateful), or set them to ``[h_forward (B, H), h_backward (B, H)]``; a
        refused backward state leaves the forward one as it was."""
        if not self.stateful:
            raise AttributeError("Layer must be stateful.")
        if states is not None and (not isinstance(states, (list, tuple)) or len(states) != 2):
            got = len(states) if isinstance(states, (list, tuple)) else type(states).__name__
            raise ValueError(f"`states` of a Bidirectional GRU must be a list of 2 states (forward, backward); "
                             f"received {got}")
        with self._lock:
            if states is None:
                self.forward_layer.reset_states()
                self.backward_layer.reset_states()
                return
            carried = self.forward_layer.states
            self.forward_layer.reset_states(as_array("states", states[0]))
            try:
                self.backward_layer.reset_states(as_array("states", states[1]))
            except BaseException:
                self.forward_layer.reset_states(None if carried[0] is None else carried)
                raise

    @property
    def states(self) -> list:
        """``[h_forward, h_backward]`` (copies; None before the first call of a stateful wrapper)."""
        with self._lock:
            return self.forward_layer.states + self.backward_layer.states

    def _call(self, inputs, mask, training, initial_state):
        """Run both directions and merge (see :func:`merge`); with ``return_state`` both final states follow."""
        inputs, initial_state = split_inputs(inputs, initial_state)
        fw_state, bw_state = direction_states(initial_state)
        # A stateful forward layer has advanced once its call returns: if the backward call then raises (a bad
        # backward initial state, say), its state is put back, so a refused call changes no state.
        carried = self.forward_layer.states if getattr(self.forward_layer, "stateful", False) else None
        y = self.forward_layer(inputs, mask=mask, training=training, initial_state=fw_state)
        try:
            y_rev = self.backward_layer(inputs, mask=mask, training=training, initial_state=bw_state)
        except BaseException:
            if carried is not None:
                self.forward_layer.reset_states(None if carried[0] is None else carried)
            raise
        states = []
        if self.return_state:
            (y, h_fw), (y_rev, h_bw) = y, y_rev
            states = [h_fw, h_bw]
        if self.return_sequences:  # the backward layer returns processing order: back to input time order
            y_rev = np.flip(y_rev, axis=0 if self.time_major else 1)
        output = merge(self.merge_mode, y, y_rev)
        if not self.return_state:
            return output
        return (output if self.merge_mode is None else [output]) + states

    def compute_output_shape(self, input_shape):
        """Keras output shape(s) for an input shape of rank 3."""
        shape = self.forward_layer.compute_output_shape(input_shape)
        out, state = (shape[0], shape[1]) if self.return_state else (shape, None)
        merged = (*out[:-1], 2 * out[-1]) if self.merge_mode == "concat" else out
        outputs = [out, out] if self.merge_mode is None else [merged]
        if self.return_state:
            return outputs + [state, state]
        return outputs if self.merge_mode is None else merged
