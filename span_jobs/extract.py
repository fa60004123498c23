"""Batched, constrained span extraction and sentiment tagging with one T5 model."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from .codec import Codec, token_budget_batches
from .data import SENTIMENTS
from .errors import ModelError
from .model import LoadedModel, encode, marker_logits, pointer_keys
from .words import Words

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpanResult:
    span: str  # always text[start:end]
    start: int
    end: int
    sentiment: str  # the given label, or the tagger's most likely one
    sentiment_prob: float | None  # calibrated P(sentiment); None when the sentiment was given
    sentiment_given: bool
    # expected word Jaccard of the span under the model's own distribution (sentiment and span);
    # None where no model chose it (the full-text baseline)
    span_confidence: float | None = None


class Extractor(Protocol):
    """What the pipeline, predict and evaluate need of a model: spans for a batch of tweets
    (a missing sentiment is tagged) and the version each stored row records."""

    version: str

    def extract(self, texts: Sequence[str], sentiments: Sequence[str | None] | None = None) -> list[SpanResult]: ...


@dataclass(frozen=True, slots=True)
class SpanCandidates:
    """C candidate spans per tweet, as word numbers, with their log-probabilities: all (N, C).

    Unused slots (tweets with fewer words than candidates) have logp -inf.
    """

    first: torch.Tensor
    last: torch.Tensor
    logp: torch.Tensor

    def rows(self, index: slice | torch.Tensor) -> "SpanCandidates":
        return SpanCandidates(self.first[index], self.last[index], self.logp[index])


class OutputMemo:
    """A model's raw outputs on tweets it has read: sentiment logits by text, candidate spans by (text, label).

    Scoring reads the same tweets more than once: end to end decodes both polarities where the given
    label is one of them, and after training the temperature choice, calibration and the recorded
    figures all read the validation tweets. Extractors that share a memo run the model once per tweet and
    label. Valid for one model's unchanged weights only: the first extractor binds it, another refuses it.
    Outputs computed under autocast (GPU validation) are kept apart from those computed without.
    """

    def __init__(self):
        self.owner: tuple | None = None  # (model, dtype, span_candidates, last_candidates) of the first user
        self.logits: dict[tuple[str, bool], torch.Tensor] = {}  # by (text, autocast)
        # by (text, label, autocast): (first, last, logp) rows of SpanCandidates
        self.candidates: dict[tuple[str, str, bool], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def bind(self, owner: tuple) -> None:
        if self.owner is None:
            self.owner = owner
        elif owner[0] is not self.owner[0] or owner[1:] != self.owner[1:]:  # the model itself, then by value
            raise ValueError("this OutputMemo holds another model's outputs (or other precision or candidates)")

    @staticmethod
    def fill(table: dict, keys: list, compute) -> None:
        """Add ``compute(rows)`` (one value per row) for the first row of each key the table lacks."""
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if key not in table and key not in seen:
                todo.append(i)
                seen.add(key)
        if todo:
            table.update(zip((keys[i] for i in todo), compute(todo)))


DECODINGS = ("expected-jaccard", "likeliest")
# expected Jaccard averages over the 48 likeliest of the 144 candidates: on the choice half of the
# validation split 48 lost nothing (given 0.6614, end to end 0.6080, as with all 144) where 8-32
# lost up to 0.009 end to end; on the report half the same figures to 4 decimals, 1.1-1.3x faster
REFERENCE_CANDIDATES = 48


class WordSpanConstraint:
    """Allows only marker tokens that form a span of each row's own words: first, then last >= first.

    Works on the whole batch with one mask (no Python callback per row and step) and fits transformers'
    ``model.generate(logits_processor=...)`` (the benchmark's Hugging Face ways). SpanExtractor's own
    two-step decoder applies the same rule to the markers' logits alone.
    """

    def __init__(self, marker_index: torch.Tensor, n_words: torch.Tensor, eos_id: int):
        self.marker_index = marker_index  # (V,) marker number of each vocab id, -1 otherwise
        self.n_words = n_words  # (B,)
        self.eos_id = eos_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - 1  # tokens generated so far (the start token does not count)
        vocab = scores.shape[-1]
        index = self.marker_index.to(scores.device)
        if vocab > index.shape[0]:  # models pad their vocabulary (t5-base: 32128 ids for 32100 tokens)
            index = torch.cat([index, index.new_full((vocab - index.shape[0],), -1)])
        index = index[:vocab]  # (V,)
        n_words = self.n_words.to(scores.device).repeat_interleave(scores.shape[0] // self.n_words.shape[0])
        if step >= 2:
            allowed = torch.zeros_like(scores, dtype=torch.bool)
            allowed[:, self.eos_id] = True
        else:
            low = torch.zeros_like(n_words) if step == 0 else index[input_ids[:, -1]]
            allowed = (index[None, :] >= low[:, None]) & (index[None, :] < n_words[:, None])  # (B, V)
        return scores.masked_fill(~allowed, float("-inf"))


PRECISIONS = ("auto", "float32", "bfloat16")


def has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX): on the
    project's 2-core machines bf16 matmuls ran 4.4x fp32's rate, where emulated bf16 is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The inference dtype: "auto" is bf16 on GPUs and on CPUs with native bf16 (T5 overflows in
    fp16; bf16 keeps fp32's range), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" or has_native_bf16() else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA GPU is available")
    return torch.device(device)


class SpanExtractor:
    """Extracts sentiment spans from tweets; tags the sentiment first where it is missing.

    Tweets are sorted by length and batched by a token budget; bf16 on GPU, fp32 on CPU.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: str = "auto",
        token_budget: int | None = None,
        max_batch_size: int = 256,
        precision: str = "auto",
        span_candidates: int = 12,
        last_candidates: int = 12,
        reference_candidates: int | None = REFERENCE_CANDIDATES,
        decoding: str = "expected-jaccard",
        mbr_temperature: float | None = None,
        progress: bool = False,
        quantize_int8: bool = False,
        memo: OutputMemo | None = None,
    ):
        self.device = pick_device(device)
        # int8 quantizes the fp32 weights; on the shipped model bf16 on CPU kept its Jaccard given
        # (+0.0002) and end to end (-0.0015 and +0.0008 on the two validation halves) at 2.1-2.3x the speed
        self.dtype = torch.float32 if quantize_int8 else pick_dtype(precision, self.device)
        self.model = loaded.model.to(self.device, self.dtype)
        self.model.eval()
        if quantize_int8:  # CPU only: int8 weights for every Linear, activations quantized on the fly
            if self.device.type != "cpu" or precision == "bfloat16":
                raise ValueError("int8 quantization is for fp32 CPU inference; GPUs run bf16")
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.codec = Codec(loaded.tokenizer)
        self.version = loaded.version
        # CPU: small batches stay in cache (4096 tokens ran 7% faster than 8192, 45% faster than 32768);
        # GPU: large batches fill the device.
        self.token_budget = token_budget or (4096 if self.device.type == "cpu" else 65536)
        self.max_batch_size = max_batch_size
        if decoding not in DECODINGS:
            raise ValueError(f"unknown decoding {decoding!r}; choose one of {', '.join(DECODINGS)}")
        self.decoding = decoding  # see choose_span
        self.span_candidates = max(1, span_candidates)  # first words tried per tweet
        self.last_candidates = max(1, last_candidates)  # last words kept per first word
        # expected Jaccard averages over this many likeliest candidates (None: all); see reference_positions
        self.reference_candidates = reference_candidates
        # how far expected-Jaccard trusts the model's spread; training picks it (train.choose_mbr_temperature)
        if mbr_temperature is None:
            mbr_temperature = getattr(loaded.model.config, "span_mbr_temperature", 1.0)
        self.mbr_temperature = mbr_temperature
        if not self.mbr_temperature > 0:
            raise ValueError(f"the expected-Jaccard temperature must be positive, not {self.mbr_temperature}")
        # calibration, fitted on validation (calibration.fit_decision) and saved in config.json; a model
        # saved before it gets the identity: its raw sentiment softmax, its decoding's expected Jaccard
        config = loaded.model.config
        self.sentiment_logit_scale = torch.tensor(getattr(config, "sentiment_logit_scale", [1.0] * 3))
        self.sentiment_logit_bias = torch.tensor(getattr(config, "sentiment_logit_bias", [0.0] * 3))
        self.confidence_temperature = float(getattr(config, "confidence_temperature", self.mbr_temperature))
        self.confidence_scale = torch.tensor(getattr(config, "confidence_scale", [1.0] * 3))
        # spans placed as the labels place them (words.labeled_offsets), where calibration found it scores higher
        self.span_label_shift = bool(getattr(config, "span_label_shift", False))
        self.progress = progress  # a progress bar per pass, on stderr (the CLI's long commands)
        self._label_ids = torch.tensor(loaded.tokenizer.label_ids, device=self.device)
        self._marker_index = self.codec.marker_index.to(self.device)
        self._marker_ids = torch.tensor([loaded.tokenizer.marker_id(i) for i in range(self.codec.max_words)],
                                        device=self.device)
        self.memo = memo  # for scoring one model several times (OutputMemo); None: every call runs the model
        if memo is not None:
            memo.bind((self.model, self.dtype, self.span_candidates, self.last_candidates))

    def extract(self, texts: Sequence[str], sentiments: Sequence[str | None] | None = None) -> list[SpanResult]:
        """One result per text. A given sentiment is used as it is; a missing one is tagged, and the span
        is then chosen under the calibrated sentiment distribution (choose_span_under_uncertainty)."""
        sentiments = list(sentiments) if sentiments is not None else [None] * len(texts)
        if len(sentiments) != len(texts):
            raise ValueError("texts and sentiments differ in length")
        for s in sentiments:
            if s is not None and s not in SENTIMENTS:
                raise ValueError(f"unknown sentiment {s!r}; expected one of {', '.join(SENTIMENTS)} or None")
        words = [self.codec.words(t) for t in texts]
        # a tweet with no words has the empty span, and Jaccard(empty, empty) = 1
        spans: dict[int, tuple[int, int, float]] = {i: (0, 0, 1.0) for i, w in enumerate(words) if not len(w)}
        given = [i for i, s in enumerate(sentiments) if s is not None and len(words[i])]
        missing = [i for i, s in enumerate(sentiments) if s is None]
        probs: dict[int, float] = {}
        try:  # the one error boundary: say what failed, then let the caller decide
            if missing:
                distribution = self.sentiment_distribution([words[i] for i in missing])  # (M, 3)
                best_p, best = distribution.max(-1)
                for i, b, p in zip(missing, best.tolist(), best_p.tolist()):
                    sentiments[i], probs[i] = SENTIMENTS[b], p
                tagged = [(row, i) for row, i in enumerate(missing) if len(words[i])]
                distribution = distribution[[row for row, _ in tagged]]
                missing = [i for _, i in tagged]
            # one decoding pass: given rows under their label, tagged rows under both polarities
            labels = [sentiments[i] for i in given] + ["negative"] * len(missing) + ["positive"] * len(missing)
            candidates = self.candidate_spans([words[i] for i in (given + missing + missing)], labels)
            n_given, n_missing = len(given), len(missing)
            if given:
                scale = self.confidence_scale[[SENTIMENTS.index(sentiments[i]) for i in given]]
                chosen = choose_span(candidates.rows(slice(0, n_given)), self.mbr_temperature,
                                     self.decoding == "likeliest", self.confidence_temperature, scale,
                                     reference=self.reference_candidates)
                spans.update(zip(given, zip(*chosen)))
            if missing:
                n_words = torch.tensor([len(words[i]) for i in missing])
                negative = candidates.rows(slice(n_given, n_given + n_missing))
                positive = candidates.rows(slice(n_given + n_missing, None))
                scale = (float(self.confidence_scale[0]), float(self.confidence_scale[2]))
                chosen = choose_span_under_uncertainty(negative, positive, n_words, distribution,
                                                       self.confidence_temperature, scale,
                                                       reference=self.reference_candidates)
                spans.update(zip(missing, zip(*chosen)))
        except Exception:
            log.exception("model %s failed on a batch of %d tweets on %s", self.version, len(texts), self.device)
            raise
        results = []
        for i, w in enumerate(words):
            first, last, confidence = spans[i]
            start, end = w.span(first, last, self.span_label_shift) if len(w) else (0, 0)
            results.append(SpanResult(w.text[start:end], start, end, sentiments[i], probs.get(i), i not in probs,
                                      confidence))
        return results

    def sentiment_logits(self, words: list[Words]) -> torch.Tensor:
        """The model's logits of the three labels at the first decoder step, uncalibrated: (N, 3) on CPU."""
        if self.memo is None or not words:
            return self._sentiment_logits(words)
        autocast = torch.is_autocast_enabled(self.device.type)
        keys = [(w.text, autocast) for w in words]
        self.memo.fill(self.memo.logits, keys, lambda rows: self._sentiment_logits([words[i] for i in rows]))
        return torch.stack([self.memo.logits[k] for k in keys])

    @torch.inference_mode()
    def _sentiment_logits(self, words: list[Words]) -> torch.Tensor:
        inputs = self.codec.sentiment_inputs(words)
        out = torch.zeros((len(inputs), len(SENTIMENTS)))
        batches = token_budget_batches([len(x) for x in inputs], self.token_budget, self.max_batch_size)
        for rows in tqdm(batches, desc="tagging sentiment", unit="batch", disable=not self.progress, leave=False):
            batch = self.codec.pad([inputs[i] for i in rows])
            start = torch.full((len(rows), 1), self.model.config.decoder_start_token_id, device=self.device)
            logits = self.model(batch.input_ids.to(self.device), batch.attention_mask.to(self.device), start)[:, 0]
            out[torch.tensor(rows)] = logits.float()[:, self._label_ids].cpu()
        return out

    def sentiment_distribution(self, words: list[Words]) -> torch.Tensor:
        """Calibrated P(negative, neutral, positive) of each tweet: (N, 3) on CPU (the model's vector scaling)."""
        return calibrated_sentiment(self.sentiment_logits(words), self.sentiment_logit_scale, self.sentiment_logit_bias)

    def candidate_spans(self, words: list[Words], sentiments: list[str]) -> SpanCandidates:
        """The top first words x their top last words of each tweet under its sentiment, with
        log p(first) + log p(last | first): (N, k*L) on CPU. Every tweet must have a word."""
        if self.memo is None or not words:
            return self._candidate_spans(words, sentiments)
        autocast = torch.is_autocast_enabled(self.device.type)
        keys = [(w.text, s, autocast) for w, s in zip(words, sentiments)]

        def rows_of(rows: list[int]):
            found = self._candidate_spans([words[i] for i in rows], [sentiments[i] for i in rows])
            return zip(found.first, found.last, found.logp)

        self.memo.fill(self.memo.candidates, keys, rows_of)
        return SpanCandidates(*(torch.stack(field) for field in zip(*(self.memo.candidates[k] for k in keys))))

    @torch.inference_mode()
    def _candidate_spans(self, words: list[Words], sentiments: list[str]) -> SpanCandidates:
        width = self.span_candidates * self.last_candidates
        first = torch.zeros((len(words), width), dtype=torch.long)
        last = torch.zeros((len(words), width), dtype=torch.long)
        logp = torch.full((len(words), width), float("-inf"))
        inputs = self.codec.span_inputs(words, sentiments)
        batches = token_budget_batches([len(x) for x in inputs], self.token_budget, self.max_batch_size)
        for rows in tqdm(batches, desc="extracting spans", unit="batch", disable=not self.progress, leave=False):
            batch = self.codec.pad([inputs[i] for i in rows])
            n_words = torch.tensor([len(words[i]) for i in rows])
            f, l, p = self._decode_two_markers(batch, n_words)
            index = torch.tensor(rows)
            first[index, : f.shape[1]], last[index, : f.shape[1]], logp[index, : f.shape[1]] = f, l, p
        return SpanCandidates(first, last, logp)

    def _decode_two_markers(self, batch, n_words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate (first, last) words of each row, the top-k first words x their top-L last words,
        with log p(first) + log p(last | first): each (B, k*L), on CPU; impossible pairs have -inf.

        The encoder runs once, the decoder's first step once per row; the second step runs once per
        first-word candidate on the first step's cache (the encoder's cross-attention keys and values
        are computed and kept once per row, not k times), and only the word markers' logits are computed.
        """
        input_ids = batch.input_ids.to(self.device)
        attention_mask = batch.attention_mask.to(self.device)
        marker_mask = self._marker_index[input_ids] >= 0
        rows = input_ids.shape[0]
        most_words = int(n_words.max())
        markers = self._marker_ids[:most_words]  # (W,)
        words = torch.arange(most_words, device=self.device)
        n_words = n_words.to(self.device)
        encoded = encode(self.model, input_ids, attention_mask)
        keys = pointer_keys(self.model, encoded, attention_mask, marker_mask, input_ids)
        decoder = self.model.decoder
        start = torch.full((rows, 1), self.model.config.decoder_start_token_id, device=self.device)
        hidden, cache = decoder.decode(start, encoded, attention_mask)
        first_logits = marker_logits(self.model, hidden, keys, markers, self._marker_index)[:, -1]
        first_logp = first_logits.float().masked_fill(words[None, :] >= n_words[:, None], float("-inf"))
        first_logp = first_logp.log_softmax(-1)  # (B, W), -inf past the row's words
        k, top_last = min(self.span_candidates, most_words), min(self.last_candidates, most_words)
        top_logp, top_first = first_logp.topk(k, dim=-1)  # (B, k)

        def repeat(t: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B*k, ...)
            return t.repeat_interleave(k, dim=0)

        # each candidate continues its row's first step: k copies of the self-attention cache (one
        # position). The encoder's cross-attention keys and values stay one per row: the decoder's
        # attention (t5.Attention) lets a row's k candidates share them
        hidden, _ = decoder.decode(markers[top_first].reshape(-1, 1), None, attention_mask, cache.repeat_rows(k))
        # a row's k candidates side by side, (B, k, d): they share its pointer keys, no copies of them
        hidden = hidden.view(rows, k, -1)
        last_logits = marker_logits(self.model, hidden, keys, markers, self._marker_index).reshape(rows * k, -1).float()
        # a row with fewer words than k has impossible first candidates (-inf): any last word will do there
        low = top_first.masked_fill(top_logp == float("-inf"), 0).reshape(-1, 1)
        allowed = (words[None, :] >= low) & (words[None, :] < repeat(n_words)[:, None])
        last_logp, last = last_logits.masked_fill(~allowed, float("-inf")).log_softmax(-1).topk(top_last, dim=-1)
        joint = (top_logp.reshape(-1, 1) + last_logp).view(rows, -1)  # (B, k*L); impossible pairs -inf
        first_words = top_first[:, :, None].expand(-1, -1, top_last).reshape(rows, -1)
        return first_words.cpu(), last.view(rows, -1).cpu(), joint.cpu()


def calibrated_sentiment(logits: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Vector scaling (Guo et al. 2017): softmax(logits * scale + bias) per label; (N, 3) -> (N, 3)."""
    return (logits * scale + bias).softmax(-1)


