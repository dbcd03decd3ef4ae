"""recflow tasks."""
