"""tvm_gru.interop."""