def choose_span(candidates: SpanCandidates, temperature: float, likeliest: bool = False,
                confidence_temperature: float | None = None, confidence_scale: torch.Tensor | None = None,
                rows_per_chunk: int = 64, reference: int | None = None) -> tuple[list[int], list[int], list[float]]:
    """(first, last, confidence) of each row's chosen span, the sentiment given.

    Expected-Jaccard decoding takes the candidate whose word Jaccard, averaged over all candidates
    weighted by the model's own probabilities (sharpened by the temperature), is highest: the
    minimum-Bayes-risk choice for the metric the task is scored on. When the model is unsure where a
    span starts it hedges with a span that overlaps the likely ones. ``likeliest`` takes the highest
    log p(first) + log p(last | first) instead (with one candidate each, greedy decoding).

    The confidence is the chosen span's expected Jaccard under the calibrated span distribution:
    the candidates at ``confidence_temperature``, times ``confidence_scale`` (B,), which corrects
    the model's over-confidence (calibration.fit_decision); by default the decoding's own.
    """
    confidence_temperature = confidence_temperature or temperature
    temperatures = (temperature,) if confidence_temperature == temperature else (temperature, confidence_temperature)
    firsts, lasts, confidences = [], [], []
    # chunks of rows: pair_jaccard's (rows, C, reference) fp32 temporaries, 1.8 MB each at 64 rows of 144 x
    # 48, ran 6x faster than at 256 rows (where int64 ones took 14 MB each) on 2 cores
    for chunk in range(0, candidates.first.shape[0], rows_per_chunk):
        rows = slice(chunk, chunk + rows_per_chunk)
        c = candidates.rows(rows)
        # (B, C) each: the decoding's expected Jaccard and the confidence's (the same tensor at one temperature)
        expected, *rest = expected_jaccard_at(c.first, c.last, c.logp, temperatures, reference)
        confidence = rest[0] if rest else expected
        choice = (c.logp if likeliest else expected).argmax(-1, keepdim=True)
        confidence = confidence.gather(1, choice).squeeze(1)
        if confidence_scale is not None:
            confidence = (confidence * confidence_scale[rows]).clamp(0.0, 1.0)
        firsts += c.first.gather(1, choice).squeeze(1).tolist()
        lasts += c.last.gather(1, choice).squeeze(1).tolist()
        confidences += confidence.tolist()
    return firsts, lasts, confidences


