"""How long the ``transferkit`` command takes to answer, and what it imports on the way.

Each command runs in a fresh interpreter, as a user's shell runs it (``python -m
transferkit.cli``, which is what the console script calls), and is timed from the start of
the process to its exit. Another fresh interpreter runs the same command in-process and
reports the modules it imported. Alongside: a bare interpreter's start-up, the floor under
every command, and, for scale, ``import tensorflow``, which help and listings must not pay.

    python benchmarks/cli_startup.py [--quick]

Targets (issue 17): ``--help`` under 0.5 s, ``backbones`` and ``cut-points`` under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import emit, machine

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

COMMANDS = {
    "--help": ["--help"],
    "train --help": ["train", "--help"],
    "backbones": ["backbones"],
    "cut-points ResNet50": ["cut-points", "ResNet50"],
}
TARGETS = {"--help": 0.5, "train --help": 0.5, "backbones": 2.0, "cut-points ResNet50": 2.0}

# Runs main() in-process and reports what it imported, so that the count covers the command
# and nothing of this benchmark.
IMPORTS = """
import contextlib, io, json, sys
from transferkit.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps({"modules": len(sys.modules),
                  **{f"imports_{name}": name in sys.modules
                     for name in ("tensorflow", "keras", "sklearn")}}))
"""


def wall_seconds(command: list[str], repeats: int) -> float:
    """Fastest of ``repeats`` runs of ``command`` as a process, start to exit."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, env=ENV, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run of each, for smoke tests")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 5

    commands = {}
    for name, words in COMMANDS.items():
        seconds = wall_seconds([sys.executable, "-m", "transferkit.cli", *words], repeats)
        imports = subprocess.run([sys.executable, "-c", IMPORTS, *words], env=ENV, check=True,
                                 capture_output=True, text=True).stdout
        commands[name] = {"seconds": seconds, "target_seconds": TARGETS[name],
                          **json.loads(imports.strip().splitlines()[-1])}
    result = {
        "quick": args.quick,
        "repeats": repeats,
        "python_startup_seconds": wall_seconds([sys.executable, "-c", "pass"], repeats),
        "import_tensorflow_seconds": wall_seconds(
            [sys.executable, "-c", "import tensorflow"], 1 if args.quick else 3),
        "commands": commands,
        "targets_met": {name: numbers["seconds"] < numbers["target_seconds"]
                        for name, numbers in commands.items()},
        "machine": machine(),
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
