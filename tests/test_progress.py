"""Progress lines for logs without a terminal, and the CPU thread default of the entry points."""

import logging

from magicremover.experiments._cli import cpu_threads
from magicremover.progress import Progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_lines_give_done_total_rate_eta_and_failures(caplog):
    clock, log = Clock(), logging.getLogger("progress-test")
    with caplog.at_level("INFO", logger="progress-test"):
        with Progress(10, "samples", log, every=60, done=4, clock=clock) as progress:  # 4 finished by an earlier run
            clock.now += 30
            progress.update()  # 30 s after the start: not yet a minute since the last line
            assert caplog.records == [] and progress.eta() == 30 * 5
            clock.now += 30
            progress.update(ok=False, note="toy1")
            clock.now += 3 * 60
            for _ in range(4):
                progress.update()
    first, second, last = (record.getMessage() for record in caplog.records)
    # 2 new samples in 60 s = 120 /h, 4 left at 30 s each = 2 min; then 3 in 240 s = 45 /h, 3 left at 80 s = 4 min.
    assert first == "samples 6/10 (60%) · 120 /h · ETA 2m00s · 1 failed · toy1"
    assert second == "samples 7/10 (70%) · 45.0 /h · ETA 4m00s · 1 failed"  # a minute since the last line
    assert last == "samples 10/10 (100%) · 90.0 /h · done in 4m00s · 1 failed"  # the last item is always logged


def test_every_zero_logs_each_item_and_hours_show_in_the_eta(caplog):
    clock, log = Clock(), logging.getLogger("progress-test")
    with caplog.at_level("INFO", logger="progress-test"), Progress(1000, "photos", log, every=0, clock=clock) as p:
        clock.now += 36
        p.update()
    assert caplog.records[0].getMessage() == "photos 1/1000 (0%) · 100 /h · ETA 9h59m"


def test_thread_default_leaves_a_core_free_unless_the_user_chose():
    assert cpu_threads(environ={}, cores=2) == 1 and cpu_threads(environ={}, cores=16) == 15
    assert cpu_threads(environ={}, cores=1) == 1
    assert cpu_threads(environ={"OMP_NUM_THREADS": "2"}, cores=2) is None
    assert cpu_threads(environ={"MKL_NUM_THREADS": "4"}, cores=8) is None
