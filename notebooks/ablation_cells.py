"""The code cells of `notebooks/flow_layer_ablations.ipynb`, as text (`make_ablations.build`
orders them); they run in the notebook's kernel in this order, sharing its globals.

The markdown cells are in `ablation_text`. Code: PARAMETERS (tagged `parameters`), SETUP,
BASE (settings and helpers), JITTER (the axis-angle jitter ladder; picks `AA_NOISE`), VARIANTS,
TRAIN, TABLE, PLOTS, SAMPLES, FIT (+ the results export), SUMMARY.
"""

PARAMETERS = """\
SETTING = "full"  # "full" | "tiny" (papermill-style parameter)
"""

SETUP = """\
import json, os, pathlib, sys, time
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's start-up notices.
REPO = pathlib.Path.cwd().resolve()
REPO = REPO.parent if REPO.name == "notebooks" else REPO
sys.path.insert(0, str(REPO))  # This checkout's flowpose, whatever is installed.
os.chdir(REPO)

import jax
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from absl import logging
from IPython.display import Image, Markdown, display

from experiments import fit_mocap2d as fit_experiment
from experiments import prior_cmu
from flowpose import io_utils
from flowpose.prior import evaluate as prior_eval
from flowpose.tasks import prior as prior_task
from flowpose.train import trainer

logging.set_verbosity(logging.WARNING)
assert SETTING in ("tiny", "full"), SETTING
TINY = SETTING == "tiny"
jax.config.update("jax_disable_most_optimizations", TINY)  # Compile time dominates tiny runs.
RUNS = REPO / "runs" / "ablations" / SETTING
RUNS.mkdir(parents=True, exist_ok=True)
print(f"flowpose at {REPO}, setting {SETTING!r}, jax {jax.__version__} on {jax.devices()}")
"""

