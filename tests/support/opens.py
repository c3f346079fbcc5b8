"""How often a command opens each file: an audit hook in a fresh interpreter counts every
`open` event (builtins.open and os.open) whose path resolves to one of the watched files.

Opens by subprocesses (debugfs, e2fsck) are theirs, not counted: this counts what imagetools
itself opens in the process that runs the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_PRELUDE = """
import json, os, sys
watched = {os.path.realpath(p): 0 for p in json.loads(sys.argv[1])}
def _count(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path in watched:
            watched[path] += 1
sys.addaudithook(_count)
"""


def count_opens(code: str, watched: list[Path]) -> dict[Path, int]:
    """Run CODE (paths written into it) in a fresh interpreter; each watched file with the number
    of times CODE opened it (CODE may print: the counts are the last line of the output)."""
    script = _PRELUDE + code + "\nprint(json.dumps(watched))\n"
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps([str(p) for p in watched])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    counted = json.loads(proc.stdout.splitlines()[-1])
    return {p: counted[str(p.resolve())] for p in watched}
