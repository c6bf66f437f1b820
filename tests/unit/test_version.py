"""The version string is stated once, in src/tokentrace/_version.py; the rest reads it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tokentrace
from tokentrace._version import __version__
from tokentrace.instrumentation import recording

ROOT = Path(__file__).resolve().parents[2]
# Files that cannot import Python, and so name the version themselves (image tags).
IMAGE_TAG = re.compile(r"tokentrace:(\d+\.\d+\.\d+)")


def test_the_package_and_the_instrumentation_scopes_read_it() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", __version__)
    assert tokentrace.__version__ == __version__
    assert recording.VERSION == __version__


def test_the_cli_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tokentrace", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"tokentrace {__version__}"


def test_pyproject_takes_it_from_the_version_file() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text
    assert '[tool.hatch.version]\npath = "src/tokentrace/_version.py"' in text
    assert not re.search(r"^version\s*=", text, re.MULTILINE)


def test_no_other_source_file_states_it() -> None:
    src = ROOT / "src" / "tokentrace"
    stating = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if f'"{__version__}"' in path.read_text()
    ]
    assert stating == ["_version.py"]


def test_the_image_tags_in_the_deployment_files_and_docs_match() -> None:
    files = [ROOT / "Dockerfile", ROOT / "docker-compose.yml", *sorted((ROOT / "docs").glob("*.md"))]
    tags = {(path.name, tag) for path in files for tag in IMAGE_TAG.findall(path.read_text())}
    assert tags, "no image tag found: the test looks in the wrong place"
    assert {tag for _, tag in tags} == {__version__}, sorted(tags)
