"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 10. only regular files, with a size cap
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sow.errors import InputError

from tests.support.defects import within


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 10. only regular files, with a size cap ---------------------------------------------------------------




@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_10_fifos_and_devices_are_refused_everywhere_a_path_comes_in(tmp_path):
    from sow.batch.runner import read_batch_file
    from sow.eval.runner import load_eval_config
    from sow.eval.spec import load_spec, load_templates
    from sow.io.json_files import load_config_file, load_plan_file

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    readers = [load_plan_file, load_config_file, read_batch_file, load_spec, load_templates, load_eval_config]
    for reader in readers:
        for path in (fifo, Path("/dev/zero")):
            with pytest.raises(InputError, match="not a regular file"):
                within(10, reader, path)


def test_10_a_file_is_read_only_up_to_its_cap(tmp_path):
    from sow.io.files import read_regular_bytes

    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2000)
    with pytest.raises(InputError, match="over the 1,000-byte limit"):
        read_regular_bytes(big, "plan file", 1000)
    assert read_regular_bytes(big, "plan file", 2000) == b" " * 2000
