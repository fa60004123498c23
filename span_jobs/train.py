"""Training: labeled tweets in, a model directory with the best validation checkpoint out.

Reads top to bottom: split -> tokenizer -> model -> examples -> loop (train, validate, keep best).
"""

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .augment import augmented_tweets
from .codec import Codec
from .calibration import calibrate
from .data import SENTIMENTS, LabeledData, LabeledTweet, split_train_validation, split_validation_parts
from .evaluate import evaluate_model
from .errors import TrainingError
from .extract import PRECISIONS, OutputMemo, SpanExtractor, choose_span, pick_device, pick_dtype
from .metric import mean_jaccard
from .model import (LoadedModel, ModelMetadata, build_model, check_writable_model_dir, encode,
                    load_model_dir, new_version, pointer_keys, save_model, span_logits, use_random_bits_dropout,
                    word_states)
from .registry import load_model
from .tokenizer import N_SENTINELS, train_tokenizer
from .words import locate_selection, repair_selection

log = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"


@dataclass
class TrainConfig:
    preset: str = "small"  # model size when training from scratch; ignored with init_from
    init_from: str | None = None  # a model directory (or default/promoted) to fine-tune instead
    epochs: int = 4  # from-scratch T5 still improves at 4 epochs on 24k tweets (shared/notes)
    batch_size: int = 64
    lr: float = 1e-3  # high for a from-scratch T5; use ~3e-4 when fine-tuning a trained model
    weight_decay: float = 0.01
    pretrained_embeddings: bool = False  # start piece embeddings from MiniLM's (needs span-jobs[teacher])
    pointer: str | None = "word"  # marker logits also point at the word's encoder state (model.span_logits)
    dropout: float = 0.1  # T5's default; raise it when the model memorises the training pointers
    warmup_fraction: float = 0.06  # linear warm-up then linear decay to zero
    clip_norm: float = 1.0
    vocab_size: int = 8000  # SentencePiece pieces; the 100 markers come on top
    validation_percent: int = 10  # share of tweet ids (by hash) kept for validation, same every run
    sentiment_task: bool = True  # also learn to tag sentiment: one model, two tasks
    seed: int = 0
    device: str = "auto"
    limit: int | None = None  # train on the first N usable rows (smoke runs)
    save_dtype: str = "float32"  # "bfloat16" halves the weights file; inference casts back to fp32 on CPU
    distill: bool = False  # learn from a pretrained teacher's spans, sentiment and word states (teacher.py)
    distill_weight: float = 0.5  # share of the span and sentiment loss that comes from the teacher
    state_weight: float = 1.0  # with distill: weight of matching the teacher's word states (state_loss)
    teacher_epochs: int = 1  # the pretrained teacher learns the task in one epoch (shared/notes: 0.688)
    # with distill, where the sentiment task's soft labels come from: "joint" = the span teacher's own
    # sentiment head; "classifier" = a separate MiniLM copy trained as a plain classifier (teacher.py)
    sentiment_teacher: str = "joint"
    # train on the spans the annotators meant (words.repair_selection), not the ones the extra-spaces
    # shift cut; the model then needs words.labeled_offsets on its predictions to score on such labels
    repair_labels: bool = False
    # the pretrained encoder that teachers and --pretrained-embeddings start from; None: span-jobs[teacher]'s MiniLM
    teacher_dir: str | None = None
    # the transfer set (augment.py): copies of each positive/negative training tweet with some words
    # outside the gold span dropped; with distill the teacher labels each copy
    augment_copies: int = 0
    augment_drop: float = 0.3  # chance that a word outside the gold span is left out of a copy
    # also try the mean of the last k epochs' weights (k = 2..epochs) and keep it if it validates better
    average_checkpoints: bool = False
    # weight of positive and negative tweets' span rows in the span losses (gold and teacher), against 1 for
    # neutral span rows: a neutral span is almost always the whole tweet, learned at once, while the polar
    # spans are where the Jaccard is lost (the Kaggle write-ups weighed them 2x)
    polar_weight: float = 1.0
    # weight of the sentiment rows (the tagging task) in the losses, against 1 for neutral span rows: end to
    # end quality hangs on the tagger, which the student learns less well than its teacher (0.74 vs 0.77)
    sentiment_weight: float = 1.0
    # with distill: the sentiment rows also match the teacher's word states (state_weight), those it read the tweet
    # alone with for its sentiment, as span rows match those it read the tweet and sentiment with. The student
    # tags less well than its teacher even on tweets it trained on (0.753 against 0.797 on 2,400 of them), and
    # three numbers per tweet are all it learns the tagging from otherwise
    sentiment_states: bool = False
    # with distill: a directory where the teachers' outputs are kept and read back by a later run with the
    # same data and teacher settings (teacher.teacher_outputs); for trials of the student, not for reproducing
    teacher_cache: str | None = None
    # the student's and teachers' training precision on CPU (GPUs always train with bf16 autocast): "bfloat16"
    # autocasts, "auto" does where the CPU has native bf16 (extract.has_native_bf16); figures stay fp32
    cpu_precision: str = "float32"
    extra_texts: list[str] = field(default_factory=list, repr=False)  # unlabeled tweets for the tokenizer

    @classmethod
    def from_recipe(cls, recipe: str | None, **settings) -> "TrainConfig":
        """A named recipe's settings (RECIPES), then the settings given on top; None means "not set"."""
        if recipe is not None and recipe not in RECIPES:
            raise TrainingError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        return cls(**{**RECIPES.get(recipe, {}), **{k: v for k, v in settings.items() if v is not None}})


