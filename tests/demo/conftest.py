"""The demo's tests read the generated tree with the data tests' config helper."""

from tests.data.conftest import make_cfg  # noqa: F401  (a fixture, re-exported)
