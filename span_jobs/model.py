"""T5 models: size presets, the model directory format, and finding a model by name."""

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from .errors import ModelError, TokenizerError
from .t5 import T5, WEIGHTS_FILE, T5Config, from_pretrained, save_pretrained
from .tokenizer import Tokenizer

METADATA_FILE = "span_jobs.json"
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"

# d_model, d_ff, heads, encoder layers, decoder layers. The decoder only emits two marker
# tokens (or one label), so it stays shallow; capacity goes to the encoder, which must read the tweet.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=32, d_ff=64, num_heads=2, num_layers=2, num_decoder_layers=1),  # tests
    "small": dict(d_model=256, d_ff=1024, num_heads=4, num_layers=4, num_decoder_layers=2),  # 8.9M, CPU
    "small-deep": dict(d_model=256, d_ff=1024, num_heads=4, num_layers=6, num_decoder_layers=2),  # 11M, CPU
    "medium": dict(d_model=384, d_ff=1536, num_heads=6, num_layers=6, num_decoder_layers=2),  # ~20M
    "base": dict(d_model=768, d_ff=3072, num_heads=12, num_layers=12, num_decoder_layers=12),  # t5-base shape
}


@dataclass
class ModelMetadata:
    """What a model directory records about itself, besides the Hugging Face files."""

    version: str
    created_at: str
    preset: str | None = None
    data_digest: str | None = None
    validation: dict = field(default_factory=dict)  # jaccard, per-sentiment, n, sentiment_accuracy
    training: dict = field(default_factory=dict)  # command, config, epochs run, seconds

    @classmethod
    def read(cls, directory: Path) -> "ModelMetadata":
        path = directory / METADATA_FILE
        if not path.exists():  # a plain Hugging Face T5 directory
            return cls(version=f"hf-{directory.resolve().name}", created_at="")
        try:
            raw = json.loads(path.read_text())
            return cls(**{k: raw[k] for k in raw if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{path}: unreadable metadata: {exc}") from exc


@dataclass
class LoadedModel:
    model: T5
    tokenizer: Tokenizer
    metadata: ModelMetadata
    directory: Path | None = None

    @property
    def version(self) -> str:
        return self.metadata.version


def new_version(prefix: str = "m") -> str:
    return f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"


# config.span_pointer: "word" (pooled word state), True (the marker's state; older models), None/False (none)
POINTERS = ("word", True, False, None)


def build_model(preset: str, tokenizer: Tokenizer, seed: int = 0, dropout: float = 0.1,
                pointer: str | None = "word") -> T5:
    """A randomly initialised T5 of a named size whose vocabulary fits the tokenizer."""
    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    sizes = PRESETS[preset]
    config = T5Config(
        vocab_size=tokenizer.vocab_size,
        d_kv=sizes["d_model"] // sizes["num_heads"],
        dropout_rate=dropout,
        feed_forward_proj="gated-gelu",  # T5 v1.1's choice: better than ReLU at equal size
        # Tied: the output row of marker <m3> is its input embedding, which the encoder carries at
        # word 3's position, so pointing at a word is a copy, not a mapping learned from scratch.
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
        decoder_start_token_id=tokenizer.pad_id,
        **sizes,
    )
    config.span_pointer = pointer  # saved in config.json; see span_logits
    torch.manual_seed(seed)
    # With tied embeddings T5 scales the decoder output by d_model^-0.5: unit-scale logits at the
    # start, and a starting loss near ln(vocab).
    return T5(config).init_weights()


def encode(model: T5, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return model.encoder(input_ids, attention_mask)


# (states (B, K, d), the marker id each state belongs to (B, K), present (B, K)): see pointer_keys
PointerKeys = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def word_states(encoded: torch.Tensor, attention_mask: torch.Tensor, marker_mask: torch.Tensor,
                input_ids: torch.Tensor, eos_id: int) -> PointerKeys:
    """Each word's encoder state: the mean over its marker, its pieces and its lexicon piece.

    Returns (states (B, W, d), the word's marker id (B, W), present (B, W)) for W = the most words
    in a row. A position belongs to the nearest marker before it; the prefix, eos and padding to none.
    """
    word = marker_mask.long().cumsum(-1) - 1  # (B, T): word number of each position, -1 before the first
    member = (word >= 0) & attention_mask.bool() & (input_ids != eos_id)
    n_words = max(1, int(marker_mask.sum(-1).max()))
    numbers = torch.arange(n_words, device=word.device)
    # (B, W, T) membership: a matmul pools, deterministic on GPU where scatter_add is not
    belongs = (word[:, None, :] == numbers[None, :, None]) & member[:, None, :]
    counts = belongs.sum(-1)  # (B, W)
    states = (belongs.to(encoded.dtype) @ encoded) / counts.clamp_min(1)[:, :, None].to(encoded.dtype)
    marker_ids = ((belongs & marker_mask[:, None, :]) * input_ids[:, None, :]).sum(-1)  # one marker per word
    return states, marker_ids, counts > 0


def pointer_keys(model: T5, encoded: torch.Tensor, attention_mask: torch.Tensor,
                 marker_mask: torch.Tensor, input_ids: torch.Tensor) -> PointerKeys | None:
    """What the pointer term of span_logits points at, by ``config.span_pointer``; None without one.

    T5's tied output row of marker <m3> is a fixed embedding that says "word 3" and nothing about
    the word, so plain T5 learns where spans usually start (word 0) rather than which words carry
    sentiment. The pointer term scores a marker by the decoder state's dot product with the
    encoder's state of its word: pointer-network copying, no new weights. ``"word"`` (the default)
    pools the states of the word's marker, pieces and lexicon piece (word_states); ``true`` (models
    trained before it) takes the marker's state alone, which a probe found to know little about the
    word after it. Computed once per encoded batch: decoding reuses it for every decoder step.
    """
    pointer = getattr(model.config, "span_pointer", None)
    if pointer == "word":
        return word_states(encoded, attention_mask, marker_mask, input_ids, model.config.eos_token_id)
    if pointer is True:
        return encoded, input_ids, marker_mask
    return None


def span_logits(model: T5, encoded: torch.Tensor, attention_mask: torch.Tensor,
                decoder_input_ids: torch.Tensor, keys: PointerKeys | None) -> torch.Tensor:
    """Decoder logits (B, S, V); with pointer keys (pointer_keys) each marker's logit adds its pointer term.

    encoded: (B, T, d) encoder output; keys: (states (B, K, d), marker ids (B, K), present (B, K)).
    """
    hidden, _ = model.decoder.decode(decoder_input_ids, encoded, attention_mask)  # (B, S, d)
    scaled = hidden * model.config.d_model**-0.5
    logits = model.lm_head(scaled if model.config.scale_decoder_outputs else hidden)
    if keys is not None:
        states, marker_ids, present = keys
        content = (scaled @ states.transpose(1, 2)) * present[:, None, :]  # (B, S, K), zero where no word
        index = marker_ids[:, None, :].expand(-1, hidden.shape[1], -1)
        logits = logits.scatter_add(-1, index, content.to(logits.dtype))
    return logits


def marker_logits(model: T5, hidden: torch.Tensor, keys: PointerKeys | None,
                  marker_ids: torch.Tensor, marker_index: torch.Tensor) -> torch.Tensor:
    """span_logits' logits of the markers of words 0..W-1 alone: (B, S, W) from decoder states (B, S, d).

    marker_ids (W,): the vocabulary id of each word's marker; marker_index (V,): the word number of
    each vocabulary id, -1 for other pieces. Constrained decoding allows no other token, so the
    other rows of the output layer (8,000 and more) are not computed.
    """
    scaled = hidden * model.config.d_model**-0.5
    weight = model.lm_head.weight
    if callable(weight):  # a dynamically quantized Linear (int8 on CPU) packs its weight
        weight = weight().dequantize()
    logits = (scaled if model.config.scale_decoder_outputs else hidden) @ weight[marker_ids].T.to(hidden.dtype)
    if keys is not None:
        states, key_marker_ids, present = keys
        word = marker_index[key_marker_ids]  # (B, K): the word each key points at, -1 for none
        keep = present & (word >= 0) & (word < marker_ids.shape[0])
        content = (scaled @ states.transpose(1, 2)) * keep[:, None, :]  # (B, S, K), zero where no word
        index = word.clamp(0, marker_ids.shape[0] - 1)[:, None, :].expand(-1, hidden.shape[1], -1)
        logits = logits.scatter_add(-1, index, content.to(logits.dtype))
    return logits


class RandomBitsDropout(torch.nn.Module):
    """nn.Dropout with a cheaper mask on CPU: four 16-bit random integers from each 64-bit draw,
    compared with p * 65536, instead of one random float per element (``bernoulli_``).

    Same distribution, p rounded to a multiple of 1/65536. Forward and backward took 7.5 ms against
    18.4 for nn.Dropout on a bf16 (64, 40, 1024) tensor on 2 cores; dropout's masks were 22% of the
    student's bf16 training step before.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), not {p}")
        self.p = p
        self.threshold = round(p * 65536) - 32768  # a kept element's int16 is at least this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return x * (keep.to(x.dtype) * (1 / (1 - self.p)))  # one product with x: autograd keeps the mask only

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_random_bits_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every nn.Dropout of a model (the T5 student or a MiniLM teacher) for RandomBitsDropout
    when it trains on CPU; on a GPU it is left as it is (GPUs have a fused dropout kernel). Weights and
    eval results are unchanged."""
    if next(model.parameters()).device.type != "cpu":
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(module, name, RandomBitsDropout(child.p))
    return model


def check_writable_model_dir(directory: str | Path) -> None:
    """Refuse to write a model over anything but nothing, an empty directory or a span-jobs model directory.

    A model is saved by swapping the whole directory, so writing over a folder of the user's own
    files would delete them. Called before training starts, so a refusal costs no training time.
    """
    directory = Path(directory)
    if not directory.exists() and not directory.is_symlink():
        return
    if not directory.is_dir():
        raise ModelError(f"{directory}: exists and is not a directory; choose another output directory")
    if any(directory.iterdir()) and not (directory / METADATA_FILE).is_file():
        raise ModelError(f"{directory}: not empty and not a span-jobs model directory (no {METADATA_FILE}); "
                         "refusing to replace it: choose a new or empty output directory")


# files a model directory may hold besides what save_pretrained (t5.py) and the tokenizer write
KEPT_BESIDE_MODEL = frozenset({"train_log.jsonl"})


def save_model(loaded: LoadedModel, directory: str | Path, weights_dtype: torch.dtype | None = None) -> Path:
    """Write the model directory atomically: into a temporary sibling, then rename.

    Weights go out as safetensors only; a reader never sees a half-written directory, and there is
    never a moment with no model there. Only a span-jobs model directory is replaced, and only if it
    holds nothing but what a save writes: anything else in it is the user's, and the save is refused.
    ``weights_dtype=torch.bfloat16`` halves the file (the shipped default model); loading casts back.
    """
    directory = Path(directory)
    check_writable_model_dir(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    save_pretrained(loaded.model, staging, weights_dtype)
    loaded.tokenizer.save(staging)
    (staging / METADATA_FILE).write_text(json.dumps(loaded.metadata.__dict__, indent=2, default=str) + "\n")
    if directory.exists():
        foreign = sorted({p.name for p in directory.iterdir()} - {p.name for p in staging.iterdir()} - KEPT_BESIDE_MODEL)
        if foreign:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelError(f"{directory}: holds files a model save does not write ({', '.join(foreign[:5])}); "
                             "refusing to replace it: move them or choose another output directory")
        retired = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, retired)
        os.replace(staging, directory)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, directory)
    loaded.directory = directory
    return directory


def load_model_dir(directory: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model directory (ours or a plain local Hugging Face T5). Safetensors only, no remote code."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: no such model directory")
    if not (directory / WEIGHTS_FILE).exists() and not (directory / f"{WEIGHTS_FILE}.index.json").exists():
        found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise ModelError(f"{directory}: no {WEIGHTS_FILE} (only safetensors weights are loaded; found {found})")
    try:
        tokenizer = Tokenizer.load(directory)
    except TokenizerError as exc:
        raise ModelError(str(exc)) from exc
    try:
        model = from_pretrained(directory, dtype)
    except Exception as exc:  # json, safetensors and torch each raise their own types here
        raise ModelError(f"{directory}: cannot load the T5 model: {type(exc).__name__}: {exc}") from exc
    if getattr(model.config, "span_pointer", None) not in POINTERS:
        raise ModelError(f"{directory}: unknown span_pointer {model.config.span_pointer!r} in config.json; "
                         f"this version knows {', '.join(map(repr, POINTERS))}")
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ModelError(
            f"{directory}: model vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
            f"({tokenizer.vocab_size})"
        )
    model.eval()
    return LoadedModel(model, tokenizer, ModelMetadata.read(directory), directory)


def default_model_ships() -> bool:
    return (DEFAULT_MODEL_DIR / WEIGHTS_FILE).exists()


def default_model_dir() -> Path:
    return DEFAULT_MODEL_DIR
