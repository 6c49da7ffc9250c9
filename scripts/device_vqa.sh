#!/usr/bin/env bash
# The VQA accuracy matrix on a GPU machine, one process per (format, method set) in parallel
# (under MPS when it starts: the runs are small and launch-bound), merged into one table.
# Usage (repo root, on the device):  bash scripts/device_vqa.sh
#   MODEL=benchmarks/checkpoints/vqa-h100  FORMATS="w3a16 w4a16 w4a8 w4a4 w4a8-vit-w8a8"
#   METHOD_SETS="rtn,gptq,awq,smoothquant,mbq quarot flatquant"  TL=420 (seconds per process)
#   DEVICE=cuda  EXTRA="" (more vqa_quant_accuracy.py arguments, e.g. "--samples 200")
# Partials, logs and the merged table go to $OUT/vqa (brought back by the device tool as one tgz).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python:$PWD
MODEL=${MODEL:-benchmarks/checkpoints/vqa-h100}
FORMATS=${FORMATS:-w3a16 w4a16 w4a8 w4a4 w4a8-vit-w8a8}
METHOD_SETS=${METHOD_SETS:-rtn,gptq,awq,smoothquant,mbq quarot flatquant}
TL=${TL:-420}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
work=/tmp/modaq-vqa; mkdir -p "$work" "${OUT:-/tmp}"
if [ "$DEVICE" = cuda ] && nvidia-cuda-mps-control -d > "$work/mps.txt" 2>&1 \
   && timeout 40 python3 -c "import torch; torch.ones(1).cuda()" >> "$work/mps.txt" 2>&1; then
  mps=1
else
  echo quit | nvidia-cuda-mps-control 2>/dev/null; mps=0
fi
echo "MPS: $mps" | tee "$work/timeline.txt"
for f in $FORMATS; do
  for set in $METHOD_SETS; do
    name="${f}_${set//,/-}"
    ( timeout "$TL" python3 benchmarks/vqa_quant_accuracy.py --model "$MODEL" --device "$DEVICE" --threads 1 --quiet $EXTRA \
        --formats "$f" --methods ${set//,/ } --out-json "$work/part_$name.json" > "$work/log_$name.txt" 2>&1
      echo "$name rc $?" >> "$work/timeline.txt" ) &
  done
done
wait
[ "$mps" = 1 ] && echo quit | nvidia-cuda-mps-control
python3 benchmarks/vqa_quant_accuracy.py --merge "$work"/part_*.json --results-dir "$work" > "$work/merge.txt" 2>&1
tar -czf "${OUT:-/tmp}/vqa.tgz" -C "$(dirname "$work")" "$(basename "$work")"
cat "$work/timeline.txt"
