"""Run events (`events=fn`, `mb.Report`) and per-run cancellation (`mb.CancelToken`)."""

import threading

import pytest

import modblocks as mb

WAIT = 10  # seconds a test thread waits for another before giving up


@mb.block(output="emb")
def encode(prompt: str) -> int:
    return len(prompt)


@mb.block(output="latents")
def prepare(emb: int, seed: int) -> int:
    return emb * 100 + seed


@mb.block(output="noise")
def unet(latents: int, t: int) -> int:
    return latents % 7 + t


@mb.block(output="latents")
def scheduler_step(latents: int, noise: int) -> int:
    return latents * 2 + noise


@mb.block(output="image")
def decode(latents: int) -> str:
    return f"<{latents}>"


denoise = mb.loop((unet >> scheduler_step), over="timesteps", name="denoise")
t2i = (encode >> prepare >> denoise >> decode).named("t2i")


def _kinds(events: list[mb.Event]) -> list[tuple[str, str]]:
    return [(e.kind, e.path) for e in events]


# -- event order and kinds -----------------------------------------------------------------------


def test_events_sequence_started_then_finished_per_block_in_order():
    events: list[mb.Event] = []
    (encode >> prepare).named("p").run(prompt="ab", seed=1, events=events.append)
    assert _kinds(events) == [
        ("started", "p > encode"),
        ("finished", "p > encode"),
        ("started", "p > prepare"),
        ("finished", "p > prepare"),
    ]
    assert all(e.seconds is None for e in events if e.kind == "started")
    assert all(isinstance(e.seconds, float) and e.seconds >= 0 for e in events[1::2])
    assert all(e.index is None and e.total is None for e in events)


def test_events_single_block_path_is_its_name():
    events: list[mb.Event] = []
    encode.run(prompt="a", events=events.append)
    assert _kinds(events) == [("started", "encode"), ("finished", "encode")]


def test_events_loop_emits_step_events_with_index_and_total():
    events: list[mb.Event] = []
    state = t2i.run(prompt="a", seed=0, timesteps=[5, 6], events=events.append)
    assert state["image"] == "<424>"
    assert _kinds(events) == [
        ("started", "t2i > encode"),
        ("finished", "t2i > encode"),
        ("started", "t2i > prepare"),
        ("finished", "t2i > prepare"),
        ("started", "t2i > denoise[step 0] > unet"),
        ("finished", "t2i > denoise[step 0] > unet"),
        ("started", "t2i > denoise[step 0] > scheduler_step"),
        ("finished", "t2i > denoise[step 0] > scheduler_step"),
        ("step", "t2i > denoise"),
        ("started", "t2i > denoise[step 1] > unet"),
        ("finished", "t2i > denoise[step 1] > unet"),
        ("started", "t2i > denoise[step 1] > scheduler_step"),
        ("finished", "t2i > denoise[step 1] > scheduler_step"),
        ("step", "t2i > denoise"),
        ("started", "t2i > decode"),
        ("finished", "t2i > decode"),
    ]
    steps = [(e.index, e.total) for e in events if e.kind == "step"]
    assert steps == [(0, 2), (1, 2)]


def test_events_loop_of_one_block_names_the_block_inside_the_step():
    events: list[mb.Event] = []
    mb.loop(unet, over="timesteps", name="denoise").run(
        latents=1, timesteps=[1, 2, 3], events=events.append
    )
    assert [e.path for e in events if e.kind == "finished"] == [
        "denoise[step 0] > unet",
        "denoise[step 1] > unet",
        "denoise[step 2] > unet",
    ]
    assert [(e.index, e.total) for e in events if e.kind == "step"] == [(0, 3), (1, 3), (2, 3)]


def test_events_nested_loops_show_both_steps():
    inner = mb.loop(scheduler_step, over="sub", name="inner")
    outer = mb.loop(inner, over="timesteps", name="outer")
    events: list[mb.Event] = []
    outer.run(latents=1, noise=0, timesteps=[0, 1], sub=[0, 1], events=events.append)
    finished = [e.path for e in events if e.kind == "finished"]
    assert finished[:2] == [
        "outer[step 0] > inner[step 0] > scheduler_step",
        "outer[step 0] > inner[step 1] > scheduler_step",
    ]
    assert "outer[step 1] > inner[step 1] > scheduler_step" in finished
    steps = [(e.path, e.index, e.total) for e in events if e.kind == "step"]
    assert steps[:3] == [
        ("outer[step 0] > inner", 0, 2),
        ("outer[step 0] > inner", 1, 2),
        ("outer", 0, 2),
    ]


@mb.block(output="latents")
def img2img(image: int) -> int:
    return image * 3


@mb.block(output="latents")
def text2img(prompt: str) -> int:
    return len(prompt)


