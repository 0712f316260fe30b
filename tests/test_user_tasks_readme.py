"""The README's own-task example, run verbatim through the console script from a fresh folder.

The example's ``mytasks.py`` is the README's python block; its two command lines are the ones after the
``<!-- readme:own-task -->`` marker. ``rl.env_module=mytasks`` must be found in the working directory, as
``python -m`` would find it (the console script does not have the working directory on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def _own_task_section() -> str:
    text = README.read_text()
    start = text.index("### Meta-training on your own tasks")
    return text[start:text.index("\n### ", start + 1)]


def _example_module() -> str:
    return re.search(r"```python\n(.*?)```", _own_task_section(), re.S).group(1)


def _example_commands() -> list[str]:
    section = _own_task_section()
    block = section[section.index("<!-- readme:own-task -->"):]
    return [line for line in re.search(r"```bash\n(.*?)```", block, re.S).group(1).splitlines() if line.strip()]


def test_the_readme_names_a_module_and_two_commands() -> None:
    assert "class PointLineEnv" in _example_module() and "gymnasium.register" in _example_module()
    commands = _example_commands()
    assert [c.split()[:2] for c in commands] == [["rlmaml", "train"], ["rlmaml", "eval"]]


@pytest.mark.slow
def test_the_readme_own_task_example_trains_and_evaluates_from_its_folder(tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(_example_module())
    bindir = str(Path(sys.executable).parent)  # the console script of this environment
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    for command in _example_commands():
        proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
    (run,) = (tmp_path / "runs").glob("PointLine-v0-*")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(20))
    assert sum(r["accepted"] for r in rows) >= 10  # TRPO steps were taken on the user's tasks
    result = json.loads((run / "eval.json").read_text())
    tasks, returns = result["per_goal"]["tasks"], result["per_goal"]["returns"]
    assert len({t["goal"] for t in tasks}) == 10  # ten distinct goals of the user's distribution
    assert len({round(r[0], 6) for r in returns}) > 1  # and the goal changes the return (the task took effect)
