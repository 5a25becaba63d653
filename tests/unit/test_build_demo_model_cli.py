"""``obliviate build-demo-model --width/--layers``: a bad size is a usage error, not a traceback."""

from __future__ import annotations

from click.testing import CliRunner

from service.cli import main


def test_a_width_the_heads_cannot_split_is_a_usage_error(tmp_path) -> None:
    result = CliRunner().invoke(main, ["build-demo-model", "--width", "130", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "n_embd (130) must be divisible by n_head (4)" in result.output
    assert not any(tmp_path.iterdir())  # nothing was built


def test_sizes_outside_the_range_are_refused(tmp_path) -> None:
    result = CliRunner().invoke(main, ["build-demo-model", "--layers", "0", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--layers" in result.output
