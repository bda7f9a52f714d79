import pytest

from magicremover.errors import ConfigError
from magicremover.method.schedule import Window, edit_start, plan

TIMESTEPS = list(range(981, 0, -20))  # DDIM, 50 steps, steps_offset 1


def _roles(t_ratio, guidance, optimization):
    steps = plan(TIMESTEPS, t_ratio, Window(*guidance), Window(*optimization))
    pick = lambda flags: [t for t, f in zip(TIMESTEPS, flags) if f]  # noqa: E731
    return pick(steps.edit), pick(steps.guide), pick(steps.optimize)


def test_released_code_windows():
    edit, guide, optimize = _roles(0.85, (11, None), (500, None))
    assert edit[0] == 821 and len(edit) == 42  # t ≤ 821 edited, 8 steps replayed before
    assert guide == list(range(821, 20, -20)) and len(guide) == 41  # every edited t > 11
    assert optimize == list(range(821, 500, -20)) and len(optimize) == 17


def test_coco_script_windows():
    edit, guide, optimize = _roles(0.9, (11, None), (500, None))
    assert edit[0] == 881 and (len(guide), len(optimize)) == (44, 20)


def test_paper_windows():
    edit, guide, optimize = _roles(1.0, (100, 800), (500, 800))
    assert len(edit) == 50
    assert guide == list(range(781, 100, -20)) and len(guide) == 35  # 100 < t < 800
    assert optimize == list(range(781, 500, -20)) and len(optimize) == 15  # 500 < t < 800


def test_optimization_switch_and_edit_start():
    steps = plan(TIMESTEPS, 0.85, Window(11, None), Window(500, None), optimization_on=False)
    assert not any(steps.optimize) and sum(steps.guide) == 41
    steps = plan(TIMESTEPS, 0.85, Window(11, None), Window(500, None), guidance_on=False)
    assert not any(steps.guide) and not any(steps.optimize) and sum(steps.edit) == 42
    assert [edit_start(50, r) for r in (0.85, 0.9, 1.0, 0.8)] == [8, 5, 0, 10]


@pytest.mark.parametrize(("value", "message"), [([800, 100], "is empty"), ([1, 2, 3], "must be \\[low, high\\]")])
def test_bad_windows(value, message):
    with pytest.raises(ConfigError, match=message):
        Window.parse(value, "method.guidance_window")
    with pytest.raises(ConfigError, match="t_ratio=0"):
        edit_start(50, 0)
