"""Serving speed on SmolLM2 (CPU): per-request adapters vs the bare model vs PEFT, in one run.

    python benchmarks/serving.py [--checkpoint DIR] [--threads 2] [--repeats 3] [--json OUT]

Three measurements, all in this process on the same machine:

1. Batch of 16 prompts (64 tokens each, then 32 greedy tokens, end-of-sequence ignored) with
   1, 4 and 16 distinct adapters per batch: prefill and decode tokens/s of this service's hooks
   and of PEFT's mixed-adapter batch (``adapter_names``), as ratios to the bare base model. The
   three run through the same decode loop (``hypergen.decoding.decode``).
2. A new description to the first token (batch 1): ours = generate the adapter + prefill with it
   applied (in the engine, and end to end over HTTP); PEFT's path = generate + write the folder +
   ``load_adapter`` + prefill; and the bare model's prefill alone, the floor of both.
3. 16 concurrent HTTP clients with distinct adapters against the real server (waitress, dynamic
   batching) vs the same 16 requests one at a time.

The adapters come from the configured checkpoint (untrained ones are exact no-ops, which does not
change their cost: the same tensors are applied either way).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

from hypergen.decoding import Job, SamplingParams, decode, model_call_names, new_cache
from hypergen.models import load_base_model
from service import create_app
from service.engine import Engine
from service.server import BackgroundServer

TEXT = (
    "The history of the calendar is a long story of astronomy, politics and arithmetic. Ancient "
    "farmers watched the moon and the sun to decide when to plant and when to harvest, and priests "
    "kept lists of festivals that had to fall on the right day. The Roman calendar drifted so far "
    "that Julius Caesar added months to one year, and later Pope Gregory removed ten days at once. "
    "Today most countries use the Gregorian calendar, but many communities still keep lunar ones."
)


def descriptions(n: int, offset: int = 0) -> list[str]:
    topics = ["dates", "sentiment", "arithmetic", "French", "sports", "logic", "names", "riddles"]
    return [
        f"Task {offset + i}: answer questions about {topics[(offset + i) % len(topics)]}, "
        f"case {offset + i}, with one short phrase."
        for i in range(n)
    ]


def prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    ids = tokenizer(TEXT * 4, add_special_tokens=False).input_ids
    return [ids[i * 3 : i * 3 + length] for i in range(n)]


def best(xs: list[float]) -> float:
    """The fastest round: on a machine shared with other jobs, slower rounds measure the
    neighbours, not the code (as ``timeit`` advises)."""
    return min(xs)


# --- 1. batched prefill and decode -----------------------------------------------------------------


def peft_forward(peft_model, names: list[str], base_model):
    """A ``decoding.Forward`` running PEFT's mixed batch: row r uses adapter ``names[r]``."""
    cache_kw, keep_kw = model_call_names(base_model)

    def forward(rows, input_ids, attention_mask, position_ids, cache):
        kwargs = {cache_kw: cache, "use_cache": True, keep_kw: 1}
        out = peft_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            adapter_names=[names[r] for r in rows.tolist()],
            **kwargs,
        )
        return out.logits[:, -1]

    return forward


