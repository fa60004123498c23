"""GPU speed of a t5-base-shaped model (random weights): SpanExtractor inference and training steps, bf16.

Called by bench/gpu.sh. `--smoke` runs the same code tiny on CPU, to check it before a GPU is lent.
"""

import argparse
import json
import random
import time

import torch

from span_jobs.codec import Codec
from span_jobs.extract import SpanExtractor
from span_jobs.model import LoadedModel, ModelMetadata, build_model
from span_jobs.t5 import T5, T5Config
from span_jobs.tokenizer import train_tokenizer

WORDS = ("so happy today with my friends at the beach but work tomorrow is awful lol omg love this "
         "new phone hate waiting for the bus again tonight great game").split()


def make_tweets(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--tweets", type=int, default=100_000)
    parser.add_argument("--token-budgets", type=int, nargs="+", default=[65536, 131072, 262144])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--train-steps", type=int, default=30)
    args = parser.parse_args()
    if args.smoke:
        args.tweets, args.token_budgets, args.train_batches, args.train_steps = 200, [4096], [16], 2
    device = "cpu" if args.smoke else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True

    tweets = make_tweets(args.tweets)
    tokenizer = train_tokenizer(tweets[:5000], vocab_size=1000)
    model = build_model("tiny" if args.smoke else "base", tokenizer)
    if not args.smoke:  # t5-base's embedding size, so the output layer costs what it costs there
        model = T5(T5Config(**{**vars(model.config), "vocab_size": 32128})).init_weights()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    loaded = LoadedModel(model, tokenizer, ModelMetadata(version="t5-base-shaped-random", created_at=""))
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "parameters_m": round(params, 1)}
    print(f"model: {params:.0f}M parameters on {result['device']}", flush=True)

    # ---- inference: SpanExtractor, bf16, sentiment given ----
    sentiments = [("positive", "negative", "neutral")[i % 3] for i in range(len(tweets))]
    result["inference"] = {}
    for budget in args.token_budgets:
        extractor = SpanExtractor(loaded, device=device, token_budget=budget, max_batch_size=4096)
        extractor.extract(tweets[:2000], sentiments[:2000])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        extractor.extract(tweets, sentiments)
        if device == "cuda":
            torch.cuda.synchronize()
        rate = len(tweets) / (time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
        result["inference"][budget] = {"tweets_per_second": round(rate), "peak_gib": round(peak, 1)}
        print(f"inference, token budget {budget}: {rate:,.0f} tweets/s, peak {peak:.1f} GiB", flush=True)
    model = extractor.model.float()  # back to fp32 master weights for training

    # ---- training: bf16 autocast, AdamW, span-task batches ----
    codec = Codec(tokenizer)
    examples = []
    for text, sentiment in zip(tweets[:20000], sentiments):
        words = codec.words(text)
        examples.append((codec.span_input(words, sentiment), codec.span_target(1, min(3, len(words) - 1))))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    result["training"] = {}
    for batch_size in args.train_batches:
        batches = [examples[i: i + batch_size] for i in range(0, batch_size * (args.train_steps + 3), batch_size)]
        batches = [b for b in batches if len(b) == batch_size]
        timed = 0
        for step, batch in enumerate(batches):
            if step == 3:  # first steps compile kernels and grow the allocator
                if device == "cuda":
                    torch.cuda.synchronize()
                started, timed = time.perf_counter(), 0
            inputs = codec.pad([x for x, _ in batch])
            labels = codec.pad([y for _, y in batch], pad_value=-100).input_ids
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                labels = labels.to(device)
                logits = model(inputs.input_ids.to(device), inputs.attention_mask.to(device), model.shift_right(labels))
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timed += len(batch) if step >= 3 else 0
        if device == "cuda":
            torch.cuda.synchronize()
        rate = timed / (time.perf_counter() - started) if timed else 0.0
        result["training"][batch_size] = {"samples_per_second": round(rate)}
        print(f"training, batch {batch_size}: {rate:,.0f} samples/s", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
