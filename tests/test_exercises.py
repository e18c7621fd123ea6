"""Every exercise checker says "right" to a right answer and "differs" to a wrong one."""

from __future__ import annotations

import itertools

import torch

from minisd import exercises


def right_bpe(word, ranks):
    symbols = [*word[:-1], word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = [(ranks.get(p, float("inf")), i) for i, p in enumerate(itertools.pairwise(symbols))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        first, second = symbols[i], symbols[i + 1]
        merged, j = [], 0
        while j < len(symbols):  # every occurrence of the pair, left to right
            if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == (first, second):
                merged.append(first + second)
                j += 2
            else:
                merged.append(symbols[j])
                j += 1
        symbols = merged
    return symbols


CASES = {
    "check_add_noise": (
        lambda x0, n, a: a.sqrt() * x0 + (1 - a).sqrt() * n,
        lambda x0, n, a: a * x0 + (1 - a) * n,  # forgot the square roots
    ),
    "check_cfg": (
        lambda u, c, s: u + s * (c - u),
        lambda u, c, s: c + s * (c - u),  # started from the conditional prediction
    ),
    "check_attention": (
        lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1) @ v,
        lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1) @ v,  # no 1/√d
    ),
    "check_ddim_step": (
        lambda x, e, a, ap: ap.sqrt() * (x - (1 - a).sqrt() * e) / a.sqrt() + (1 - ap).sqrt() * e,
        lambda x, e, a, ap: ap.sqrt() * (x - (1 - a).sqrt() * e) / a.sqrt(),  # dropped the direction to x_t
    ),
    "check_bpe": (right_bpe, lambda word, ranks: list(word)),
}


def test_every_checker_is_tested():
    checkers = {n for n in dir(exercises) if n.startswith("check_")}
    assert checkers == set(CASES) | {"check_recorded"}  # check_recorded: its own test below


def test_right_answers_pass_and_wrong_ones_are_explained(capsys):
    for name, (right, wrong) in CASES.items():
        checker = getattr(exercises, name)
        assert checker(right) is True, name
        assert "✓" in capsys.readouterr().out
        assert checker(wrong) is False, name
        assert "✗" in capsys.readouterr().out


def test_a_wrong_shape_or_type_is_named(capsys):
    assert exercises.check_cfg(lambda u, c, s: u[0]) is False
    assert "shape" in capsys.readouterr().out
    assert exercises.check_cfg(lambda u, c, s: None) is False
    assert "returned a NoneType" in capsys.readouterr().out


def test_check_recorded_replays_minisd_tinys_recording(capsys):
    from minisd import load_pipeline
    from minisd.exercises import check_recorded
    from minisd.schedulers import make_scheduler

    pipe = load_pipeline()
    assert check_recorded("unet", lambda x, t, c: pipe.unet(x, t, c))
    sched = make_scheduler("ddim", pipe.scheduler.config)
    sched.set_timesteps(25)
    assert check_recorded("scheduler", lambda eps, t, x: sched.step(eps, t, x).prev_sample)
    assert check_recorded("vae", lambda z: (pipe.vae.decode(z) / 2 + 0.5).clamp(0, 1))
    assert not check_recorded("vae", lambda z: pipe.vae.decode(z).clamp(0, 1))  # forgot the [−1, 1] → [0, 1]
    assert "✗ vae on minisd-tiny-ddim-pair.safetensors" in capsys.readouterr().out