BASE = """\
if TINY:
  BASE = {"config": "runlocal,synthetic", "num_train_steps": 6, "batch_size": 32,
          "eval_batch_size": 64, "init_examples": 128, "optimizer.warmup_steps": 1,
          "data.num_train": 512, "data.num_eval": 128, "flow.num_layers": 2,
          "flow.hidden_sizes": (8, 8), "log_every": 3, "eval_every": 6, "checkpoint_every": 6}
  LEVELS = {"depth": (1, 2, 3), "width": ((4, 4), (8, 8), (16, 16))}
  FIT = {"num_frames": 2, "steps": (5, 5), "restarts": (0.0,)}
else:
  # Data, chart and jitter: the default prior's (experiments/prior_cmu.py), not restated here.
  BASE = {"config": "", "num_train_steps": 300, "batch_size": 256, "eval_batch_size": 4096,
          "init_examples": 4096, "optimizer.warmup_steps": 50, "flow.num_layers": 4,
          "flow.hidden_sizes": (64, 64), "log_every": 100, "eval_every": 300,
          "checkpoint_every": 300}
  LEVELS = {"depth": (2, 4, 8), "width": ((32, 32), (64, 64), (128, 128))}
  FIT = {"num_frames": 16, "steps": (60, 140), "restarts": (0.0, 90.0, 180.0, 270.0)}
DEFAULT = prior_cmu.get_config(BASE["config"])
BASE.update({"flow.coupling": "spline", "flow.mask": "alternating", "flow.mixing": "lu",
             "flow.actnorm": True, "flow.chart": DEFAULT.flow.chart,
             "input_noise": DEFAULT.input_noise})
if not TINY:  # The notebook's claims (intro) are about this default; fail loudly if it moves.
  assert (BASE["flow.chart"], BASE["input_noise"]) == ("euler_free", 0.0), BASE
print(f"base: chart {BASE['flow.chart']}, jitter {BASE['input_noise']}, data "
      f"{DEFAULT.data.source} {DEFAULT.data.manual_dir if DEFAULT.data.source == 'tfds' else ''}")

RESULTS_FILE = RUNS / "results.json"
results = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}

def make_config(overrides):
  settings = {**BASE, **overrides}
  config = prior_cmu.get_config(settings.pop("config"))
  config.update_from_flattened_dict(settings)
  return config

def variant_name(overrides):
  if not overrides or all(BASE.get(k) == v for k, v in overrides.items()):
    return "base"
  return "-".join(f"{k.split('.')[-1]}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}"
                  for k, v in sorted(overrides.items()))

def units(r):
  # NLLs are comparable only within one chart and one jitter (the baselines model the same
  # jittered poses as the flow).
  return r["chart"], r["input_noise"]

def baselines_from(config):
  # The baselines depend on the training poses, the chart centre and the jitter only: fit them
  # once per (chart, jitter), then let every variant of those reuse the file (its fingerprint
  # holds all three: refitted if it does not match).
  key = (config.flow.chart, config.input_noise)
  done = [n for n, r in results.items() if units(r) == key]
  return RUNS / done[0] / prior_eval.BASELINES_FILE if done else None

def run_variant(overrides):
  # Trains (or finds in the cache) BASE + overrides; its NLLs against its own baselines.
  name = variant_name(overrides)
  config = make_config(overrides)
  if name in results and results[name]["config"] == json.loads(config.to_json_best_effort()):
    return results[name]
  workdir = RUNS / name
  start = time.time()
  # Builds (and memoises) the prior outside any trace. Without it the kinematic variant fails:
  # the trainer first builds it under jax.eval_shape, and flow._group_lu's jnp mask constant
  # is then a tracer kept in the memoised prior (UnexpectedTracerError; reported, not fixed
  # here: flowpose/prior/flow.py is not this notebook's to change).
  prior_task.make_prior(config)
  # A workdir holding this finished run only restores it (the trainer resumes).
  result = trainer.train_and_evaluate(config, str(workdir))
  train_s = time.time() - start
  source = baselines_from(config)
  if source is not None and not (workdir / prior_eval.BASELINES_FILE).exists():
    io_utils.atomic_write(workdir / prior_eval.BASELINES_FILE, source.read_bytes())
  table = prior_eval.evaluate_nll(str(workdir), ("validation", "test"))
  nll = {split: table["splits"][split]["nats_per_pose"] for split in ("validation", "test")}
  results[name] = {"config": json.loads(config.to_json_best_effort()), "chart": config.flow.chart,
                   "input_noise": config.input_noise, "nll": nll, "steps": result.step,
                   "train_seconds": round(train_s, 1),
                   "params": int(sum(np.size(x) for x in jax.tree.leaves(result.params)))}
  io_utils.atomic_write(RESULTS_FILE, json.dumps(results, indent=1).encode())
  return results[name]
"""

