"""tvm_gru.layers."""
