"""Retraining with a champion/challenger gate: promote only a model that scores strictly higher.

Challenger and champion are scored by the same code on the same validation split (fixed by
tweet-id hash). Until a model is promoted, the champion is the shipped default model; without
either, the challenger must beat the full-text baseline. Every run
is recorded, promoted or not; a crash or NaN loss records the failure and leaves the champion alone.
"""

import logging
import shutil
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from .data import read_labeled
from .evaluate import evaluate_model
from .extract import FullTextExtractor, SpanExtractor
from .errors import ModelError
from .model import load_model_dir, new_version, resolve_model_dir
from .registry import Registry
from .store import connect, ensure_schema
from .train import TrainConfig, train, training_split

log = logging.getLogger(__name__)


@dataclass
class RetrainOutcome:
    run_id: str
    is_promoted: bool
    reason: str
    challenger_version: str | None
    challenger_jaccard: float | None
    champion_version: str | None
    champion_jaccard: float | None
    baseline_jaccard: float
    n_train: int
    n_validation: int
    data_digest: str


def decide(challenger: float, champion: float | None, baseline: float) -> tuple[bool, str]:
    """Promote only on a strict improvement over the champion, or over the baseline when there is none."""
    if champion is None:
        if challenger > baseline:
            return True, f"no champion yet; challenger {challenger:.4f} beats the full-text baseline {baseline:.4f}"
        return False, f"no champion yet; challenger {challenger:.4f} does not beat the full-text baseline {baseline:.4f}"
    if challenger > champion:
        return True, f"challenger {challenger:.4f} > champion {champion:.4f}"
    return False, f"challenger {challenger:.4f} <= champion {champion:.4f}"


def retrain(data_path: str | Path, config: TrainConfig, registry_root: str | Path | None = None,
            database: str | Path | None = None, run_id: str | None = None, device: str = "auto") -> RetrainOutcome:
    """Train a challenger, score it and the champion on the same validation split, promote if better."""
    registry = Registry(registry_root)
    run_id = run_id or new_version("retrain")
    if config.init_from:  # resolved against this registry, not the default one
        try:
            config = replace(config, init_from=str(resolve_model_dir(config.init_from, registry.root)))
        except ModelError:
            if config.init_from != "promoted":
                raise
            log.warning("nothing promoted yet to start from; training a fresh %s model", config.preset)
            config = replace(config, init_from=None)
    started_at = datetime.now(UTC)
    data = read_labeled(data_path)
    train_part, validation = training_split(data.tweets, config)
    baseline = evaluate_model(FullTextExtractor(), validation)["jaccard"]

    # the model in service: the champion, or the shipped default while nothing has been promoted
    try:
        serving = registry.champion_dir()
    except ModelError:  # nothing promoted and no default shipped
        serving = None
    champion_version = champion_jaccard = None
    if serving is not None:
        champion = SpanExtractor(load_model_dir(serving), device=device)
        champion_version, champion_jaccard = champion.version, evaluate_model(champion, validation)["jaccard"]

    staging = registry.models_dir / f".{run_id}.training"
    outcome = RetrainOutcome(run_id, False, "", None, None, champion_version, champion_jaccard, baseline,
                             len(train_part), len(validation), data.digest())
    try:
        result = train(data, staging, config, command=f"retrain-model {data_path}")
        challenger = SpanExtractor(load_model_dir(staging), device=device)
        outcome.challenger_version = challenger.version
        outcome.challenger_jaccard = evaluate_model(challenger, validation)["jaccard"]
        final_dir = registry.new_model_dir(result.version)
        staging.rename(final_dir)  # same file system: atomic; the model dir is complete before it is visible
        outcome.is_promoted, outcome.reason = decide(outcome.challenger_jaccard, champion_jaccard, baseline)
        if outcome.is_promoted:
            registry.promote(result.version, outcome.challenger_jaccard)
    except Exception as exc:
        outcome.reason = f"training failed: {type(exc).__name__}: {exc}"
        log.error("retrain %s: %s; the champion stays", run_id, outcome.reason)
        _record(database, outcome, started_at, str(data_path), registry)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("retrain %s: %s", run_id, outcome.reason)
    _record(database, outcome, started_at, str(data_path), registry)
    return outcome


def _record(database, outcome: RetrainOutcome, started_at: datetime, data_path: str, registry: Registry) -> None:
    """Append the run (and a promotion) to the database, when there is one."""
    if database is None:
        return
    ensure_schema(database)
    o = outcome
    with connect(database) as con:
        con.execute("begin transaction")
        con.execute(
            "insert into training_runs values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            [o.run_id, started_at, datetime.now(UTC), data_path, o.data_digest, o.n_train, o.n_validation,
             o.challenger_version, o.challenger_jaccard, o.champion_version, o.champion_jaccard,
             o.baseline_jaccard, o.is_promoted, o.reason],
        )
        if o.is_promoted:
            record = registry.champion()
            con.execute(
                "insert into model_registry values ($1, $2, $3, $4, $5, $6)",
                [record["version"], record["path"], record["validation_jaccard"], o.data_digest,
                 record["promoted_at"], o.run_id],
            )
        con.execute("commit")


def outcome_dict(outcome: RetrainOutcome) -> dict:
    return asdict(outcome)
