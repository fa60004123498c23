"""Starting the T5's piece embeddings from a pretrained WordPiece table (a tiny BERT built here)."""

import pytest
import torch

from span_jobs.model import build_model
from span_jobs.teacher import pretrained_piece_embeddings, start_from_pretrained_embeddings


def test_pieces_take_the_mean_of_their_wordpieces_projected_to_unit_scale(tokenizer, wordpiece_dir):
    vectors, found = pretrained_piece_embeddings(tokenizer, 16, wordpiece_dir)
    sp = tokenizer.sp
    assert vectors.shape == (sp.get_piece_size(), 16) and found.shape == (sp.get_piece_size(),)
    for word in ["happy", "sad", "love", "work"]:
        assert found[sp.piece_to_id(f"\u2581{word}")], word
    for i in range(sp.get_piece_size()):  # control and byte pieces keep their random start
        if sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i):
            assert not found[i]
    spread = vectors[found].std(0)  # unit scale along each pretrained direction, zero past the table's rank
    used = spread > 0.5
    assert used.sum() >= 4
    assert spread[used] == pytest.approx(torch.ones(int(used.sum())), abs=1e-3)
    assert (spread[~used] < 1e-3).all()
    assert vectors[~found].abs().sum() == 0
    # the same wordpieces give the same vector, whatever the case: MiniLM's vocabulary is lower-case
    upper = sp.piece_to_id("\u2581Happy")
    if upper != sp.unk_id() and found[upper]:
        assert torch.allclose(vectors[upper], vectors[sp.piece_to_id("\u2581happy")])


def test_start_from_pretrained_embeddings_overwrites_only_known_pieces(tokenizer, wordpiece_dir):
    model = build_model("tiny", tokenizer, seed=0)
    before = model.shared.weight.detach().clone()
    changed = start_from_pretrained_embeddings(model, tokenizer, wordpiece_dir)
    after = model.shared.weight.detach()
    vectors, found = pretrained_piece_embeddings(tokenizer, model.config.d_model, wordpiece_dir)
    assert changed == int(found.sum()) > 0
    n = len(found)
    assert torch.allclose(after[:n][found], vectors[found])
    assert torch.equal(after[:n][~found], before[:n][~found])
    assert torch.equal(after[n:], before[n:])  # the word markers are untouched
    assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()  # still tied
