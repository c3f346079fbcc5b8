"""`imagetools inspect --json` of every scripts/make-image layout against its golden file.

make-image is reproducible (fixed identifiers and timestamps), so the whole document must match:
a change in the table parser, the filesystem probe, the role rules or make-image shows up here as
a diff. After an intended change, regenerate the goldens (REGENERATE) and review the diff.
"""

from __future__ import annotations

import json
import os

import pytest
from support.fixture_files import FIXTURES
from support.images import LAYOUTS, image_suffix

GOLDEN = FIXTURES / "inspect"
UPDATE = os.environ.get("IMAGETOOLS_UPDATE_GOLDEN") == "1"
REGENERATE = "IMAGETOOLS_UPDATE_GOLDEN=1 scripts/test tests/image/test_inspect_golden.py"

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inspect_json_matches_golden(make_image, cli, layout):
    path = make_image(layout, name=f"base{image_suffix(layout)}")
    result = cli("inspect", path.name, "--json")  # relative: the golden names the image base.*
    assert result.returncode == 0 and result.stderr == "", result.stderr
    golden = GOLDEN / f"{layout}.json"
    if UPDATE:
        golden.write_text(result.stdout)
    assert golden.is_file(), f"{golden} is missing: run {REGENERATE}"
    assert json.loads(result.stdout) == json.loads(golden.read_text())
