"""Reading labeled and raw tweets from CSV and Parquet; rejected rows; the fixed validation split."""

import math
import random

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from span_jobs.data import (
    DataError,
    LabeledData,
    LabeledTweet,
    is_validation,
    normalize_sentiment,
    read_labeled,
    read_raw,
    split_train_validation,
)

GOOD = [
    {"textID": "a1", "text": " Sooo SAD I will miss you here", "selected_text": "Sooo SAD", "sentiment": "negative"},
    {"textID": "a2", "text": "what a great day!!", "selected_text": "great day!!", "sentiment": "positive"},
    {"textID": "a3", "text": "going to the shop", "selected_text": "going to the shop", "sentiment": "neutral"},
]


def write_parquet(rows, path):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_read_labeled_csv_keeps_text_exactly(tmp_path, save_csv):
    data = read_labeled(save_csv(GOOD, tmp_path / "l.csv"))
    assert data.rejected == []
    assert [(t.tweet_id, t.text, t.selected_text, t.sentiment) for t in data.tweets] == [
        (r["textID"], r["text"], r["selected_text"], r["sentiment"]) for r in GOOD
    ]
    assert data.tweets[0].text.startswith(" Sooo")  # leading space kept: offsets point into raw text


def test_read_labeled_parquet_matches_csv(tmp_path, save_csv):
    from_csv = read_labeled(save_csv(GOOD, tmp_path / "l.csv"))
    from_parquet = read_labeled(write_parquet(GOOD, tmp_path / "l.parquet"))
    assert from_parquet.tweets == from_csv.tweets
    assert from_parquet.digest() == from_csv.digest()


def test_read_labeled_parquet_with_integer_ids(tmp_path):
    rows = [{**r, "textID": i} for i, r in enumerate(GOOD, start=10)]
    data = read_labeled(write_parquet(rows, tmp_path / "ints.parquet"))
    assert [t.tweet_id for t in data.tweets] == ["10", "11", "12"]


def test_read_labeled_directory_of_csv_and_parquet(tmp_path, save_csv, make_rows):
    csv_rows = make_rows(5, seed=10, id_prefix="c")
    parquet_rows = make_rows(7, seed=11, id_prefix="p")
    save_csv(csv_rows, tmp_path / "a.csv")
    write_parquet(parquet_rows, tmp_path / "b.parquet")
    (tmp_path / "notes.txt").write_text("not data")
    data = read_labeled(tmp_path)
    assert sorted(t.tweet_id for t in data.tweets) == sorted(r["textID"] for r in csv_rows + parquet_rows)
    assert data.rejected == []


def test_duplicate_ids_across_files_are_rejected_with_their_file(tmp_path, save_csv):
    save_csv(GOOD, tmp_path / "a.csv")
    write_parquet(GOOD[:1], tmp_path / "b.parquet")
    data = read_labeled(tmp_path)
    assert len(data.tweets) == 3
    [rejected] = data.rejected
    assert rejected.source.endswith("b.parquet")
    assert rejected.row_number == 1
    assert "duplicate" in rejected.reason and "a1" in rejected.reason


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv"):
        read_labeled(missing)


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no .csv or .parquet"):
        read_labeled(tmp_path)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_missing_column_names_file_and_column(tmp_path, save_csv, suffix):
    rows = [{k: v for k, v in r.items() if k != "selected_text"} for r in GOOD]
    path = tmp_path / f"cols.{suffix}"
    save_csv(rows, path) if suffix == "csv" else write_parquet(rows, path)
    with pytest.raises(DataError) as info:
        read_labeled(path)
    message = str(info.value)
    assert f"cols.{suffix}" in message
    assert "selected_text" in message


def test_unreadable_parquet_names_the_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="broken.parquet"):
        read_labeled(path)


