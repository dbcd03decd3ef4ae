"""recflow flows."""
