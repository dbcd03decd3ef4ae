"""recflow deployments."""
