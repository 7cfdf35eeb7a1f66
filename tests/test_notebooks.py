"""The notebooks execute top to bottom in a real kernel, and their assertions hold.

Each notebook runs in a fresh ipykernel (offline, in a temporary directory, with
matplotlib's non-interactive Agg backend); a failing ``assert`` in any cell fails the
test. The notebooks are committed clean (no outputs), which is checked too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: Seconds a single cell may take before the notebook counts as hung.
CELL_TIMEOUT = 60


class RecordingClient(NotebookClient):
    """An nbclient that also keeps every display message the kernel sends, in order."""

    def __init__(self, nb: NotebookNode, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.displays: list[tuple[str, str | None, dict[str, Any]]] = []

    def process_message(
        self, msg: dict[str, Any], cell: NotebookNode, cell_index: int
    ) -> NotebookNode | None:
        if msg["msg_type"] in ("display_data", "update_display_data"):
            transient = msg["content"].get("transient") or {}
            self.displays.append(
                (msg["msg_type"], transient.get("display_id"), msg["content"]["data"])
            )
        return super().process_message(msg, cell, cell_index)


KERNEL = "rxagent-tests"


@pytest.fixture(scope="module", autouse=True)
def kernel_of_this_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A kernelspec running this very interpreter, found first.

    A "python3" kernelspec in the user's Jupyter directory may name another Python
    (one without rxagent); this one cannot.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root), prepend=os.pathsep)
        yield


def execute(nb: NotebookNode, workdir: Path) -> RecordingClient:
    """Run ``nb`` in place in a fresh kernel; raises on the first failing cell."""
    client = RecordingClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env={**os.environ, "MPLBACKEND": "Agg"})
    return client


def test_there_are_notebooks() -> None:
    names = [path.name for path in NOTEBOOKS]
    for expected in (
        "01_quickstart.ipynb",
        "02_operators.ipynb",
        "03_many_observers.ipynb",
        "04_parallel_tools.ipynb",
    ):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    # Its key cells check what they show.
    assert sum("assert " in cell.source for cell in code) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)

    execute(nb, tmp_path)

    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert errors == []
    # Where a cell draws a timeline, the figure shows as an image.
    for cell in code:
        if "viz.timeline(run.events" in cell.source:
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source


def test_in_a_kernel_the_live_display_is_one_output_updated_in_place(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import rxagent as ra\n"
                "from rxagent import live\n"
                "pieces = [f'w{i} ' for i in range(200)]\n"
                "provider = ra.ScriptedProvider([pieces], chunk_delay=0.002)\n"
                "run = ra.Agent(provider).run('go')\n"
                "shown = live.display(run, interval=0.05)\n"
                "assert not run.done  # display() returned at once\n"
                "view = await shown\n"
                "assert view.text == ''.join(pieces)\n"
            ),
            # A plain call without await, then a later cell: the kernel is not blocked.
            nbformat.v4.new_code_cell(
                "again = live.display(ra.Agent(ra.ScriptedProvider([['a ', 'b']], "
                "chunk_delay=0.05)).run('go'))\n"
                "assert not again.done"
            ),
            nbformat.v4.new_code_cell("view = await again\nassert view.text == 'a b'"),
        ]
    )

    client = execute(nb, tmp_path)

    first_id = client.displays[0][1]
    ours = [(kind, data) for kind, did, data in client.displays if did == first_id]
    kinds = [kind for kind, _ in ours]
    # Displayed once, then updated in place: more than once (it was live), far fewer
    # times than the 200 pieces (updates are coalesced).
    assert kinds[0] == "display_data" and set(kinds[1:]) == {"update_display_data"}
    assert 2 <= len(kinds) < 60
    assert "queued" in ours[0][1]["text/plain"]
    assert ours[-1][1]["text/plain"].startswith("rxagent run · completed (no_tool_calls)")
    assert "w0 w1" in ours[-1][1]["text/plain"] and "w199" in ours[-1][1]["text/plain"]
    assert "text/html" in ours[-1][1]
    # The notebook's output for that cell is the final state, updated in place.
    (output,) = [o for o in nb.cells[0].outputs if o.output_type == "display_data"]
    assert output.data["text/plain"] == ours[-1][1]["text/plain"]
    # The second display is an output of its own.
    assert len({did for _, did, _ in client.displays}) == 2
