"""Calibration: what a model's probabilities are worth, fitted on the choice part of validation.

Two things are fitted, both from a model's own outputs on tweets with known labels and spans:

- the sentiment distribution: temperature scaling (one scale on the logits) or vector scaling (a
  scale and a bias per label; both Guo et al. 2017), fitted by log-likelihood, whichever has the lower
  cross-validated log-loss on the choice part: vector scaling's biases move the argmax, the tagged
  sentiment, and with 1,200 tweets they can fit noise; ``sentiment_prob`` is this calibrated probability;
- the span distribution: the decoder's candidates at a temperature, and per label the ratio of the
  observed Jaccard to the expected one (the model is over-confident: at the decoding temperature a
  polarity span expects 0.75 and scores 0.46 with the default model). The temperature is the one
  whose end-to-end Jaccard (sentiment tagged, span chosen under uncertainty) is best.

A third setting follows the labels: whether spans are placed where the annotation placed them
(words.labeled_offsets: after runs of extra spaces a gold span starts a few characters early). It is
kept only where it raises the Jaccard with the sentiment given; the words the model chose stay the same,
only their offsets move.

The first two decide the span when no sentiment is given (extract.choose_span_under_uncertainty) and make
``span_confidence`` an expected Jaccard that matches the observed one on average. Everything goes
into config.json, so every model directory carries its own. Figures are reported on the other part
of validation (data.split_validation_parts): nothing is scored on the tweets it was fitted on.
"""

import json
import logging
import os
from pathlib import Path

import torch

from .data import SENTIMENTS, LabeledTweet, split_validation_parts
from .errors import DataError
from .extract import OutputMemo, SpanExtractor, calibrated_sentiment, choose_span, choose_span_under_uncertainty
from .metric import jaccard
from .model import METADATA_FILE, LoadedModel, load_model_dir

log = logging.getLogger(__name__)

# Tried in order; on a tie the sharper (first) one stays. Below 0.4 the candidates' spread vanishes.
CONFIDENCE_TEMPERATURES = (0.4, 0.55, 0.7, 0.85, 1.0)
CONFIG_KEYS = ("sentiment_logit_scale", "sentiment_logit_bias", "confidence_temperature", "confidence_scale",
               "span_label_shift")


