"""locseg: locate (CAMs), then segment (class-agnostic resegmentation) — WSSS pseudo-labels."""

__version__ = "0.1.0"
