"""How far the bare model's decode step is from what this CPU allows, in one process.

    python benchmarks/decode_floor.py [--threads 2] [--dtype float32] [--batch 1,16] [--json OUT]

Issue 10 asks for 2x faster decoding at batch 16 by removing framework overhead (torch.compile, a
static KV cache, attention settings). Whether that can work is a question of where a step's time
goes. For each batch size this prints, in ms per decode step of the base model:

- ``model``: the HF eager forward of one token per row (KV cache of ``--context`` tokens, the
  ``DynamicCache`` the service uses), median of ``--steps``, best of ``--rounds`` that alternate
  with the packed model's;
- ``matmuls``: the same step's linear layers alone (every projection of every layer and the LM
  head: as many distinct weights of the model's own shapes, one pass over random inputs): what the
  step would cost if everything else (norms, rotary, attention, cache updates, Python) took no
  time;
- ``weights / bandwidth``: the model's weight bytes over this machine's measured read bandwidth
  (every weight is read once per step);
- ``flops / peak``: the step's multiply-adds over the best GEMM rate measured here (a large
  square ``mm``).

``model / matmuls`` is the most any overhead removal can buy with this BLAS; a larger speed-up needs
faster matrix products (other kernels, lower precision with a fast path on this CPU, or fewer
weights read per token). The second table is the same model and matmuls on oneDNN's prepacked
weights (``hypergen.packed_linear``, what the service runs on a CPU), with its speed-up over the
first, measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from hypergen.decoding import new_cache
from hypergen.models import load_base_model
from hypergen.packed_linear import (
    pack_linear_weights,
    packed_linear_available,
    unpack_linear_weights,
)


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(megabytes: int = 512) -> float:
    """Bytes per second of a streaming read (``sum`` over a tensor far larger than the caches)."""
    x = torch.ones(megabytes * 2**20 // 4)
    return x.numel() * 4 / timed(x.sum, 3)


def gemm_peak(n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """Multiply-adds x 2 per second of a large square ``mm`` in ``dtype``: this CPU's practical
    peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), 3)


def linear_shapes(model: torch.nn.Module) -> dict[tuple[int, int], int]:
    """(in, out) -> how many linear layers of that shape one forward runs (LM head included)."""
    counts: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            key = (module.in_features, module.out_features)
            counts[key] = counts.get(key, 0) + 1
    return counts


def matmul_step(
    shapes: dict[tuple[int, int], int],
    batch: int,
    repeats: int,
    packed: bool = False,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Seconds of one step's linear layers alone, one token per row: one pass over as many
    distinct weights of each shape as the model has (so, as in the model, each weight comes from
    memory, not from a cache warmed by the call before); ``packed``: on oneDNN's prepacked
    weights, as ``hypergen.packed_linear`` runs them."""
    layers, inputs = [], {}
    for (i, o), count in shapes.items():
        for _ in range(count):
            layers.append(torch.nn.Linear(i, o, bias=False, dtype=dtype).requires_grad_(False))
        inputs[i] = torch.randn(batch, i, dtype=dtype)
    if packed:
        for layer in layers:
            pack_linear_weights(layer, batch)

    def one_pass():
        for layer in layers:
            layer(inputs[layer.in_features])

    return timed(one_pass, repeats)


@torch.inference_mode()
def model_step(model, batch: int, context: int, steps: int) -> float:
    """Median seconds of one decode step (one new token per row) after a ``context``-token prefill."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(min(100, vocab - 1), min(1000, vocab), (batch, context))
    cache = new_cache(model)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m", help="base model (built-in name or folder)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="the model's and the matmuls' (bfloat16: what the service runs on a CPU with AMX)",
    )
    parser.add_argument("--batch", default="1,16", help="batch sizes, comma-separated")
    parser.add_argument("--context", type=int, default=64, help="tokens in the KV cache")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per batch size")
    parser.add_argument("--repeats", type=int, default=10, help="timings of the matmul floor")
    parser.add_argument("--rounds", type=int, default=3, help="alternating eager/packed rounds")
    parser.add_argument("--probe-mb", type=int, default=512, help="size of the bandwidth probe")
    parser.add_argument("--probe-n", type=int, default=2048, help="size of the GEMM-peak probe")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        parser.error(f"--batch takes numbers separated by commas, got {args.batch!r}")
    torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    bandwidth, peak = read_bandwidth(args.probe_mb), gemm_peak(args.probe_n, dtype)
    model, _ = load_base_model(args.model, dtype=dtype)
    model.eval()
    shapes = linear_shapes(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    macs_per_token = sum(i * o * count for (i, o), count in shapes.items())
    results = {
        "threads": args.threads,
        "dtype": args.dtype,
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "gemm_peak_gflop_s": peak / 1e9,
        "weight_mb": weight_bytes / 2**20,
        "batches": {},
    }
    print(
        f"# {args.dtype}, {args.threads} threads: read bandwidth {bandwidth / 1e9:.1f} GB/s, large-GEMM peak "
        f"{peak / 1e9:.0f} GFLOP/s; weights {weight_bytes / 2**20:.0f} MiB, "
        f"{2 * macs_per_token / 1e9:.2f} GFLOP per token"
    )
    print("| batch | model (ms) | matmuls (ms) | weights / bandwidth (ms) | flops / peak (ms) "
          "| model / matmuls | tokens/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    packable = packed_linear_available()
    # eager and packed steps alternate, best of --rounds, so drifts in machine load hit both
    steps = {batch: {"eager": [], "packed": []} for batch in batches}
    for _ in range(args.rounds):
        for batch in batches:
            steps[batch]["eager"].append(model_step(model, batch, args.context, args.steps))
            if packable:
                pack_linear_weights(model)
                steps[batch]["packed"].append(model_step(model, batch, args.context, args.steps))
                unpack_linear_weights(model)
    for batch in batches:
        step = min(steps[batch]["eager"])
        mm = matmul_step(shapes, batch, args.repeats, dtype=dtype)
        row = {
            "model_ms": 1000 * step,
            "matmuls_ms": 1000 * mm,
            "bandwidth_floor_ms": 1000 * weight_bytes / bandwidth,
            "compute_floor_ms": 1000 * 2 * macs_per_token * batch / peak,
            "tokens_s": batch / step,
        }
        results["batches"][batch] = row
        print(
            f"| {batch} | {row['model_ms']:.1f} | {row['matmuls_ms']:.1f} "
            f"| {row['bandwidth_floor_ms']:.1f} | {row['compute_floor_ms']:.1f} "
            f"| {step / mm:.2f}x | {row['tokens_s']:.0f} |",
            flush=True,
        )
    if packable:
        results["packed"] = {}
        print("\nprepacked oneDNN linears (hypergen.packed_linear):")
        print("| batch | model (ms) | matmuls (ms) | model / matmuls | tokens/s | vs eager |")
        print("|---|---|---|---|---|---|")
        for batch in batches:
            step = min(steps[batch]["packed"])
            mm = matmul_step(shapes, batch, args.repeats, packed=True, dtype=dtype)
            eager = results["batches"][batch]["model_ms"] / 1000
            results["packed"][batch] = {
                "model_ms": 1000 * step,
                "matmuls_ms": 1000 * mm,
                "tokens_s": batch / step,
                "speedup": eager / step,
            }
            print(
                f"| {batch} | {1000 * step:.1f} | {1000 * mm:.1f} | {step / mm:.2f}x "
                f"| {batch / step:.0f} | {eager / step:.2f}x |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
