"""recflow serving."""
