"""The client and CLI start path never imports torch (fast start, cloud-only users)."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    return set(result.stdout.split())


def test_importing_package_and_sdk_does_not_import_torch() -> None:
    modules = _modules_after("import loops_runner, loops_runner.sdk, loops_runner.wire")
    assert "loops_runner.sdk" in modules
    assert "torch" not in modules


def test_cli_help_does_not_import_torch() -> None:
    modules = _modules_after(
        "import contextlib, io\nfrom loops_runner import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--help'])"
    )
    assert "torch" not in modules