def choose_span_under_uncertainty(negative: SpanCandidates, positive: SpanCandidates, n_words: torch.Tensor,
                                  sentiment: torch.Tensor, temperature: float,
                                  scale: tuple[float, float] = (1.0, 1.0), rows_per_chunk: int = 32,
                                  reference: int | None = None) -> tuple[list[int], list[int], list[float]]:
    """(first, last, expected Jaccard) of each row's span when its sentiment is not given.

    The gold span is a draw from a mixture: with P(neutral) the whole tweet (neutral spans are the
    tweet), with P(negative) / P(positive) a span from that polarity's candidate distribution at the
    temperature. The chosen span is the candidate, among both polarities' candidates and the whole
    tweet, with the highest expected Jaccard under that mixture; a misread neutral tweet costs ~0.7
    when answered with a short span, a misread polarity little, and this weighs both. ``scale``
    (negative, positive) corrects each polarity's expected Jaccard for the model's over-confidence
    (observed / expected Jaccard on validation, calibration.fit_decision): without it a short
    polarity span looks safer than it is.

    negative, positive: (B, C) candidates; n_words: (B,); sentiment: (B, 3) calibrated probabilities.
    """
    firsts, lasts, confidences = [], [], []
    # 32 rows: pair_jaccard's (rows, 2C+1, reference) temporaries the size of choose_span's at 64
    for chunk in range(0, n_words.shape[0], rows_per_chunk):
        rows = slice(chunk, chunk + rows_per_chunk)
        neg, pos, n, p = negative.rows(rows), positive.rows(rows), n_words[rows], sentiment[rows]
        whole_first, whole_last = torch.zeros_like(n)[:, None], (n - 1)[:, None]  # (B, 1)
        first = torch.cat([neg.first, pos.first, whole_first], dim=1)  # (B, 2C+1): every candidate
        last = torch.cat([neg.last, pos.last, whole_last], dim=1)
        possible = torch.cat([neg.logp, pos.logp, torch.zeros_like(whole_first, dtype=neg.logp.dtype)], dim=1).isfinite()
        expected = p[:, 1:2] * pair_jaccard(first, last, whole_first, whole_last)[:, :, 0]  # (B, 2C+1)
        for label, component, factor in ((0, neg, scale[0]), (2, pos, scale[1])):
            [overlap] = expected_overlap(first, last, component, (temperature,), reference)  # (B, 2C+1)
            expected = expected + p[:, label : label + 1] * factor * overlap
        expected = expected.masked_fill(~possible, float("-inf"))
        best, choice = expected.max(-1, keepdim=True)
        firsts += first.gather(1, choice).squeeze(1).tolist()
        lasts += last.gather(1, choice).squeeze(1).tolist()
        confidences += best.squeeze(1).clamp(0.0, 1.0).tolist()
    return firsts, lasts, confidences


