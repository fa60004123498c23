"""Where span-jobs keeps its state by default; every path can also be given explicitly."""

import os
from pathlib import Path

from .errors import PathOutsideRoots


def home() -> Path:
    """SPAN_JOBS_HOME, else ~/.span-jobs: registry, default database and inbox live here."""
    return Path(os.environ.get("SPAN_JOBS_HOME", "~/.span-jobs")).expanduser()


def registry_root() -> Path:
    return home() / "registry"


def default_database() -> str | Path:
    """SPAN_JOBS_DATABASE (a DuckDB file, or a lake: ducklake:postgres:<libpq string>), else
    $SPAN_JOBS_HOME/spans.duckdb."""
    return os.environ.get("SPAN_JOBS_DATABASE") or home() / "spans.duckdb"


def checked_database(database: str | Path) -> str | Path:
    """A lake's connection string as it is; a DuckDB file checked like any other path."""
    if str(database).startswith("ducklake:"):
        return str(database)
    return checked_path(database, "database")


def default_inbox() -> Path:
    return home() / "inbox"


def default_labeled() -> Path:
    """Where labeled data for retraining lives unless given: a directory of CSV/Parquet files."""
    return home() / "labeled"


def allowed_roots() -> list[Path]:
    """SPAN_JOBS_ROOTS (os.pathsep-separated); empty means no restriction."""
    raw = os.environ.get("SPAN_JOBS_ROOTS", "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def checked_path(path: str | Path, what: str) -> Path:
    """The path, resolved; refused if SPAN_JOBS_ROOTS is set and the path lies outside every root.

    Resolving first means ``..`` and symbolic links cannot lead out of a root.
    """
    resolved = Path(path).expanduser().resolve()
    roots = allowed_roots()
    if roots and not any(resolved == r or r in resolved.parents for r in roots):
        raise PathOutsideRoots(f"{what} {path} is outside the allowed roots ({', '.join(map(str, roots))})")
    return resolved


def default_report() -> Path:
    return home() / "report.html"
