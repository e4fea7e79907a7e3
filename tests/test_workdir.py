"""URL work directories: the local copy a run works in, pulled from and pushed to the remote."""

import uuid

import fsspec
import pytest

from rstar_jax.workdir import Mirror, default_cache, is_url


@pytest.fixture
def url():
    url = f"memory://bucket/{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def test_push_uploads_what_changed_and_pull_restores_it_in_an_empty_cache(url, tmp_path):
    a = Mirror(url, tmp_path / "a")
    (a.local / "round_1" / "search").mkdir(parents=True)
    (a.local / "round_1" / "search" / "tree-0.array_record").write_bytes(b"x" * 100)
    (a.local / "round_1" / "search.json").write_text("{}")
    (a.local / "round_1" / "half.tmp").write_text("being written")
    assert a.push("round_1") == 2
    assert a.push("round_1") == 0  # nothing changed since
    (a.local / "round_1" / "search.json").write_text('{"solved": 3}')
    assert a.push("round_1") == 1

    b = Mirror(url, tmp_path / "b")  # another machine
    assert b.pull() == 2
    assert (b.local / "round_1" / "search.json").read_text() == '{"solved": 3}'
    assert (b.local / "round_1" / "search" / "tree-0.array_record").read_bytes() == b"x" * 100
    assert not (b.local / "round_1" / "half.tmp").exists()
    assert b.pull() == 0  # already there
    assert b.push() == 0  # what was pulled is not sent back


def test_pull_skips_what_it_is_told_and_push_deletes_old_checkpoints(url, tmp_path):
    a = Mirror(url, tmp_path / "a")
    for step in (1, 2):
        (a.local / "ckpt" / str(step)).mkdir(parents=True)
        (a.local / "ckpt" / str(step) / "state").write_bytes(b"s" * step)
    (a.local / "config.json").write_text("{}")
    a.push()
    (a.local / "ckpt" / "1" / "state").unlink()  # orbax dropped the older checkpoint
    a.push("ckpt", delete=True)
    fs = fsspec.filesystem("memory")
    assert not fs.exists(f"{url}/ckpt/1/state") and fs.exists(f"{url}/ckpt/2/state")

    b = Mirror(url, tmp_path / "b")
    assert b.pull(skip=lambda rel: rel.startswith("ckpt/")) == 1
    assert not (b.local / "ckpt").exists()
    assert b.pull("ckpt") == 1 and (b.local / "ckpt" / "2" / "state").read_bytes() == b"ss"


def test_a_url_without_a_filesystem_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError,
                       match=r"--workdir=nosuch://bucket/run: no filesystem for this URL"):
        Mirror("nosuch://bucket/run", tmp_path)


def test_urls_and_their_default_caches():
    assert is_url("gs://bucket/run") and is_url("memory://x") and not is_url("/tmp/run") and not is_url("runs/x")
    assert default_cache("gs://bucket/a/../run").parts[-4:] == ("workdirs", "gs", "bucket", "run")
