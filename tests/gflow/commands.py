"""Running the gflow command in-process, as the tests do."""

from gflow.cli import main


def gflow_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``gflow ARGV``; argparse's own exits count too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