def pair_jaccard(first_a: torch.Tensor, last_a: torch.Tensor, first_b: torch.Tensor, last_b: torch.Tensor) -> torch.Tensor:
    """Word Jaccard of every span a with every span b of the same row: (B, A), (B, Bn) -> (B, A, Bn) in fp32.

    Spans are word ranges, so the overlap of two is a difference of indices: no word sets needed.
    A span whose last word is before its first is taken as its first word alone.
    """
    # word numbers are exact in fp32, which runs twice int64's lanes; the result is the same to the bit
    first_a, first_b = first_a.float(), first_b.float()
    end_a = torch.maximum(last_a.float(), first_a) + 1  # one past the last word
    end_b = torch.maximum(last_b.float(), first_b) + 1
    overlap = (torch.minimum(end_a[:, :, None], end_b[:, None, :])
               - torch.maximum(first_a[:, :, None], first_b[:, None, :])).clamp_min_(0)
    union = (end_a - first_a)[:, :, None] + (end_b - first_b)[:, None, :] - overlap
    return overlap.div_(union)


def expected_jaccard(first: torch.Tensor, last: torch.Tensor, logp: torch.Tensor,
                     temperature: float = 1.0, reference: int | None = None) -> torch.Tensor:
    """Each candidate span's Jaccard with the others, weighted by their probability: (B, C).

    first, last: (B, C) word numbers of C candidate spans; logp: (B, C) their log-probabilities,
    -inf for impossible candidates, which get -inf here too. A temperature below 1 sharpens the
    weights toward the likeliest candidates (towards 0 the choice becomes the likeliest span).
    ``reference``: average over the likeliest candidates alone (reference_positions).
    """
    return expected_jaccard_at(first, last, logp, (temperature,), reference)[0]


