#!/usr/bin/env bash
# GPU check (issue 21): run on a CUDA machine from the repository root; finishes within 10 minutes.
# CUDA-marked tests, 20 bf16-AMP training steps per 2D model, Table 2 on the GPU, scan comparison.
# Writes gpu_check.json (and prints the tables); record the result in BENCHMARKS.md ("Mamba speed").
set -u
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-$(pwd)/src}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
timeout 590 "$PY" -m mddose.bench.gpu --json > "${OUT:-.}/gpu_check.json"
rc=$?
"$PY" - "${OUT:-.}/gpu_check.json" <<'PYEOF' || true
import json, sys
res = json.load(open(sys.argv[1]))
print(res.get("device"), "| scan on CUDA:", res.get("scan_backend_on_cuda"))
for k in ("tests", "train", "table2", "scan"):
    print(f"\n[{k}] ({res.get(k + '_seconds')} s)")
    v = res.get(k)
    if k == "table2" and isinstance(v, dict) and "rows" in v:
        from mddose.bench.table2 import format_table2
        print(format_table2(v))
    elif k == "scan" and isinstance(v, dict):
        print(v.get("table", v))
    else:
        print(json.dumps(v, indent=1))
PYEOF
exit $rc
