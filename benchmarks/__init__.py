"""Speed and accuracy benchmarks (run as modules, not collected as tests)."""
