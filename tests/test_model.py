"""T5 presets, the model directory format (safetensors only), and finding models by name."""

import json
import shutil

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from span_jobs.model import (
    METADATA_FILE,
    PRESETS,
    WEIGHTS_FILE,
    LoadedModel,
    ModelError,
    ModelMetadata,
    RandomBitsDropout,
    build_model,
    load_model_dir,
    save_model,
    use_random_bits_dropout,
)
from span_jobs.registry import Registry, load_model, resolve_model_dir

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def sample_inputs(tokenizer):
    ids = [tokenizer.sp.encode("i love this day so much"), tokenizer.sp.encode("ugh")]
    width = max(map(len, ids))
    input_ids = torch.tensor([x + [tokenizer.pad_id] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    decoder = torch.tensor([[0, tokenizer.marker_id(0)], [0, tokenizer.marker_id(1)]])
    return dict(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder)


def logits(model, tokenizer):
    model.eval()
    with torch.no_grad():
        return model(*sample_inputs(tokenizer).values())


def test_tiny_preset_builds_with_the_tokenizer_vocabulary(tokenizer):
    model = build_model("tiny", tokenizer)
    config = model.config
    for key, value in PRESETS["tiny"].items():
        assert getattr(config, key) == value
    assert config.vocab_size == tokenizer.vocab_size
    assert config.pad_token_id == tokenizer.pad_id == config.decoder_start_token_id
    assert config.eos_token_id == tokenizer.eos_id
    assert config.d_kv * config.num_heads == config.d_model
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_build_is_seeded(tokenizer):
    a, b, c = build_model("tiny", tokenizer, seed=1), build_model("tiny", tokenizer, seed=1), build_model("tiny", tokenizer, seed=2)
    assert torch.equal(logits(a, tokenizer), logits(b, tokenizer))
    assert not torch.equal(logits(a, tokenizer), logits(c, tokenizer))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_has_a_valid_shape(preset):
    # checked without building the big ones: heads must divide the width, both stacks must exist
    sizes = PRESETS[preset]
    assert set(sizes) == {"d_model", "d_ff", "num_heads", "num_layers", "num_decoder_layers"}
    assert sizes["d_model"] % sizes["num_heads"] == 0
    assert min(sizes.values()) >= 1


def test_unknown_preset_names_the_choices(tokenizer):
    with pytest.raises(ModelError, match="unknown preset 'huge'") as info:
        build_model("huge", tokenizer)
    for name in PRESETS:
        assert name in str(info.value)


def test_initial_loss_is_near_ln_vocab(tokenizer):
    # the lm_head re-initialisation: HF's std 1.0 would start near 35
    model = build_model("tiny", tokenizer)
    inputs = sample_inputs(tokenizer)
    labels = torch.tensor([[tokenizer.marker_id(0), tokenizer.eos_id], [tokenizer.marker_id(1), tokenizer.eos_id]])
    with torch.no_grad():
        logits = model(inputs["input_ids"], inputs["attention_mask"], model.shift_right(labels))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    assert abs(loss.item() - torch.log(torch.tensor(float(tokenizer.vocab_size))).item()) < 1.5


def test_save_model_writes_safetensors_and_no_pickle(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", WEIGHTS_FILE, "spiece.model", METADATA_FILE} <= names
    assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)], names
    metadata = json.loads((tiny_model_dir / METADATA_FILE).read_text())
    assert metadata["version"] == "tiny-untrained-test"
    assert metadata["preset"] == "tiny"
    # the atomic write leaves no staging or retired directories behind
    assert not [p.name for p in tiny_model_dir.parent.iterdir() if p.name.startswith(".")]


def test_save_model_replaces_an_existing_directory(tokenizer, tmp_path):
    target = tmp_path / "m"
    first = LoadedModel(build_model("tiny", tokenizer, seed=1), tokenizer, ModelMetadata("v1", "t"))
    second = LoadedModel(build_model("tiny", tokenizer, seed=2), tokenizer, ModelMetadata("v2", "t"))
    save_model(first, target)
    (target / "train_log.jsonl").write_text("{}\n")  # what training keeps beside the weights
    save_model(second, target)
    assert load_model_dir(target).version == "v2"
    assert not (target / "train_log.jsonl").exists()  # the directory was swapped whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    (target / "stale.txt").write_text("a file the user put there")
    with pytest.raises(ModelError, match="stale.txt"):  # never deleted with the old model
        save_model(first, target)
    assert load_model_dir(target).version == "v2" and (target / "stale.txt").exists()


def test_load_round_trip_gives_identical_logits(tokenizer, tmp_path):
    model = build_model("tiny", tokenizer, seed=5)
    before = logits(model, tokenizer)
    metadata = ModelMetadata(version="rt-1", created_at="2024-01-01T00:00:00Z", preset="tiny", data_digest="abc",
                             validation={"jaccard": 0.5}, training={"command": "x"})
    directory = save_model(LoadedModel(model, tokenizer, metadata), tmp_path / "rt")
    loaded = load_model_dir(directory)
    assert torch.equal(logits(loaded.model, tokenizer), before)
    assert loaded.version == "rt-1"
    assert loaded.metadata == metadata
    assert loaded.directory == directory
    assert loaded.tokenizer.model_proto == tokenizer.model_proto
    assert not loaded.model.training  # loaded for inference


def test_saved_models_load_with_plain_transformers(tokenizer, tmp_path):
    model = build_model("tiny", tokenizer).eval()
    directory = save_model(LoadedModel(model, tokenizer, ModelMetadata(version="a", created_at="")), tmp_path / "a")
    theirs = T5ForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(theirs(**sample_inputs(tokenizer)).logits, logits(model, tokenizer), atol=1e-5)


def test_plain_hugging_face_directory_loads_and_gets_a_version(tokenizer, tmp_path):
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=2,
                      num_decoder_layers=1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    directory = tmp_path / "my-t5"
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "spiece.model").write_bytes(tokenizer.model_proto)
    assert not (directory / METADATA_FILE).exists()
    loaded = load_model_dir(directory)
    assert loaded.version == "hf-my-t5"
    with torch.no_grad():
        theirs = model.eval()(**sample_inputs(tokenizer)).logits
    assert torch.allclose(logits(loaded.model, tokenizer), theirs, atol=1e-5)
    # and it serves: spans of its own words, offsets into the raw text
    from span_jobs.extract import SpanExtractor

    [result] = SpanExtractor(loaded, device="cpu").extract(["  i love this day  "], ["positive"])
    assert "  i love this day  "[result.start : result.end] == result.span != ""


