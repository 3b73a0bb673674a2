"""tvm_gru.keras_objects."""
