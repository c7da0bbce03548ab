"""The engine's `torch` attention backend: the references of serve_kernels/reference.py behind the
AttentionBackend interface of serve_app/engine/layers/attention.py (the oracle, and the
fallback where no other backend runs)."""

from __future__ import annotations

from serve_kernels import reference


class TorchAttentionBackend:
    name = "torch"

    def store_kv(self, key, value, k_cache, v_cache, metadata) -> None:
        reference.store_kv(key, value, k_cache, v_cache, metadata.slot_mapping)

    def attend(self, query, k_cache, v_cache, metadata, scale: float):
        return reference.paged_attention_for(query, k_cache, v_cache, metadata, scale)