JITTER = """\
from flowpose.data import poses as pose_data
from flowpose.prior import baselines
from flowpose.prior import charts

config = make_config({})
train = pose_data.augment_train(config.data,
                                prior_eval.load_split_dofs(config, config.data.train_split))
val = prior_eval.load_split_dofs(config, "validation")
SIGMAS = (0.0, 0.001, 0.003, 0.01, 0.03, 0.05)
gauss = {}
for chart in dict.fromkeys((BASE["flow.chart"], "axis_angle")):
  x, v = charts.from_dofs_np(chart, train), charts.from_dofs_np(chart, val)
  if charts.is_periodic(chart):  # Cut each angle opposite its data, as the prior does.
    center = np.angle(np.mean(np.exp(1j * x), 0))
    x, v = (np.angle(np.exp(1j * (a - center))) for a in (x, v))
  gauss[chart] = [float(-np.mean(baselines.log_prob(
      baselines.fit_gaussian_full(x, reg=1e-6 + s ** 2), v))) for s in SIGMAS]
display(Markdown(
    "Full-Gaussian validation NLL (nats/pose) against the jitter sigma (radians):\\n\\n"
    "| chart (D) | " + " | ".join(f"sigma {s:g}" for s in SIGMAS) + " |\\n" +
    "|---" * (len(SIGMAS) + 1) + "|\\n" + "\\n".join(
        f"| {c} ({charts.chart_dim(c)}) | " + " | ".join(f"{g:.1f}" for g in nll) + " |"
        for c, nll in gauss.items())))

# The base flow in the axis-angle chart at each jitter of the ladder (cached like every variant).
AA_LADDER = (0.0, 0.001, 0.01)
ladder = {s: run_variant({"flow.chart": "axis_angle", "input_noise": s}) for s in AA_LADDER}
def finite(r):
  return all(np.isfinite(r["nll"][split]["flow"]) and
             r["nll"][split]["flow"] < r["nll"][split]["gaussian_diag"]
             for split in ("validation", "test"))
usable = [s for s in AA_LADDER if finite(ladder[s])]
AA_NOISE = usable[0] if usable else AA_LADDER[-1]
display(Markdown(
    "The base flow in `axis_angle` (nats/pose; flow vs its own baselines at the same jitter):"
    "\\n\\n| jitter | val flow | val GMM-8 | val Gaussian | test flow | test GMM-8 | "
    "test Gaussian | finite |\\n" + "|---" * 8 + "|\\n" + "\\n".join(
        f"| {s:g} | {r['nll']['validation']['flow']:.4g} | {r['nll']['validation']['gmm8']:.2f} | "
        f"{r['nll']['validation']['gaussian_full']:.2f} | {r['nll']['test']['flow']:.4g} | "
        f"{r['nll']['test']['gmm8']:.2f} | {r['nll']['test']['gaussian_full']:.2f} | "
        f"{'yes' if finite(r) else 'no'} |" for s, r in ladder.items()) +
    f"\\n\\n**AA_NOISE = {AA_NOISE:g}**" + ("" if usable else " (no level was finite: the "
                                              "largest is used)")))

fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
for c, nll in gauss.items():
  ax.semilogx([max(s, 1e-4) for s in SIGMAS], nll, "o-", label=f"full Gaussian, {c}")
ok = [s for s in AA_LADDER if finite(ladder[s])]
ax.semilogx([max(s, 1e-4) for s in ok], [ladder[s]["nll"]["validation"]["flow"] for s in ok],
            "k*", ms=12, label="base flow, axis_angle")
ax.axvline(AA_NOISE, color="k", ls=":", label=f"AA_NOISE = {AA_NOISE:g}")
ax.set_xlabel("jitter sigma, rad (0 drawn at 1e-4)")
ax.set_ylabel("validation NLL, nats/pose")
ax.set_title("The bonus of a chart the data do not fill", fontsize=10)
ax.legend(fontsize=7)
fig.savefig(RUNS / "jitter.png", dpi=72)
plt.close(fig)
display(Image(filename=str(RUNS / "jitter.png")))
"""

VARIANTS = """\
# factor -> [(level label, overrides of BASE)]; the base is one level of every factor.
FACTORS = {
    "coupling": [("affine", {"flow.coupling": "affine"}), ("spline", {})],
    "depth": [(str(n), {"flow.num_layers": n}) for n in LEVELS["depth"]],
    "width": [("x".join(map(str, h)), {"flow.hidden_sizes": h}) for h in LEVELS["width"]],
    "masks": [("alternating+lu", {}),
              ("kinematic+group_lu", {"flow.mask": "kinematic", "flow.mixing": "group_lu"})],
    "chart": [(f"{BASE['flow.chart']} (jitter {BASE['input_noise']:g})", {}),
              (f"axis_angle (jitter {AA_NOISE:g})",
               {"flow.chart": "axis_angle", "input_noise": AA_NOISE})],
    "mixing": [("lu", {}), ("permutation", {"flow.mixing": "permutation"})],
    "actnorm": [("on", {}), ("off", {"flow.actnorm": False})],
}

VARIANTS = {}
for levels in FACTORS.values():
  for _, overrides in levels:
    VARIANTS.setdefault(variant_name(overrides), overrides)
print(len(VARIANTS), "variants:", ", ".join(VARIANTS))
"""

TRAIN = """\
start = time.time()
for i, (name, overrides) in enumerate(VARIANTS.items()):
  r = run_variant(overrides)
  print(f"[{i + 1}/{len(VARIANTS)}] {name:34s} val {r['nll']['validation']['flow']:8.2f}  "
        f"test {r['nll']['test']['flow']:8.2f}  ({r['train_seconds']:.0f} s, "
        f"{time.time() - start:.0f} s so far)", flush=True)
trained = sorted(set(VARIANTS) | {variant_name(o) for o in (
    {"flow.chart": "axis_angle", "input_noise": s} for s in AA_LADDER)})
print(f"{len(trained)} trainings (variants + jitter ladder): "
      f"{sum(results[n]['train_seconds'] for n in trained) / 60:.1f} min of training + "
      "evaluation in all, as first measured (a cached rerun trains nothing)")
"""