def fit_vector_scaling(logits: torch.Tensor, labels: torch.Tensor, prior: float = 1e-3,
                       per_label: bool = True) -> tuple[list[float], list[float]]:
    """Scale and bias per label that minimise the negative log-likelihood of labels (N,) under logits (N, 3);
    with ``per_label`` False, temperature scaling: one scale for every label and no bias.

    A small Gaussian prior on log-scale and bias keeps the fit finite where the labels are
    separable (a few validation tweets), which would otherwise send the scale to infinity.
    """
    logits = logits.clone().double()  # may come from inference mode, which autograd cannot use
    width = logits.shape[1] if per_label else 1
    log_scale = torch.zeros(width, dtype=torch.double, requires_grad=True)  # scale = exp(.) > 0
    bias = torch.zeros(width, dtype=torch.double, requires_grad=per_label)
    optimizer = torch.optim.LBFGS([log_scale, bias] if per_label else [log_scale], max_iter=200,
                                  line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = (torch.nn.functional.cross_entropy(logits * log_scale.exp() + bias, labels)
                 + prior * (log_scale.square().sum() + bias.square().sum()))
        value.backward()
        return value

    optimizer.step(loss)
    scale, offset = log_scale.detach().exp().expand(logits.shape[1]), bias.detach().expand(logits.shape[1])
    if not (torch.isfinite(scale).all() and torch.isfinite(offset).all()):
        log.warning("sentiment calibration did not converge; keeping the raw probabilities")
        return [1.0] * logits.shape[1], [0.0] * logits.shape[1]
    return scale.tolist(), offset.tolist()


def fit_sentiment_scaling(logits: torch.Tensor, labels: torch.Tensor, folds: int = 5) -> tuple[list, list, dict]:
    """(scale, bias, figures): temperature or vector scaling, whichever has the lower log-loss on held-out
    folds of these tweets (seeded, so a model calibrates the same every time), then fitted on all of them.
    On a tie the temperature stays: it cannot change which sentiment is tagged."""
    if len(labels) < 2 * folds:  # too few tweets to hold any out: the fit that cannot move the argmax
        scale, bias = fit_vector_scaling(logits, labels, per_label=False)
        return scale, bias, {"method": "temperature", "held_out_log_loss": None}
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    held_out_loss = {}
    for method, per_label in (("temperature", False), ("vector", True)):
        total = 0.0
        for fold in order.chunk(folds):
            fitted = torch.ones(len(labels), dtype=torch.bool)
            fitted[fold] = False
            scale, bias = fit_vector_scaling(logits[fitted], labels[fitted], per_label=per_label)
            scale, bias = torch.tensor(scale, dtype=torch.double), torch.tensor(bias, dtype=torch.double)
            total += torch.nn.functional.cross_entropy(logits[fold].double() * scale + bias, labels[fold],
                                                       reduction="sum").item()
        held_out_loss[method] = total / len(labels)
    method = "vector" if held_out_loss["vector"] < held_out_loss["temperature"] else "temperature"
    scale, bias = fit_vector_scaling(logits, labels, per_label=method == "vector")
    return scale, bias, {"method": method, "held_out_log_loss": held_out_loss}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Top-label ECE: |accuracy - confidence| over equal-width confidence bins, weighted by their size."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.float().mean().item() * abs(correct[inside].mean().item() - confidence[inside].mean().item())
    return error


class _Outputs:
    """The model's outputs on labeled tweets, computed once and reused for every setting tried."""

    def __init__(self, extractor: SpanExtractor, tweets: list[LabeledTweet], spans: bool = True):
        self.tweets = [t for t in tweets if t.text.split()]  # labeled tweets always have words
        self.words = [extractor.codec.words(t.text) for t in self.tweets]
        self.n_words = torch.tensor([len(w) for w in self.words])
        self.labels = torch.tensor([SENTIMENTS.index(t.sentiment) for t in self.tweets])
        self.logits = extractor.sentiment_logits(self.words)
        if not spans:  # the sentiment alone: three decoder passes saved
            return
        n = len(self.tweets)
        everything = extractor.candidate_spans(self.words * 3, [t.sentiment for t in self.tweets]
                                               + ["negative"] * n + ["positive"] * n)
        self.given = everything.rows(slice(0, n))
        self.negative, self.positive = everything.rows(slice(n, 2 * n)), everything.rows(slice(2 * n, None))

    def jaccards(self, firsts: list[int], lasts: list[int], label_shift: bool = False) -> list[float]:
        return [jaccard(w.text[slice(*w.span(f, l, label_shift))], t.selected_text)
                for w, t, f, l in zip(self.words, self.tweets, firsts, lasts)]


def fit_decision(extractor: SpanExtractor, tweets: list[LabeledTweet]) -> tuple[dict, dict]:
    """(config values, figures on these tweets): the calibration of this model, fitted on ``tweets``."""
    out = _Outputs(extractor, tweets)
    if not out.tweets:
        raise DataError("calibration needs labeled tweets with words")
    scale, bias, scaling = fit_sentiment_scaling(out.logits, out.labels)
    probs = calibrated_sentiment(out.logits, torch.tensor(scale), torch.tensor(bias))
    likeliest = extractor.decoding == "likeliest"
    end_to_end, scales, chosen = {}, {}, {}
    for temperature in CONFIDENCE_TEMPERATURES:
        # the spans depend on the decoding temperature only; this one sets their expected Jaccard
        firsts, lasts, expected = choose_span(out.given, extractor.mbr_temperature, likeliest, temperature,
                                              reference=extractor.reference_candidates)
        given_spans = firsts, lasts
        observed = torch.tensor(out.jaccards(firsts, lasts))
        expected = torch.tensor(expected)
        scales[temperature] = [
            float(observed[out.labels == i].sum() / expected[out.labels == i].sum().clamp_min(1e-9))
            if (out.labels == i).any() else 1.0 for i in range(len(SENTIMENTS))
        ]
        a = scales[temperature]
        firsts, lasts, _ = choose_span_under_uncertainty(out.negative, out.positive, out.n_words, probs,
                                                         temperature, (a[0], a[2]),
                                                         reference=extractor.reference_candidates)
        end_to_end[temperature] = sum(out.jaccards(firsts, lasts)) / len(out.tweets)
        chosen[temperature] = firsts, lasts
    best = max(end_to_end, key=end_to_end.get)
    given = {shift: sum(out.jaccards(*given_spans, label_shift=shift)) / len(out.tweets) for shift in (False, True)}
    end_to_end_shifted = sum(out.jaccards(*chosen[best], label_shift=True)) / len(out.tweets)
    config = {"sentiment_logit_scale": scale, "sentiment_logit_bias": bias,
              "confidence_temperature": best, "confidence_scale": scales[best],
              "span_label_shift": given[True] > given[False]}
    raw = out.logits.softmax(-1)
    figures = {
        "n": len(out.tweets),
        "sentiment_scaling": scaling,
        "sentiment_ece_before": expected_calibration_error(raw, out.labels),
        "sentiment_ece_after": expected_calibration_error(probs, out.labels),
        "end_to_end_jaccard_by_confidence_temperature": {str(t): j for t, j in end_to_end.items()},
        "label_shift": {"given_jaccard": {"plain": given[False], "shifted": given[True]},
                        "end_to_end_jaccard": {"plain": end_to_end[best], "shifted": end_to_end_shifted}},
    }
    return config, figures


def calibration_figures(extractor: SpanExtractor, tweets: list[LabeledTweet]) -> dict:
    """How calibrated a model is on labeled tweets: sentiment ECE (raw and calibrated), and the mean
    span confidence against the mean observed Jaccard, end to end (sentiment tagged by the model)."""
    out = _Outputs(extractor, tweets, spans=False)
    raw = out.logits.softmax(-1)
    probs = calibrated_sentiment(out.logits, extractor.sentiment_logit_scale, extractor.sentiment_logit_bias)
    results = extractor.extract([t.text for t in out.tweets], None)
    observed = [jaccard(r.span, t.selected_text) for r, t in zip(results, out.tweets)]
    return {
        "n": len(out.tweets),
        "sentiment_ece_before": expected_calibration_error(raw, out.labels),
        "sentiment_ece_after": expected_calibration_error(probs, out.labels),
        "mean_span_confidence": sum(r.span_confidence for r in results) / len(results),
        "mean_jaccard": sum(observed) / len(observed),
    }


def calibrate(loaded: LoadedModel, validation: list[LabeledTweet], device: str = "auto",
              memo: OutputMemo | None = None) -> dict:
    """Fit the calibration on the choice part of ``validation`` and set it in the model's config;
    returns the fit and the figures of both parts (the report part's are the ones to quote).
    ``memo``: the outputs these weights gave before (calibration changes none of them)."""
    choice, report = split_validation_parts(validation)
    if not choice or not report:
        raise DataError(f"calibration needs both parts of validation; got {len(choice)} and {len(report)} tweets")
    memo = memo if memo is not None else OutputMemo()
    config, fitted = fit_decision(SpanExtractor(loaded, device=device, precision="float32", memo=memo), choice)
    for key, value in config.items():
        setattr(loaded.model.config, key, value)
    calibrated = SpanExtractor(loaded, device=device, precision="float32", memo=memo)
    summary = {**config, "choice_part": fitted, "report_part": calibration_figures(calibrated, report)}
    log.info("calibration: sentiment ECE %.4f -> %.4f on the report part; confidence temperature %.2f",
             summary["report_part"]["sentiment_ece_before"], summary["report_part"]["sentiment_ece_after"],
             config["confidence_temperature"])
    return summary


def calibrate_model_dir(directory: str | Path, validation: list[LabeledTweet], device: str = "auto") -> dict:
    """Calibrate a saved model in place: only config.json and span_jobs.json change, each replaced atomically.

    The metadata's validation figures are scored again with the new fit, so they describe the model as it
    now runs (the decision and the label shift change end to end and sentiment-given figures).
    """
    from .train import validation_figures  # train imports this module

    directory = Path(directory)
    loaded = load_model_dir(directory)
    memo = OutputMemo()
    summary = calibrate(loaded, validation, device, memo)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config.update({k: summary[k] for k in CONFIG_KEYS})
    _replace_file(config_path, json.dumps(config, indent=2) + "\n")
    metadata_path = directory / METADATA_FILE
    if metadata_path.exists():
        metadata = json.loads(metadata_path.read_text())
        metadata.setdefault("training", {})["calibration"] = summary
        metadata["validation"] = {**metadata.get("validation", {}),
                                  **validation_figures(loaded, validation, device, memo=memo)}
        _replace_file(metadata_path, json.dumps(metadata, indent=2) + "\n")
    return summary


def _replace_file(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(text)
    os.replace(staging, path)