SENTIMENT_TEACHERS = ("joint", "classifier")

# Named recipes: how a model is trained, for `span-jobs train --recipe`, `span-jobs retrain --recipe`
# and the retrain-model flow. "default" is how the shipped default model was trained
# (tests/test_default_model.py keeps the two equal, but for cpu_precision, which sets speed only); it needs
# span-jobs[teacher].
RECIPES: dict[str, dict] = {
    "default": {"preset": "small", "epochs": 5, "distill": True, "distill_weight": 0.9, "state_weight": 5.0,
                "sentiment_teacher": "joint", "pretrained_embeddings": True, "dropout": 0.0, "sentiment_states": True,
                "save_dtype": "bfloat16", "cpu_precision": "auto"},
}


@dataclass
class TrainResult:
    directory: Path
    version: str
    validation: dict
    history: list[dict]


@dataclass(frozen=True, slots=True)
class Example:
    input_ids: list[int]
    target_ids: list[int]
    # span examples with a teacher: its P(first word) and P(last word | gold first), over the markers
    soft_first: torch.Tensor | None = None  # (N_SENTINELS,)
    soft_last: torch.Tensor | None = None  # (N_SENTINELS,)
    teacher_states: torch.Tensor | None = None  # (n_words, H): the teacher's state at each word
    soft_label: torch.Tensor | None = None  # sentiment examples: the teacher's P(label), (3,)
    # sentiment examples with teacher_states: where each word's ids begin in input_ids (span inputs mark a word
    # with its marker)
    word_starts: tuple[int, ...] | None = None
    weight: float = 1.0  # the row's weight in the losses (TrainConfig.polar_weight and sentiment_weight)


