"""Model registry: versioned model directories and one champion pointer switched atomically.

    <root>/models/<version>/      model directories, never changed after they are written
    <root>/champion.json          {"version", "path", "promoted_at", "validation_jaccard"}
    <root>/promotions.jsonl       every promotion, appended

Promotion writes the new pointer to a temporary file, fsyncs it and renames it over the old
one: a reader sees the old champion or the new one, never a torn file, even after a kill.
"""

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from . import settings
from .model import WEIGHTS_FILE, ModelError, default_model_dir, default_model_ships

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else settings.registry_root()
        self.models_dir = self.root / "models"
        self.pointer = self.root / "champion.json"

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

    def promote(self, version: str, validation_jaccard: float) -> dict:
        path = self.models_dir / version
        if not (path / WEIGHTS_FILE).exists():
            raise ModelError(f"cannot promote {version}: {path} holds no model")
        record = {
            "version": version,
            "path": str(path.resolve()),
            "promoted_at": datetime.now(UTC).isoformat(),
            "validation_jaccard": validation_jaccard,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.pointer.with_name(f".champion.json.{os.getpid()}.tmp")
        with staging.open("w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, self.pointer)
        _fsync_dir(self.root)
        with (self.root / "promotions.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("promoted %s (validation jaccard %.4f)", version, validation_jaccard)
        return record


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
