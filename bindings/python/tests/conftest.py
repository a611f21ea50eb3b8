"""Shared fixtures: the repository's example topology and small documents built
in the tests themselves."""

import copy
import pathlib

import pytest
import documents

REPO = pathlib.Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "topology.yaml"


@pytest.fixture(scope="session")
def example_path() -> pathlib.Path:
    assert EXAMPLE.is_file(), f"example topology missing at {EXAMPLE}"
    return EXAMPLE


@pytest.fixture(scope="session")
def example_text(example_path: pathlib.Path) -> str:
    return example_path.read_text()


@pytest.fixture()
def small_doc() -> dict:
    return copy.deepcopy(documents.SMALL_DOC)
