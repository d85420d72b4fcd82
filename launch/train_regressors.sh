#!/usr/bin/env bash
# Trains every regime of the reconstruction network (issue 12) with one flow prior.
# Usage: bash launch/train_regressors.sh DIR [extra launch.main flags, e.g. --config.num_train_steps=500]
#   the flow prior       $FLOWPOSE_PRIOR_WORKDIR, else runs/main/prior (what `bash launch/run.sh`
#                        trains); trained there first, as run.sh does, when it holds none
#   DIR/<regime>         one run per regime of experiments/regressor_base.py (REGIMES), each with
#                        its default config from experiments/regressor_<regime>.py
# Rerunning resumes every unfinished run (launch.main resumes from the newest checkpoint);
# SIGTERM checkpoints and exits 143, and `set -e` stops the script there.
# Then: python -m benchmarks.regressor --workdir_root DIR --mocap_dir FOLDER --num_frames N --out F.json
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || -z "$1" ]]; then
  echo "usage: bash launch/train_regressors.sh DIR [launch.main flags]" >&2
  exit 2
fi
DIR="$1"
shift
PY=.venv/bin/python
CMU_DIR="${FLOWPOSE_CMU_DIR:-$(cd .. && pwd)/shared/data/cmu}"
mkdir -p "$DIR"
export OPENBLAS_NUM_THREADS=1

PRIOR="${FLOWPOSE_PRIOR_WORKDIR:-runs/main/prior}"
if [[ ! -f "$PRIOR/prior_params.msgpack" ]]; then
  echo "[regressors] training the flow prior (experiments/prior_cmu.py, as launch/run.sh) -> $PRIOR"
  FLOWPOSE_CMU_DIR="$CMU_DIR" $PY -m launch.main --config=experiments/prior_cmu.py \
    --workdir="$PRIOR"
fi

# $FLOWPOSE_REGIMES (e.g. "weak semi") trains a subset; default: every regime. A regime that
# starts from another's network (regressor_base.INIT_FROM: semi from weak_2d) has that one
# trained first, into DIR too, and passed as --config.model.init_from. A self-trained regime
# (regressor_base.PSEUDO_LABEL_ROUNDS: weak = weak_2d + 2 rounds) trains its base, then each
# round from the previous run on that run's pseudo-labels (python -m launch.pseudo_labels
# --every=PSEUDO_LABEL_EVERY -> <previous run>/pseudo_labels.npz, ~2 min; ~14 min from round
# BENCHMARK_LABELS_FROM_ROUND on, with the benchmark's refinement), rounds before the last into
# DIR/<regime>_round<r>. Session 18, 2 cores: weak (weak_2d + 2 rounds) 26 min, every other regime
# 5-8 min (the first run builds the data: cmu_evidence ~2 min, self's BlazePose evidence ~5 min).
REGIMES="${FLOWPOSE_REGIMES:-$($PY -c "from experiments import regressor_base; print(' '.join(regressor_base.REGIMES))")}"
DONE=" "
run_main() {  # run_main REGIME WORKDIR [flags]: one launch.main run, timed.
  local regime="$1" workdir="$2" start
  shift 2
  echo "[regressors] $regime -> $workdir ($(date +%T))"
  start=$(date +%s)
  FLOWPOSE_CMU_DIR="$CMU_DIR" $PY -m launch.main --config="experiments/regressor_${regime}.py" \
    --workdir="$workdir" --config.model.prior_workdir="$PRIOR" "$@"
  echo "[regressors] $regime done in $(( $(date +%s) - start )) s"
}
train_regime() {
  local regime="$1" base rounds bench_from every refinement init=()
  shift
  [[ "$DONE" == *" $regime "* ]] && return 0
  read -r base rounds bench_from every <<< "$($PY -c "from experiments import regressor_base as b
rounds = b.PSEUDO_LABEL_ROUNDS.get('$regime', ())
print(*rounds, *((b.BENCHMARK_LABELS_FROM_ROUND, b.PSEUDO_LABEL_EVERY) if rounds else ()))")"
  if [[ -n "$base" ]]; then
    train_regime "$base" "$@"
    local previous="$DIR/$base" workdir r
    for (( r = 1; r <= rounds; r++ )); do
      workdir="$DIR/${regime}_round$r"
      (( r == rounds )) && workdir="$DIR/$regime"
      if [[ ! -f "$previous/pseudo_labels.npz" ]]; then
        echo "[regressors] pseudo-labels of $previous ($(date +%T))"
        refinement=labels
        (( r >= bench_from )) && refinement=benchmark
        FLOWPOSE_CMU_DIR="$CMU_DIR" $PY -m launch.pseudo_labels --regressor_workdir="$previous" \
          --out="$previous/pseudo_labels.npz" --refinement="$refinement" --every="$every"
      fi
      run_main "$regime" "$workdir" --config.model.init_from="$previous" \
        --config.data.pseudo_labels="$previous/pseudo_labels.npz" "$@"
      previous="$workdir"
    done
    DONE="$DONE$regime "
    return 0
  fi
  base="$($PY -c "from experiments import regressor_base; print(regressor_base.INIT_FROM.get('$regime', ''))")"
  if [[ -n "$base" ]]; then
    train_regime "$base" "$@"
    init=(--config.model.init_from="$DIR/$base")
  fi
  run_main "$regime" "$DIR/$regime" "${init[@]}" "$@"
  DONE="$DONE$regime "
}
for regime in $REGIMES; do
  train_regime "$regime" "$@"
done
echo "[regressors] done: $DIR/{$(echo $DONE | tr ' ' ',')}"
