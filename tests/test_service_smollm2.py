"""What a newcomer does after `make install`: `hypergen serve` on the embedded default (SmolLM2 +
MiniLM + the shipped, or else an untrained, checkpoint), then curl-like requests: an adapter whose
download loads in peft, and a completion with it applied. Slow (real models): `make test-slow`."""

from __future__ import annotations

import io
import json
import queue
import re
import subprocess
import sys
import threading
import urllib.request
import zipfile

import pytest
import torch

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 300  # first start may build the untrained checkpoint


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:  # no Content-Type: like curl -d
        return response.status, json.loads(response.read())


@pytest.fixture
def server(tmp_path):
    """`hypergen serve --port 0` in a subprocess; yields its base URL."""
    command = [
        sys.executable,
        "-m",
        "hypergen.cli",
        "serve",
        "--port",
        "0",
        "--store",
        str(tmp_path),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=START_TIMEOUT_S)
            seen.append(line)
            match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
            if match:
                break
            assert process.poll() is None, "".join(seen)
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_make_serve_answers_a_newcomer(server, tmp_path):
    from peft import PeftModel

    from hypergen import load_base_model

    health = json.loads(urllib.request.urlopen(f"{server}/healthz", timeout=30).read())
    assert (
        health["base_model"] == "smollm2-135m" and health["checkpoint"]["encoder"]["kind"] == "text"
    )
    status, meta = _post(f"{server}/v1/adapters", {"description": "Answer questions about dates."})
    assert status == 201 and meta["base_model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    data = urllib.request.urlopen(meta["download_url"], timeout=60).read()
    zipfile.ZipFile(io.BytesIO(data)).extractall(tmp_path / "adapter")
    model, tokenizer = load_base_model("smollm2-135m")
    peft_model = PeftModel.from_pretrained(model, tmp_path / "adapter").eval()

    prompt = "The capital of France is"
    status, out = _post(
        f"{server}/v1/completions", {"model": meta["id"], "prompt": prompt, "max_tokens": 8}
    )
    assert status == 200 and out["model"] == meta["id"] and out["usage"]["completion_tokens"] > 0
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        tokens = peft_model.generate(**ids, max_new_tokens=8, do_sample=False)
    expected = tokenizer.decode(tokens[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
    assert out["choices"][0]["text"] == expected, "the service applies what the download holds"
