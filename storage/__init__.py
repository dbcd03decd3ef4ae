"""recflow storage."""
