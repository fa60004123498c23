"""Model names and the model registry: versioned model directories and one champion pointer.

    <root>/models/<version>/      model directories, never changed after they are written
    <root>/champion.json          the champion's promotion record: version, path, promoted_at, figures
    <root>/promotions.jsonl       every promotion record, appended
    <root>/.promotion.lock        held while a promotion decides and switches

Promotion writes the new pointer to a temporary file, fsyncs it and renames it over the old
one: a reader sees the old champion or the new one, never a torn file, even after a kill. The
pointer carries the whole promotion record, so a promotion whose process died before it was
logged or put in the database is recovered from the pointer (promotions(), retrain's sync).

This module is also the one place a model name becomes a model directory (resolve_model_dir).
"""

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import torch

from . import settings
from .model import WEIGHTS_FILE, LoadedModel, ModelError, default_model_dir, default_model_ships, load_model_dir

log = logging.getLogger(__name__)

DEFAULT, PROMOTED, FULL_TEXT_BASELINE = "default", "promoted", "full-text-baseline"


class Registry:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else settings.registry_root()
        self.models_dir = self.root / "models"
        self.pointer = self.root / "champion.json"
        self.log = self.root / "promotions.jsonl"

    def champion(self) -> dict | None:
        """The current champion's record, or None before the first promotion."""
        if not self.pointer.exists():
            return None
        try:
            return json.loads(self.pointer.read_text())
        except ValueError as exc:
            raise ModelError(f"{self.pointer}: unreadable champion pointer: {exc}") from exc

    def champion_dir(self) -> Path:
        """The champion's directory; the shipped default model while nothing has been promoted."""
        record = self.champion()
        if record is not None:
            return Path(record["path"])
        if default_model_ships():
            log.info("no promoted model in %s yet; using the shipped default model", self.root)
            return default_model_dir()
        raise ModelError(f"no promoted model in {self.root} and no default model shipped; run `span-jobs retrain`")

    def new_model_dir(self, version: str) -> Path:
        return self.models_dir / version

    @contextmanager
    def promotion_lock(self) -> Iterator[None]:
        """Held from reading the champion to switching it: two retrains finishing together take turns,
        and the second decides against the champion the first one left."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".promotion.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def promotions(self) -> list[dict]:
        """Every promotion, oldest first: the log, and the pointer's record if a kill kept it out of the log."""
        records = self._logged()
        current = self.champion()
        if current is not None and _key(current) not in {_key(r) for r in records}:
            records.append(current)
        return records

    def _logged(self) -> list[dict]:
        records = []
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:  # a line torn by a kill mid-append: its promotion is the pointer's
                    log.warning("%s: skipping a torn line", self.log)
        return records

    def promote(self, version: str, validation_jaccard: float, details: dict | None = None) -> dict:
        """Make ``version`` the champion; ``details`` (figures, the training run) go into its record."""
        path = self.models_dir / version
        if not (path / WEIGHTS_FILE).exists():
            raise ModelError(f"cannot promote {version}: {path} holds no model")
        record = {
            "version": version,
            "path": str(path.resolve()),
            "promoted_at": datetime.now(UTC).isoformat(),
            "validation_jaccard": validation_jaccard,
            **(details or {}),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.champion()
        if previous is not None and _key(previous) not in {_key(r) for r in self._logged()}:
            self._append_to_log(previous)  # its process died before logging it
        staging = self.pointer.with_name(f".champion.json.{os.getpid()}.tmp")
        with staging.open("w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, self.pointer)
        _fsync_dir(self.root)
        self._append_to_log(record)
        log.info("promoted %s (validation jaccard %.4f)", version, validation_jaccard)
        return record

    def _append_to_log(self, record: dict) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _key(record: dict) -> tuple[str, str]:
    return record["version"], record["promoted_at"]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- model names ----------------------------------------------------------------------------


def resolve_model_dir(spec: str | Path, registry_root: str | Path | None = None) -> Path:
    """The directory behind a model name: ``default`` (the shipped model), ``promoted`` (the registry's
    champion, the shipped model while nothing is promoted) or a directory, checked against the
    allowed roots (SPAN_JOBS_ROOTS)."""
    spec = str(spec)
    if spec == DEFAULT:
        if not default_model_ships():
            raise ModelError("no default model ships with this install; train one with `span-jobs train`")
        return default_model_dir()
    if spec == PROMOTED:
        return Registry(registry_root).champion_dir()
    if spec == FULL_TEXT_BASELINE:
        raise ModelError(f"{FULL_TEXT_BASELINE} is a rule, not a model directory")
    return settings.checked_path(spec, "model")


def load_model(spec: str | Path, registry_root: str | Path | None = None,
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    return load_model_dir(resolve_model_dir(spec, registry_root), dtype=dtype)