def make_examples(codec: Codec, tweets: list[LabeledTweet], sentiment_task: bool,
                  soft: dict | None = None, repair_labels: bool = False, polar_weight: float = 1.0,
                  sentiment_weight: float = 1.0, sentiment_states: bool = False) -> list[Example]:
    """Training examples of both tasks; tweets whose selection maps to no word are skipped."""
    examples = []
    all_words = [codec.words(t.text) for t in tweets]
    span_ids = codec.span_inputs(all_words, [t.sentiment for t in tweets])  # one tokenizer call each
    sentiment_ids = codec.sentiment_inputs(all_words) if sentiment_task else None
    for row, (t, words) in enumerate(zip(tweets, all_words)):
        selected = repair_selection(t.text, t.selected_text) if repair_labels else t.selected_text
        located = locate_selection(words, selected)
        if located is None:
            continue
        soft_first = soft_last = states = None
        if soft is not None and t.tweet_id in soft:
            states = soft[t.tweet_id].states
            n, first = len(words), located[0]
            soft_first = torch.zeros(N_SENTINELS)
            soft_first[:n] = soft[t.tweet_id].first
            soft_last = torch.zeros(N_SENTINELS)
            soft_last[first:n] = soft[t.tweet_id].last[first:]
            soft_last = soft_last / soft_last.sum() if soft_last.sum() > 0 else None
            if soft_last is None:
                soft_first = None
        weight = 1.0 if t.sentiment == "neutral" else polar_weight
        examples.append(Example(span_ids[row], codec.span_target(*located),
                                soft_first, soft_last, states, weight=weight))
        if sentiment_task:
            taught = soft.get(t.tweet_id) if soft is not None else None  # the teacher's view of the tweet
            states = starts = None
            if sentiment_states and taught is not None and taught.sentiment_states is not None:
                starts = codec.sentiment_word_starts(words)
                states = taught.sentiment_states if starts is not None else None
            examples.append(Example(sentiment_ids[row], codec.sentiment_target(t.sentiment),
                                    teacher_states=states, soft_label=taught.sentiment if taught else None,
                                    weight=sentiment_weight, word_starts=tuple(starts) if states is not None else None))
    return examples


def distillation_loss(logits: torch.Tensor, batch: list[Example], marker_ids: torch.Tensor,
                      label_ids: torch.Tensor | None = None) -> torch.Tensor | None:
    """Cross-entropy of the student's distributions against the teacher's, averaged over rows by their
    weights: over the markers at both span steps for span rows, over the labels for sentiment rows.

    logits: (B, T, V) of the batch; rows without a teacher target are left out. None if no row has one.
    """
    losses, weights = [], []
    rows = [i for i, e in enumerate(batch) if e.soft_first is not None]
    weights += [batch[i].weight for i in rows]
    if rows:
        index = torch.tensor(rows, device=logits.device)
        marker_logits = logits[index][:, :2, :].index_select(-1, marker_ids).float()  # (R, 2, 100)
        targets = torch.stack([torch.stack([batch[i].soft_first, batch[i].soft_last]) for i in rows]).to(logits.device)
        allowed = targets > 0  # the teacher puts mass only on the tweet's words (and on last >= gold first)
        logp = marker_logits.masked_fill(~allowed, float("-inf")).log_softmax(-1)  # (R, 2, 100)
        losses.append(-(targets * logp.masked_fill(~allowed, 0.0)).sum(-1).mean(-1))
    rows = [i for i, e in enumerate(batch) if e.soft_label is not None] if label_ids is not None else []
    weights += [batch[i].weight for i in rows]
    if rows:
        index = torch.tensor(rows, device=logits.device)
        logp = logits[index][:, 0, :].index_select(-1, label_ids).float().log_softmax(-1)  # (R, 3)
        targets = torch.stack([batch[i].soft_label for i in rows]).to(logits.device)
        losses.append(-(targets * logp).sum(-1))
    if not losses:
        return None
    weights = torch.tensor(weights, device=logits.device)
    return (torch.cat(losses) * weights).sum() / weights.sum()


def gold_loss(logits: torch.Tensor, labels: torch.Tensor, batch: list[Example]) -> torch.Tensor:
    """Cross-entropy of the gold target tokens, averaged over tokens weighted by their row's weight.

    logits: (B, T, V); labels: (B, T) with -100 where a row has no token. All weights 1: the plain mean.
    """
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                                  reduction="none").view(labels.shape)
    weights = torch.tensor([e.weight for e in batch], device=logits.device)[:, None] * (labels != -100)
    return (per_token * weights).sum() / weights.sum()


