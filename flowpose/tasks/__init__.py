"""Training tasks plugged into `flowpose.train.trainer` by name (`config.task`)."""
