"""The suite's fixtures live in the helper package tests/testkit (importable as ``testkit``, since
setup.cfg puts tests/ on the path): its plugin is loaded here, for every test directory."""
import os

# Idle OpenMP threads of this process sleep instead of spinning (set before the plugin imports torch):
# the suite's subprocesses share 2 cores with it, and spinning threads slow them several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["testkit.plugin"]