def state_loss(states: torch.Tensor, present: torch.Tensor, batch: list[Example],
               projection: torch.nn.Module) -> torch.Tensor | None:
    """1 - cosine between the student's state of each word (projected) and the teacher's state at
    that word, averaged over words; None if no row has teacher states.

    Matching a pretrained encoder's contextual word states hands the T5 what 22k tweets cannot
    teach it alone: what words mean in context (the idea of TinyBERT's and MiniLM's distillation).
    states, present: the student's word states (B, W, d) and which slots hold a word (model.word_states).
    """
    rows = [i for i, e in enumerate(batch) if e.teacher_states is not None]
    if not rows:
        return None
    index = torch.tensor(rows, device=states.device)
    r, w = present[index].nonzero(as_tuple=True)
    student = projection(states[index][r, w])  # (words, H), in (row, word) order
    counts = present[index].sum(-1).tolist()
    # float before the cat: CPU autocast refuses to cat the float16 the teacher's states are kept in
    target = torch.cat([batch[i].teacher_states[:n].float() for n, i in zip(counts, rows)])
    target = target.to(device=student.device, dtype=student.dtype)
    known = target.abs().sum(-1) > 0  # words the teacher did not see are zero
    if not known.any():
        return None
    return (1 - torch.nn.functional.cosine_similarity(student[known], target[known], dim=-1)).mean()


def word_starts(marker_mask: torch.Tensor, batch: list[Example]) -> torch.Tensor:
    """(B, T) where each word's ids begin, for pooling word states: the markers of span rows, and the word starts
    of sentiment rows that have them (Example.word_starts); the marker mask itself when no row has those."""
    rows = [(i, e.word_starts) for i, e in enumerate(batch) if e.word_starts]
    if not rows:
        return marker_mask
    starts = marker_mask.clone()
    for i, positions in rows:
        starts[i, list(positions)] = True
    return starts


def training_split(tweets: list[LabeledTweet], config: TrainConfig) -> tuple[list[LabeledTweet], list[LabeledTweet]]:
    """The (train, validation) tweets a run with this config uses; retrain scores on the same validation."""
    train_tweets, val_tweets = split_train_validation(tweets, config.validation_percent)
    if config.limit:
        return train_tweets[: config.limit], val_tweets[: max(1, config.limit // 5)]
    return train_tweets, val_tweets


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar lengths: sort inside random pools of 50 batches, then shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p : p + pool], key=lambda i: lengths[i])
        batches.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def validate(loaded: LoadedModel, tweets: list[LabeledTweet], device: str, predict_sentiment: bool,
             mbr_temperature: float | None = None, memo: OutputMemo | None = None) -> dict:
    """Validation figures of the model being trained; its fp32 weights stay as they are (autocast on GPU).
    ``memo``: outputs these weights gave before (by default a fresh one: given and end to end share it)."""
    extractor = SpanExtractor(loaded, device=device, precision="float32", mbr_temperature=mbr_temperature,
                              memo=memo if memo is not None else OutputMemo())
    on_gpu = extractor.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
        figures = evaluate_model(extractor, tweets, predict_sentiment)
    figures.pop("model_version")
    return figures


def validation_figures(loaded: LoadedModel, val_tweets: list[LabeledTweet], device: str,
                       predict_sentiment: bool = True, memo: OutputMemo | None = None) -> dict:
    """A model's figures as its metadata keeps them: the whole validation split, which the retrain gate
    compares, and under "report_part" its report half, where nothing was chosen (the figures to quote).
    The model reads each tweet once (``memo``: also what it read before, with these weights)."""
    memo = memo if memo is not None else OutputMemo()
    figures = validate(loaded, val_tweets, device, predict_sentiment=predict_sentiment, memo=memo)
    report_tweets = split_validation_parts(val_tweets)[1]
    if report_tweets:
        figures["report_part"] = validate(loaded, report_tweets, device, predict_sentiment=predict_sentiment,
                                          memo=memo)
    return figures


