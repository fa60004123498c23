"""Inference speed, six ways, same tweets, same model, one run:

  (a) the seed's way: one `generate` call per tweet
  (b) plain batched Hugging Face generation: batches of 64 in input order, padded, greedy
  (c) SpanExtractor, greedy: length-sorted token-budget batches, constrained two-step decoding
  (d) SpanExtractor, fp32: expected-Jaccard choice among 12 first x 12 last words
  (e) (d) with dynamic int8 quantization of the Linear layers (CPU)
  (f) (d) as shipped: precision "auto" (bf16 on CPUs with native bf16)
  (g) (c) at precision "auto": greedy as shipped, what (f)'s decoding costs against

(a)-(e) run fp32; (a) and (b) on transformers' T5 (bench/hf_t5.py). (c)-(g) run --repeat times in turn
(a few seconds each, where the machine's speed drifts by 10-15% over minutes; one pass each gave f/g
anywhere from 1.00 to 1.35 with the same code) and their medians count. The process keeps freed memory
as `span-jobs` and the flows do (span_jobs.runtime). Prints tweets/s, the ratios c/a,
c/b, d/b, e/b, f/b, d/c and f/g, and each way's
Jaccard (unconstrained outputs that do not name a valid word span fall back to the whole tweet,
and are counted). (a) and (b) call plain
`generate`, which knows nothing of the pointer term of our models (model.span_logits): their
speed is the comparison, their spans are not what the model would choose. Then the model's
arithmetic: FLOPs per tweet of (d) (counted by torch.utils.flop_counter), this CPU's fp32 and
bf16 matrix-multiply peaks (measured here), and the share of its peak (d) and (f) run at.

    python bench/throughput.py [--model default] [--data ../shared/data/tweets/labeled.csv] [--n 2000] [--repeat 3]
"""

import argparse
import cProfile
import pstats
import statistics
import time
from pathlib import Path

import torch
from hf_t5 import transformers_t5
from torch.utils.flop_counter import FlopCounterMode

from span_jobs.codec import Codec
from span_jobs.data import read_labeled, split_train_validation
from span_jobs.extract import DECODING_CHOICES, SpanExtractor
from span_jobs.metric import mean_jaccard
from span_jobs.registry import load_model
from span_jobs.runtime import keep_freed_memory
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


def matmul_peak(size: int = 1024, repeats: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """This CPU's matrix-multiply rate, FLOP/s: the best of a few timed runs of one size."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
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
    parser.add_argument("--repeat", type=int, default=3, choices=range(1, 11), metavar="1-10",
                        help="timed passes of each of (c)-(g), in turn; medians count")
    parser.add_argument("--profile", action="store_true", help="profile SpanExtractor and print the top functions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()

    if args.data.exists():
        _, tweets = split_train_validation(read_labeled(args.data).tweets)
        source = f"{args.data} (validation split)"
        while len(tweets) < args.n:
            tweets = tweets + tweets
    else:
        tweets, source = synthetic_tweets(args.n, seed=11), "synthetic tweets"
    tweets = tweets[: args.n]
    # fp32 for the baselines and (c), (d): what a plain user of the checkpoint runs
    loaded = load_model(args.model)
    extractor = SpanExtractor(loaded, device="cpu", precision="float32")
    codec, model = extractor.codec, transformers_t5(loaded.directory)  # (a), (b)
    texts, sentiments, truth = [t.text for t in tweets], [t.sentiment for t in tweets], [t.selected_text for t in tweets]
    words_list = [codec.words(t) for t in texts]
    print(f"{len(tweets)} tweets from {source}; model {extractor.version} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters); {args.threads} threads")

    def timed(key: str, run) -> float:
        started = time.perf_counter()
        spans, invalid = run()
        results[key] = (time.perf_counter() - started, spans, invalid)
        return results[key][0]

    results = {}
    timed("a", lambda: spans_from_generated(codec, words_list, seed_way(model, codec, words_list, sentiments)))
    timed("b", lambda: spans_from_generated(codec, words_list, hf_batched(model, codec, words_list, sentiments)))
    shipped = SpanExtractor(load_model(args.model), device="cpu")  # precision "auto", as users run it
    ours = {"c": SpanExtractor(load_model(args.model), device="cpu", precision="float32", **DECODING_CHOICES["greedy"]),
            "d": extractor, "e": SpanExtractor(load_model(args.model), device="cpu", quantize_int8=True),
            "f": shipped, "g": SpanExtractor(load_model(args.model), device="cpu", **DECODING_CHOICES["greedy"])}
    passes = {key: [] for key in ours}
    for way in ours.values():
        way.extract(texts[:64], sentiments[:64])  # warm-up: first calls allocate
    for _ in range(args.repeat):
        for key, way in ours.items():
            passes[key].append(timed(key, lambda way=way: ([r.span for r in way.extract(texts, sentiments)], 0)))
    for key, seconds in passes.items():
        results[key] = (statistics.median(seconds), *results[key][1:])

    names = {"a": "seed: one generate per tweet", "b": "HF generate, batches of 64", "c": "SpanExtractor, greedy",
             "d": "SpanExtractor, expected Jaccard", "e": "(d), int8 dynamic",
             "f": f"(d), precision auto: {str(shipped.dtype).removeprefix('torch.')}", "g": "(c), precision auto"}
    for key, (seconds, spans, invalid) in results.items():
        print(f"({key}) {names[key]:<32} {len(tweets) / seconds:9.1f} tweets/s  jaccard {mean_jaccard(spans, truth):.4f}"
              f"  invalid outputs {invalid}")
    print(f"(c)-(g): {args.repeat} passes each, in turn (their medians above): " + "; ".join(
        f"({key}) {', '.join(f'{t:.2f}' for t in seconds)} s" for key, seconds in passes.items()))
    ratio = {k: results[k][0] for k in results}
    print(f"c/a = {ratio['a'] / ratio['c']:.1f}x   c/b = {ratio['b'] / ratio['c']:.1f}x   "
          f"d/b = {ratio['b'] / ratio['d']:.1f}x   e/b = {ratio['b'] / ratio['e']:.1f}x   "
          f"f/b = {ratio['b'] / ratio['f']:.1f}x   time d/c = {ratio['d'] / ratio['c']:.2f}x and f/g = "
          f"{ratio['f'] / ratio['g']:.2f}x (expected Jaccard against greedy: fp32, as shipped)")
    sample = min(512, len(texts))
    with FlopCounterMode(display=False) as counter:
        extractor.extract(texts[:sample], sentiments[:sample])
    flops_per_tweet = counter.get_total_flops() / sample
    print(f"model FLOPs per tweet {flops_per_tweet / 1e9:.3f} G ({args.threads} threads)")
    for key, dtype in (("d", torch.float32), ("f", shipped.dtype)):
        peak = matmul_peak(dtype=dtype)
        achieved = flops_per_tweet * len(tweets) / ratio[key]
        print(f"({key}): {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of the measured "
              f"{str(dtype).removeprefix('torch.')} matmul peak, {peak / 1e9:.0f} GFLOP/s")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        extractor.extract(texts, sentiments)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)


if __name__ == "__main__":
    main()