TABLE = """\
BASE_UNITS = (BASE["flow.chart"], BASE["input_noise"])

def row(name):
  r = results[name]
  v, t = r["nll"]["validation"], r["nll"]["test"]
  return (f"| {name} | {r['chart']} | {r['input_noise']:g} | {r['params']:,} | "
          f"**{v['flow']:.2f}** | {v['gmm8']:.2f} | {v['gaussian_full']:.2f} | "
          f"**{t['flow']:.2f}** | {t['gmm8']:.2f} | {t['gaussian_full']:.2f} | "
          f"{r['train_seconds']:.0f} |")

lines = ["| variant | chart | jitter | flow params | val flow | val GMM-8 | val Gaussian | "
         "test flow | test GMM-8 | test Gaussian | train s |", "|---" * 11 + "|"]
# The base's units first, then the other chart; by validation NLL within each.
lines += [row(n) for n in sorted(VARIANTS, key=lambda n: (
    units(results[n]) != BASE_UNITS, units(results[n]), results[n]["nll"]["validation"]["flow"]))]
display(Markdown("NLL, nats/pose (lower is better), sorted by validation NLL within each chart "
                 "and jitter (rows of different charts are not comparable):\\n\\n" +
                 "\\n".join(lines)))
"""

PLOTS = """\
fig, axes = plt.subplots(2, 4, figsize=(19, 8.5), constrained_layout=True)
for ax, (factor, levels) in zip(axes.flat, FACTORS.items()):
  labels = [label for label, _ in levels]
  runs = [results[variant_name(o)] for _, o in levels]
  x = np.arange(len(levels))
  for offset, split, color in ((-0.2, "validation", "tab:blue"), (0.2, "test", "tab:orange")):
    ax.bar(x + offset, [r["nll"][split]["flow"] for r in runs], 0.38, color=color,
           label=f"flow, {split}")
    for baseline, style in (("gmm8", "--"), ("gaussian_full", ":")):
      for xi, r in zip(x, runs):
        ax.hlines(r["nll"][split][baseline], xi + offset - 0.19, xi + offset + 0.19,
                  colors="k", linestyles=style, label=f"{baseline} ({split})" if xi == 0 else None)
  ax.set_xticks(x, labels)
  ax.set_title(f"{factor}" + (" (each bar vs its own baselines: different units)"
                              if factor == "chart" else ""), fontsize=10)
  ax.set_ylabel("NLL, nats/pose")
axes.flat[0].legend(fontsize=7, loc="best")
for ax in axes.flat[len(FACTORS):]:
  ax.axis("off")
fig.suptitle(f"Flow-layer ablations ({SETTING} setting): bars = flow, dashes = GMM-8, "
             "dots = full Gaussian, each in the variant's chart and jitter")
fig.savefig(RUNS / "ablations.png", dpi=72)
plt.close(fig)
display(Image(filename=str(RUNS / "ablations.png")))  # A PNG output whatever the backend.
"""

SAMPLES = """\
# Best and worst by validation NLL among the variants in the base's chart and jitter (the
# axis-angle level's NLLs are in other units and cannot be ranked with them).
same = [n for n in VARIANTS if units(results[n]) == BASE_UNITS]
ranked = sorted(same, key=lambda n: results[n]["nll"]["validation"]["flow"])
best, worst = ranked[0], ranked[-1]
print(f"best: {best} ({results[best]['nll']['validation']['flow']:.2f}), "
      f"worst: {worst} ({results[worst]['nll']['validation']['flow']:.2f}) nats/pose (validation)")

from flowpose.prior import charts
from flowpose.prior import io as prior_io
from flowpose.prior import pictures
prior, params, config = prior_io.load_trained_prior(str(RUNS / best))
# The split's DOF angles [N, 50] in the prior's chart (euler_free: [N, 46]).
val = charts.from_dofs_np(prior.chart, prior_eval.load_split_dofs(config, "validation"))
samples_png, _ = pictures.render_pictures(str(RUNS / best), prior, params, val,
                                          num_samples=8 if TINY else 16,
                                          num_steps=4 if TINY else 8, size=96 if TINY else 160)
display(Markdown(f"Samples of the best variant, `{best}` (CC0 body, mean shape, upright):"))
display(Image(filename=samples_png))
"""

