"""Model definitions (FC-CLIP re-implementation and helpers)."""
