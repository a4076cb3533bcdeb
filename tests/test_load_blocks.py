"""`mb.load_blocks`: nodes shared as a folder or Hub repo, imported only when trusted, pinned."""

import shutil
import textwrap

import pytest

import modblocks as mb

BLOCKS = '''
"""Blocks shared by someone else."""
from typing import NamedTuple

import modblocks as mb

from .helpers import OFFSET

__all__ = ["shift", "twice"]


class Shifted(NamedTuple):
    y: int


@mb.block
def shift(x: int, by: mb.Config[int] = OFFSET) -> Shifted:
    """Add an offset."""
    return Shifted(x + by)


@mb.block(output="z")
def double(y: int) -> int:
    """Double it."""
    return 2 * y


twice = (shift >> double).named("twice")
'''


@pytest.fixture
def shared(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "blocks.py").write_text(textwrap.dedent(BLOCKS))
    (folder / "helpers.py").write_text("OFFSET = 10\n")
    return folder


def test_loading_code_needs_explicit_trust_and_says_what_it_would_run(shared):
    with pytest.raises(
        mb.UntrustedCodeError, match=r"blocks\.py`, `helpers\.py.*runs that code"
    ) as info:
        mb.load_blocks(shared)
    assert info.value.hash == mb.load_blocks(shared, trust_remote_code=True).hash
    assert info.value.hash.startswith("sha256:")
    assert isinstance(info.value, PermissionError)


def test_trusted_folders_give_the_nodes_they_export(shared):
    blocks = mb.load_blocks(shared, trust_remote_code=True)
    assert sorted(blocks) == ["shift", "twice"]  # `__all__`, not `double`
    assert blocks.twice.run(x=1)["z"] == 22
    assert blocks["shift"].run(x=1, by=1)["y"] == 2
    assert mb.Pipeline(blocks.twice, configs={"by": 0})(x=3, output="z") == 6
    with pytest.raises(mb.UnknownInputError, match=r"no node `twise`. Did you mean `twice`"):
        blocks["twise"]
    # The same files give the same nodes.
    assert mb.load_blocks(shared, trust_remote_code=True, pin=blocks.hash) is blocks


def test_a_pin_that_does_not_match_runs_nothing(shared, tmp_path):
    pinned = mb.load_blocks(shared, trust_remote_code=True).hash
    other = tmp_path / "other"
    shutil.copytree(shared, other)
    (other / "helpers.py").write_text("OFFSET = 11\n")
    with pytest.raises(mb.BlocksChangedError, match="not the code pinned") as info:
        mb.load_blocks(other, trust_remote_code=True, pin=pinned)
    assert (info.value.expected, info.value.found) == (
        pinned,
        mb.load_blocks(other, trust_remote_code=True).hash,
    )


def test_code_that_changed_since_it_was_loaded_is_refused_unless_pinned_anew(shared):
    before = mb.load_blocks(shared, trust_remote_code=True)
    (shared / "helpers.py").write_text("OFFSET = 100\n")
    with pytest.raises(
        mb.BlocksChangedError, match=r"changed since this process loaded it"
    ) as info:
        mb.load_blocks(shared, trust_remote_code=True)
    assert info.value.expected == before.hash
    after = mb.load_blocks(shared, trust_remote_code=True, pin=info.value.found)
    assert after.twice.run(x=1)["z"] == 202
    assert before.twice.run(x=1)["z"] == 22  # the nodes loaded before keep their code


def test_a_folder_without_blocks_is_a_load_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(mb.LoadError, match=r"has no `blocks\.py`"):
        mb.load_blocks(tmp_path / "empty", trust_remote_code=True)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "blocks.py").write_text("X = 1\n")
    with pytest.raises(mb.LoadError, match="exports no node"):
        mb.load_blocks(tmp_path / "nothing", trust_remote_code=True)


def test_a_hub_repo_of_blocks_loads_from_the_local_cache(shared, tmp_path):
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--tester--blocks"
    shutil.copytree(shared, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    blocks = mb.load_blocks(
        "tester/blocks", trust_remote_code=True, cache_dir=tmp_path / "hub", local_files_only=True
    )
    assert blocks.twice.run(x=0)["z"] == 20
    assert blocks.path == "tester/blocks"


def test_the_code_that_runs_is_the_code_that_was_hashed(tmp_path):
    # A module imported later (here inside a block, at call time) comes from the files as they
    # were read and hashed, not from whatever is on disk by then.
    folder = tmp_path / "late"
    (folder / "parts").mkdir(parents=True)
    (folder / "blocks.py").write_text(
        textwrap.dedent(
            """
            import modblocks as mb

            @mb.block(output="y")
            def late(x: int) -> int:
                from .parts.values import VALUE
                return x + VALUE
            """
        )
    )
    (folder / "parts" / "values.py").write_text("VALUE = 1\n")
    blocks = mb.load_blocks(folder, trust_remote_code=True)
    (folder / "parts" / "values.py").write_text("VALUE = 1000\n")
    assert blocks.late.run(x=1)["y"] == 2
    with pytest.raises(mb.BlocksChangedError):  # and loading it again sees the change
        mb.load_blocks(folder, trust_remote_code=True, pin=blocks.hash)