def expected_jaccard_at(first: torch.Tensor, last: torch.Tensor, logp: torch.Tensor, temperatures: Sequence[float],
                        reference: int | None = None) -> list[torch.Tensor]:
    """expected_jaccard at each temperature; the spans' overlaps are computed once for all of them: the
    reference candidates are the likeliest by log-probability, the same at every temperature (where
    the old way, by weight, could differ only among weights equal after rounding)."""
    possible = torch.isfinite(logp)
    first = first.clamp_min(0)
    expected = expected_overlap(first, last, SpanCandidates(first, last, logp), temperatures, reference)
    return [e.masked_fill(~possible, float("-inf")) for e in expected]


def expected_overlap(first: torch.Tensor, last: torch.Tensor, candidates: SpanCandidates,
                     temperatures: Sequence[float], reference: int | None = None) -> list[torch.Tensor]:
    """Each span (first, last), (B, A), its Jaccard with the candidates weighted by their probabilities at
    each temperature: (B, A) per temperature. The overlaps with the (``reference`` likeliest) candidates
    are computed once for all temperatures."""
    kept = reference_positions(candidates.logp, reference)
    ref_first, ref_last = (candidates.first, candidates.last) if kept is None else \
        (candidates.first.gather(1, kept), candidates.last.gather(1, kept))
    overlaps = pair_jaccard(first, last, ref_first, ref_last)  # (B, A, R)
    return [(overlaps @ reference_weight(candidates.logp, t, kept)[:, :, None]).squeeze(-1) for t in temperatures]


