"""The flow sizes its look-ahead by the copy task runner's slots, read without Prefect's
private attributes."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from site_backup.cli import build_parser, task_runner
from tasks.copy_batch import CopyTaskRunner, copy_slots


def test_a_flow_on_a_copy_task_runner_knows_its_slots_and_others_get_the_default(prefect_server):
    @flow
    def slots() -> int:
        return copy_slots(default=4)

    assert slots.with_options(task_runner=CopyTaskRunner(max_workers=6))() == 6
    assert slots.with_options(task_runner=ThreadPoolTaskRunner(max_workers=6))() == 4


def test_parallel_batches_on_the_command_line_sets_the_slots_and_survives_duplicate():
    runner = task_runner(build_parser().parse_args(["root", "--parallel-batches", "3"]))
    assert (runner.slots, runner.duplicate().slots) == (3, 3)
