"""The command line: the command tree and clear errors (the demo itself: tests/cli/test_demo.py)."""

from __future__ import annotations

import pytest

from hyco_rag.cli import COMMANDS, build_parser, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS)


def test_train_has_the_three_pipelines():
    parser = build_parser()
    for pipeline in ("compressor", "prag", "translator"):
        args = parser.parse_args(["train", pipeline])
        assert args.pipeline == pipeline and callable(args.handler)


def test_bad_arguments_give_a_clear_error(capsys):
    assert main(["demo", "-k", "0", "--quiet"]) == 2
    assert "k must be >= 1" in capsys.readouterr().err
    assert main(["bench", "no_such_benchmark"]) == 2
    assert "no benchmark named" in capsys.readouterr().err