# Tried from the top: on a tie the less sharpened one stays.
MBR_TEMPERATURES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)


def choose_mbr_temperature(loaded: LoadedModel, tweets: list[LabeledTweet], device: str,
                           memo: OutputMemo | None = None) -> tuple[float, dict]:
    """The expected-Jaccard temperature with the best Jaccard on these tweets (sentiment given), and each one's.

    The last-word probabilities are learned after the gold first word only; after a wrong first
    word they are guesses, which a temperature of 1 weighs in full. How much to sharpen differs by
    model (1.0 suited the marker pointer; the first word-pointer models picked 0.5 and 0.4), so each
    run picks its own. The model runs once: the temperature changes only which candidate is chosen,
    so every temperature scores as validate(..., mbr_temperature=t) would (a test checks).
    """
    extractor = SpanExtractor(loaded, device=device, precision="float32", memo=memo)
    words = [extractor.codec.words(t.text) for t in tweets]
    with_words = [i for i, w in enumerate(words) if len(w)]  # one without has the empty span at any temperature
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=extractor.device.type == "cuda"):  # as validate runs
        candidates = extractor.candidate_spans([words[i] for i in with_words],
                                               [tweets[i].sentiment for i in with_words])
    scores = {}
    for temperature in MBR_TEMPERATURES:
        firsts, lasts, _ = choose_span(candidates, temperature, extractor.decoding == "likeliest",
                                       reference=extractor.reference_candidates)
        spans = [""] * len(tweets)
        for i, first, last in zip(with_words, firsts, lasts):
            spans[i] = words[i].text[slice(*words[i].span(first, last, extractor.span_label_shift))]
        scores[temperature] = mean_jaccard(spans, [t.selected_text for t in tweets])
    return max(scores, key=scores.get), scores