def reference_positions(logp: torch.Tensor, reference: int | None) -> torch.Tensor | None:
    """The positions of the ``reference`` likeliest of (B, C) candidates, (B, reference); None for all.

    An expected Jaccard is a weighted average over the candidates; most of the weight sits on a
    few, so averaging over those alone costs C x reference pair overlaps instead of C x C for
    nearly the same value (every candidate is still scored).
    """
    if reference is None or reference >= logp.shape[1]:
        return None
    return logp.topk(reference, dim=-1).indices


def reference_weight(logp: torch.Tensor, temperature: float, kept: torch.Tensor | None) -> torch.Tensor:
    """The candidates' probabilities at the temperature, (B, C); renormalised over the kept ones, (B, R)."""
    weight = (logp / temperature).softmax(-1)
    if kept is None:
        return weight
    weight = weight.gather(1, kept)
    return weight / weight.sum(-1, keepdim=True)


class FullTextExtractor:
    """The floor a model must beat: the whole tweet as its span. Isolates the pipeline from the model.

    It tags a missing sentiment "neutral" with no probability (sentiment_prob None): it is no classifier.
    """

    version = "full-text-baseline"

    def extract(self, texts: Sequence[str], sentiments: Sequence[str | None] | None = None) -> list[SpanResult]:
        sentiments = list(sentiments) if sentiments is not None else [None] * len(texts)
        results = []
        for text, sentiment in zip(texts, sentiments):
            stripped = text.strip()
            start = text.find(stripped) if stripped else 0
            given = sentiment is not None
            results.append(
                SpanResult(stripped, start, start + len(stripped), sentiment or "neutral", None, given)
            )
        return results


