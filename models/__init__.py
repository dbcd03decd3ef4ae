"""recflow models."""