def test_pickle_only_directory_is_refused(tokenizer, tmp_path):
    directory = tmp_path / "old"
    directory.mkdir()
    (directory / "pytorch_model.bin").write_bytes(b"a pickle we must never open")
    (directory / "config.json").write_text("{}")
    (directory / "spiece.model").write_bytes(tokenizer.model_proto)
    with pytest.raises(ModelError, match="safetensors") as info:
        load_model_dir(directory)
    assert "pytorch_model.bin" in str(info.value)


def test_missing_directory_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        load_model_dir(tmp_path / "absent")


def test_directory_without_tokenizer_is_a_model_error(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "no-tok")
    (copy / "spiece.model").unlink()
    with pytest.raises(ModelError, match="spiece.model"):
        load_model_dir(copy)


def test_unreadable_metadata_is_a_model_error(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "bad-meta")
    (copy / METADATA_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=METADATA_FILE):
        load_model_dir(copy)


def test_model_smaller_than_tokenizer_is_refused(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "small-vocab")
    config = json.loads((copy / "config.json").read_text())
    small = T5ForConditionalGeneration(T5Config(**{**config, "vocab_size": config["vocab_size"] - 50}))
    shutil.rmtree(copy)
    small.save_pretrained(copy, safe_serialization=True)
    shutil.copy(tiny_model_dir / "spiece.model", copy / "spiece.model")
    with pytest.raises(ModelError, match="smaller than the tokenizer"):
        load_model_dir(copy)


def test_corrupt_weights_are_a_model_error(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "corrupt")
    (copy / WEIGHTS_FILE).write_bytes(b"\x00garbage" * 8)
    with pytest.raises(ModelError, match="corrupt"):
        load_model_dir(copy)


