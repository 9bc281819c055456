"""The stage cache: typed results round-trip, keys follow plans and inputs, --force, interrupted stages."""

from dataclasses import dataclass

import pytest

from factory.cache import StageCache
from factory.errors import CheckpointError
from factory.models import Pinned, unchanged
from factory.stage import Done, Plan, Stage, StageResult


@dataclass(frozen=True)
class CountPlan(Plan):
    a: int


@dataclass(kw_only=True)
class Counted(StageResult):
    value: int
    history: list[dict]


STAGE = Stage("stage", Counted, "factory.cache")
NEXT = Stage("next", Counted, "factory.cache")


def test_cache_hits_reruns_forces_and_reads_results_back_typed(tmp_path):
    calls = []

    def fn(work):
        calls.append(work)
        (work / "out.txt").write_text("x")
        return Counted(value=len(calls), history=[{"epoch": 1}], flops=10.0)

    cache = StageCache(tmp_path)
    first = cache.run(STAGE, CountPlan(1), {"data": "k1"}, fn)
    again = cache.run(STAGE, CountPlan(1), {"data": "k1"}, fn)
    assert len(calls) == 1 and again.cached and again.flops == 10.0
    assert isinstance(again.result, Counted) and again.result == first.result  # typed, not a dict
    assert again.file("out.txt").read_text() == "x"
    assert not first.cached and first.path == again.path
    cache.run(STAGE, CountPlan(2), {"data": "k1"}, fn)
    cache.run(STAGE, CountPlan(1), {"data": "k2"}, fn)
    downstream = cache.run(NEXT, CountPlan(1), {"up": first}, fn)
    assert len(calls) == 4 and downstream.inputs == {"up": first.key}
    StageCache(tmp_path, force=True).run(STAGE, CountPlan(1), {"data": "k1"}, fn)
    assert len(calls) == 5


def test_interrupted_stage_leaves_no_output_and_resumes(tmp_path):
    cache = StageCache(tmp_path)

    def crashing(work):
        (work / "resume.txt").write_text("epoch 3")
        (work / "resume.pt").write_text("a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run(STAGE, CountPlan(5), {}, crashing)
    key = STAGE.key(CountPlan(5), {})
    assert not (tmp_path / "stage" / key).exists()
    seen = {}

    def resuming(work):
        seen["resume"] = (work / "resume.txt").read_text()
        return Counted(value=0, history=[])

    out = cache.run(STAGE, CountPlan(5), {}, resuming)
    assert seen["resume"] == "epoch 3" and out.path.is_dir() and not out.cached
    assert not out.file("resume.pt").exists()  # the resume checkpoint does not outlive its stage
    assert isinstance(out, Done)


def test_two_builds_running_one_stage_at_once_take_turns(tmp_path):
    import threading
    import time

    calls, inside, overlap = [], [], []

    def slow(work):
        inside.append(1)
        overlap.append(len(inside))
        (work / "out.txt").write_text(str(len(calls)))
        time.sleep(0.3)
        calls.append(work)
        inside.pop()
        return Counted(value=len(calls), history=[])

    results = []
    threads = [threading.Thread(target=lambda: results.append(StageCache(tmp_path).run(STAGE, CountPlan(7), {}, slow)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and max(overlap) == 1  # one ran it, the other waited and read it from the cache
    assert sorted(r.cached for r in results) == [False, True] and results[0].result == results[1].result


@dataclass(frozen=True)
class StartPlan(Plan):
    weights: Pinned | None


def test_a_checkpoint_is_keyed_by_its_content_not_its_folder(tmp_path):
    def key(weights):
        return STAGE.key(StartPlan(Pinned.of(weights)), {})

    one, another = tmp_path / "one" / "resnet26.safetensors", tmp_path / "another" / "resnet26.safetensors"
    for path in (one, another):
        path.parent.mkdir()
        path.write_bytes(b"weights")
    assert key(str(one)) == key(str(another))
    assert len({key("timm"), key("hf-hub:org/model"), key(None), key(str(one))}) == 4  # hub references as written
    kept = Pinned.of(str(one))
    one.write_bytes(b"retrained")  # in place, while a build runs
    assert key(str(one)) != key(str(another))
    assert unchanged(Pinned.of(str(another)), "teacher.weights") == str(another)
    with pytest.raises(CheckpointError, match=f"teacher.weights: checkpoint {one} changed while the build"):
        unchanged(kept, "teacher.weights")
