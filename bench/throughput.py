"""Inference speed, four ways, same tweets, same model, one run:

  (a) the seed's way: one `generate` call per tweet
  (b) plain batched Hugging Face generation: batches of 64 in input order, padded, greedy
  (c) SpanExtractor, greedy: length-sorted token-budget batches, constrained two-step decoding
  (d) SpanExtractor as shipped: expected-Jaccard choice among 12 first x 12 last words
  (e) (d) with dynamic int8 quantization of the Linear layers (CPU)

Prints tweets/s, the ratios c/a, c/b, d/b and d/c, and each way's Jaccard (unconstrained outputs that do not
name a valid word span fall back to the whole tweet, and are counted). (a) and (b) call plain
`generate`, which knows nothing of the pointer term of our models (model.span_logits): their
speed is the comparison, their spans are not what the model would choose. Then the model's
arithmetic: FLOPs per tweet of (d) (counted by torch.utils.flop_counter), this CPU's fp32
matrix-multiply peak (measured here), and the share of that peak (d) runs at.

    python bench/throughput.py [--model default] [--data ../shared/data/tweets/labeled.csv] [--n 2000]
"""

import argparse
import cProfile
import pstats
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from span_jobs.codec import Codec
from span_jobs.data import read_labeled, split_train_validation
from span_jobs.extract import DECODING_CHOICES, SpanExtractor
from span_jobs.metric import mean_jaccard
from span_jobs.registry import load_model
from span_jobs.synthetic import synthetic_tweets

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweets" / "labeled.csv"


def spans_from_generated(codec: Codec, words_list, generated: torch.Tensor) -> tuple[list[str], int]:
    """Decode (start marker, end marker) from free generation; invalid output -> whole tweet."""
    spans, invalid = [], 0
    markers = codec.marker_index[generated.clamp(max=codec.marker_index.shape[0] - 1)]
    for words, row in zip(words_list, markers.tolist()):
        first, last = (row + [-1, -1])[:2]
        if 0 <= first <= last < len(words):
            start, end = words.span(first, last)
            spans.append(words.text[start:end])
        else:
            invalid += 1
            spans.append(words.text)
    return spans, invalid


@torch.inference_mode()
def seed_way(model, codec, words_list, sentiments):
    outputs = []
    for words, sentiment in zip(words_list, sentiments):
        ids = torch.tensor([codec.span_input(words, sentiment)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                             num_beams=1)
        outputs.append(out[0, 1:3].tolist() + [codec.tok.pad_id] * (2 - len(out[0, 1:3])))
    return torch.tensor(outputs)


@torch.inference_mode()
def hf_batched(model, codec, words_list, sentiments, batch_size=64):
    outputs = []
    for b in range(0, len(words_list), batch_size):
        batch = codec.pad([codec.span_input(w, s) for w, s in
                           zip(words_list[b: b + batch_size], sentiments[b: b + batch_size])])
        out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=3,
                             do_sample=False, num_beams=1)
        out = out[:, 1:3]
        if out.shape[1] < 2:
            out = torch.cat([out, out.new_full((out.shape[0], 2 - out.shape[1]), codec.tok.pad_id)], dim=1)
        outputs.append(out)
    return torch.cat(outputs)


def matmul_peak(size: int = 1024, repeats: int = 20) -> float:
    """This CPU's fp32 matrix-multiply rate, FLOP/s: the best of a few timed runs of one size."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="profile SpanExtractor and print the top functions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.data.exists():
        _, tweets = split_train_validation(read_labeled(args.data).tweets)
        source = f"{args.data} (validation split)"
        while len(tweets) < args.n:
            tweets = tweets + tweets
    else:
        tweets, source = synthetic_tweets(args.n, seed=11), "synthetic tweets"
    tweets = tweets[: args.n]
    loaded = load_model(args.model)
    extractor = SpanExtractor(loaded, device="cpu")
    codec, model = extractor.codec, extractor.model
    texts, sentiments, truth = [t.text for t in tweets], [t.sentiment for t in tweets], [t.selected_text for t in tweets]
    words_list = [codec.words(t) for t in texts]
    print(f"{len(tweets)} tweets from {source}; model {loaded.version} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters); {args.threads} threads")

    extractor.extract(texts[:64], sentiments[:64])  # warm-up: first calls allocate
    results = {}
    started = time.perf_counter()
    seed_spans, seed_invalid = spans_from_generated(codec, words_list, seed_way(model, codec, words_list, sentiments))
    results["a"] = (time.perf_counter() - started, seed_spans, seed_invalid)
    started = time.perf_counter()
    hf_spans, hf_invalid = spans_from_generated(codec, words_list, hf_batched(model, codec, words_list, sentiments))
    results["b"] = (time.perf_counter() - started, hf_spans, hf_invalid)
    greedy = SpanExtractor(loaded, device="cpu", **DECODING_CHOICES["greedy"])
    started = time.perf_counter()
    greedy_spans = [r.span for r in greedy.extract(texts, sentiments)]
    results["c"] = (time.perf_counter() - started, greedy_spans, 0)
    started = time.perf_counter()
    ours = [r.span for r in extractor.extract(texts, sentiments)]
    results["d"] = (time.perf_counter() - started, ours, 0)
    quantized = SpanExtractor(load_model(args.model), device="cpu", quantize_int8=True)
    quantized.extract(texts[:64], sentiments[:64])
    started = time.perf_counter()
    quantized_spans = [r.span for r in quantized.extract(texts, sentiments)]
    results["e"] = (time.perf_counter() - started, quantized_spans, 0)

    names = {"a": "seed: one generate per tweet", "b": "HF generate, batches of 64", "c": "SpanExtractor, greedy",
             "d": "SpanExtractor, expected Jaccard", "e": "(d), int8 dynamic"}
    for key, (seconds, spans, invalid) in results.items():
        print(f"({key}) {names[key]:<32} {len(tweets) / seconds:9.1f} tweets/s  jaccard {mean_jaccard(spans, truth):.4f}"
              f"  invalid outputs {invalid}")
    ratio = {k: results[k][0] for k in results}
    print(f"c/a = {ratio['a'] / ratio['c']:.1f}x   c/b = {ratio['b'] / ratio['c']:.1f}x   "
          f"d/b = {ratio['b'] / ratio['d']:.1f}x   e/b = {ratio['b'] / ratio['e']:.1f}x   "
          f"time d/c = {ratio['d'] / ratio['c']:.2f}x (expected Jaccard against greedy)")
    sample = min(512, len(texts))
    with FlopCounterMode(display=False) as counter:
        extractor.extract(texts[:sample], sentiments[:sample])
    flops_per_tweet = counter.get_total_flops() / sample
    peak = matmul_peak()
    achieved = flops_per_tweet * len(tweets) / ratio["d"]
    print(f"model FLOPs per tweet {flops_per_tweet / 1e9:.3f} G; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s "
          f"({args.threads} threads); (d) runs at {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of it")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        extractor.extract(texts, sentiments)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)


if __name__ == "__main__":
    main()