def test_unusable_rows_are_returned_with_row_numbers(tmp_path, save_csv):
    rows = [
        GOOD[0],  # row 1: fine
        {"textID": "b2", "text": "", "selected_text": "x", "sentiment": "neutral"},  # row 2
        {"textID": "b3", "text": "   ", "selected_text": " ", "sentiment": "neutral"},  # row 3
        {"textID": "b4", "text": "happy days", "selected_text": "happy", "sentiment": "joy"},  # row 4
        {"textID": "b5", "text": "happy days", "selected_text": "sad", "sentiment": "positive"},  # row 5
        {"textID": "a1", "text": "another tweet", "selected_text": "another", "sentiment": "neutral"},  # row 6
        {"textID": "b7", "text": "ok then", "selected_text": "", "sentiment": "neutral"},  # row 7
        {"textID": "", "text": "no id", "selected_text": "no id", "sentiment": "neutral"},  # row 8
        GOOD[1],  # row 9: fine
    ]
    path = save_csv(rows, tmp_path / "mixed.csv")
    data = read_labeled(path)
    assert [t.tweet_id for t in data.tweets] == ["a1", "a2"]
    assert data.tweets[0].text == GOOD[0]["text"]  # the first a1 is kept, the later duplicate rejected
    reasons = {r.row_number: r.reason for r in data.rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert reasons[2] == "empty text"
    assert reasons[3] == "empty text"
    assert "unknown sentiment" in reasons[4] and "joy" in reasons[4]
    assert "not a substring" in reasons[5]
    assert "duplicate" in reasons[6]
    assert "selected_text" in reasons[7]
    assert "textID" in reasons[8]
    assert all(r.source == str(path) for r in data.rejected)
    assert len(data.tweets) + len(data.rejected) == len(rows)  # nothing dropped silently


def test_rejected_rows_are_logged(tmp_path, save_csv, caplog):
    rows = [GOOD[0], {"textID": "z", "text": "", "selected_text": "", "sentiment": "neutral"}]
    with caplog.at_level("WARNING", logger="span_jobs.data"):
        read_labeled(save_csv(rows, tmp_path / "l.csv"))
    assert "row 2" in caplog.text and "empty text" in caplog.text


def test_parquet_nulls_are_rejected_not_crashing(tmp_path):
    rows = [GOOD[0], {"textID": "n1", "text": None, "selected_text": None, "sentiment": None}]
    data = read_labeled(write_parquet(rows, tmp_path / "nulls.parquet"))
    assert [t.tweet_id for t in data.tweets] == ["a1"]
    assert [(r.row_number, r.reason) for r in data.rejected] == [(2, "empty text")]


def test_no_usable_rows_is_an_error(tmp_path, save_csv):
    rows = [{"textID": "z", "text": "", "selected_text": "", "sentiment": "neutral"}]
    with pytest.raises(DataError, match="no usable labeled rows"):
        read_labeled(save_csv(rows, tmp_path / "l.csv"))


def test_na_and_null_texts_stay_strings(tmp_path, save_csv):
    rows = [
        {"textID": "NA", "text": "NA", "selected_text": "NA", "sentiment": "neutral"},
        {"textID": "n2", "text": "null", "selected_text": "null", "sentiment": "neutral"},
        {"textID": "n3", "text": "N/A NaN None", "selected_text": "NaN", "sentiment": "negative"},
    ]
    data = read_labeled(save_csv(rows, tmp_path / "na.csv"))
    assert data.rejected == []
    assert [(t.tweet_id, t.text, t.selected_text) for t in data.tweets] == [
        ("NA", "NA", "NA"), ("n2", "null", "null"), ("n3", "N/A NaN None", "NaN")
    ]
    assert all(isinstance(t.text, str) for t in data.tweets)


def test_sentiment_labels_are_normalised_on_read(tmp_path, save_csv):
    rows = [{**GOOD[0], "sentiment": " Negative "}, {**GOOD[1], "sentiment": "POSITIVE"}]
    data = read_labeled(save_csv(rows, tmp_path / "l.csv"))
    assert [t.sentiment for t in data.tweets] == ["negative", "positive"]


def test_is_validation_is_deterministic_and_about_ten_percent():
    ids = [f"{i:08x}" for i in range(5000)]
    first = [is_validation(i) for i in ids]
    assert first == [is_validation(i) for i in ids]
    share = sum(first) / len(ids)
    assert 0.085 < share < 0.115
    assert not any(is_validation(i, percent=0) for i in ids)
    assert all(is_validation(i, percent=100) for i in ids)
    assert 0.27 < sum(is_validation(i, percent=30) for i in ids) / len(ids) < 0.33


def test_validation_split_is_pinned():
    # Champion and challenger must be compared on the same tweets across releases: changing the
    # hash would silently change the validation set. These memberships must never change.
    assert [i for i in range(40) if is_validation(f"t{i}")] == [0, 3, 11, 25, 34]


def test_split_train_validation_partitions(make_rows):
    tweets = [LabeledTweet(r["textID"], r["text"], r["selected_text"], r["sentiment"]) for r in make_rows(300)]
    train, validation = split_train_validation(tweets)
    assert len(train) + len(validation) == len(tweets)
    assert {t.tweet_id for t in train}.isdisjoint(t.tweet_id for t in validation)
    assert all(is_validation(t.tweet_id) for t in validation)
    assert validation  # 300 tweets at 10% always give some


def test_digest_is_order_independent_and_content_sensitive(make_rows):
    tweets = [LabeledTweet(r["textID"], r["text"], r["selected_text"], r["sentiment"]) for r in make_rows(50)]
    shuffled = tweets[:]
    random.Random(3).shuffle(shuffled)
    digest = LabeledData(tweets, []).digest()
    assert LabeledData(shuffled, []).digest() == digest
    assert len(digest) == 64
    t = tweets[0]
    for changed in (
        LabeledTweet(t.tweet_id, t.text, t.selected_text + "x", t.sentiment),
        LabeledTweet(t.tweet_id, t.text + "x", t.selected_text, t.sentiment),
        LabeledTweet(t.tweet_id + "x", t.text, t.selected_text, t.sentiment),
        LabeledTweet(t.tweet_id, t.text, t.selected_text, "neutral" if t.sentiment != "neutral" else "positive"),
    ):
        assert LabeledData([changed, *tweets[1:]], []).digest() != digest
    assert LabeledData(tweets[:-1], []).digest() != digest
    # rejected rows are not training data: they do not change the digest
    assert LabeledData(tweets, ["anything"]).digest() == digest


@pytest.mark.parametrize(
    ("value", "expected"),
    [("positive", "positive"), ("Positive ", "positive"), (" NEGATIVE", "negative"), ("neutral", "neutral"),
     (None, None), (math.nan, None), ("", None), ("   ", None)],
)
def test_normalize_sentiment(value, expected):
    assert normalize_sentiment(value) == expected


@pytest.mark.parametrize("value", ["joy", "pos", "positive!", 1, 0.5, True])
def test_normalize_sentiment_refuses_unknown_labels(value):
    with pytest.raises(ValueError, match="unknown sentiment"):
        normalize_sentiment(value)


def test_read_raw_accepts_textid_and_keeps_other_columns(tmp_path, save_csv):
    rows = [{"textID": "x1", "text": "hi there", "lang": "en"}, {"textID": "x2", "text": "NA", "lang": ""}]
    table = read_raw(save_csv(rows, tmp_path / "raw.csv"))
    assert table.column_names == ["textID", "text", "lang"]  # columns stay as in the file
    assert table.column("text").to_pylist() == ["hi there", "NA"]
    assert table.column("lang").to_pylist() == ["en", ""]


def test_read_raw_requires_text(tmp_path, save_csv):
    path = save_csv([{"id": "x1", "body": "hi"}], tmp_path / "raw.csv")
    with pytest.raises(DataError) as info:
        read_raw(path)
    assert "raw.csv" in str(info.value) and "text" in str(info.value)


def test_real_labeled_file_reads_with_every_row_accounted_for(real_labeled):
    data = read_labeled(real_labeled)
    n_rows = len(pd.read_csv(real_labeled, dtype=str, keep_default_na=False))
    assert len(data.tweets) + len(data.rejected) == n_rows
    assert len(data.tweets) > 20_000
    assert len(data.rejected) < 10
    assert all(t.selected_text in t.text for t in data.tweets)
    share = sum(is_validation(t.tweet_id) for t in data.tweets) / len(data.tweets)
    assert 0.09 < share < 0.11