def timed(run) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one ``run(on_first_token)``."""
    marks = []
    start = time.perf_counter()
    run(lambda: marks.append(time.perf_counter()))
    end = time.perf_counter()
    return marks[0] - start, end - marks[0]


def bench_batch(engine: Engine, peft_model, loras, peft_names, args) -> list[dict]:
    tokenizer = engine.tokenizer
    batch = 16
    params = SamplingParams(max_tokens=args.decode_tokens, ignore_eos=True)
    rows = prompts(tokenizer, batch, args.prompt_tokens)

    def ours(k):
        jobs = [Job(p, loras[i % k] if k else None, params) for i, p in enumerate(rows)]
        return lambda mark: engine.complete(jobs, on_first_token=mark)

    def theirs(k):
        jobs = [Job(p, None, params) for p in rows]
        names = [peft_names[i % k] for i in range(batch)]
        forward = peft_forward(peft_model, names, engine.model)

        def run(mark):
            with torch.inference_mode():
                decode(
                    jobs,
                    forward,
                    new_cache(engine.model),
                    tokenizer,
                    engine.eos_ids,
                    on_first_token=mark,
                )

        return run

    systems = {"bare model": ours(0)}
    for k in (1, 4, 16):
        systems[f"hypergen, {k} adapters"] = ours(k)
        systems[f"PEFT adapter_names, {k} adapters"] = theirs(k)
    times = {name: [] for name in systems}
    for run in systems.values():  # warm-up
        run(lambda: None)
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every system alike
        for name, run in systems.items():
            times[name].append(timed(run))
    bare_p, bare_d = (best([t[i] for t in times["bare model"]]) for i in (0, 1))
    results = []
    for name in systems:
        p, d = (best([t[i] for t in times[name]]) for i in (0, 1))
        results.append(
            {
                "system": name,
                "prefill_tok_s": batch * args.prompt_tokens / p,
                "decode_tok_s": batch * (args.decode_tokens - 1) / d,
                "prefill_vs_bare": bare_p / p,
                "decode_vs_bare": bare_d / d,
            }
        )
    return results


# --- 2. a new description to the first token --------------------------------------------------------


def bench_first_token(engine: Engine, peft_model, url: str, scratch: Path, args) -> dict:
    """Milliseconds from a new description to the first token, by path (best rounds; fresh
    descriptions each round, so nothing is cached)."""
    tokenizer = engine.tokenizer
    prompt = "What day comes after Monday? Answer with one word."
    ids = tokenizer(prompt).input_ids
    one = SamplingParams(max_tokens=1)
    folder_root = scratch / "first-token"
    cache_kw, keep_kw = model_call_names(engine.model)
    times = {"bare": [], "ours": [], "http": [], "peft": [], "load_adapter": []}
    for r in range(args.first_token_repeats + 1):
        texts = descriptions(3, 1000 + 3 * r)
        start = time.perf_counter()
        engine.complete([Job(ids, None, one)])
        times["bare"].append(time.perf_counter() - start)

        start = time.perf_counter()
        lora = engine.make_adapters([engine.normalize(texts[0])])[0]
        engine.complete([Job(ids, lora, one)])
        times["ours"].append(time.perf_counter() - start)

        start = time.perf_counter()
        body = {"adapter_description": texts[1], "prompt": prompt, "max_tokens": 1}
        _post(f"{url}/v1/completions", body)
        times["http"].append(time.perf_counter() - start)

        start = time.perf_counter()
        lora = engine.make_adapters([engine.normalize(texts[2])])[0]
        folder = engine.save_adapter(lora, folder_root / f"a{r}", "float32", {})
        loaded = time.perf_counter()
        peft_model.load_adapter(str(folder), adapter_name=f"new{r}")
        times["load_adapter"].append(time.perf_counter() - loaded)
        with torch.inference_mode():
            peft_model(
                input_ids=torch.tensor([ids]),
                adapter_names=[f"new{r}"],
                **{cache_kw: new_cache(engine.model)},
                use_cache=True,
                **{keep_kw: 1},
            ).logits[:, -1].argmax(-1)
        times["peft"].append(time.perf_counter() - start)
        peft_model.delete_adapter(f"new{r}")
    ms = {k: 1000 * best(v[1:]) for k, v in times.items()}  # first round: warm-up
    return {
        **{f"{k}_ms": v for k, v in ms.items()},
        "speedup": ms["peft"] / ms["ours"],
        "speedup_http": ms["peft"] / ms["http"],
        # time each path adds to the bare forward (None when ours is within the noise of it)
        "overhead_ratio": (ms["peft"] - ms["bare"]) / (ms["ours"] - ms["bare"])
        if ms["ours"] - ms["bare"] > 1.0
        else None,
        "prompt_tokens": len(ids),
    }


# --- 3. concurrent clients over HTTP ------------------------------------------------------------


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def _batches(app) -> int:
    text = app.extensions["hypergen"].metrics.render()
    line = next((x for x in text.splitlines() if x.startswith("hypergen_batch_size_count")), "x 0")
    return int(float(line.split()[-1]))


def bench_concurrency(engine: Engine, app, url: str, args) -> dict:
    made = _post(f"{url}/v1/adapters", {"descriptions": descriptions(16, 500)})["data"]
    text = engine.tokenizer.decode(prompts(engine.tokenizer, 1, args.prompt_tokens // 2)[0])
    bodies = [
        {"model": a["id"], "prompt": text, "max_tokens": args.decode_tokens, "ignore_eos": True}
        for a in made
    ]
    _post(f"{url}/v1/completions", bodies[0])  # warm-up

    def one_at_a_time() -> float:
        start = time.perf_counter()
        for body in bodies:
            _post(f"{url}/v1/completions", body)
        return time.perf_counter() - start

    answers = [None] * len(bodies)

    def all_at_once() -> tuple[float, int]:
        barrier = threading.Barrier(len(bodies) + 1)

        def client(i):
            barrier.wait()
            answers[i] = _post(f"{url}/v1/completions", bodies[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        before = _batches(app)
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - start, _batches(app) - before

    rounds = [(one_at_a_time(), *all_at_once()) for _ in range(args.http_rounds)]
    sequential = best([r[0] for r in rounds])
    concurrent, batches = min((r[1], r[2]) for r in rounds)
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    return {
        "requests": len(bodies),
        "sequential_s": sequential,
        "concurrent_s": concurrent,
        "sequential_req_s": len(bodies) / sequential,
        "concurrent_req_s": len(bodies) / concurrent,
        "sequential_tok_s": tokens / sequential,
        "concurrent_tok_s": tokens / concurrent,
        "speedup": sequential / concurrent,
        "concurrent_batches": batches,
    }


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", help="hypernetwork checkpoint (default: the service's default)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of part 1")
    parser.add_argument("--first-token-repeats", type=int, default=9, help="rounds of part 2")
    parser.add_argument("--http-rounds", type=int, default=2, help="rounds of part 3")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="hypergen-bench-"))
    try:
        return run_all(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_all(args: argparse.Namespace, scratch: Path) -> int:
    from peft import PeftModel

    started = time.perf_counter()
    engine = Engine.load(args.checkpoint)
    loras = engine.make_adapters([engine.normalize(d) for d in descriptions(16)])
    # PEFT wraps (edits) the model it is given: give it its own copy of the base model.
    peft_base, _ = load_base_model(engine.base_model)
    folders = scratch / "peft"
    names = [f"a{i}" for i in range(16)]
    for name, lora in zip(names, loras):
        engine.save_adapter(lora, folders / name, "float32", {})
    peft_model = PeftModel.from_pretrained(
        peft_base, str(folders / names[0]), adapter_name=names[0]
    ).eval()
    for name in names[1:]:
        peft_model.load_adapter(str(folders / name), adapter_name=name)

    load = os.getloadavg()[0]
    print(
        f"# serving benchmark: {engine.base_model} ({engine.base_model_id}, fp32), checkpoint "
        f"{engine.checkpoint.name}{' (UNTRAINED)' if engine.untrained else ''}, {args.threads} torch threads, "
        f"{os.cpu_count()} CPUs, load average {load:.1f}, torch {torch.__version__}"
    )
    batch = bench_batch(engine, peft_model, loras, names, args)
    print(
        f"\n## 1. batch 16 x {args.prompt_tokens} prompt tokens, {args.decode_tokens} greedy tokens "
        f"(best of {args.repeats})"
    )
    print(
        f"{'system':36s} {'prefill tok/s':>13s} {'vs bare':>8s} {'decode tok/s':>13s} {'vs bare':>8s}"
    )
    for r in batch:
        print(
            f"{r['system']:36s} {r['prefill_tok_s']:13.0f} {r['prefill_vs_bare']:7.2f}x "
            f"{r['decode_tok_s']:13.1f} {r['decode_vs_bare']:7.2f}x"
        )

    app = create_app({"STORE": str(scratch / "store")}, engine=engine)
    server = BackgroundServer(app, threads=32)
    try:
        first = bench_first_token(engine, peft_model, server.url, scratch, args)
        conc = bench_concurrency(engine, app, server.url, args)
    finally:
        server.stop()
        app.extensions["hypergen"].close()
    print(
        f"\n## 2. new description -> first token (batch 1, {first['prompt_tokens']}-token prompt, "
        f"best of {args.first_token_repeats})"
    )
    rows = [
        ("bare model, no adapter (one forward: the floor)", first["bare_ms"]),
        ("hypergen engine: generate + prefill with hooks", first["ours_ms"]),
        ("hypergen over HTTP: POST /v1/completions", first["http_ms"]),
        ("PEFT: generate + write + load_adapter + prefill", first["peft_ms"]),
        ("  of which load_adapter", first["load_adapter_ms"]),
    ]
    for name, value in rows:
        print(f"{name:50s} {value:8.1f} ms")
    added = first["overhead_ratio"]
    print(
        f"speed-up over PEFT: {first['speedup']:.2f}x (engine), {first['speedup_http']:.2f}x (HTTP); "
        "time added to the bare forward: "
        + (f"{added:.1f}x less than PEFT's" if added else "within the noise of the bare forward")
    )

    print(
        f"\n## 3. {conc['requests']} HTTP clients, distinct adapters, "
        f"{args.prompt_tokens // 2}-token prompt, {args.decode_tokens} tokens each "
        f"(best of {args.http_rounds})"
    )
    print(
        f"one at a time   {conc['sequential_s']:6.2f} s  {conc['sequential_req_s']:6.2f} req/s  "
        f"{conc['sequential_tok_s']:7.1f} tok/s"
    )
    print(
        f"concurrent      {conc['concurrent_s']:6.2f} s  {conc['concurrent_req_s']:6.2f} req/s  "
        f"{conc['concurrent_tok_s']:7.1f} tok/s   ({conc['speedup']:.2f}x throughput, "
        f"{conc['concurrent_batches']} batch(es))"
    )

    decode16 = next(r for r in batch if r["system"] == "hypergen, 16 adapters")["decode_vs_bare"]
    targets = {
        "decode with 16 distinct adapters >= 0.90x bare": decode16 >= 0.90,
        "new description to first token >= 5x faster than PEFT": first["speedup"] >= 5,
        "16 concurrent clients >= 6x one at a time": conc["speedup"] >= 6,
    }
    print("\n## targets")
    for name, met in targets.items():
        print(f"{'met   ' if met else 'MISSED'} {name}")
    print(
        f"\n(total {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f})"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"batch": batch, "first_token": first, "concurrency": conc}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
