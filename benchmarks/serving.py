"""Serving speed on SmolLM2 (CPU): per-request adapters vs the bare model vs PEFT, in one run.

    python benchmarks/serving.py [--checkpoint DIR] [--threads 2] [--dtype auto] [--repeats 3]
                                 [--parts 1,2,3,4] [--json OUT]

Four measurements, in one run on the same machine:

1. Batch of 16 prompts (64 tokens each, then 32 greedy tokens, end-of-sequence ignored) with
   1, 4 and 16 distinct adapters per batch: prefill and decode tokens/s of this service's hooks
   and of PEFT's mixed-adapter batch (``adapter_names``), as ratios to the bare base model, and
   the bare model in fp32 with eager linears (issue 10's baseline). The base model runs in
   ``--dtype`` (as the service's ``DTYPE``; auto: bf16 on a CPU with AMX). All run through the
   same decode loop (``hypergen.decoding.decode``), in shuffled rounds; medians and best rounds.
2. A new description to the first token (batch 1): ours = generate the adapter + prefill with it
   applied (in the engine, and end to end over HTTP); PEFT's path = generate + write the folder +
   ``load_adapter`` + prefill; and the bare model's prefill alone, the floor of both.
3. 16 concurrent HTTP clients with distinct adapters against the real server (waitress,
   continuous batching, and the fixed-window batcher in the same run) vs the same 16 requests
   one at a time.
4. Requests arriving at random times (a seeded Poisson process) with distinct adapters, prompt
   lengths and a long-tailed spread of completion lengths, streamed over HTTP: the same schedule
   against the continuous batcher, the window batcher (``BATCHING=window``, the batcher before
   continuous batching) and the continuous batcher joining newcomers at every step
   (``JOIN_ROWS=1``, before joins were gathered). Completion tokens/s and time to first token, as
   ratios. The arrival rate is set from the engine's own measured speed (``--poisson-load`` of
   its capacity), so the load is the same for all and comparable across machines.

Parts 2-4 talk to ``hypergen serve`` processes (one per batcher) on one store, as deployed: a
server in this process would share its OpenMP threads with the measurements made here, and a
process whose torch work runs on more threads than CPUs runs every op slower (README "Serving
speed").

The adapters come from the configured checkpoint (untrained ones are exact no-ops, which does not
change their cost: the same tensors are applied either way).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from hypergen.decoding import (
    Job,
    SamplingParams,
    decode,
    last_logits_to_keep,
    model_call_names,
    new_cache,
)
from hypergen.models import load_base_model
from hypergen.packed_linear import is_packed, pack_linear_weights, unpack_linear_weights
from service.engine import Engine
from service.settings import DEFAULTS

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
        # the last position as the service's forward asks for it (a gathered copy, not a view)
        keep = last_logits_to_keep(keep_kw, input_ids.shape[1], input_ids.device)
        kwargs = {cache_kw: cache, "use_cache": True, keep_kw: keep}
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


EAGER = "bare model, fp32 eager linears"  # the baseline: the model as it first ran
JOIN_EVERY_STEP = "continuous, JOIN_ROWS 1"  # part 4: newcomers join at every step, not gathered


def fp32_baseline(engine: Engine) -> Engine | None:
    """The engine's generator on its own fp32 base model, unpacked, when the engine runs in
    another dtype (bf16 on an AMX CPU); None when the engine is fp32 (its model is unpacked for
    the baseline's rounds instead: one copy of the weights)."""
    if engine.dtype == torch.float32:
        return None
    model, _ = load_base_model(engine.base_model)
    return Engine(model, engine.tokenizer, engine.generator, engine.checkpoint)


def bench_batch(engine: Engine, peft_model, loras, peft_names, args) -> list[dict]:
    tokenizer = engine.tokenizer
    batch = 16
    params = SamplingParams(max_tokens=args.decode_tokens, ignore_eos=True)
    rows = prompts(tokenizer, batch, args.prompt_tokens)
    baseline = fp32_baseline(engine)

    def ours(k, on=engine):
        jobs = [Job(p, loras[i % k] if k else None, params) for i, p in enumerate(rows)]
        return lambda mark: on.complete(jobs, on_first_token=mark)

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
    # the base model as it ran before its linears were prepacked (the fp32 baseline): a
    # model of its own, or the engine's, unpacked for its own runs only and packed again after
    # them (untimed)
    eager = set()
    if baseline is not None:
        systems[EAGER] = ours(0, baseline)
    elif any(is_packed(m) for m in engine.model.modules()):
        eager = {EAGER}
        systems[EAGER] = ours(0)
    for k in (1, 4, 16):
        systems[f"hypergen, {k} adapters"] = ours(k)
        systems[f"PEFT adapter_names, {k} adapters"] = theirs(k)
    times = {name: [] for name in systems}

    def measure(name, run):
        if name in eager:
            unpack_linear_weights(engine.model)
        try:
            return timed(run)
        finally:
            if name in eager:
                pack_linear_weights(engine.model)

    for name, run in systems.items():  # warm-up
        measure(name, run)
    # Interleaved, so drifts in machine load hit every system alike, and in a new order each
    # round: on a machine whose speed drifts over minutes, a fixed order favours some positions
    # (an AMX machine here put "4 adapters" ahead of the bare model in best-of-6).
    order = list(systems)
    for k in range(args.repeats):
        random.Random(k).shuffle(order)
        for name in order:
            times[name].append(measure(name, systems[name]))
    results = []
    for name in systems:
        p, d = ([t[i] for t in times[name]] for i in (0, 1))
        results.append(
            {
                "system": name,
                "prefill_tok_s": batch * args.prompt_tokens / best(p),
                "decode_tok_s": batch * (args.decode_tokens - 1) / best(d),
                "prefill_tok_s_median": batch * args.prompt_tokens / statistics.median(p),
                "decode_tok_s_median": batch * (args.decode_tokens - 1) / statistics.median(d),
            }
        )
    bare = results[0]
    for r in results:
        for key in ("prefill_tok_s", "decode_tok_s"):
            r[key.replace("tok_s", "vs_bare")] = r[key] / bare[key]
            r[f"{key.replace('tok_s', 'vs_bare')}_median"] = (
                r[f"{key}_median"] / bare[f"{key}_median"]
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
                **{keep_kw: last_logits_to_keep(keep_kw, len(ids), engine.device)},
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


class ServerProcess:
    """``hypergen serve`` in a process of its own on a free port, configured by ``config``
    (``service.settings`` keys), until ``stop``.

    Attributes:
        url: the base URL, e.g. ``http://127.0.0.1:43210``.
    """

    def __init__(self, config: dict, folder: Path, checkpoint: str | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config))
        command = [sys.executable, "-m", "service.server", "--port", "0"]
        command += ["--config", str(folder / "config.json")]
        command += ["--checkpoint", checkpoint] if checkpoint else []
        self.log = folder / "server.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.process.stdout.readline()  # "hypergen: serving ... on http://HOST:PORT/"
        if " on http://" not in line:
            self.process.wait(30)
            raise RuntimeError(f"the server did not start: {line}{self.log.read_text()[-2000:]}")
        self.url = line.rsplit(" on ", 1)[1].strip().rstrip("/")

    def prefills(self) -> int:
        """Prefill forward passes so far: a batch's start, or jobs joining a running batch."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=60) as response:
            text = response.read().decode()
        line = next(
            (x for x in text.splitlines() if x.startswith("hypergen_prefill_size_count")), "x 0"
        )
        return int(float(line.split()[-1]))

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: the server closes cleanly
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def bench_concurrency(engine: Engine, servers: dict, args) -> dict:
    """16 clients at once against each batcher (``servers``: mode -> ``ServerProcess``), and the
    same 16 requests one at a time (against the first)."""
    urls = {mode: server.url for mode, server in servers.items()}
    first = next(iter(urls.values()))
    made = _post(f"{first}/v1/adapters", {"descriptions": descriptions(16, 500)})["data"]
    text = engine.tokenizer.decode(prompts(engine.tokenizer, 1, args.prompt_tokens // 2)[0])
    bodies = [
        {"model": a["id"], "prompt": text, "max_tokens": args.decode_tokens, "ignore_eos": True}
        for a in made
    ]
    for url in urls.values():
        _post(f"{url}/v1/completions", bodies[0])  # warm-up (and the adapters into memory)

    def one_at_a_time() -> float:
        start = time.perf_counter()
        for body in bodies:
            _post(f"{first}/v1/completions", body)
        return time.perf_counter() - start

    answers = [None] * len(bodies)

    def all_at_once(mode: str) -> tuple[float, int]:
        server = servers[mode]
        barrier = threading.Barrier(len(bodies) + 1)

        def client(i):
            barrier.wait()
            answers[i] = _post(f"{server.url}/v1/completions", bodies[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        before = server.prefills()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - start, server.prefills() - before

    rounds = []
    for _ in range(args.http_rounds):  # interleaved, so drifts in machine load hit all alike
        rounds.append({"sequential": one_at_a_time()})
        for mode in servers:
            rounds[-1][mode] = all_at_once(mode)
    sequential = best([r["sequential"] for r in rounds])
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    out = {
        "requests": len(bodies),
        "tokens": tokens,
        "sequential_s": sequential,
        "sequential_tok_s": tokens / sequential,
    }
    for mode in servers:
        seconds, prefills = min(r[mode] for r in rounds)
        out[mode] = {
            "concurrent_s": seconds,
            "concurrent_tok_s": tokens / seconds,
            "speedup": sequential / seconds,
            "prefills": prefills,
        }
    return out


# --- 4. Poisson arrivals: continuous vs window batching ------------------------------------------


def calibrate(engine: Engine, loras, args) -> dict:
    """The engine's own speed with 16 distinct adapters: seconds per decode step at batch 16 and
    per prompt token of a batched prefill (best of 2), to set the arrival rate from."""
    rows = prompts(engine.tokenizer, 16, 32)
    steps, prefill = [], []
    for _ in range(2):
        decoder = engine.decoder()
        start = time.perf_counter()
        decoder.add(
            [Job(p, lora, SamplingParams(6, ignore_eos=True)) for p, lora in zip(rows, loras)]
        )
        prefill.append((time.perf_counter() - start) / (16 * 32))
        while len(decoder) == 16:
            start = time.perf_counter()
            decoder.step()
            steps.append(time.perf_counter() - start)
        while len(decoder):
            decoder.step()
    return {"step_s": statistics.median(steps), "prefill_token_s": min(prefill)}


def poisson_schedule(args, speed: dict) -> tuple[list[dict], float]:
    """(requests, rate): arrival times of a seeded Poisson process whose rate is
    ``--poisson-load`` of the engine's capacity at batch 16; prompt lengths uniform in 16-48
    tokens; completion lengths log-uniform in 4-64 tokens (many short answers, a few long ones)."""
    rng = random.Random(args.seed)
    requests = []
    for _ in range(args.poisson_requests):
        requests.append(
            {
                "prompt_tokens": rng.randint(16, 48),
                "max_tokens": round(math.exp(rng.uniform(math.log(4), math.log(64)))),
            }
        )
    mean_out = statistics.mean(r["max_tokens"] for r in requests)
    mean_in = statistics.mean(r["prompt_tokens"] for r in requests)
    seconds_per_request = mean_out * speed["step_s"] / 16 + mean_in * speed["prefill_token_s"]
    rate = args.poisson_load / seconds_per_request
    at = 0.0
    for r in requests:
        at += rng.expovariate(rate)
        r["at"] = at
    return requests, rate


def _stream(url: str, body: dict) -> tuple[float | None, int]:
    """POST a streamed completion; (seconds to the first token event, completion tokens), or
    (None, 0) when it is refused."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    start, first, tokens = time.perf_counter(), None, 0
    try:
        response = urllib.request.urlopen(request, timeout=600)
    except urllib.error.HTTPError as err:  # e.g. 503: the queue is over MAX_QUEUE_WAIT_S
        err.read()
        return None, 0
    with response:
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("choices") and first is None:
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return first, tokens


def run_schedule(url: str, requests: list[dict], bodies: list[dict]) -> dict:
    """Send each request at its time (its own thread); tokens/s over the whole run and time to
    first token per request."""
    results: list = [None] * len(requests)

    def client(i):
        start = time.perf_counter()
        first, tokens = _stream(f"{url}/v1/completions", bodies[i])
        results[i] = (start, first, tokens, time.perf_counter())

    threads = []
    origin = time.perf_counter()
    for i, r in enumerate(requests):
        time.sleep(max(0.0, origin + r["at"] - time.perf_counter()))
        threads.append(threading.Thread(target=client, args=(i,)))
        threads[-1].start()
    for t in threads:
        t.join()
    begin = min(r[0] for r in results)
    end = max(r[3] for r in results)
    served = [r for r in results if r[1] is not None]
    ttft = sorted(r[1] for r in served)
    latency = sorted(r[3] - r[0] for r in served)
    tokens = sum(r[2] for r in served)
    return {
        "seconds": end - begin,
        "tokens": tokens,
        "refused": len(results) - len(served),
        "tok_s": tokens / (end - begin),
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p90_s": ttft[int(0.9 * (len(ttft) - 1))],
        "latency_p50_s": statistics.median(latency),
    }


def round_order(modes: list[str], k: int) -> list[str]:
    """The order the servers run in in round ``k``: rotated by one each round, so over as many
    rounds as servers each runs once in every position (where a server ran in a round moved its
    tokens/s by up to 1.13x: the machine warms and cools)."""
    shift = k % len(modes)
    return modes[shift:] + modes[:shift]


def bench_poisson(engine: Engine, servers: dict, loras, args) -> dict:
    speed = calibrate(engine, loras, args)
    requests, rate = poisson_schedule(args, speed)
    print(
        f"# part 4: {1000 * speed['step_s']:.0f} ms per step at batch 16, {len(requests)} "
        f"requests at {rate:.2f} req/s over {requests[-1]['at']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    first = next(iter(servers.values())).url
    made = []
    for start in range(0, len(requests), 16):
        count = min(16, len(requests) - start)
        body = {"descriptions": descriptions(count, 2000 + start)}
        made += _post(f"{first}/v1/adapters", body)["data"]
    ids = engine.tokenizer(TEXT * 4, add_special_tokens=False).input_ids
    bodies = [
        {
            "model": adapter["id"],
            "prompt": engine.tokenizer.decode(ids[5 * i : 5 * i + r["prompt_tokens"]]),
            "max_tokens": r["max_tokens"],
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i, (r, adapter) in enumerate(zip(requests, made))
    ]
    for server in servers.values():  # every adapter into each server's memory: warm servers
        for adapter in made:
            _post(f"{server.url}/v1/completions", {"model": adapter["id"], "prompt": "Hi"})
    runs = {mode: [] for mode in servers}
    for k in range(args.poisson_rounds):
        for mode in round_order(list(servers), k):
            runs[mode].append(run_schedule(servers[mode].url, requests, bodies))
            done = {k: round(v, 2) for k, v in runs[mode][-1].items()}
            print(f"# part 4, {mode}: {done}", file=sys.stderr, flush=True)
    out = {
        "requests": len(requests),
        "rate_req_s": rate,
        "span_s": requests[-1]["at"],
        "mean_max_tokens": statistics.mean(r["max_tokens"] for r in requests),
        "speed": speed,
    }
    for mode, results in runs.items():
        out[mode] = {
            key: statistics.median(r[key] for r in results)
            for key in ("seconds", "tok_s", "ttft_p50_s", "ttft_p90_s", "latency_p50_s")
        }
        out[mode]["tokens"] = results[0]["tokens"]
        out[mode]["refused"] = sum(r["refused"] for r in results)
    out["tok_s_ratio"] = out["continuous"]["tok_s"] / out["window"]["tok_s"]
    if JOIN_EVERY_STEP in out:
        out["gathered_tok_s_ratio"] = out["continuous"]["tok_s"] / out[JOIN_EVERY_STEP]["tok_s"]
    out["ttft_p50_ratio"] = out["continuous"]["ttft_p50_s"] / out["window"]["ttft_p50_s"]
    return out


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", help="hypernetwork checkpoint (default: the service's default)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="the base model's, as the service's DTYPE (auto: bfloat16 on an AMX CPU)",
    )
    parser.add_argument("--parts", default="1,2,3,4", help="which measurements, e.g. 1,4")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of part 1")
    parser.add_argument("--first-token-repeats", type=int, default=9, help="rounds of part 2")
    parser.add_argument("--http-rounds", type=int, default=2, help="rounds of part 3")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--poisson-requests", type=int, default=48, help="requests of part 4")
    parser.add_argument(
        "--poisson-load",
        type=float,
        default=0.8,
        help="part 4's arrival rate, as a fraction of the engine's capacity at batch 16",
    )
    parser.add_argument(
        "--poisson-rounds",
        type=int,
        default=1,
        help="rounds of part 4 (the servers rotate: as many rounds as servers puts each in every position)",
    )
    parser.add_argument("--seed", type=int, default=0, help="part 4's schedule")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    try:
        args.parts = {int(part) for part in args.parts.split(",")}
    except ValueError:
        parser.error(f"--parts takes numbers 1-4 separated by commas, got {args.parts!r}")
    if not args.parts or not args.parts <= {1, 2, 3, 4}:
        parser.error(f"--parts takes numbers 1-4 separated by commas, got {args.parts!r}")
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="hypergen-bench-"))
    try:
        return run_all(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_peft(engine: Engine, loras, scratch: Path):
    """PEFT's model with the 16 adapters loaded as ``a0`` .. ``a15`` (for parts 1 and 2)."""
    from peft import PeftModel

    # PEFT wraps (edits) the model it is given: give it its own copy of the base model.
    peft_base, _ = load_base_model(engine.base_model, dtype=engine.dtype)
    folders = scratch / "peft"
    names = [f"a{i}" for i in range(16)]
    for name, lora in zip(names, loras):
        engine.save_adapter(lora, folders / name, "float32", {})
    peft_model = PeftModel.from_pretrained(
        peft_base, str(folders / names[0]), adapter_name=names[0]
    ).eval()
    for name in names[1:]:
        peft_model.load_adapter(str(folders / name), adapter_name=name)
    return peft_model, names


def run_all(args: argparse.Namespace, scratch: Path) -> int:
    started = time.perf_counter()
    engine = Engine.load(args.checkpoint, dtype=args.dtype)
    loras = engine.make_adapters([engine.normalize(d) for d in descriptions(16)])
    peft_model, names = load_peft(engine, loras, scratch) if args.parts & {1, 2} else (None, None)

    load = os.getloadavg()[0]
    print(
        f"# serving benchmark: {engine.base_model} ({engine.base_model_id}, {str(engine.dtype).removeprefix('torch.')}), checkpoint "
        f"{engine.checkpoint.name}{' (UNTRAINED)' if engine.untrained else ''}, {args.threads} torch threads, "
        f"{os.cpu_count()} CPUs, load average {load:.1f}, torch {torch.__version__}, "
        f"parts {','.join(map(str, sorted(args.parts)))}"
    )
    results: dict = {}
    if 1 in args.parts:
        batch = results["batch"] = bench_batch(engine, peft_model, loras, names, args)
        print(
            f"\n## 1. batch 16 x {args.prompt_tokens} prompt tokens, {args.decode_tokens} greedy "
            f"tokens ({args.repeats} shuffled rounds: median, and the best round)"
        )
        print(
            f"{'system':36s} {'prefill tok/s':>13s} {'vs bare':>8s} {'decode tok/s':>13s} "
            f"{'vs bare':>8s} {'(best':>7s} {'vs bare)':>9s}"
        )
        for r in batch:
            print(
                f"{r['system']:36s} {r['prefill_tok_s_median']:13.0f} "
                f"{r['prefill_vs_bare_median']:7.2f}x {r['decode_tok_s_median']:13.1f} "
                f"{r['decode_vs_bare_median']:7.2f}x {r['decode_tok_s']:7.1f} "
                f"{r['decode_vs_bare']:8.2f}x"
            )

    servers: dict[str, ServerProcess] = {}
    modes = {"continuous": {"BATCHING": "continuous"}, "window": {"BATCHING": "window"}}
    if 4 in args.parts:  # part 4 also measures gathered joins against joins at every step
        modes[JOIN_EVERY_STEP] = {"BATCHING": "continuous", "JOIN_ROWS": 1}
    try:
        if args.parts & {2, 3, 4}:
            for mode, settings in modes.items():  # one store: the adapters are made once
                config = {
                    "STORE": str(scratch / "store"),
                    **settings,
                    "MAX_QUEUE_WAIT_S": 600,  # no 503s: part 4 compares how much each serves
                    "TORCH_THREADS": args.threads,
                    "DTYPE": args.dtype,
                    "THREADS": 64,
                }
                folder = scratch / f"server-{mode}"
                servers[mode] = ServerProcess(config, folder, args.checkpoint)
        if 2 in args.parts:
            results["first_token"] = bench_first_token(
                engine, peft_model, servers["continuous"].url, scratch, args
            )
        if 3 in args.parts:
            two = {mode: servers[mode] for mode in ("continuous", "window")}
            results["concurrency"] = bench_concurrency(engine, two, args)
        if 4 in args.parts:
            results["poisson"] = bench_poisson(engine, servers, loras, args)
    finally:
        for server in servers.values():
            server.stop()

    targets = {}
    if 1 in args.parts:
        decode16 = next(r for r in batch if r["system"] == "hypergen, 16 adapters")
        # targets on the medians: the best round of each system flatters the noisiest one
        targets["decode with 16 distinct adapters >= 0.90x bare"] = (
            decode16["decode_vs_bare_median"] >= 0.90
        )
        before = next((r for r in batch if r["system"] == EAGER), None)
        if before is not None:  # issue 10: >= 2x the fp32 eager model's decode speed
            speedup = decode16["decode_tok_s_median"] / before["decode_tok_s_median"]
            print(
                f"\n16 distinct adapters vs the bare model in fp32 with eager linears: "
                f"{speedup:.2f}x decode (medians; best rounds: "
                f"{decode16['decode_tok_s'] / before['decode_tok_s']:.2f}x)"
            )
            targets["decode with 16 distinct adapters >= 2x the eager bare model"] = speedup >= 2
    if 2 in args.parts:
        first = results["first_token"]
        print(
            f"\n## 2. new description -> first token (batch 1, {first['prompt_tokens']}-token "
            f"prompt, best of {args.first_token_repeats})"
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
            f"speed-up over PEFT: {first['speedup']:.2f}x (engine), {first['speedup_http']:.2f}x "
            "(HTTP); time added to the bare forward: "
            + (
                f"{added:.1f}x less than PEFT's"
                if added
                else "within the noise of the bare forward"
            )
        )
        targets["new description to first token >= 5x faster than PEFT"] = first["speedup"] >= 5
    if 3 in args.parts:
        conc = results["concurrency"]
        print(
            f"\n## 3. {conc['requests']} HTTP clients, distinct adapters, "
            f"{args.prompt_tokens // 2}-token prompt, {args.decode_tokens} tokens each "
            f"(best of {args.http_rounds})"
        )
        print(
            f"one at a time          {conc['sequential_s']:6.2f} s  "
            f"{conc['sequential_tok_s']:7.1f} tok/s"
        )
        for mode in ("continuous", "window"):  # part 4's third server is not in part 3
            c = conc[mode]
            print(
                f"concurrent, {mode:10s} {c['concurrent_s']:6.2f} s  {c['concurrent_tok_s']:7.1f} "
                f"tok/s  ({c['speedup']:.2f}x one at a time, {c['prefills']} prefill(s))"
            )
        targets["16 concurrent clients >= 6x one at a time"] = conc["continuous"]["speedup"] >= 6
    if 4 in args.parts:
        po = results["poisson"]
        print(
            f"\n## 4. {po['requests']} requests arriving at random (Poisson, {po['rate_req_s']:.2f} "
            f"req/s = {args.poisson_load:g} x the engine's capacity at batch 16, over "
            f"{po['span_s']:.1f} s), distinct adapters, 16-48-token prompts, 4-64 tokens each "
            f"(log-uniform, mean {po['mean_max_tokens']:.1f}), streamed"
        )
        speed = po["speed"]
        print(
            f"engine: {1000 * speed['step_s']:.0f} ms per decode step at batch 16, "
            f"{1000 * speed['prefill_token_s']:.1f} ms per prefill token"
        )
        print(
            f"{'batching':24s} {'tok/s':>7s} {'TTFT p50':>9s} {'TTFT p90':>9s} "
            f"{'latency p50':>12s} {'total':>7s} {'refused':>8s}"
        )
        for mode in servers:
            r = po[mode]
            print(
                f"{mode:24s} {r['tok_s']:7.1f} {r['ttft_p50_s']:8.2f}s {r['ttft_p90_s']:8.2f}s "
                f"{r['latency_p50_s']:11.2f}s {r['seconds']:6.1f}s {r['refused']:8d}"
            )
        print(
            f"continuous vs window: {po['tok_s_ratio']:.2f}x tokens/s, "
            f"{po['ttft_p50_ratio']:.2f}x p50 time to first token"
        )
        if "gathered_tok_s_ratio" in po:
            print(
                f"joins gathered (JOIN_ROWS {DEFAULTS['JOIN_ROWS']}) vs at every step: "
                f"{po['gathered_tok_s_ratio']:.2f}x tokens/s"
            )
        targets["Poisson arrivals: continuous >= 1.5x the window batcher's tokens/s"] = (
            po["tok_s_ratio"] >= 1.5
        )
        targets["Poisson arrivals: continuous p50 time to first token <= 0.5x"] = (
            po["ttft_p50_ratio"] <= 0.5
        )

    print("\n## targets")
    for name, met in targets.items():
        print(f"{'met   ' if met else 'MISSED'} {name}")
    print(
        f"\n(total {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