def test_events_switch_path_names_the_chosen_branch():
    auto = mb.switch({"image": img2img}, default=text2img, name="auto")
    events: list[mb.Event] = []
    auto.run(image=2, prompt="abc", events=events.append)
    assert _kinds(events) == [("started", "auto > img2img"), ("finished", "auto > img2img")]
    events.clear()
    (auto >> decode).named("pipe").run(prompt="abc", events=events.append)
    assert _kinds(events) == [
        ("started", "pipe > auto > text2img"),
        ("finished", "pipe > auto > text2img"),
        ("started", "pipe > decode"),
        ("finished", "pipe > decode"),
    ]


def test_events_switch_with_a_sequence_branch_names_its_blocks():
    branch = (img2img >> decode).named("i2i")
    auto = mb.switch({"image": branch}, default=text2img, name="auto")
    events: list[mb.Event] = []
    auto.run(image=2, events=events.append)
    assert [e.path for e in events if e.kind == "finished"] == [
        "auto > i2i > img2img",
        "auto > i2i > decode",
    ]


def test_events_cached_blocks_and_loops_emit_cached_only():
    cache = mb.Cache()
    t2i.run(prompt="a", seed=0, timesteps=[1, 2], cache=cache)
    events: list[mb.Event] = []
    t2i.run(prompt="a", seed=0, timesteps=[1, 2], cache=cache, events=events.append)
    assert _kinds(events) == [("cached", "t2i")]  # the whole sequence, in one lookup
    events.clear()
    t2i.run(prompt="a", seed=1, timesteps=[1, 2], cache=cache, events=events.append)
    assert ("cached", "t2i > encode") in _kinds(events)  # a new seed: the blocks one by one
    assert ("finished", "t2i > prepare") in _kinds(events)


def test_events_failing_block_starts_but_does_not_finish():
    @mb.block(output="latents")
    def broken(emb: int) -> int:
        raise ValueError(emb)

    report = mb.Report()
    with pytest.raises(mb.BlockError):
        (encode >> broken >> decode).named("p").run(prompt="a", events=report)
    assert _kinds(report.events) == [
        ("started", "p > encode"),
        ("finished", "p > encode"),
        ("started", "p > broken"),
    ]
    assert report.ran == ["p > encode"]


# -- Report --------------------------------------------------------------------------------------


def test_report_table_from_events():
    report = mb.Report()
    report(mb.Event("started", "t2i > encode"))
    report(mb.Event("finished", "t2i > encode", seconds=0.0125))
    report(mb.Event("cached", "t2i > denoise"))
    report(mb.Event("step", "t2i > denoise", index=0, total=1))
    report(mb.Event("finished", "t2i > decode", seconds=0.5))
    assert report.ran == ["t2i > encode", "t2i > decode"]
    assert report.cached == ["t2i > denoise"]
    assert report.rows() == [
        ("t2i > encode", "ran", 12.5),
        ("t2i > denoise", "cached", None),
        ("t2i > decode", "ran", 500.0),
    ]
    assert report.seconds == pytest.approx(0.5125)
    assert str(report) == (
        "block          status  ms\n"
        "-------------  ------  -----\n"
        "t2i > encode   ran     12.5\n"
        "t2i > denoise  cached  -\n"
        "t2i > decode   ran     500.0"
    )


def test_report_of_a_cached_run_lists_what_ran_and_what_was_served():
    cache = mb.Cache()
    t2i.run(prompt="a", seed=0, timesteps=[1], cache=cache)
    report = mb.Report()
    t2i.run(prompt="a", seed=1, timesteps=[1], cache=cache, events=report)
    assert report.cached == ["t2i > encode"]
    assert report.ran == [
        "t2i > prepare",
        "t2i > denoise[step 0] > unet",
        "t2i > denoise[step 0] > scheduler_step",
        "t2i > decode",
    ]
    lines = str(report).splitlines()
    assert lines[0].split() == ["block", "status", "ms"]
    assert lines[2].split()[-2:] == ["cached", "-"]
    assert [line.split("  ")[0].strip() for line in lines[2:]] == [p for p, _, _ in report.rows()]
    assert all(float(line.split()[-1]) >= 0 for line in lines[3:])


def test_report_of_an_empty_run_is_just_the_header():
    assert str(mb.Report()).splitlines()[0].split() == ["block", "status", "ms"]
    assert mb.Report().rows() == []


# -- cancellation --------------------------------------------------------------------------------


