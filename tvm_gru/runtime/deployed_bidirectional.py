"""A Keras ``Bidirectional`` GRU loaded from an artifact: two :class:`~.deployed_layer.DeployedGRU` on one library.

numpy + apache-tvm-ffi only, like :mod:`.artifact` (which loads the folder and hands the kernels here).
A bidirectional artifact (``"kind": "bidirectional"``, written by
:func:`tvm_gru.deploy.export.export_bidirectional`) holds ONE kernel library with both directions'
whole-sequence kernels (one set when the two directions have the same config: the direction is a kernel
argument), ONE ``weights.npz`` whose members are prefixed ``forward.`` / ``backward.``, the merge mode, and per
direction (``"forward"``, ``"backward"``) what a layer artifact holds of its own: config, input_dim, lanes,
shapes, layer flags, kernel functions and weight names, Keras config.

>>> wrapper = tvm_gru_runtime.load("bigru")                        # doctest: +SKIP
>>> y = wrapper(x_btI, mask=valid_bt)                              # doctest: +SKIP
"""

from __future__ import annotations

import threading

from .bidirectional_calls import BidirectionalCalls
from .deployed_layer import DeployedGRU, weight_specs
from .format import DIRECTIONS, ArtifactError, direction_meta
from .layer_calls import NotCopyable

__all__ = ["DeployedBidirectional", "bidirectional_weight_specs"]


def bidirectional_weight_specs(meta: dict) -> dict:
    """{"forward.<name>" / "backward.<name>": (shape, dtype)} of the packed weights both directions' configs
    imply, in kernel order; each direction's metadata weight list and shapes must say the same."""
    out = {}
    for side in DIRECTIONS:
        try:
            specs = weight_specs(direction_meta(meta, side))
        except ArtifactError as err:
            raise ArtifactError(f"{side} layer: {err}") from err
        out.update({f"{side}.{name}": spec for name, spec in specs.items()})
    return out


class DeployedBidirectional(NotCopyable, BidirectionalCalls):
    """A Keras ``Bidirectional`` GRU loaded from an artifact:
    ``wrapper(inputs, mask=None, training=None, initial_state=None)``.

    The same call, merge and outputs as :class:`tvm_gru.Bidirectional` (the same code:
    :class:`~.bidirectional_calls.BidirectionalCalls`), on the exported kernels. Each direction is a
    :class:`~.deployed_layer.DeployedGRU` (``forward_layer``, ``backward_layer``) with its options fixed at export.

    Inference only, as :class:`~.deployed_layer.DeployedGRU`: ``training=True`` raises ``ValueError`` when a
    direction has dropout. Threads: a stateful wrapper serialises its calls (and :meth:`reset_states`,
    :attr:`states`) with a lock of its own around both directions, so both states come from the same calls.
    Copies: ``pickle`` and ``copy`` raise ``TypeError``: load the artifact again for another wrapper.

    Attributes
    ----------
    name : str
    merge_mode : {"concat", "sum", "ave", "mul", None}
    forward_layer, backward_layer : DeployedGRU
    input_dim : int
    batch_sizes : tuple of int
        Batch sizes with compiled kernels (any sequence length runs on them).
    target : dict
        ``family`` ("x86" or "aarch64") and the TVM target the kernels were compiled for.
    metadata : dict
        The whole metadata file.
    """

    def __init__(self, meta: dict, module, weights: dict):
        self.metadata = meta
        info = meta["bidirectional"]
        self.name, self.merge_mode = str(info.get("name", "bidirectional")), info["merge_mode"]
        layers = []
        for side in DIRECTIONS:
            prefix = f"{side}."
            own = {name[len(prefix):]: array for name, array in weights.items() if name.startswith(prefix)}
            layers.append(DeployedGRU(direction_meta(meta, side), module, own))
        self.forward_layer, self.backward_layer = layers
        fw = self.forward_layer
        self.stateful, self.return_sequences = fw.stateful, fw.return_sequences
        self.return_state, self.time_major = fw.return_state, fw.time_major
        self.input_dim, self.batch_sizes, self.target = fw.input_dim, fw.batch_sizes, meta["target"]
        self._lock = threading.Lock()  # stateful: both directions' calls as one

    def get_config(self) -> dict:
        """The tf_keras ``Bidirectional.get_config()`` dict of the exported wrapper."""
        return dict(self.metadata["keras_config"])

    def get_weights(self) -> list:
        """The forward layer's Keras-layout weights, then the backward layer's (unpacked copies)."""
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()

    def __repr__(self) -> str:
        return (f"DeployedBidirectional({self.forward_layer!r}, {self.backward_layer!r}, "
                f"merge_mode={self.merge_mode!r})")
