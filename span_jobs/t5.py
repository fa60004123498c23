"""T5 in plain torch: Hugging Face's T5ForConditionalGeneration's weights, parameter names and arithmetic.

Model directories stay Hugging Face's format (config.json, model.safetensors): transformers loads ours,
and this loads a plain local T5 directory. Why not transformers' class: importing it took 2.3-2.7 s of
every `span-jobs predict` start on 2 cores (it pulls torch._dynamo, torch.distributed.tensor and scipy),
a quarter of predicting 2,424 tweets. tests/test_t5.py checks this against transformers' T5.

What differs from transformers' class, by design: decoding's candidates share their tweet's encoder keys
(Attention); the position bias and the padding mask are added once per stack, not per layer; the tanh
GELU ("gelu_new") runs as torch's fused kernel, the same function to float rounding, except in bf16
inference on a CPU, where it is the erf GELU (tanh_gelu).
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Hugging Face's T5Config defaults: a config.json that leaves a key out means these
DEFAULTS = dict(
    vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=None, num_heads=8,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
    layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="relu", tie_word_embeddings=True,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=True, use_cache=True,
)


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """T5 v1.1's GELU, the tanh form (transformers writes it out in Python ops; this is torch's kernel).

    bf16 inference on a CPU computes the erf form: torch's bf16 tanh kernel ran 3.6x slower than erf's
    (4.8 against 1.3 ms on (4096, 1024); a tenth of the shipped model's time). The two forms differ by
    at most 4.7e-4 (near x = +-2.7): less than bf16's own rounding of outputs above ~0.1, several bf16
    steps for negative inputs, whose outputs are near 0. On the shipped model's 2,424 validation tweets
    the spans moved less than bf16 moves them from fp32's, the Jaccard by noise (bench/RESULTS.md).
    Training (gradients on) and fp32, which scoring and the retrain gate use, keep the tanh form.
    """
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled():
        return F.gelu(x)
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": tanh_gelu,
    "gelu_pytorch_tanh": tanh_gelu,
    "silu": F.silu,
}


class T5Config:
    """config.json's values as attributes: Hugging Face's T5 keys (DEFAULTS where absent) and any others
    a model directory keeps there (span-jobs' pointer and calibration)."""

    def __init__(self, **values):
        self.__dict__.update({**DEFAULTS, **values})
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        gate, _, activation = self.feed_forward_proj.rpartition("-")
        if gate not in ("", "gated"):
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r}: expected 'ACT' or 'gated-ACT'")
        self.is_gated_act = gate == "gated"
        self.dense_act_fn = "gelu_new" if self.feed_forward_proj == "gated-gelu" else activation
        if self.dense_act_fn not in ACTIVATIONS:
            raise ValueError(f"activation {self.dense_act_fn!r}: this T5 knows {', '.join(ACTIVATIONS)}")
        # tied input and output embeddings scale the decoder's output by d_model^-0.5 (T5's convention)
        if "scale_decoder_outputs" not in values:
            self.scale_decoder_outputs = self.tie_word_embeddings is not False

    @classmethod
    def read(cls, path: Path) -> "T5Config":
        values = json.loads(Path(path).read_text())
        if values.get("model_type", "t5") != "t5":
            raise ValueError(f"model_type {values['model_type']!r}, not t5")
        return cls(**values)

    def to_dict(self) -> dict:
        return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", **self.__dict__}


class LayerNorm(nn.Module):
    """T5's RMS norm: no mean, no bias; the mean square in fp32 for half-precision inputs."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # transformers' T5LayerNorm bit for bit: x * rsqrt(mean(x^2) + eps) computed in fp32, rounded to a
        # half-precision weight's dtype, then times the weight; one kernel for its five element-wise passes
        # (1.7x on bf16 (4096, 256)). Under autocast (fp32 weight, half input) the formula's output is fp32.
        if self.weight.dtype == torch.float32:
            x = x.float()
        return self.weight * F.rms_norm(x, x.shape[-1:], eps=self.variance_epsilon).to(self.weight.dtype)


class DenseReluDense(nn.Module):
    """The feed-forward block: act(wi x) or, gated (T5 v1.1), act(wi_0 x) * wi_1 x; then wo."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.gated = config.is_gated_act
        if self.gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = ACTIVATIONS[config.dense_act_fn]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(self.dropout(hidden))


@dataclass
class KeysValues:
    keys: torch.Tensor  # (rows, heads, positions, d_kv)
    values: torch.Tensor


class Attention(nn.Module):
    """T5 attention: no 1/sqrt(d) scaling; the relative position bias and the mask come in as one
    additive float mask. Rows of queries may share rows of keys (cross-attention while decoding)."""

    def __init__(self, config: T5Config, relative_bias: bool):
        super().__init__()
        self.heads, self.d_kv = config.num_heads, config.d_kv
        inner = self.heads * self.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.dropout = config.dropout_rate
        if relative_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, self.heads)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, h*d) -> (N, h, T, d)
        return x.unflatten(-1, (self.heads, self.d_kv)).transpose(1, 2)

    def project(self, x: torch.Tensor) -> KeysValues:
        return KeysValues(self.split_heads(self.k(x)), self.split_heads(self.v(x)))

    def forward(self, x: torch.Tensor, kv: KeysValues, mask: torch.Tensor | None) -> torch.Tensor:
        """x (N, q, d_model); kv: keys and values (N / g, h, k, d_kv); mask: additive, (N / g or 1, h or 1, q, k).

        With g > 1 (decoding's second step: a tweet's g first-word candidates, all attending to its
        encoder states), a key row's g query rows run as g*q query positions of one row: one copy of
        the keys instead of g, 10x faster on 2 CPU cores than sdpa over copies (2.1 against 22 ms per
        layer for 1,200 candidates). The mask must then be the same for the g rows.
        """
        rows, queries, _ = x.shape
        groups = rows // kv.keys.shape[0]
        query = self.split_heads(self.q(x))  # (N, h, q, d)
        if groups > 1:  # (N, h, q, d) -> (N/g, h, g*q, d)
            query = query.unflatten(0, (-1, groups)).transpose(1, 2).flatten(2, 3)
        out = F.scaled_dot_product_attention(query, kv.keys, kv.values, attn_mask=mask, scale=1.0,
                                             dropout_p=self.dropout if self.training else 0.0)
        if groups > 1:  # (N/g, h, g*q, d) -> (N, h, q, d)
            out = out.unflatten(2, (groups, queries)).transpose(1, 2).flatten(0, 1)
        return self.o(out.transpose(1, 2).flatten(2))


