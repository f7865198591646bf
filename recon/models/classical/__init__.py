"""Classical, weight-free geometry model (the embedded default)."""

from recon.models.classical.model import ClassicalConfig, ClassicalModel

__all__ = ["ClassicalConfig", "ClassicalModel"]
