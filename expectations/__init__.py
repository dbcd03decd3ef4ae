"""recflow expectations."""

from expectations.suites import (
    DataQualityError,
    ValidationOutcome,
    enforce_failure_share,
    quarantine,
    quarantine_id,
    validate_interactions,
    validate_items,
)

__all__ = [
    "DataQualityError",
    "ValidationOutcome",
    "enforce_failure_share",
    "quarantine",
    "quarantine_id",
    "validate_interactions",
    "validate_items",
]