def annotate(extractor: Extractor, texts: Sequence[str], sentiments: Sequence[str | None]) -> dict[str, list]:
    """Prediction columns for a table of tweets: sentiment, its probability, span, offsets, confidence, model version."""
    results = extractor.extract(list(texts), list(sentiments))
    return {
        "sentiment": [r.sentiment for r in results],
        "is_sentiment_given": [r.sentiment_given for r in results],
        "sentiment_prob": [r.sentiment_prob for r in results],
        "span": [r.span for r in results],
        "span_start": [r.start for r in results],
        "span_end": [r.end for r in results],
        "span_confidence": [r.span_confidence for r in results],
        "model_version": [extractor.version] * len(results),
    }


# what the CLI and flows call the decodings: "greedy" is about 2x faster on CPU, 0.005 lower Jaccard (default model)
DECODING_CHOICES = {
    "expected-jaccard": {},
    "greedy": dict(decoding="likeliest", span_candidates=1, last_candidates=1),
}


def make_extractor(model: str, registry=None, device: str = "auto", token_budget: int | None = None,
                   progress: bool = False, decoding: str = "expected-jaccard", precision: str = "auto",
                   memo: OutputMemo | None = None) -> Extractor:
    """The extractor behind a model name: 'full-text-baseline', 'default', 'promoted' or a directory.
    ``memo``: for scoring a fixed set of tweets more than once (OutputMemo); never for a stream."""
    from .registry import FULL_TEXT_BASELINE, load_model

    if decoding not in DECODING_CHOICES:
        raise ValueError(f"unknown decoding {decoding!r}; choose one of {', '.join(DECODING_CHOICES)}")
    if model == FULL_TEXT_BASELINE:
        return FullTextExtractor()

    return SpanExtractor(load_model(model, registry), device=device, token_budget=token_budget, progress=progress,
                         precision=precision, memo=memo, **DECODING_CHOICES[decoding])