def train(data: LabeledData, out_dir: str | Path, config: TrainConfig, command: str = "") -> TrainResult:
    started = time.monotonic()
    out_dir = Path(out_dir)
    check_writable_model_dir(out_dir)  # before hours of training, not after
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    if config.cpu_precision not in PRECISIONS:
        raise TrainingError(f"cpu_precision must be one of {', '.join(PRECISIONS)}; got {config.cpu_precision!r}")
    bf16 = device.type == "cuda" or pick_dtype(config.cpu_precision, device) == torch.bfloat16

    # ---- split: fixed by id hash, so every run validates on the same tweets -------------------
    train_tweets, val_tweets = training_split(data.tweets, config)
    if config.sentiment_teacher not in SENTIMENT_TEACHERS:
        raise TrainingError(f"sentiment_teacher must be one of {', '.join(SENTIMENT_TEACHERS)}; "
                            f"got {config.sentiment_teacher!r}")
    if not train_tweets or not val_tweets:
        raise TrainingError(f"need both training and validation tweets; got {len(train_tweets)} and {len(val_tweets)}")
    # settings (epoch, temperatures, calibration) are chosen on one fixed half, figures quoted on the other
    choice_part, report_tweets = split_validation_parts(val_tweets)
    choice_tweets = choice_part or val_tweets  # a smoke run whose few validation tweets all fell in one part
    log.info("training on %d tweets, validating on %d (%d choice, %d report)", len(train_tweets), len(val_tweets),
             len(choice_tweets), len(report_tweets))

    # ---- tokenizer and model: fine-tune a given one, or build fresh ---------------------------
    teacher_dir = Path(config.teacher_dir) if config.teacher_dir else None
    if config.init_from:
        base = load_model(config.init_from)
        tokenizer, model = base.tokenizer, base.model
    else:
        tokenizer = train_tokenizer([t.text for t in train_tweets] + config.extra_texts, vocab_size=config.vocab_size)
        model = build_model(config.preset, tokenizer, seed=config.seed, dropout=config.dropout, pointer=config.pointer)
        if config.pretrained_embeddings:
            from .teacher import start_from_pretrained_embeddings

            changed = start_from_pretrained_embeddings(model, tokenizer, teacher_dir)
            log.info("%d of %d pieces start from MiniLM's embeddings", changed, tokenizer.vocab_size)
    model.to(device)
    use_random_bits_dropout(model)  # cheaper dropout masks when training on CPU
    codec = Codec(tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.1fM parameters on %s, training in %s", n_params / 1e6, device, "bf16" if bf16 else "fp32")

    augmented = augmented_tweets(train_tweets, config.augment_copies, config.augment_drop, codec.max_words, config.seed)
    if augmented:
        log.info("%d augmented copies of positive and negative training tweets", len(augmented))

    # ---- teacher (optional): a pretrained encoder's span probabilities as soft targets ----------
    soft = None
    if config.distill:
        from .teacher import teacher_outputs, teacher_spans

        soft, from_cache = teacher_outputs(
            train_tweets, train_tweets + val_tweets + augmented, codec.max_words, epochs=config.teacher_epochs,
            seed=config.seed, device=str(device), directory=teacher_dir, repair_labels=config.repair_labels,
            sentiment_teacher=config.sentiment_teacher, bf16=bf16,
            cache_dir=Path(config.teacher_cache) if config.teacher_cache else None)
        # the teachers' own figures, beside the student's on the same tweets (bench/quality.py prints them)
        teacher_figures = {}
        classifier = config.sentiment_teacher == "classifier"
        for part, tweets in (("choice_part", choice_tweets), ("report_part", report_tweets)):
            if not tweets:
                continue
            figures = {"jaccard": _score_spans(codec, tweets, teacher_spans(soft, tweets))["jaccard"],
                       "joint_sentiment_accuracy": _soft_accuracy(soft, tweets,
                                                                  "joint_sentiment" if classifier else "sentiment")}
            if classifier:
                figures["classifier_sentiment_accuracy"] = _soft_accuracy(soft, tweets)
            teacher_figures[part] = figures
        log.info("teacher: %s", teacher_figures)

    # ---- examples --------------------------------------------------------------------------
    torch.manual_seed(config.seed)  # what follows draws the same whether the teacher trained in this run or not
    examples = make_examples(codec, train_tweets + augmented, config.sentiment_task, soft, config.repair_labels,
                             config.polar_weight, config.sentiment_weight, config.sentiment_states)
    if not examples:
        raise TrainingError("no usable training examples")
    lengths = [len(e.input_ids) for e in examples]
    marker_ids = torch.tensor([tokenizer.marker_id(i) for i in range(N_SENTINELS)], device=device)
    marker_index = codec.marker_index.to(device)
    label_ids = torch.tensor(tokenizer.label_ids, device=device)

    # the student's encoder states are compared with the teacher's through a linear map, used only here
    projection = None
    if soft is not None and config.state_weight > 0:
        hidden = next(iter(soft.values())).states.shape[-1]
        projection = torch.nn.Linear(model.config.d_model, hidden).to(device)

    # ---- optimiser and schedule --------------------------------------------------------------
    trained = list(model.named_parameters()) + (list(projection.named_parameters()) if projection else [])
    decay = [p for n, p in trained if p.dim() >= 2]
    no_decay = [p for n, p in trained if p.dim() < 2]
    optimizer = torch.optim.AdamW(  # fused: one kernel for all parameters (4 ms a step here, not 24)
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, fused=True,
    )
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(total_steps * config.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    rng = random.Random(config.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    # ---- loop: train an epoch, validate, keep the best ---------------------------------------
    metadata = ModelMetadata(
        version=new_version(config.preset if not config.init_from else "ft"),
        created_at="",
        preset=None if config.init_from else config.preset,
        data_digest=data.digest(),
        training={"command": command, "config": {k: v for k, v in asdict(config).items() if k != "extra_texts"},
                  "trained_in": "bfloat16" if bf16 else "float32"},
    )
    if augmented:
        metadata.training["augmented_tweets"] = len(augmented)
    if soft is not None:
        metadata.training.update({f"teacher_{part}": figures for part, figures in teacher_figures.items()})
        metadata.training["teacher_from_cache"] = from_cache
    history: list[dict] = []
    best: dict | None = None
    snapshots: list[dict[str, torch.Tensor]] = []  # each epoch's weights, when averaging checkpoints
    step = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        total_loss, seen = 0.0, 0
        bar = tqdm(length_bucketed_batches(lengths, config.batch_size, rng), desc=f"epoch {epoch}", leave=False)
        for rows in bar:
            batch = [examples[i] for i in rows]
            inputs = codec.pad([e.input_ids for e in batch])
            labels = codec.pad([e.target_ids for e in batch], pad_value=-100).input_ids
            with autocast:
                input_ids = inputs.input_ids.to(device)
                attention_mask = inputs.attention_mask.to(device)
                labels = labels.to(device)
                encoded = encode(model, input_ids, attention_mask)
                marker_mask = marker_index[input_ids] >= 0
                keys = pointer_keys(model, encoded, attention_mask, marker_mask, input_ids)
                logits = span_logits(model, encoded, attention_mask, model.shift_right(labels), keys)
                loss = gold_loss(logits, labels, batch)
                if soft is not None:
                    distilled = distillation_loss(logits, batch, marker_ids, label_ids)
                    if distilled is not None:
                        loss = (1 - config.distill_weight) * loss + config.distill_weight * distilled
                if projection is not None:
                    starts = word_starts(marker_mask, batch)  # span rows: their markers
                    words = keys if starts is marker_mask and getattr(model.config, "span_pointer", None) == "word" \
                        else word_states(encoded, attention_mask, starts, input_ids, tokenizer.eos_id)  # pooled once
                    matched = state_loss(words[0], words[2], batch, projection)
                    if matched is not None:
                        loss = loss + config.state_weight * matched
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trained], config.clip_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            total_loss += loss.item() * len(rows)
            seen += len(rows)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        model.eval()
        loaded = LoadedModel(model, tokenizer, metadata)
        figures = validate(loaded, choice_tweets, str(device), predict_sentiment=config.sentiment_task)
        record = {"epoch": epoch, "step": step, "train_loss": total_loss / max(1, seen), **figures,
                  "seconds": round(time.monotonic() - started, 1)}
        history.append(record)
        log.info("epoch %d: loss %.4f, jaccard %.4f (choice part of validation)", epoch, record["train_loss"],
                 figures["jaccard"])
        if config.average_checkpoints:
            snapshots.append({name: value.detach().cpu().clone() for name, value in model.state_dict().items()})
        if best is None or figures["jaccard"] > best["jaccard"]:
            best = record
            metadata.validation = {"epoch": epoch, "validation_percent": config.validation_percent}
            metadata.training["epochs_run"] = epoch
            metadata.training["seconds"] = record["seconds"]
            metadata.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            save_model(LoadedModel(model, tokenizer, metadata), out_dir, weights_dtype=getattr(torch, config.save_dtype))
        # the whole history, best epoch or not, beside the weights it explains
        (out_dir / TRAIN_LOG).write_text("".join(json.dumps(r) + "\n" for r in history))
    assert best is not None
    if len(snapshots) > 1:
        _keep_better_average(LoadedModel(model, tokenizer, metadata), snapshots, best, choice_tweets, report_tweets,
                             config, out_dir, str(device))

    # ---- decoding and calibration of the kept checkpoint, fitted on the choice part ------------
    kept = load_model_dir(out_dir)
    memo = OutputMemo()  # these weights read each validation tweet once for everything below
    temperature, scores = choose_mbr_temperature(kept, choice_tweets, str(device), memo)
    log.info("expected-Jaccard temperature %.1f (choice-part jaccard by temperature: %s)", temperature,
             ", ".join(f"{t}: {j:.4f}" for t, j in scores.items()))
    kept.model.config.span_mbr_temperature = temperature
    kept.metadata.training["mbr_temperatures"] = {str(t): j for t, j in scores.items()}
    if config.sentiment_task and choice_part and report_tweets:
        kept.metadata.training["calibration"] = calibrate(kept, val_tweets, str(device), memo)
    else:
        log.warning("no calibration: it needs the sentiment task and tweets in both parts of validation")
    # scored again as saved (the chosen settings, weights rounded to save_dtype)
    kept.metadata.validation = {**kept.metadata.validation,
                                **validation_figures(kept, val_tweets, str(device), config.sentiment_task, memo)}
    save_model(kept, out_dir, weights_dtype=getattr(torch, config.save_dtype))
    (out_dir / TRAIN_LOG).write_text("".join(json.dumps(r) + "\n" for r in history))  # save_model starts afresh
    return TrainResult(out_dir, metadata.version, kept.metadata.validation, history)


def average_weights(snapshots: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several state dicts of one model (non-float entries: the last one's)."""
    return {name: torch.stack([s[name] for s in snapshots]).mean(0) if value.is_floating_point() else value
            for name, value in snapshots[-1].items()}


def _keep_better_average(loaded: LoadedModel, snapshots: list[dict], best: dict, choice_tweets: list[LabeledTweet],
                         report_tweets: list[LabeledTweet], config: TrainConfig, out_dir: Path, device: str) -> None:
    """Save the mean of the last k epochs' weights instead of the best epoch if its choice-part Jaccard is higher.

    Every candidate's figures go into the metadata; the report part's are for the record (the
    choice is made on the choice part only), so a run measures averaging against its own best epoch.
    """
    def figures_of(weights: dict) -> dict:
        loaded.model.load_state_dict(weights)
        choice = validate(loaded, choice_tweets, device, predict_sentiment=False)["jaccard"]  # as the epochs are
        report = validate(loaded, report_tweets, device, predict_sentiment=False)["jaccard"] if report_tweets else None
        return {"choice_part": choice, "report_part": report}

    groups = {f"epoch {best['epoch']}": [snapshots[best["epoch"] - 1]]}
    groups.update({f"mean of the last {k} epochs": snapshots[-k:] for k in range(2, len(snapshots) + 1)})
    candidates = {name: figures_of(average_weights(group)) for name, group in groups.items()}
    kept = max(candidates, key=lambda name: candidates[name]["choice_part"])  # on a tie the single epoch stays
    log.info("checkpoint averaging (jaccard, choice part): %s; kept %s",
             ", ".join(f"{name}: {f['choice_part']:.4f}" for name, f in candidates.items()), kept)
    loaded.metadata.training["checkpoint_averages"] = {"candidates": candidates, "kept": kept}
    loaded.model.load_state_dict(average_weights(groups[kept]))
    if len(groups[kept]) > 1:
        loaded.metadata.training.update(averaged_epochs=len(groups[kept]), epochs_run=len(snapshots))
        loaded.metadata.validation["epoch"] = len(snapshots)
    save_model(loaded, out_dir, weights_dtype=getattr(torch, config.save_dtype))


def _soft_accuracy(soft: dict, tweets: list[LabeledTweet], field: str = "sentiment") -> float:
    """Share of tweets whose teacher's likeliest label (SoftSpan.<field>) is the gold sentiment."""
    hits = [int(getattr(soft[t.tweet_id], field).argmax()) == SENTIMENTS.index(t.sentiment) for t in tweets]
    return sum(hits) / max(1, len(hits))


def _score_spans(codec: Codec, tweets: list[LabeledTweet], spans: list[tuple[int, int]]) -> dict:
    """Jaccard of (first, last) word spans, for a teacher that is not a SpanExtractor."""
    from .evaluate import score_predictions
    from .extract import SpanResult

    results = []
    for t, (first, last) in zip(tweets, spans):
        words = codec.words(t.text)
        start, end = words.span(first, last) if len(words) else (0, 0)
        results.append(SpanResult(t.text[start:end], start, end, t.sentiment, None, True))
    return score_predictions(tweets, results)
