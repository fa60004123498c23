"""Where span-jobs keeps its state by default; every path can also be given explicitly."""

import os
from pathlib import Path


def home() -> Path:
    """SPAN_JOBS_HOME, else ~/.span-jobs: registry, default database and inbox live here."""
    return Path(os.environ.get("SPAN_JOBS_HOME", "~/.span-jobs")).expanduser()


def registry_root() -> Path:
    return home() / "registry"


def default_database() -> Path:
    return home() / "spans.duckdb"


def default_inbox() -> Path:
    return home() / "inbox"
