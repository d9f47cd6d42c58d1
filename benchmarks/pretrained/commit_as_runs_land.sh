#!/usr/bin/env bash
# Commit a lab's results file whenever runs land, while the lab runs (it takes hours and a stop
# must not lose finished runs). Start it next to the lab, from the repository root:
#   nohup make pretrained-lab > lab.log 2>&1 &
#   nohup bash benchmarks/pretrained/commit_as_runs_land.sh > commits.log 2>&1 &
# It commits only that file (git commit -- FILE), with the new runs' losses as the message, and
# stops when no `colm compare` of a lab config is running any more.
set -u
F=${1:-benchmarks/results/pretrained_lab/results.jsonl}
while pgrep -f "benchmarks/pretrained/lab" > /dev/null; do
  sleep "${EVERY_S:-240}"
  if [ -f "$F" ] && ! git diff --quiet HEAD -- "$F" 2>/dev/null; then
    msg=$(python3 - "$F" <<'PY'
import json, subprocess, sys
path = sys.argv[1]
old = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True).stdout.splitlines()
new = open(path).read().splitlines()
runs = [r["row"] for r in map(json.loads, filter(str.strip, new[len(old):])) if r.get("kind") == "run"]
parts = [f"{r['arm']} seed {r['seed']} (natural {r['val_loss_natural']:.4f}, mean over sources "
         f"{r['val_loss_mean']:.4f})" if r.get("val_loss_natural") is not None else f"{r['arm']} seed {r['seed']}"
         for r in runs]
print("Pretrained lab: " + ("; ".join(parts) if parts else "results file updated"))
PY
)
    git commit -q -m "$msg" -- "$F" || true
  fi
done
