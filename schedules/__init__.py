"""Hand-written schedules for the GRU step, one module per target family.

Installed as ``tvm_gru.schedules`` (see pyproject.toml). Each module exposes rules in the dlight style:
``rule.apply(func, spec, target) -> tvm.s_tir.Schedule | None`` where None means "not mine".
"""
