"""`span-jobs predict` as a user runs it, whole process, against the two baselines of issue 15, one run:

  (a) the seed's way on the same model: one `generate` per tweet, producing as many tokens as the
      gold span's text has pieces (the seed's T5 generated the span text)
  (b) Hugging Face batched `generate`, batches of 64 in input order, the same output lengths
  (c) `span-jobs predict` in a fresh process: start, model load, read, extract, write; the median of
      --repeat such runs (each printed). One run of (c) lasts ~8 s and swung 7.4-9.6 s with the same
      code on a shared 2-core machine, where (a) lasts minutes and averages such swings itself.
      And the same command on one tweet, the share of (c) that is not the model's work

The same labeled tweets (the validation split, sentiment given) for every way. Prints tweets/s,
the ratios c/a and c/b, and the Jaccard of (c) against the gold spans. With --against MODEL, also (c)
for that model, the two alternating three times each (median), to compare a candidate default model's
speed with today's in one run.

    python bench/predict_speed.py [--model default] [--n 3000] [--repeat 3] [--against runs/candidate]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from hf_t5 import transformers_t5

from span_jobs.codec import Codec
from span_jobs.data import read_labeled, split_train_validation
from span_jobs.metric import mean_jaccard
from span_jobs.registry import load_model

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweets" / "labeled.csv"
SPAN_JOBS = str(Path(sys.executable).with_name("span-jobs"))


@torch.inference_mode()
def seed_way(model, inputs: list[list[int]], lengths: list[int]) -> None:
    for ids, n in zip(inputs, lengths):
        ids = torch.tensor([ids])
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), min_new_tokens=n, max_new_tokens=n,
                       do_sample=False, num_beams=1)


@torch.inference_mode()
def hf_batched(model, codec: Codec, inputs: list[list[int]], lengths: list[int], batch_size: int = 64) -> None:
    for b in range(0, len(inputs), batch_size):
        batch = codec.pad(inputs[b: b + batch_size])
        n = max(lengths[b: b + batch_size])
        model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, min_new_tokens=n,
                       max_new_tokens=n, do_sample=False, num_beams=1)


def predict(model: str, source: Path, output: Path) -> float:
    started = time.perf_counter()
    subprocess.run([SPAN_JOBS, "predict", "--model", model, "--input", str(source), "--output", str(output),
                    "--device", "cpu"], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of (c), each a fresh process; their median is (c)")
    parser.add_argument("--against", help="another model whose `span-jobs predict` to time beside --model's")
    args = parser.parse_args()

    _, tweets = split_train_validation(read_labeled(args.data).tweets)
    tweets = tweets[: args.n]
    loaded = load_model(args.model)
    model, codec = transformers_t5(loaded.directory), Codec(loaded.tokenizer)
    inputs = [codec.span_input(codec.words(t.text), t.sentiment) for t in tweets]
    lengths = [max(1, len(loaded.tokenizer.sp.encode(t.selected_text))) + 1 for t in tweets]  # pieces + eos
    print(f"{len(tweets)} tweets of {args.data}'s validation split, sentiment given; model {loaded.version}; "
          f"{torch.get_num_threads()} threads; seed outputs {sum(lengths) / len(lengths):.1f} tokens on average")

    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "tweets.parquet"
        pd.DataFrame({"id": [t.tweet_id for t in tweets], "text": [t.text for t in tweets],
                      "sentiment": [t.sentiment for t in tweets]}).to_parquet(source)
        runs = [predict(args.model, source, Path(tmp) / "spans.parquet") for _ in range(args.repeat)]
        seconds["c"] = statistics.median(runs)
        # what the process costs before and after the model's work: the same command on one tweet
        one = Path(tmp) / "one.parquet"
        pd.read_parquet(source).head(1).to_parquet(one)
        fixed = predict(args.model, one, Path(tmp) / "one-span.parquet")
        spans = pd.read_parquet(Path(tmp) / "spans.parquet")["span"].tolist()
        jaccard = {"c": mean_jaccard(spans, [t.selected_text for t in tweets])}
        if args.against:
            # three timings each, alternating; the runs above are (c)'s alone, so neither median holds
            # a run the other side did not have
            times = {args.model: [], args.against: []}
            for _ in range(3):
                times[args.against].append(predict(args.against, source, Path(tmp) / "against.parquet"))
                times[args.model].append(predict(args.model, source, Path(tmp) / "spans.parquet"))
            median = {m: statistics.median(t) for m, t in times.items()}
            for m, t in median.items():
                print(f"span-jobs predict --model {m}: {len(tweets) / t:.1f} tweets/s (median of {len(times[m])})")
            print(f"{args.against} against {args.model}: {median[args.model] / median[args.against]:.2f}x the speed")
    started = time.perf_counter()
    seed_way(model, inputs, lengths)
    seconds["a"] = time.perf_counter() - started
    started = time.perf_counter()
    hf_batched(model, codec, inputs, lengths)
    seconds["b"] = time.perf_counter() - started

    names = {"a": "seed: one generate per tweet", "b": "HF generate, batches of 64",
             "c": "span-jobs predict (whole process)"}
    for key in "abc":
        extra = f"  jaccard {jaccard[key]:.4f}" if key in jaccard else ""
        print(f"({key}) {names[key]:<36} {len(tweets) / seconds[key]:8.1f} tweets/s{extra}")
    print(f"(c) runs: {', '.join(f'{t:.2f}' for t in runs)} s, median {seconds['c']:.2f} s; "
          f"one run's c/a {seconds['a'] / max(runs):.1f}x to {seconds['a'] / min(runs):.1f}x")
    print(f"c/a = {seconds['a'] / seconds['c']:.1f}x   c/b = {seconds['b'] / seconds['c']:.1f}x")
    print(f"(c) on one tweet: {fixed:.1f} s (start, imports, model load, read, write) = "
          f"{fixed / seconds['c']:.0%} of (c)'s {seconds['c']:.1f} s")


if __name__ == "__main__":
    main()
