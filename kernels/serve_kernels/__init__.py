"""Attention kernels: Triton kernels beside their launchers, torch references in reference.py."""
