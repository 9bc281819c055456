import pytest

from factory.cache import StageCache


def test_cache_hits_reruns_and_forces(tmp_path):
    calls = []

    def fn(work):
        calls.append(work)
        (work / "out.txt").write_text("x")
        return {"value": len(calls), "flops": 10.0}

    cache = StageCache(tmp_path)
    first = cache.run("stage", {"a": 1}, {"data": "k1"}, fn)
    again = cache.run("stage", {"a": 1}, {"data": "k1"}, fn)
    assert len(calls) == 1 and again.cached and again.info == {"value": 1} and again.flops == 10.0
    assert again.file("out.txt").read_text() == "x"
    assert not first.cached and first.path == again.path
    cache.run("stage", {"a": 2}, {"data": "k1"}, fn)
    cache.run("stage", {"a": 1}, {"data": "k2"}, fn)
    downstream = cache.run("next", {}, {"up": first}, fn)
    assert len(calls) == 4 and downstream.inputs == {"up": first.key}
    StageCache(tmp_path, force=True).run("stage", {"a": 1}, {"data": "k1"}, fn)
    assert len(calls) == 5


def test_interrupted_stage_leaves_no_output_and_resumes(tmp_path):
    cache = StageCache(tmp_path)

    def crashing(work):
        (work / "resume.txt").write_text("epoch 3")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run("train", {"e": 5}, {}, crashing)
    assert not any(p.name.endswith(cache.key("train", {"e": 5}, {})) for p in (tmp_path / "train").iterdir())
    seen = {}

    def resuming(work):
        seen["resume"] = (work / "resume.txt").read_text()
        return {}

    out = cache.run("train", {"e": 5}, {}, resuming)
    assert seen["resume"] == "epoch 3" and out.path.is_dir() and not out.cached
