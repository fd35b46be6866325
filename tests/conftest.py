"""Shared test settings: quiet TensorFlow, fixed seeds, and the path of ../shared."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def pytest_collection_modifyitems(config, items):
    """The end-to-end (`slow`) tests first, in their order, then the rest.

    pytest-xdist hands out tests (and each `xdist_group` as one unit) in collection order: a
    minutes-long run collected last leaves the other worker idle at the end, while one started
    first overlaps with the many short tests."""
    items[:] = sorted(items, key=lambda item: item.get_closest_marker("slow") is None)
