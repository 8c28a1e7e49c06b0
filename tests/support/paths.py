"""Where the repository is, wherever a test file sits in the tree."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
