"""span_jobs.t5 against transformers' T5ForConditionalGeneration: same weights, same outputs, same files."""

import pytest
import torch
from transformers import T5Config as HFConfig
from transformers import T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5LayerNorm

from span_jobs.t5 import (T5, DecoderCache, LayerNorm, T5Config, from_pretrained, relative_position_bucket,
                          save_pretrained, tanh_gelu)

SIZES = dict(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=3, num_decoder_layers=2,
             relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0)


def twins(feed_forward_proj: str = "gated-gelu") -> tuple[T5ForConditionalGeneration, T5]:
    """A random transformers T5 and ours with its weights."""
    torch.manual_seed(0)
    theirs = T5ForConditionalGeneration(HFConfig(**SIZES, feed_forward_proj=feed_forward_proj)).eval()
    ours = T5(T5Config(**SIZES, feed_forward_proj=feed_forward_proj)).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows of 30 tokens (longer than the bucket distance), the second padded after 11; three decoder steps."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 120, (2, 30), generator=generator)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 11:] = 0
    return input_ids, mask, torch.randint(2, 120, (2, 3), generator=generator)


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
def test_encoder_and_teacher_forced_decoder_match_transformers(feed_forward_proj):
    theirs, ours = twins(feed_forward_proj)
    input_ids, mask, decoder_ids = batch()
    with torch.no_grad():
        expected = theirs(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        encoded = ours.encoder(input_ids, mask)
        logits = ours(input_ids, mask, decoder_ids)
    real = mask.bool()
    assert torch.allclose(encoded[real], expected.encoder_last_hidden_state[real], atol=1e-5)
    assert torch.allclose(logits, expected.logits, atol=1e-5)


def test_cached_steps_and_shared_encoder_keys_match_the_whole_sequence():
    """Step 1 on the start token, then k candidates per row continuing it, sharing their row's encoder
    keys (the extractor's decoding): the same states as each candidate's whole sequence at once."""
    _, ours = twins()
    input_ids, mask, _ = batch()
    k, start = 3, torch.zeros(2, 1, dtype=torch.long)
    candidates = torch.tensor([[5], [6], [7], [8], [9], [10]])  # (2 * k, 1), row-major
    with torch.no_grad():
        encoded = ours.encoder(input_ids, mask)
        first, cache = ours.decoder.decode(start, encoded, mask)
        second, longer = ours.decoder.decode(candidates, None, mask, cache.repeat_rows(k))
        whole, _ = ours.decoder.decode(torch.cat([start.repeat_interleave(k, 0), candidates], 1),
                                       encoded.repeat_interleave(k, 0), mask.repeat_interleave(k, 0))
    assert isinstance(longer, DecoderCache) and longer.length == 2
    assert longer.cross_attention[0].keys.shape[0] == 2  # one copy of the encoder keys per row, not k
    assert torch.allclose(first[:, 0], whole[::k, 0], atol=1e-5)
    assert torch.allclose(second[:, 0], whole[:, 1], atol=1e-5)


@pytest.mark.parametrize("weights, inputs, autocast", [(torch.float32, torch.float32, False),
                                                     (torch.bfloat16, torch.bfloat16, False),
                                                     (torch.float32, torch.bfloat16, True),
                                                     (torch.float32, torch.float32, True)])
def test_layer_norm_is_transformers_bit_for_bit(weights, inputs, autocast):
    """One fused kernel instead of T5's element-wise passes, the same numbers: inference in fp32 and bf16,
    training under autocast (fp32 weights; the residual stream fp32 or half), forward and backward."""
    generator = torch.Generator().manual_seed(0)
    weight = 1 + 0.3 * torch.randn(256, generator=generator)
    x = (3 * torch.randn(64, 20, 256, generator=generator)).to(inputs)
    ours, theirs = LayerNorm(256, 1e-6), T5LayerNorm(256, 1e-6)
    for norm in (ours, theirs):
        norm.weight.data = weight.clone()
        norm.to(weights)
    outputs = []
    for norm in (ours, theirs):
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = norm(leaf)
        out.float().square().sum().backward()
        outputs.append((out, leaf.grad, norm.weight.grad))
    (out, grad, weight_grad), (expected, expected_grad, expected_weight_grad) = outputs
    assert out.dtype == expected.dtype and torch.equal(out, expected)
    # backward: its own kernel, the same gradients to rounding (in bf16, to the last of its 8 bits)
    tolerance = dict(rtol=1e-5, atol=1e-4) if inputs == weights == torch.float32 else dict(rtol=2 ** -7, atol=2 ** -5)
    torch.testing.assert_close(grad.float(), expected_grad.float(), **tolerance)
    torch.testing.assert_close(weight_grad.float(), expected_weight_grad.float(), rtol=2 ** -7, atol=1e-2)


def test_the_tanh_gelu_is_computed_as_erf_for_bf16_inference_on_cpu_alone():
    x = torch.linspace(-8, 8, 4001)
    tanh_form, erf_form = torch.nn.functional.gelu(x, approximate="tanh"), torch.nn.functional.gelu(x)
    assert (tanh_form - erf_form).abs().max() < 4.8e-4  # the bound the docstring gives
    for no_gradients in (torch.inference_mode, torch.no_grad):
        with no_gradients():
            assert torch.equal(tanh_gelu(x), tanh_form)  # fp32: the tanh form
            assert torch.equal(tanh_gelu(x.bfloat16()), torch.nn.functional.gelu(x.bfloat16()))
            assert not torch.equal(tanh_gelu(x.bfloat16()), torch.nn.functional.gelu(x.bfloat16(), approximate="tanh"))
    # gradients on (training; under bf16 autocast the activations are bf16): the tanh form it is trained with
    trained = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tanh_gelu(trained), torch.nn.functional.gelu(trained, approximate="tanh"))
    _, ours = twins()  # "gated-gelu" models run it
    assert all(block.layer[-1].DenseReluDense.act is tanh_gelu for block in [*ours.encoder.block, *ours.decoder.block])


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            assert torch.equal(relative_position_bucket(relative, bidirectional, buckets, distance),
                               T5Attention._relative_position_bucket(relative, bidirectional, buckets, distance))


