"""Retraining with a champion/challenger gate that judges what users get.

Challenger and champion are scored by the same code on the same validation split (fixed by
tweet-id hash), with the sentiment given and end to end (the model tags it, as for raw tweets).
A challenger is promoted only if its sentiment-given Jaccard is strictly higher AND its
end-to-end Jaccard is not lower. Until a model is promoted, the champion is the shipped default
model; without either, the challenger must beat the full-text baseline the same way.

The decision is taken again at the moment of promotion, under the registry's promotion lock,
against the champion in place then: two retrains finishing together cannot promote the worse one.
Every run is recorded, promoted or not; a crash or NaN loss records the failure and leaves the
champion alone. A promotion is recorded in the registry before anything else, and the database
is brought up to date from the registry at the start and end of every run, so a kill between
the switch and the database write loses no record.
"""

import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from .data import LabeledTweet, read_labeled
from .errors import ModelError
from .evaluate import evaluate_model
from .extract import Extractor, FullTextExtractor, OutputMemo, SpanExtractor
from .model import load_model_dir, new_version
from .registry import PROMOTED, Registry, resolve_model_dir
from .store import connect, ensure_schema
from .train import TrainConfig, train, training_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    jaccard: float  # sentiment given
    end_to_end_jaccard: float  # sentiment tagged by the model, the span chosen under its uncertainty
    sentiment_accuracy: float | None  # of the tags; None for the full-text rule, which tags nothing


def score(extractor: Extractor, validation: list[LabeledTweet]) -> Scores:
    figures = evaluate_model(extractor, validation, predict_sentiment=True)
    accuracy = figures.get("sentiment_accuracy") if isinstance(extractor, SpanExtractor) else None
    return Scores(figures["jaccard"], figures["predicted_sentiment"]["jaccard"], accuracy)


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
    challenger_end_to_end_jaccard: float | None = None
    champion_end_to_end_jaccard: float | None = None
    baseline_end_to_end_jaccard: float | None = None
    challenger_sentiment_accuracy: float | None = None
    champion_sentiment_accuracy: float | None = None
    data_path: str = ""
    started_at: str = ""
    finished_at: str | None = None

    def set_champion(self, version: str | None, scores: Scores | None) -> None:
        self.champion_version = version
        self.champion_jaccard = scores.jaccard if scores else None
        self.champion_end_to_end_jaccard = scores.end_to_end_jaccard if scores else None
        self.champion_sentiment_accuracy = scores.sentiment_accuracy if scores else None


def decide(challenger: Scores, champion: Scores | None, baseline: Scores) -> tuple[bool, str]:
    """Promote only if the sentiment-given Jaccard is strictly higher and the end-to-end one not lower,
    than the champion's, or the full-text baseline's when there is no champion."""
    reference, name, prefix = (champion, "champion", "") if champion is not None else (
        baseline, "the full-text baseline", "no champion yet; ")
    given_better = challenger.jaccard > reference.jaccard
    end_to_end_kept = challenger.end_to_end_jaccard >= reference.end_to_end_jaccard
    reason = (f"{prefix}challenger {challenger.jaccard:.4f} {'>' if given_better else '<='} {name} "
              f"{reference.jaccard:.4f} with the sentiment given; end to end {challenger.end_to_end_jaccard:.4f} "
              f"{'>=' if end_to_end_kept else '<'} {reference.end_to_end_jaccard:.4f}")
    return given_better and end_to_end_kept, reason


def _champion_now(registry: Registry, device: str) -> SpanExtractor | None:
    """The model in service: the champion, or the shipped default while nothing has been promoted."""
    try:
        return SpanExtractor(load_model_dir(registry.champion_dir()), device=device, precision="float32",
                             memo=OutputMemo())  # scored once, given and end to end: each tweet read once
    except ModelError:  # nothing promoted and no default shipped
        return None