FIT = """\
# The frames, scene and fit of benchmarks/fit_mocap2d.py (its building blocks: one keypoint fit
# per prior, without its parts and timing runs).
from benchmarks import fit_mocap2d as bench
from flowpose.body.build import assets
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body

fit_config = fit_experiment.get_config("runlocal" if TINY else "")
fit_config.fit.restart_yaws_deg = FIT["restarts"]
for stage, steps in zip(fit_config.fit.stages, FIT["steps"]):
  stage["steps"] = steps
model = assets.load_cc0_model()
body = reduced_body.make_fit_body(model, bench.body_rotmats_fn,
                                  fit_config.fit.part_vertices_per_part)
rng = np.random.default_rng(fit_config.seed)
pool = bench.load_dofs(bench.clip_paths(str(bench.default_mocap_dir()), "test"))
n = FIT["num_frames"]
gt = bench.make_scene(model, pool[rng.choice(len(pool), n, replace=len(pool) < n)],
                      fit_config.scene, rng)
evidence = fitting.Evidence(gt["keypoints"], gt["confidence"], gt["focal"], gt["centre"])

fits = {}
for name in dict.fromkeys((best, worst)):
  prior = bench.load_priors(("flow",), str(RUNS / name))["flow"]
  result, seconds = bench.timed_fit(fit_config.fit, model, body, prior, evidence)
  fits[name] = {k: float(v) for k, v in bench.evaluate(model, result, gt, np.arange(n)).items()}
  fits[name]["seconds"] = seconds
display(Markdown(
    f"2D keypoints -> 3D fit on {n} frames of the test subjects (the same frames, scene and seed "
    f"for both; {len(FIT['restarts'])} restarts, {sum(FIT['steps'])} Adam steps):\\n\\n"
    "| prior | val NLL | PA-MPJPE mm | MPJPE mm | PVE mm |\\n|---|---|---|---|---|\\n" +
    "\\n".join(f"| {k} | {results[k]['nll']['validation']['flow']:.2f} | {f['pa_mpjpe_mm']:.1f} | "
              f"{f['mpjpe_mm']:.1f} | {f['pve_mm']:.1f} |" for k, f in fits.items())))
io_utils.atomic_write(RUNS / "fits.json", json.dumps(fits, indent=1).encode())
# The committed record of the full setting (the tiny test must not overwrite it).
export = {"setting": SETTING, "variants": {n: results[n] for n in VARIANTS}, "fits": fits,
          "best": best, "worst": worst}
for path in [RUNS / "summary.json"] + ([] if TINY else [
    REPO / "notebooks" / "flow_layer_ablations_results.json"]):
  io_utils.atomic_write(path, json.dumps(export, indent=1).encode())
"""

SUMMARY = """\
# Per factor: the best level on validation and test NLL, and each level's margin over GMM-8 in
# its own chart (the only comparison across charts: raw NLLs of two charts are in other units).
for factor, levels in FACTORS.items():
  nll = {label: results[variant_name(o)]["nll"] for label, o in levels}
  margin = {k: v["test"]["flow"] - v["test"]["gmm8"] for k, v in nll.items()}
  # Comparable raw NLLs only within one chart and jitter: there, the margin ranks.
  key = (lambda split: (lambda k: margin[k])) if factor == "chart" else (
      lambda split: (lambda k: nll[k][split]["flow"]))
  print(f"{factor:9s} best: validation {min(nll, key=key('validation')):19s} test "
        f"{min(nll, key=key('test')):19s} | test flow - GMM-8: " +
        ", ".join(f"{k} {m:+.2f}" for k, m in margin.items()))
"""

