"""span_jobs: sentiment span extraction with T5 — the library (no Prefect here)."""

from .metric import jaccard

__all__ = ["jaccard"]
__version__ = "0.1.0"