def retrain(data: str | Path | Sequence[str | Path], config: TrainConfig, registry_root: str | Path | None = None,
            database: str | Path | None = None, run_id: str | None = None, device: str = "auto") -> RetrainOutcome:
    """Train a challenger on all the labeled data given (files or directories), score it and the
    champion on the same validation split, and promote it if it is better."""
    registry = Registry(registry_root)
    run_id = run_id or new_version("retrain")
    if database is not None:
        sync_promotions(database, registry)  # a promotion an earlier run could not record
    if config.init_from:  # resolved against this registry, not the default one
        try:
            config = replace(config, init_from=str(resolve_model_dir(config.init_from, registry.root)))
        except ModelError:
            if config.init_from != PROMOTED:
                raise
            log.warning("nothing promoted yet to start from; training a fresh %s model", config.preset)
            config = replace(config, init_from=None)
    sources = [data] if isinstance(data, (str, Path)) else list(data)
    labeled = read_labeled(sources)
    train_part, validation = training_split(labeled.tweets, config)
    baseline = score(FullTextExtractor(), validation)
    outcome = RetrainOutcome(run_id, False, "", None, None, None, None, baseline.jaccard, len(train_part),
                             len(validation), labeled.digest(), baseline_end_to_end_jaccard=baseline.end_to_end_jaccard,
                             data_path=" + ".join(map(str, sources)), started_at=datetime.now(UTC).isoformat())
    champion = _champion_now(registry, device)
    if champion is not None:
        outcome.set_champion(champion.version, score(champion, validation))

    staging = registry.models_dir / f".{run_id}.training"
    try:
        result = train(labeled, staging, config, command=f"retrain-model {outcome.data_path}")
        # the gate scores in fp32, as training measures: the same figures on every machine
        challenger = score(SpanExtractor(load_model_dir(staging), device=device, precision="float32",
                                         memo=OutputMemo()), validation)
        outcome.challenger_version = result.version
        outcome.challenger_jaccard = challenger.jaccard
        outcome.challenger_end_to_end_jaccard = challenger.end_to_end_jaccard
        outcome.challenger_sentiment_accuracy = challenger.sentiment_accuracy
        staging.rename(registry.new_model_dir(result.version))  # same file system: atomic, complete when visible
    except Exception as exc:
        outcome.reason = f"training failed: {type(exc).__name__}: {exc}"
        log.error("retrain %s: %s; the champion stays", run_id, outcome.reason)
        outcome.finished_at = datetime.now(UTC).isoformat()
        _record(database, outcome, registry)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    with registry.promotion_lock():
        current = registry.champion()  # with nothing promoted, the model in service is still the shipped one
        if current is not None and current["version"] != outcome.champion_version:
            changed_to = _champion_now(registry, device)  # another retrain promoted while this one trained
            outcome.set_champion(changed_to.version, score(changed_to, validation))
            log.info("retrain %s: the champion changed to %s while it trained", run_id, changed_to.version)
        champion_scores = None if outcome.champion_version is None else Scores(
            outcome.champion_jaccard, outcome.champion_end_to_end_jaccard, outcome.champion_sentiment_accuracy)
        outcome.is_promoted, outcome.reason = decide(challenger, champion_scores, baseline)
        outcome.finished_at = datetime.now(UTC).isoformat()
        if outcome.is_promoted:  # the record travels with the promotion: nothing can separate them
            registry.promote(result.version, challenger.jaccard,
                             {"end_to_end_jaccard": challenger.end_to_end_jaccard,
                              "sentiment_accuracy": challenger.sentiment_accuracy,
                              "data_digest": labeled.digest(), "training_run": asdict(outcome)})
        log.info("retrain %s: %s", run_id, outcome.reason)
        _record(database, outcome, registry)
    return outcome


RUN_COLUMNS = ("run_id", "started_at", "finished_at", "data_path", "data_digest", "n_train", "n_validation",
               "challenger_version", "challenger_jaccard", "champion_version", "champion_jaccard", "baseline_jaccard",
               "is_promoted", "decision_reason", "challenger_end_to_end_jaccard", "champion_end_to_end_jaccard",
               "baseline_end_to_end_jaccard", "challenger_sentiment_accuracy", "champion_sentiment_accuracy")


def _insert_run(con, run: dict) -> None:
    """One training_runs row, unless the run is there already (a sync after a kill)."""
    values = {**run, "decision_reason": run["reason"]}
    con.execute(f"insert into training_runs ({', '.join(RUN_COLUMNS)}) "
                f"select {', '.join('$' + c for c in RUN_COLUMNS)} "
                "where not exists (select 1 from training_runs where run_id = $run_id)",
                {c: values.get(c) for c in RUN_COLUMNS})


def sync_promotions(database: str | Path, registry: Registry) -> int:
    """Put every promotion of the registry, and the training run behind it, into the database if it
    is missing there (its process died after the switch); returns how many were added."""
    ensure_schema(database)
    added = 0
    with connect(database) as con:
        con.execute("begin transaction")
        known = {(v, t.isoformat() if t else None) for v, t in con.execute(
            "select model_version, promoted_at at time zone 'UTC' from model_registry").fetchall()}
        for record in registry.promotions():
            promoted_at = datetime.fromisoformat(record["promoted_at"])
            if (record["version"], promoted_at.astimezone(UTC).replace(tzinfo=None).isoformat()) in known:
                continue
            run = record.get("training_run")
            if run:
                _insert_run(con, run)
            con.execute("insert into model_registry values ($1, $2, $3, $4, $5, $6, $7, $8)",
                        [record["version"], record["path"], record["validation_jaccard"], record.get("data_digest"),
                         promoted_at, run["run_id"] if run else None, record.get("end_to_end_jaccard"),
                         record.get("sentiment_accuracy")])
            added += 1
        con.execute("commit")
    return added


def _record(database, outcome: RetrainOutcome, registry: Registry) -> None:
    """Append the run, and any promotion not yet recorded (this run's included), to the database."""
    if database is None:
        return
    ensure_schema(database)
    with connect(database) as con:
        con.execute("begin transaction")
        _insert_run(con, asdict(outcome))
        con.execute("commit")
    sync_promotions(database, registry)


def outcome_dict(outcome: RetrainOutcome) -> dict:
    return asdict(outcome)
