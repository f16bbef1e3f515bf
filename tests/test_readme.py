"""The README stays true: its Python example runs, and CI runs its test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).parents[1]


def test_python_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "{'left': (4, 10), 'right': (4, 10)}" in out


def test_ci_runs_the_readme_test_command():
    text = (ROOT / "README.md").read_text()
    command = next(line for line in text.splitlines() if "pytest" in line and line.startswith("python3"))
    assert command.strip() in (ROOT / ".ci" / "run").read_text()
