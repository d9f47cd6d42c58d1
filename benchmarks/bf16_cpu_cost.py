"""What bf16 costs on a CPU without native bf16 (the number behind colm's bf16-on-CPU warning).

A training step (forward, backward, AdamW) of the embedded tiny Llama, batch 8 x 128 tokens,
1 thread, in float32 and under CPU bf16 autocast (what TrainingArguments(bf16=True) does on a
CPU), alternating over 4 rounds of 3 timed steps (after 1 warm-up), median per round.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bf16_cpu_cost.py
"""
import statistics
import time

import torch

from colm.models.default import default_model, default_tokenizer

torch.set_num_threads(1)
tok = default_tokenizer()
model = default_model(tok, "tiny")
ids = torch.randint(3, len(tok), (8, 128))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
def step(bf16):
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()
    return time.perf_counter() - t
res = {False: [], True: []}
for _r in range(4):
    for bf16 in (False, True):
        step(bf16)
        res[bf16].append(statistics.median(step(bf16) for _ in range(3)))
print("fp32", [round(x,3) for x in res[False]], "bf16", [round(x,3) for x in res[True]],
      "ratio per round", [round(b/a,2) for a,b in zip(res[False],res[True])])