def test_cancel_from_a_step_callback_keeps_the_completed_steps():
    token = mb.CancelToken()

    def cancel_at(s: mb.Step) -> None:
        if s.index == 1:
            token.cancel()

    expected = t2i.run(prompt="a", seed=0, timesteps=[5, 6])["latents"]  # after two steps
    with pytest.raises(mb.CancelledError, match="cancelled") as info:
        t2i.run(prompt="a", seed=0, timesteps=[5, 6, 7, 8], on_step=cancel_at, cancel=token)
    err = info.value
    assert isinstance(err, mb.ModblocksError)
    assert "denoise" in err.path
    assert err.state["latents"] == expected
    assert "image" not in err.state
    assert "t" not in err.state
    assert "i" not in err.state


def test_cancel_from_a_block_stops_before_the_next_block():
    token = mb.CancelToken()
    ran: list[str] = []

    @mb.block(output="emb")
    def encode_and_cancel(prompt: str) -> int:
        token.cancel()
        return len(prompt)

    @mb.block(output="latents")
    def never(emb: int) -> int:
        ran.append("never")
        return emb

    with pytest.raises(mb.CancelledError) as info:
        (encode_and_cancel >> never).named("p").run(prompt="abc", cancel=token)
    assert ran == []
    assert info.value.path == "p > never"
    assert dict(info.value.state) == {"prompt": "abc", "emb": 3}


def test_cancel_from_another_thread_during_a_loop():
    token = mb.CancelToken()
    reached = threading.Event()
    release = threading.Event()

    @mb.block(output="latents")
    def slow_step(latents: int, t: int) -> int:
        if t == 1:  # the second step waits to be cancelled
            reached.set()
            assert release.wait(WAIT)
        return latents + t

    pipe = (mb.loop(slow_step, over="timesteps", name="denoise") >> decode).named("p")
    errors: list[BaseException] = []
    report = mb.Report()

    def target() -> None:
        try:
            pipe.run(latents=100, timesteps=[0, 1, 2, 3], cancel=token, events=report)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=target)
    worker.start()
    assert reached.wait(WAIT)
    token.cancel()
    release.set()
    worker.join(WAIT)
    assert not worker.is_alive()
    (err,) = errors
    assert isinstance(err, mb.CancelledError)
    assert err.state["latents"] == 101  # steps 0 and 1 completed, 2 and 3 never ran
    assert "image" not in err.state
    assert [e.index for e in report.events if e.kind == "step"] == [0, 1]
    assert "p > decode" not in report.ran


def test_cancel_two_runs_in_two_threads_independently():
    tokens = {"a": mb.CancelToken(), "b": mb.CancelToken()}
    barrier = threading.Barrier(3, timeout=WAIT)
    release = threading.Event()

    @mb.block(output="latents")
    def waiting_step(latents: int, t: int) -> int:
        if t == 1:
            barrier.wait()  # both runs are in their second step
            assert release.wait(WAIT)
        return latents + t

    pipe = (mb.loop(waiting_step, over="timesteps", name="denoise") >> decode).named("p")
    results: dict[str, object] = {}

    def target(name: str, start: int) -> None:
        try:
            results[name] = pipe.run(latents=start, timesteps=[0, 1, 2], cancel=tokens[name])
        except mb.CancelledError as err:
            results[name] = err

    threads = [
        threading.Thread(target=target, args=("a", 10)),
        threading.Thread(target=target, args=("b", 20)),
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    tokens["a"].cancel()
    release.set()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    cancelled, finished = results["a"], results["b"]
    assert isinstance(cancelled, mb.CancelledError)
    assert cancelled.state["latents"] == 11
    assert isinstance(finished, mb.State)
    assert finished["image"] == "<23>"
    assert not tokens["b"].cancelled


def test_cancel_token_is_reusable_across_runs_until_cancelled():
    token = mb.CancelToken()
    assert not token.cancelled
    assert t2i.run(prompt="a", seed=0, timesteps=[1], cancel=token)["image"]
    token.cancel()
    with pytest.raises(mb.CancelledError) as info:
        t2i.run(prompt="a", seed=0, timesteps=[1], cancel=token)
    assert info.value.path.startswith("t2i")
    assert dict(info.value.state) == {"prompt": "a", "seed": 0, "timesteps": [1]}


def test_cancel_with_a_cache_keeps_finished_blocks_for_the_next_run():
    token = mb.CancelToken()

    def cancel_first(s: mb.Step) -> None:
        token.cancel()

    cache = mb.Cache()
    with pytest.raises(mb.CancelledError):
        t2i.run(
            prompt="a", seed=0, timesteps=[1, 2], cache=cache, cancel=token, on_step=cancel_first
        )
    report = mb.Report()
    state = t2i.run(prompt="a", seed=0, timesteps=[1, 2], cache=cache, events=report)
    assert report.cached == ["t2i > encode", "t2i > prepare"]
    assert state["image"] == t2i.run(prompt="a", seed=0, timesteps=[1, 2])["image"]
