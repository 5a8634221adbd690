#!/usr/bin/env bash
# The long-tail benchmark (issue 18), one resumable command:
#
#   bash bench/longtail.sh [configs/longtail.yaml]
#
# 1. the pipeline up to the synthetic pool (python -m jobs.pipeline --until augment): the base
#    classifier, the flow generator, the local verifier and the flow pool;
# 2. the other pools, made with the same plan, seeds and gate (python -m jobs.augment): copy-paste
#    (--generator paste: the reference's real lesion carried to its place, no generator), VAE and
#    LSGAN (trained first unless <output_dir>/generator-<kind>/generator.pt exists);
# 3. python -m jobs.longtail: every arm of longtail.arms over longtail.seeds seeds, scored on the
#    test set rendered apart; bench/results/longtail-<profile>.json and the printed table.
#
# Every step resumes: finished stages, pool items and classifier cells are not redone.
# Environment: PY (default .venv/bin/python), SETS (extra "--set k=v" for every job).
set -euo pipefail
CONFIG=${1:-configs/longtail.yaml}
PY=${PY:-.venv/bin/python}
read -r -a SETS_A <<< "${SETS:-}"
T0=$(date +%s)

eval "$($PY - "$CONFIG" "${SETS_A[@]}" <<'PYEOF'
import shlex, sys
from augment.config import load_config
args = sys.argv[2:]
cfg = load_config(sys.argv[1], [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--set"])
print(f"OUT={shlex.quote(cfg.output_dir)}; NAME={shlex.quote(cfg.name)}; ARMS={shlex.quote(' '.join(cfg.longtail.arms))}")
PYEOF
)"

$PY -m jobs.pipeline --config "$CONFIG" "${SETS_A[@]}" --until augment
CLF="$OUT/classifier/classifier.pt"
VER="$OUT/verifier/verifier.pt"
POOLS=()
for arm in copy-paste vae lsgan; do
  [[ " $ARMS " == *" $arm "* ]] || continue
  if [ "$arm" = copy-paste ]; then
    GEN=paste
  else
    GEN="$OUT/generator-$arm/generator.pt"
    [ -f "$GEN" ] || $PY -m jobs.train_generator --config "$CONFIG" "${SETS_A[@]}" --generator "$arm"
  fi
  echo "== pool: $arm"
  $PY -m jobs.augment --config "$CONFIG" "${SETS_A[@]}" --set "augment.output=$OUT/pools/$arm" \
    --classifier "$CLF" --generator "$GEN" --verifier "$VER"
  POOLS+=(--pool "$arm=$OUT/pools/$arm")
done
mkdir -p bench/results
$PY -m jobs.longtail --config "$CONFIG" "${SETS_A[@]}" "${POOLS[@]}" --report "bench/results/longtail-$NAME.json"
echo "bench/longtail.sh: $(( $(date +%s) - T0 )) s in all"
