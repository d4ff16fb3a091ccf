#!/usr/bin/env python3
"""The reference stacks' figures for `kura bench`, measured on this machine.

Runs sentence-transformers (PyTorch) on the texts `kura bench` embeds, and, when
`llama-cpp-python` is installed and a GGUF file is given, llama.cpp's prompt reading
and one-sequence decoding on the prompts `kura bench` uses; every figure is the best
of three runs on 2 threads, as ours are. Prints one JSON object.

    python3 -m pip install sentence-transformers llama-cpp-python
    python3 scripts/reference_bench.py --embedder ~/.cache/kura/models/all-minilm-l6-v2 \
        --gguf ~/.cache/kura/models/qwen2.5-coder-0.5b-instruct/*.gguf

Machines of the same kind differ by up to two times over a day: run this beside
`kura bench`, a few minutes apart, before comparing the two.
"""

import argparse
import json
import os
import time

THREADS = 2
REPEATS = 3
SHORT_TEXTS, LONG_TEXTS, LONG_CHARS = 1000, 200, 1000
PROMPT_TOKENS, DECODE_PROMPT_TOKENS, DECODE_STEPS = 512, 128, 64


def texts(data):
    """Banking77's first questions and Arena-Hard's first long messages, as kura bench."""
    with open(os.path.join(data, "labeled/banking77.jsonl")) as f:
        short = [json.loads(line)["text"] for _, line in zip(range(SHORT_TEXTS), f)]
    long = []
    with open(os.path.join(data, "conversations/arena_hard_500.jsonl")) as f:
        for line in f:
            for message in json.loads(line)["messages"]:
                if len(message["content"]) >= LONG_CHARS and len(long) < LONG_TEXTS:
                    long.append(message["content"])
    return short, long


def best_rate(items, work):
    best = 0.0
    for _ in range(REPEATS):
        start = time.perf_counter()
        work()
        best = max(best, items / (time.perf_counter() - start))
    return best


def embedder_figures(model_dir, short, long):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(model_dir, device="cpu")
    model.encode(short[:8])
    return {
        "embed_short": best_rate(len(short), lambda: model.encode(short, batch_size=32)),
        "embed_long": best_rate(len(long), lambda: model.encode(long, batch_size=32)),
    }


def llm_figures(gguf, long):
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=THREADS, n_threads_batch=THREADS,
                n_ctx=2048, n_batch=PROMPT_TOKENS, verbose=False)
    tokens = llm.tokenize("\n\n".join(long).encode(), add_bos=False, special=False)
    prompt = tokens[:PROMPT_TOKENS]
    decode_prompt = tokens[:DECODE_PROMPT_TOKENS]

    def read_prompt():
        llm.reset()
        llm.eval(prompt)

    def decode():
        llm.reset()
        llm.eval(decode_prompt)
        start = time.perf_counter()
        token = decode_prompt[-1]
        for _ in range(DECODE_STEPS):
            llm.eval([token])
            token = llm.sample(temp=0.0)
        return DECODE_STEPS / (time.perf_counter() - start)

    return {
        "llm_prefill": best_rate(len(prompt), read_prompt),
        "llm_decode": max(decode() for _ in range(REPEATS)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--data", default=os.path.join(here, "../../shared/data"))
    parser.add_argument("--embedder", help="a sentence-transformers model directory")
    parser.add_argument("--gguf", help="a GGUF file for llama.cpp")
    args = parser.parse_args()
    short, long = texts(args.data)
    figures = {"threads": THREADS, "load_average": os.getloadavg()[0]}
    if args.embedder:
        figures.update(embedder_figures(args.embedder, short, long))
    if args.gguf:
        figures.update(llm_figures(args.gguf, long))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