def test_resolve_path_spec(tmp_path):
    assert resolve_model_dir(tmp_path / "x") == tmp_path / "x"
    assert resolve_model_dir(str(tmp_path)) == tmp_path


def test_resolve_promoted_gives_the_champion(tokenizer, tmp_path):
    registry = Registry(tmp_path / "registry")
    for version, seed in (("m-1", 1), ("m-2", 2)):
        model = build_model("tiny", tokenizer, seed=seed)
        save_model(LoadedModel(model, tokenizer, ModelMetadata(version, "t")), registry.new_model_dir(version))
    registry.promote("m-1", 0.5)
    assert resolve_model_dir("promoted", registry.root) == (registry.models_dir / "m-1").resolve()
    registry.promote("m-2", 0.6)
    assert resolve_model_dir("promoted", registry.root) == (registry.models_dir / "m-2").resolve()
    assert load_model("promoted", registry.root).version == "m-2"
    assert json.loads((registry.root / "champion.json").read_text())["version"] == "m-2"
    assert len((registry.root / "promotions.jsonl").read_text().splitlines()) == 2


def test_promoting_a_missing_model_is_refused(tmp_path):
    with pytest.raises(ModelError, match="holds no model"):
        Registry(tmp_path).promote("never-written", 0.9)


def test_tests_never_touch_the_real_home():
    # conftest points SPAN_JOBS_HOME (registry, database, inbox) and PREFECT_HOME at a session temp dir
    import os
    from pathlib import Path

    from span_jobs import settings

    home = Path("~/.span-jobs").expanduser()
    assert settings.home() != home and home not in settings.registry_root().parents
    assert Path(os.environ["PREFECT_HOME"]).parent == settings.home().parent
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_bfloat16_weights_halve_the_file_and_load_back_as_float32(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    from span_jobs.extract import SpanExtractor

    loaded = load_model_dir(tiny_model_dir)
    save_model(loaded, tmp_path / "bf16", weights_dtype=torch.bfloat16)
    full = (tiny_model_dir / "model.safetensors").stat().st_size
    half = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert half < 0.6 * full  # tied embeddings stay one tensor, not three copies
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    back = load_model_dir(tmp_path / "bf16")
    assert next(back.model.parameters()).dtype == torch.float32
    texts = ["so happy with this new phone", "  worst   day ever  ", "ok"]
    spans = [(r.start, r.end) for r in SpanExtractor(back, device="cpu").extract(texts, ["positive", "negative", "neutral"])]
    assert all(0 <= s <= e <= len(t) for (s, e), t in zip(spans, texts))


def test_an_unknown_span_pointer_is_refused_at_load(tiny_model_dir, tmp_path):
    """A typo in config.json must not silently fall back to another pointer."""
    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    assert config["span_pointer"] == "word"
    config["span_pointer"] = "words"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="unknown span_pointer 'words'"):
        load_model_dir(directory)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_bits_dropout_drops_at_its_rate_and_keeps_the_mean(dtype):
    torch.manual_seed(0)
    dropout = RandomBitsDropout(0.1).train()
    x = torch.ones(1_000_003, dtype=dtype, requires_grad=True)  # not a multiple of 4: the tail gets bits too
    y = dropout(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.002  # ~6 standard errors
    assert torch.allclose(y[kept].float(), torch.full_like(y[kept].float(), 1 / 0.9), rtol=1e-2)
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # the gradient flows through the kept elements only
    assert not torch.equal(dropout(x), dropout(x))  # a fresh mask every call


def test_random_bits_dropout_is_the_identity_in_eval_and_at_zero():
    x = torch.randn(4, 7)
    assert torch.equal(RandomBitsDropout(0.3).eval()(x), x)
    assert torch.equal(RandomBitsDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="dropout"):
        RandomBitsDropout(1.0)


def test_swapping_dropout_leaves_weights_and_eval_outputs_alone(tokenizer):
    model = build_model("tiny", tokenizer, seed=0)
    before = logits(model, tokenizer)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    use_random_bits_dropout(model)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert sum(isinstance(m, RandomBitsDropout) for m in model.modules()) > 0
    assert model.state_dict().keys() == state.keys()
    assert torch.equal(model.state_dict()["shared.weight"], state["shared.weight"])
    assert torch.equal(logits(model, tokenizer), before)