class SelfAttentionLayer(nn.Module):
    def __init__(self, config: T5Config, relative_bias: bool):
        super().__init__()
        self.SelfAttention = Attention(config, relative_bias)
        self.layer_norm = LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: KeysValues | None) -> tuple[torch.Tensor, KeysValues]:
        normed = self.layer_norm(x)
        kv = self.SelfAttention.project(normed)
        if past is not None:
            kv = KeysValues(torch.cat([past.keys, kv.keys], 2), torch.cat([past.values, kv.values], 2))
        return x + self.dropout(self.SelfAttention(normed, kv, mask)), kv


class CrossAttentionLayer(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.EncDecAttention = Attention(config, relative_bias=False)
        self.layer_norm = LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, kv: KeysValues, mask: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.EncDecAttention(self.layer_norm(x), kv, mask))


class FeedForwardLayer(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = DenseReluDense(config)
        self.layer_norm = LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class Block(nn.Module):
    def __init__(self, config: T5Config, decoder: bool, relative_bias: bool):
        super().__init__()
        self.layer = nn.ModuleList([SelfAttentionLayer(config, relative_bias)]
                                   + ([CrossAttentionLayer(config)] if decoder else []) + [FeedForwardLayer(config)])


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position (key - query): exact near 0, logarithmic bins up to
    max_distance; a decoder (not bidirectional) sees only the past."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        bucket += (relative > 0).long() * buckets
        relative = relative.abs()
    else:
        relative = -relative.clamp_max(0)
    exact = buckets // 2
    large = exact + (torch.log(relative.float() / exact) / math.log(max_distance / exact) * (buckets - exact)).long()
    return bucket + torch.where(relative < exact, relative, large.clamp_max(buckets - 1))


@dataclass
class DecoderCache:
    """What a decoder step leaves for the next: each layer's self-attention keys and values so far
    (N rows), and its cross-attention keys and values of the encoder states (N / g rows)."""

    self_attention: list[KeysValues]
    cross_attention: list[KeysValues]

    @property
    def length(self) -> int:
        return self.self_attention[0].keys.shape[2]

    def repeat_rows(self, times: int) -> "DecoderCache":
        """Each row as ``times`` consecutive rows (candidates continuing it); the encoder's keys and
        values stay one per row: Attention lets a row's candidates share them."""
        repeated = [KeysValues(kv.keys.repeat_interleave(times, 0), kv.values.repeat_interleave(times, 0))
                    for kv in self.self_attention]
        return DecoderCache(repeated, self.cross_attention)


class Stack(nn.Module):
    """The encoder or the decoder: embeddings (shared), blocks, a final norm."""

    def __init__(self, config: T5Config, embed_tokens: nn.Embedding, decoder: bool):
        super().__init__()
        self.config, self.is_decoder = config, decoder
        self.embed_tokens = embed_tokens
        layers = config.num_decoder_layers if decoder else config.num_layers
        self.block = nn.ModuleList([Block(config, decoder, relative_bias=i == 0) for i in range(layers)])
        self.final_layer_norm = LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def position_bias(self, queries: int, keys: int, past: int, device: torch.device) -> torch.Tensor:
        """(1, heads, queries, keys): the first block's learned bias by relative position, used by every block."""
        key_positions = torch.arange(keys, device=device)[None, :]
        relative = key_positions - torch.arange(past, past + queries, device=device)[:, None]
        bucket = relative_position_bucket(relative, not self.is_decoder, self.config.relative_attention_num_buckets,
                                          self.config.relative_attention_max_distance)
        return self.block[0].layer[0].SelfAttention.relative_attention_bias(bucket).permute(2, 0, 1)[None]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder: (B, T) ids, (B, T) mask of 1 for tokens -> (B, T, d_model)."""
        if self.is_decoder:
            raise TypeError("a decoder stack runs through decode()")
        x = self.dropout(self.embed_tokens(input_ids))
        length = input_ids.shape[1]
        mask = self.position_bias(length, length, 0, x.device).to(x.dtype)
        if attention_mask is not None:
            mask = mask + additive_mask(attention_mask, x.dtype)
        for block in self.block:
            x, _ = block.layer[0](x, mask, None)
            x = block.layer[-1](x)
        return self.dropout(self.final_layer_norm(x))

    def decode(self, input_ids: torch.Tensor, encoded: torch.Tensor | None, encoder_mask: torch.Tensor | None,
               cache: DecoderCache | None = None) -> tuple[torch.Tensor, DecoderCache]:
        """The decoder on new positions: input_ids (N, S) -> states (N, S, d_model) and the cache that
        continues them. Without a cache, S causal positions from the start (training); with one, the
        cache's encoder keys and values are used and ``encoded`` may be None. encoder_mask: (N / g, T),
        the rows of the encoder states (or cache) that N = g x those rows of queries attend to."""
        x = self.dropout(self.embed_tokens(input_ids))
        past = cache.length if cache is not None else 0
        length = input_ids.shape[1]
        self_mask = self.position_bias(length, past + length, past, x.device).to(x.dtype)
        if length > 1:  # causal: query i sees keys up to past + i
            visible = torch.ones(length, past + length, dtype=torch.bool, device=x.device).tril(past)
            self_mask = self_mask.masked_fill(~visible, torch.finfo(x.dtype).min)
        cross_mask = None if encoder_mask is None else additive_mask(encoder_mask, x.dtype)
        selves, crosses = [], []
        for i, block in enumerate(self.block):
            x, kv = block.layer[0](x, self_mask, cache.self_attention[i] if cache is not None else None)
            cross = cache.cross_attention[i] if cache is not None else block.layer[1].EncDecAttention.project(encoded)
            x = block.layer[1](x, cross, cross_mask)
            x = block.layer[2](x)
            selves.append(kv)
            crosses.append(cross)
        return self.dropout(self.final_layer_norm(x)), DecoderCache(selves, crosses)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 -> (B, 1, 1, T): 0 where attended, the dtype's lowest value where not (not -inf:
    a row with no tokens stays finite)."""
    masked = attention_mask[:, None, None, :] == 0
    return torch.zeros(masked.shape, dtype=dtype, device=masked.device).masked_fill(masked, torch.finfo(dtype).min)


class T5(nn.Module):
    """T5ForConditionalGeneration's parameters: shared embeddings, encoder, decoder, lm_head."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, self.shared, decoder=False)
        self.decoder = Stack(config, self.shared, decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings is not False:
            self.lm_head.weight = self.shared.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """The vocabulary logits (B, S, V) of decoder_input_ids' S positions."""
        hidden, _ = self.decoder.decode(decoder_input_ids, self.encoder(input_ids, attention_mask), attention_mask)
        return self.lm_head(self.scale_output(hidden))

    def scale_output(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * self.config.d_model**-0.5 if self.config.scale_decoder_outputs else hidden

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing's decoder inputs: the start token, then the labels but the last (-100 as padding)."""
        shifted = labels.new_full(labels.shape, self.config.decoder_start_token_id)
        shifted[..., 1:] = labels[..., :-1]
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def init_weights(self) -> "T5":
        """Hugging Face's T5 initialisation: normal, scaled by fan-in (Mesh TensorFlow's), norms at 1."""
        factor, d_model = self.config.initializer_factor, self.config.d_model
        for module in self.modules():
            if isinstance(module, LayerNorm):
                nn.init.constant_(module.weight, factor)
            elif isinstance(module, Attention):
                nn.init.normal_(module.q.weight, std=factor * (d_model * module.d_kv) ** -0.5)
                nn.init.normal_(module.k.weight, std=factor * d_model**-0.5)
                nn.init.normal_(module.v.weight, std=factor * d_model**-0.5)
                nn.init.normal_(module.o.weight, std=factor * (module.heads * module.d_kv) ** -0.5)
                if hasattr(module, "relative_attention_bias"):
                    nn.init.normal_(module.relative_attention_bias.weight, std=factor * d_model**-0.5)
            elif isinstance(module, DenseReluDense):
                for name in ("wi_0", "wi_1") if module.gated else ("wi",):
                    nn.init.normal_(getattr(module, name).weight, std=factor * d_model**-0.5)
                nn.init.normal_(module.wo.weight, std=factor * self.config.d_ff**-0.5)
        nn.init.normal_(self.shared.weight, std=factor)
        if self.lm_head.weight is not self.shared.weight:
            nn.init.normal_(self.lm_head.weight, std=factor)
        return self

    def tied_names(self) -> list[str]:
        """State-dict names that are other names' tensors: the files keep ``shared.weight`` alone."""
        tied = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
        return tied + (["lm_head.weight"] if self.lm_head.weight is self.shared.weight else [])


WEIGHTS_FILE = "model.safetensors"
# a plain T5 v1.0 checkpoint's unused parameter: the decoder's cross-attention has no position bias
IGNORED_WEIGHTS = frozenset({"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"})


def save_pretrained(model: T5, directory: Path, weights_dtype: torch.dtype | None = None) -> None:
    """config.json, generation_config.json and model.safetensors, as transformers' save_pretrained lays
    them out (tied weights once, as ``shared.weight``); ``weights_dtype`` converts the floating weights."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tied = set(model.tied_names())
    weights = {name: (t.to(weights_dtype) if weights_dtype and t.is_floating_point() else t).detach().contiguous()
               for name, t in model.state_dict().items() if name not in tied}
    save_file(weights, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    generation = {k: getattr(model.config, k) for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id")}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def from_pretrained(directory: Path, dtype: torch.dtype = torch.float32) -> T5:
    """The T5 of a directory of config.json and safetensors weights (one file, or shards and their
    index). Raises ValueError (or safetensors' errors) when the weights do not fit the config."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = T5Config.read(directory / "config.json")
    index = directory / f"{WEIGHTS_FILE}.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [WEIGHTS_FILE]
    weights = {}
    for name in files:
        weights.update(load_file(directory / name))
    model = T5(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = sorted(set(missing) - set(model.tied_names()))
    unexpected = sorted(set(unexpected) - IGNORED_WEIGHTS)
    if missing or unexpected:
        raise ValueError(f"weights do not fit config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(dtype).eval()