def test_files_round_trip_with_transformers(tmp_path):
    theirs, ours = twins()
    ours.config.span_pointer = "word"  # a key of ours travels in config.json
    save_pretrained(ours, tmp_path / "ours", weights_dtype=torch.bfloat16)
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    input_ids, mask, decoder_ids = batch()
    with torch.no_grad():
        loaded_by_them = T5ForConditionalGeneration.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
        assert loaded_by_them.config.span_pointer == "word"
        expected = loaded_by_them(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        reloaded = from_pretrained(tmp_path / "ours")
        assert reloaded.config.span_pointer == "word" and not reloaded.training
        assert torch.allclose(reloaded(input_ids, mask, decoder_ids), expected, atol=1e-5)
        assert torch.allclose(from_pretrained(tmp_path / "theirs")(input_ids, mask, decoder_ids),
                              ours(input_ids, mask, decoder_ids), atol=1e-5)
    assert reloaded.lm_head.weight is reloaded.shared.weight is reloaded.encoder.embed_tokens.weight


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    _, ours = twins()
    save_pretrained(ours, tmp_path / "m")
    config = (tmp_path / "m" / "config.json").read_text()
    (tmp_path / "m" / "config.json").write_text(config.replace('"num_layers": 3', '"num_layers": 4'))
    with pytest.raises(ValueError, match="missing.*encoder.block.3"):
        from_pretrained(tmp_path / "m")


def test_initialisation_follows_transformers_scales():
    """Random weights with the spread transformers' T5 gives each parameter (training depends on it)."""
    sizes = {**SIZES, "d_model": 64, "d_ff": 256, "vocab_size": 500}
    torch.manual_seed(0)
    theirs = T5ForConditionalGeneration(HFConfig(**sizes, feed_forward_proj="gated-gelu")).state_dict()
    torch.manual_seed(0)
    ours = T5(T5Config(**sizes, feed_forward_proj="gated-gelu")).init_weights().state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert tensor.std().item() == pytest.approx(theirs[name].std().item(), rel=0.25, abs=1e-6), name


def test_sharded_weights_load(tmp_path):
    """A checkpoint transformers saved in shards (model.safetensors.index.json and its files)."""
    theirs, ours = twins()
    theirs.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    input_ids, mask, decoder_ids = batch()
    with torch.no_grad():
        assert torch.allclose(from_pretrained(tmp_path / "sharded")(input_ids, mask, decoder_ids),
                              ours(input_ids, mask, decoder_ids), atol=1e-5)
