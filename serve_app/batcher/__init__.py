"""The micro-batcher: its deployment, its policy (pure Python) and live request state."""
