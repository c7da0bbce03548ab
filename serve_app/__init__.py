"""LLM serving application on Ray Serve: ingress, micro-batcher, model replicas."""
