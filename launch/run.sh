#!/usr/bin/env bash
# The main job on its default: set up, train the flow prior on CMU mocap (+ the VAE baseline),
# evaluate it against the Gaussian/GMM/VAE baselines, render the body model, and reconstruct the people of the COCO photograph
# from the photo alone (2D detector + person mask -> latent fit; its COCO annotations are NOT used).
# Usage: bash launch/run.sh [RUN_DIR]   (default RUN_DIR=runs/main)
# Data: $FLOWPOSE_CMU_DIR (default ../shared/data/cmu; cmu_more/{asfamc,bvh} beside it join the
# training subjects, see experiments/prior_cmu.py), $FLOWPOSE_COCO_DIR (default ../shared/data/coco).
# The annotation path stays an option: add --annotations="$COCO_DIR/person_keypoints_785.json" to
# the last command to fit every annotated person (keypoints + segmentation) instead of detecting.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh

RUN_DIR="${1:-runs/main}"
CMU_DIR="${FLOWPOSE_CMU_DIR:-$(cd .. && pwd)/shared/data/cmu}"
COCO_DIR="${FLOWPOSE_COCO_DIR:-$(cd .. && pwd)/shared/data/coco}"
PY=.venv/bin/python
mkdir -p "$RUN_DIR"

echo "[run] 1/5 body-model pictures -> $RUN_DIR/body"
$PY -m launch.render_body --out_dir "$RUN_DIR/body"

# Preempted (SIGTERM), launch.main checkpoints and exits 143: `set -e` stops here, before
# evaluation; rerun the script to resume from the checkpoint.
echo "[run] 2/5 training the flow prior (experiments/prior_cmu.py) -> $RUN_DIR/prior"
FLOWPOSE_CMU_DIR="$CMU_DIR" $PY -m launch.main --config=experiments/prior_cmu.py \
  --workdir="$RUN_DIR/prior"

echo "[run] 3/5 training the VAE baseline (experiments/prior_vae.py) -> $RUN_DIR/prior/vae"
FLOWPOSE_CMU_DIR="$CMU_DIR" $PY -m launch.main --config=experiments/prior_vae.py \
  --workdir="$RUN_DIR/prior/vae"

echo "[run] 4/5 NLL vs Gaussian / GMM-8 / VAE baselines, samples -> $RUN_DIR/prior/nll_table.{json,md}"
$PY -m launch.evaluate_prior --workdir="$RUN_DIR/prior"

echo "[run] 5/5 reconstructing the people of the COCO photograph (detector, no annotations) -> $RUN_DIR/photo"
$PY -m launch.reconstruct --config=experiments/reconstruct.py --prior_workdir="$RUN_DIR/prior" \
  --image="$COCO_DIR/000000000785.jpg" --out_dir="$RUN_DIR/photo"
echo "[run] done: see $RUN_DIR (WORKSPACE.md lists every output)"
