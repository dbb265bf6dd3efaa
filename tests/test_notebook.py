"""The example notebook ``fits/theophylline/analysis.ipynb`` runs from top to bottom.

It is executed with nbclient in a kernel of this interpreter, in quick mode
(``POPKPD_NOTEBOOK_QUICK=1``: the notebook fits the model itself with 2 chains x 100 draws, since
the fit file it is pointed at does not exist), with its outputs redirected into a temporary
folder, so that the repository is left as it was.
"""

import math
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "fits" / "theophylline"
NOTEBOOK = NOTEBOOK_DIR / "analysis.ipynb"
TAG = "what-if-trough"


def files_under(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def tagged_cell(nb, tag):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def test_committed_notebook_is_clean():
    """Valid nbformat v4 with outputs cleared (the repository holds the source, not a run)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    tagged_cell(nb, TAG)


def test_notebook_runs_and_reports_a_finite_trough(tmp_path, monkeypatch):
    monkeypatch.setenv("POPKPD_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("POPKPD_NOTEBOOK_FIT", str(tmp_path / "no_saved_fit.nc"))
    monkeypatch.setenv("POPKPD_NOTEBOOK_OUTDIR", str(tmp_path / "out"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the figures
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # first, a cell that reports which interpreter the kernel runs (it must be this one)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    # last, a cell that reads the notebook's own check of the what-if simulation: the typical
    # patient's average concentration over the last dosing interval against the steady-state
    # average dose / (CL tau), computed from the posterior draws of CL without simulation
    nb.cells.append(nbformat.v4.new_code_cell("print(float(np.median(average / steady)))"))
    before = files_under(NOTEBOOK_DIR)

    client = NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails

    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("name") == "stdout")
    assert printed.strip() == sys.prefix
    assert files_under(NOTEBOOK_DIR) == before, "the notebook wrote into the repository"
    out = tmp_path / "out"
    assert (out / "fit.nc").is_file()  # the quick fit was saved and loaded back
    assert {"gof.png", "vpc.png", "what_if_320mg_q12h.png"} <= {p.name for p in out.iterdir()}

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
    # the note on how the fit was obtained names the quick self-fit
    notes = [o for c in nb.cells for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert any("fitted the model itself" in o["data"]["text/markdown"] for o in notes)

    result = tagged_cell(nb, TAG).outputs
    value = float(next(o for o in result if o.output_type == "execute_result")["data"]["text/plain"])
    # finite, and in the range a 320 mg q12h theophylline regimen gives (typical trough ~5-10 mg/L
    # for CL ~2.8 L/h, V ~32 L: steady-state average 320 / (2.8 x 12) = 9.5 mg/L)
    assert math.isfinite(value) and 1.0 < value < 30.0, value
    # six doses at 12 h with a half-life near 8 h reach > 99 % of steady state: the simulated
    # average lies just below the steady-state one (15-min trapezoid error far below 1 %)
    ratio = float("".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout"))
    assert 0.97 < ratio < 1.005, ratio
