"""Whole models: an ONNX graph compiled by TVM Relax into one VM executable (GRU nodes on tvm_gru's kernels when
``tvm_gru.relax`` is present), called on numpy arrays and exported as an artifact of kind "model".

>>> model = tvm_gru.models.Model.from_onnx("model.onnx")        # doctest: +SKIP
>>> y = model(x)                                                 # doctest: +SKIP
"""

from .model import Model, merge_batches

__all__ = ["Model", "merge_batches"]
