"""`--help` of the app and of every command must not import TensorFlow, Keras, NumPy or Pillow.

Checked in a fresh interpreter, command by command, so the first command whose help pulls in a
heavy module is named. (No timing is asserted; `resnet --help` takes well under 0.5 s when
none of them is imported.)
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("tensorflow", "keras", "numpy", "PIL")

SCRIPT = f"""
import json, sys
import typer
from resnet_cli.cli import app

heavy = {HEAVY!r}
commands = sorted(typer.main.get_command(app).commands)
report = {{}}
for args in [["--help"], *[[name, "--help"] for name in commands]]:
    try:
        app(args=args, prog_name="resnet")
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    report[" ".join(args)] = {{"exit": code,
                              "imported": [m for m in heavy if m in sys.modules]}}
print("REPORT " + json.dumps({{"commands": commands, "report": report}}))
"""


def test_help_imports_no_heavy_module() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("REPORT "))
    data = json.loads(line.removeprefix("REPORT "))
    assert {"classify", "summary", "benchmark"} <= set(data["commands"])
    assert len(data["report"]) == len(data["commands"]) + 1
    for args, outcome in data["report"].items():
        assert outcome["exit"] == 0, args
        assert outcome["imported"] == [], f"resnet {args} imported {outcome['imported']}"
