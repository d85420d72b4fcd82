"""Fused CPU kernels (XLA FFI custom calls) for forward kinematics and skinning."""
