"""tvm_gru.ops."""
