r"""Writes `notebooks/flow_layer_ablations.ipynb` (unexecuted) from its cells: the markdown of
`notebooks/ablation_text.py` and the code of `notebooks/ablation_cells.py`.

  python -m notebooks.make_ablations [--out=notebooks/flow_layer_ablations.ipynb]

  nice -n 10 python -m notebooks.make_ablations --execute   # and run it (the committed copy)

`--execute` runs it with nbclient (full setting: 12 trainings of 300 steps; ~45 min on a 2-core
machine shared with other jobs, load 12-14) and writes the executed notebook only if every cell
succeeded; its cells also write `notebooks/flow_layer_ablations_results.json`.

The notebook's parameter cell (tag `parameters`, papermill style) holds `SETTING = "full"`;
`tests/test_notebook.py` inserts `SETTING = "tiny"` after it and executes it with nbclient.
Edit the cells in those two modules, not in the .ipynb: they are what a reviewer reads.
"""

import pathlib

from absl import app
from absl import flags
import nbformat

from flowpose import io_utils
from notebooks import ablation_cells as c
from notebooks import ablation_text as t

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program: importing the module (tests build the
  notebook through `build()`) must not add flags another module's `--out` would clash with."""
  flags.DEFINE_string(
      "out", str(pathlib.Path(__file__).resolve().parent / "flow_layer_ablations.ipynb"),
      "Notebook to write.")
  flags.DEFINE_bool("execute", False, "Execute it (its own SETTING) before writing.")



def build() -> nbformat.NotebookNode:
  """The notebook: markdown and code cells in order (the parameter cell tagged)."""
  md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
  cells = [md(t.INTRO), code(c.PARAMETERS, metadata={"tags": ["parameters"]}), code(c.SETUP),
           md(t.SUPPORT), code(c.BASE), md(t.JITTER_TEXT), code(c.JITTER), code(c.VARIANTS),
           md("## Training every variant"), code(c.TRAIN),
           md("## Validation and test NLL against the baselines"), code(c.TABLE),
           md("## One plot per factor"), code(c.PLOTS),
           md("## Samples of the best variant"), code(c.SAMPLES),
           md("## Fitting with the best and the worst variant"), code(c.FIT),
           md("## Per factor"), code(c.SUMMARY), md(t.CAVEATS)]
  notebook = nbformat.v4.new_notebook(cells=cells)
  notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
  notebook.metadata["language_info"] = {"name": "python"}
  return notebook


def drop_start_up_notices(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
  """Removes TensorFlow's C++ start-up lines (stderr) from the outputs: noise on a web page."""
  noise = ("absl::InitializeLog", "oneDNN custom operations")
  for cell in notebook.cells:
    if cell.cell_type == "code":
      cell.outputs = [o for o in cell.outputs if not (
          o.output_type == "stream" and o.name == "stderr"
          and all(any(n in line for n in noise) for line in o.text.strip().splitlines()))]
  return notebook


def main(argv):
  del argv
  notebook = build()
  if FLAGS.execute:
    import nbclient  # pylint: disable=g-import-not-at-top
    # The kernel starts in this checkout's notebooks/ (the notebook finds the repo from there).
    folder = str(pathlib.Path(__file__).resolve().parent)
    nbclient.NotebookClient(notebook, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": folder}}).execute()
    drop_start_up_notices(notebook)
  text = nbformat.writes(notebook)
  io_utils.atomic_write(FLAGS.out, text.encode())
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
