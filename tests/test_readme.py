"""The README stays true: every Python example runs as written, and CI runs its test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).parents[1]


def test_python_examples_run(capsys, tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)  # runs write under ./runs
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i}", "exec"), {})
    out = capsys.readouterr().out
    assert "{'left': (4, 10), 'right': (4, 10)}" in out
    assert "'t0':" in out  # the one-call run printed its per-task test MSE


def test_ci_runs_the_readme_test_command():
    text = (ROOT / "README.md").read_text()
    command = next(line for line in text.splitlines() if "pytest" in line and line.startswith("python3"))
    assert command.strip() in (ROOT / ".ci" / "run").read_text()
