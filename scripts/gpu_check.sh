#!/usr/bin/env bash
# One prepared GPU check (run on a CUDA machine from the repository root). It needs torch there
# and pytorch-ignite + tensorboardX wheels in .wheels/ (pip download --no-deps -d .wheels
# pytorch-ignite==0.5.5 tensorboardX; for the pytest run of tests/unit/test_cudagraph.py also
# pytest pluggy iniconfig pygments packaging). Results go to $OUT (default ./gpu-out).
#   scripts/gpu_check.sh          every section
#   scripts/gpu_check.sh speed    only issue 4's checks (CUDA graphs, benchmarks)
#   scripts/gpu_check.sh other    only the checks of the other issues and the earlier benchmarks
set -u
SECTIONS=${1:-all}
want() { [ "$SECTIONS" = all ] || [ "$SECTIONS" = "$1" ]; }
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
PY=${PY:-python3}
log() { echo "=== $*"; }
$PY -m pip install --quiet --no-deps --no-index .wheels/pytorch_ignite-*.whl .wheels/tensorboard[xX]-*.whl 2>&1 | tail -1
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, ignite, tensorboardX; print('torch', torch.__version__, 'ignite', ignite.__version__, 'tbx', tensorboardX.__version__)"
W=$(mktemp -d)

if want other; then
log "issue 2: default run on --device cuda:0"
timeout 120 $PY scripts/train.py --device cuda:0 --no-progress --output-dir "$W/default" | tail -4

log "issue 3: a CUDA checkpoint for the CPU tests (MLP, synthetic regression)"
timeout 60 $PY scripts/train.py --device cuda:0 --no-progress --dataset synthetic-regression --epochs 1 \
  --n-saved 1 --output-dir "$W/cudarun" | tail -1
cp "$W/cudarun/config.yaml" "$OUT/cudarun_config.yaml"
for f in "$W"/cudarun/checkpoints/checkpoint_*.pt*; do cp "$f" "$OUT/cudarun_$(basename "$f")"; done

log "issue 3: --deterministic SIGTERM + resume vs uninterrupted, on CUDA"
A=(--device cuda:0 --deterministic --no-progress --epochs 3 --patience 0 --batch-size 16)
timeout 120 $PY scripts/train.py "${A[@]}" --output-dir "$W/full" | tail -1
timeout 120 $PY scripts/train.py "${A[@]}" --output-dir "$W/cut" & pid=$!
for _ in $(seq 1 100); do [ -n "$(ls "$W/cut/checkpoints" 2>/dev/null)" ] && break; sleep 0.1; done
sleep 0.3; kill -TERM $pid; wait $pid; echo "exit after SIGTERM: $?"
timeout 120 $PY scripts/train.py --resume "$W/cut" --no-progress | tail -1
$PY - "$W/full" "$W/cut" <<'PY'
import sys, torch
from pathlib import Path
def last(d):
    p = max(Path(d, "checkpoints").glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return torch.load(p, weights_only=True, map_location="cpu")
a, b = (last(d) for d in sys.argv[1:3])
same = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
diff = max((a["model"][k].float() - b["model"][k].float()).abs().max().item() for k in a["model"])
print(f"iterations {a['trainer']['iteration']} / {b['trainer']['iteration']}; weights torch.equal: {same}; max abs diff {diff:.3g}")
PY

log "issue 5: torchrun --nproc_per_node=1 with nccl on the GPU"
timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node=1 scripts/train.py --device cuda \
  --no-progress --epochs 2 --output-dir "$W/ddp" 2>&1 | grep -v "^W1\|OMP_NUM_THREADS\|\*\*\*\*" | tail -4

fi

if want speed; then
log "issue 4: --cuda-graph on CUDA trains like Ignite's eager step (tests/unit/test_cudagraph.py)"
$PY -m pip install --quiet --no-deps --no-index --target "$W/pytest" .wheels/pytest-*.whl .wheels/pluggy-*.whl \
  .wheels/iniconfig-*.whl .wheels/pygments-*.whl .wheels/packaging-*.whl 2>&1 | tail -1
PYTHONPATH="$W/pytest:$PWD" timeout 150 $PY -m pytest -q -p no:cacheprovider tests/unit/test_cudagraph.py 2>&1 | tail -4

log "issue 4: accuracy of the default run with --cuda-graph"
timeout 120 $PY scripts/train.py --device cuda:0 --cuda-graph --no-progress --output-dir "$W/graph" | tail -3

log "issue 4: bench, default CNN on digits x10 (batch 64), --cuda-graph"
timeout 180 $PY scripts/bench.py --device cuda --model cnn --cuda-graph --threads 8 --epochs 5 2>&1 | tee "$OUT/bench_cnn_graph.txt"
log "issue 4: bench, the same with bf16 and channels_last"
timeout 120 $PY scripts/bench.py --device cuda --model cnn --cuda-graph --amp bf16 --channels-last --threads 8 --epochs 5 \
  --no-probes 2>&1 | tee "$OUT/bench_cnn_graph_bf16.txt"
log "issue 4: bench, ResNet on CIFAR-shaped synthetic data, batch 512, --cuda-graph"
timeout 150 $PY scripts/bench.py --device cuda --model resnet --data cifar --batch-size 512 --amp bf16 --channels-last \
  --cuda-graph --threads 8 --epochs 3 --no-probes 2>&1 | tee "$OUT/bench_resnet_graph.txt"
fi

if want other; then
log "issue 4: bench, default CNN on digits x10 (batch 64)"
timeout 150 $PY scripts/bench.py --device cuda --model cnn --amp bf16 --channels-last --threads 8 --epochs 5 2>&1 | tee "$OUT/bench_cnn.txt"
log "issue 4: bench, ResNet on CIFAR-shaped synthetic data, batch 512"
timeout 200 $PY scripts/bench.py --device cuda --model resnet --data cifar --batch-size 512 --amp bf16 --channels-last \
  --threads 8 --epochs 3 2>&1 | tee "$OUT/bench_resnet.txt"
fi
