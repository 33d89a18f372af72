"""`make mutate`'s last lines: killed / survived / timeouts per module and per function.

Reads the results mutmut keeps beside each mutated file (mutants/**/*.py.meta), counting only
the mutants that were checked and whose names match the given globs (the Makefile's
MUTATE_FUNCTIONS; mutmut also lists the mutants of functions it was not asked to mutate), and
names every mutant that was not killed, for `mutmut show NAME`.

    python bench/mutation_summary.py [GLOB ...]
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

MUTANT = re.compile(r"^(?P<function>.+)__mutmut_\d+$")


def summarise(root: Path, globs: list[str]) -> list[str]:
    per_module: dict[str, Counter[str]] = defaultdict(Counter)
    per_function: dict[str, Counter[str]] = defaultdict(Counter)
    not_killed: list[str] = []
    for meta in sorted(root.rglob("*.py.meta")):
        module = meta.relative_to(root).as_posix().removesuffix(".py.meta").replace("/", ".")
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if code is None or (globs and not any(fnmatch.fnmatch(name, g) for g in globs)):
                continue
            status = status_by_exit_code[code]
            per_module[module][status] += 1
            match = MUTANT.match(name)
            per_function[match["function"] if match else name][status] += 1
            if status != "killed":
                not_killed.append(f"  {status}: {name}")
    lines = ["module: killed / survived / timeout / no tests"]
    for module, counts in sorted(per_module.items()):
        lines.append(f"{module}: {counts['killed']} / {counts['survived']} / "
                     f"{counts['timeout']} / {counts['no tests']}")
    lines.append("functions with mutants not killed:")
    lines += [f"  {function}: {dict(counts)}" for function, counts in sorted(per_function.items())
              if set(counts) != {"killed"}]
    lines.append("mutants not killed (equivalent ones are explained in docs/testing.md):")
    return lines + not_killed


if __name__ == "__main__":
    print("\n".join(summarise(Path("mutants"), sys.argv[1:])))
