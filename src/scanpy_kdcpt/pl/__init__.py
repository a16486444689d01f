"""Plots of KD-CPT results, drawn from AnnData keys only (scanpy conventions)."""

__all__: list[str] = []
