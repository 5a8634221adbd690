#!/usr/bin/env bash
# Flow-matching inpainting against the LSGAN and VAE baselines, one command per data set:
#
#   bash bench/compare_generators.sh configs/local.yaml            # the phantom set
#   bash bench/compare_generators.sh configs/nih-sample.yaml       # the real NIH sample
#
# Needs a finished pipeline run of the same profile (`python -m jobs.pipeline --config ...`):
# its base classifier (the gate's and the embeddings') and its flow generator. For each
# generator in KINDS (default "flow vae lsgan identity") it
#   1. trains the baseline unless <output_dir>/generator-<kind>/generator.pt exists,
#   2. makes a pool with the same plan, seeds and gate (jobs.augment),
#   3. evaluates the pool against the real images (jobs.evaluate: FID with a bootstrap
#      interval, two-sample test, MS-SSIM diversity, memorisation),
#   4. measures utility over seeds and data fractions (jobs.utility),
# and writes one table: bench/results/generators-<profile>.{json,md}. "identity" is the
# unpainted control (bench/identity_pool.py): flow's items with nothing painted, evaluated
# like the others, so the table shows how far each measure is from real for the sources alone. Every step resumes:
# a finished pool item, evaluation or utility cell is not redone.
#
# Environment: PY (python, default .venv/bin/python), KINDS, STEPS (which of "pool evaluate utility"
# to run, default all three: STEPS=pool makes the pools only, STEPS=evaluate re-measures existing
# pools with the current measures), SETS (extra "--set k=v" arguments
# for every job, e.g. SETS="--set augment.target_count=20"), UTILITY_SETS (for jobs.utility only,
# default "--set utility.seeds=3"), EVAL_ARGS (for jobs.evaluate; default --include-rejected:
# every generated image is measured, the gate's rejects included, so every generator's row has
# the same items, the same N and the same real side (the patients that gave no source); set
# EVAL_ARGS=" " to measure only what the gate accepted, at different N per row).
set -euo pipefail
CONFIG=${1:-configs/local.yaml}
PY=${PY:-.venv/bin/python}
KINDS=${KINDS:-flow vae lsgan identity}
read -r -a SETS_A <<< "${SETS:-}"
read -r -a USETS_A <<< "${UTILITY_SETS:---set utility.seeds=3}"
EVAL_ARGS=${EVAL_ARGS:---include-rejected}
read -r -a EVAL_A <<< "$EVAL_ARGS"
STEPS=${STEPS:-pool evaluate utility}
step() { [[ " $STEPS " == *" $1 "* ]]; }

eval "$($PY - "$CONFIG" "${SETS_A[@]}" <<'EOF'
import shlex, sys
from augment.config import load_config
from augment.data import data_root
args = sys.argv[2:]
cfg = load_config(sys.argv[1], [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--set"])
print(f"OUT={shlex.quote(cfg.output_dir)}; NAME={shlex.quote(cfg.name)}; DATA={shlex.quote(str(data_root(cfg)))}; "
      f"TRACKING={shlex.quote(cfg.tracking.uri)}")
EOF
)"
CLF="$OUT/classifier/classifier.pt"
[ -f "$CLF" ] || { echo "no $CLF: run python -m jobs.pipeline --config $CONFIG first" >&2; exit 2; }
[ -f "$OUT/generator/generator.pt" ] || { echo "no $OUT/generator/generator.pt: run the pipeline first" >&2; exit 2; }

for kind in $KINDS; do
  echo "== $kind"
  POOL="$OUT/compare-generators/pool-$kind"
  if step pool; then
    if [ "$kind" = identity ]; then
      # the control: the flow pool's items with their sources unpainted (needs flow's pool first)
      [ -f "$OUT/compare-generators/pool-flow/provenance.csv" ] || { echo "identity needs the flow pool: put flow before it in KINDS" >&2; exit 2; }
      $PY bench/identity_pool.py --pool "$OUT/compare-generators/pool-flow" --data "$DATA" --out "$POOL"
    else
      if [ "$kind" = flow ]; then
        GEN="$OUT/generator/generator.pt"
      else
        GEN="$OUT/generator-$kind/generator.pt"
        [ -f "$GEN" ] || $PY -m jobs.train_generator --config "$CONFIG" "${SETS_A[@]}" --generator "$kind"
      fi
      $PY -m jobs.augment --config "$CONFIG" "${SETS_A[@]}" --set "augment.output=$POOL" --classifier "$CLF" --generator "$GEN"
    fi
  fi
  EVAL="$OUT/compare-generators/evaluate-$kind"
  # an evaluation made with other EVAL_ARGS or by older measures is redone, not reused
  STAMP="${EVAL_ARGS:-} measures=2"
  if step evaluate && { [ ! -f "$EVAL/evaluation.json" ] || [ "$(cat "$EVAL/eval-args" 2>/dev/null)" != "$STAMP" ]; }; then
    $PY -m jobs.evaluate --real "$DATA" --synthetic "$POOL" --classifier "$CLF" \
      --generator-train "$DATA" --out "$EVAL" --tracking-uri "$TRACKING" --experiment "cxr-augment/$NAME/generators" "${EVAL_A[@]}"
    printf '%s' "$STAMP" > "$EVAL/eval-args"
  fi
  # nothing painted, nothing to learn from: the control has no utility run
  [ "$kind" = identity ] || ! step utility || $PY -m jobs.utility --config "$CONFIG" "${SETS_A[@]}" "${USETS_A[@]}" --pool "$POOL" --out "$OUT/compare-generators/utility-$kind"
done
$PY bench/generators_table.py --root "$OUT/compare-generators" --kinds $KINDS --out "bench/results/generators-$NAME"
