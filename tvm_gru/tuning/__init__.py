"""tvm_gru.tuning."""
