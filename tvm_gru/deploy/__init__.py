"""tvm_gru.deploy."""
