"""Root pytest configuration: every test, and every kernel nbval starts, runs in the reference
setting the solution notebooks' stored outputs were made in (quick profile, CPU)."""

import os

os.environ["COURSEPKG_PROFILE"] = "quick"
os.environ["COURSEPKG_DEVICE"] = "cpu"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
