"""Tensor parallelism: rank context, process groups, worker, and the executors."""
