"""SentencePiece tokenizer in T5's layout: pieces, then 100 sentinel ids used as word markers."""

import io
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from .data import SENTIMENTS
from .errors import TokenizerError
from .lexicon import LEXICON_SYMBOLS

SPIECE_FILE = "spiece.model"
N_SENTINELS = 100  # T5's <extra_id_0..99>; we use them as word markers
# Whole pieces for the words the model must emit or read as one token.
_USER_SYMBOLS = tuple(f"\u2581{s}" for s in SENTIMENTS)


class Tokenizer:
    """SentencePiece pieces plus T5 sentinels; ``<extra_id_i>`` has id ``vocab_size - 1 - i``."""

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.pad_id = self.sp.pad_id()
        self.eos_id = self.sp.eos_id()
        if self.pad_id < 0 or self.eos_id < 0:
            raise TokenizerError("the SentencePiece model needs pad and eos pieces (T5 uses pad=0, eos=1)")
        self.vocab_size = self.sp.get_piece_size() + N_SENTINELS
        self.label_ids = tuple(self.encode_words([s])[0][0] for s in SENTIMENTS)
        if len(set(self.label_ids)) != len(SENTIMENTS):
            raise TokenizerError("the sentiment labels do not start with distinct pieces in this vocabulary")
        # Lexicon features are on when the vocabulary has their pieces (ours do; a stock t5-base does not).
        lexicon_ids = tuple(self.sp.piece_to_id(s) for s in LEXICON_SYMBOLS)
        found = all(self.sp.id_to_piece(i) == s for i, s in zip(lexicon_ids, LEXICON_SYMBOLS))
        self.lexicon_ids: tuple[int, ...] | None = lexicon_ids if found else None

    def marker_id(self, i: int) -> int:
        return self.vocab_size - 1 - i

    def encode_words(self, words: list[str]) -> list[list[int]]:
        """Piece ids of each word, as if it followed a space.

        One thread: sentencepiece starts a thread pool per call otherwise, which took half the time of a
        tweet's call (and a list of 31,000 words encodes as fast in one thread).
        """
        return self.sp.encode(words, num_threads=1)

    def save(self, directory: Path) -> None:
        """spiece.model, and the same tokenizer as plain Hugging Face code loads it (save_hf_tokenizer)."""
        (directory / SPIECE_FILE).write_bytes(self.model_proto)
        save_hf_tokenizer(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        path = Path(directory) / SPIECE_FILE
        if not path.exists():
            raise TokenizerError(f"{directory}: no {SPIECE_FILE} (a SentencePiece T5 tokenizer is required)")
        try:
            return cls(path.read_bytes())
        except RuntimeError as exc:
            raise TokenizerError(f"{path}: not a SentencePiece model: {exc}") from exc


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, seed_words: Iterable[str] = ()) -> Tokenizer:
    """Train a unigram SentencePiece model with byte fallback, so any character round-trips.

    ``vocab_size`` counts pieces only; the 100 sentinels come on top.
    """
    corpus = [t for t in texts if t and t.strip()] + list(seed_words)
    if not corpus:
        raise TokenizerError("no text to train a tokenizer on")
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus),
            model_writer=buffer,
            vocab_size=vocab_size,
            model_type="unigram",
            byte_fallback=True,
            character_coverage=0.9995,
            user_defined_symbols=list(_USER_SYMBOLS + LEXICON_SYMBOLS),
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            hard_vocab_limit=False,  # tiny corpora (tests) get a smaller vocabulary instead of an error
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise TokenizerError(f"tokenizer training failed: {exc}") from exc
    return Tokenizer(buffer.getvalue())


def save_hf_tokenizer(directory: str | Path) -> None:
    """Write tokenizer.json and tokenizer_config.json beside spiece.model, for ``AutoTokenizer``.

    transformers 5 cannot read spiece.model without protobuf (it falls back to a tiktoken reader and
    fails), and its T5 tokenizer turns byte fallback off, so characters outside the vocabulary
    (``{``, ``<``, emoji) would become <unk> where the project uses their bytes. So the tokenizer
    is converted once here, with byte fallback on, and saved as a generic fast tokenizer: plain
    ``AutoTokenizer.from_pretrained(dir)`` then gives the project's token ids, sentinels included.
    """
    import tempfile

    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import decoders, models
    from transformers import AutoTokenizer

    directory = Path(directory)
    with tempfile.TemporaryDirectory() as scratch:  # convert from spiece.model alone, as T5 would
        (Path(scratch) / SPIECE_FILE).write_bytes((directory / SPIECE_FILE).read_bytes())
        t5_config = {"tokenizer_class": "T5Tokenizer", "extra_ids": N_SENTINELS, "model_max_length": 512}
        (Path(scratch) / "tokenizer_config.json").write_text(json.dumps(t5_config))
        converted = AutoTokenizer.from_pretrained(scratch, local_files_only=True)
    backend: FastTokenizer = converted.backend_tokenizer
    vocab = [tuple(entry) for entry in json.loads(backend.to_str())["model"]["vocab"]]
    backend.model = models.Unigram(vocab, unk_id=converted.unk_token_id, byte_fallback=True)
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581",
                                                                                    prepend_scheme="always")])
    backend.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json as written, byte fallback kept
        "model_max_length": 512,
        "eos_token": converted.eos_token, "pad_token": converted.pad_token, "unk_token": converted.unk_token,
        "additional_special_tokens": [f"<extra_id_{i}>" for i in range(N_SENTINELS)],
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
