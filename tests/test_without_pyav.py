"""Without PyAV (a GPU machine with only torch, say) everything but reading and writing video still works.

Each case runs in a fresh interpreter in which ``import av`` fails (``sys.modules["av"] = None``), so the
import chain is the one such a machine sees.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCK_PYAV = "import sys\nsys.modules['av'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_PYAV + textwrap.dedent(code)], capture_output=True, text=True, timeout=240
    )


def test_the_pyav_block_works():
    result = _run("import av\n")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize("module", ["avfused.data", "avfused.training.loop", "avfused.data.windows",
                                    "avfused.data.encode"])
def test_modules_import_without_pyav(module):
    result = _run(f"import {module}\n")
    assert result.returncode == 0, result.stderr


def test_the_command_line_runs_without_pyav():
    result = _run(
        """
        from avfused.cli import main
        assert main(["info", "--preset", "demo"]) == 0
        try:
            main(["bench", "--help"])
        except SystemExit as done:
            assert done.code == 0
        """
    )
    assert result.returncode == 0, result.stderr
    assert "bench" in result.stdout and "parameters" in result.stdout


def test_reading_a_video_says_pyav_is_missing(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"not read: PyAV is looked up first")
    result = _run(
        f"""
        from avfused.data.decode import probe
        from avfused.errors import MissingDependencyError
        try:
            probe({str(path)!r})
        except MissingDependencyError as error:
            print("named:", error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "named:" in result.stdout and "pip install av" in result.stdout


def test_a_command_that_writes_video_reports_missing_pyav_in_one_line(tmp_path):
    result = _run(
        f"""
        import sys
        from avfused.cli import main
        sys.exit(main(["synth", "--out", {str(tmp_path / "synthetic")!r}, "--identities", "1",
                       "--clips-per-identity", "1", "--seconds", "1", "--workers", "0", "--no-progress"]))
        """
    )
    assert result.returncode == 2, result.stderr
    assert "pip install av" in result.stderr and "Traceback" not in result.stderr
