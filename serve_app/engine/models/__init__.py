"""Model definitions (readable single-device models built from parallel layers)."""
