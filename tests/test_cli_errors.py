"""An ordinary mistake on the command line gets one line on stderr, prefixed by the command, and a
non-zero exit status; Ctrl-C and a reader that closes the pipe get no traceback either; a bug
keeps its traceback. Most cases call moeweave.cli.main in this process (each would otherwise pay
torch's import); those about signals, pipes and the installed command run it as a subprocess.
`moeweave run`'s cases on a running model are in tests/models/test_run_cli.py."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import moeweave.info
from moeweave.cli import main
from moeweave.models.bundled import default_model_dir

MOEWEAVE = Path(sys.executable).with_name("moeweave")
# Command lines that read nothing from this directory fail before any file is touched; the others
# find a real checkpoint in it and fail on the argument under test.
DEMO = str(default_model_dir())
# The progress bars would share stderr with the one line under test.
QUIET = {**os.environ, "TQDM_DISABLE": "1"}


@pytest.fixture(autouse=True)
def _restore_omp_wait_policy(monkeypatch):
    """main() sets OMP_WAIT_POLICY for the torch it is about to import; not for later tests."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)


def _one_line_error(capsys, argv: list[str], command: str, status: int = 1) -> str:
    """Runs main(argv), checks it failed with `status` and one line on stderr naming `command`;
    returns the rest of that line."""
    try:
        got = main(argv)
    except SystemExit as stop:  # argparse's own errors
        got = stop.code
    err = capsys.readouterr().err
    assert got == status, err
    assert err.startswith(f"{command}: ") and err.count("\n") == 1 and err.endswith("\n"), err
    return err[len(command) + 2 : -1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["/nonexistent"], "checkpoint directory /nonexistent does not exist"),
        ([f"{DEMO}/config.json"], "config.json is not a directory"),
        (["--prompt", ""], "the prompt is empty"),
        # What Python makes of argv bytes that are not UTF-8 (b"caf\xe9": Latin-1).
        (["--prompt", "caf\udce9"], "--prompt is not valid UTF-8 text"),
        (["--temperature", "nan"], "temperature must be a finite number >= 0"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--temperature", "inf"], "temperature must be a finite number >= 0"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--top-p", "nan"], "top_p must be in (0, 1]"),
        (["--top-k", "-1"], "top_k must be >= 0"),
        (["--max-new-tokens", "-1"], "max_new_tokens must be >= 0"),
    ],
)
def test_run_mistakes_are_one_line(capsys, argv, message):
    assert message in _one_line_error(capsys, ["run", *argv], "moeweave run")


def test_run_of_a_checkpoint_whose_config_is_no_object_is_one_line(capsys, tmp_path):
    (tmp_path / "config.json").write_text("[1]")
    assert "must hold a JSON object" in _one_line_error(capsys, ["run", str(tmp_path)], "moeweave run")


def test_store_convert_of_a_missing_or_file_checkpoint_is_one_line(capsys, tmp_path):
    for source, message in (
        ("/nonexistent", "No such file or directory"),
        (f"{DEMO}/config.json", "Not a directory"),
    ):
        argv = ["store", "convert", source, str(tmp_path / "store")]
        assert message in _one_line_error(capsys, argv, "moeweave store convert")


@pytest.mark.parametrize(
    "option, message",
    [
        (["--bits", "5"], "argument --bits: invalid choice: 5"),
        (["--group-size", "0"], "argument --group-size: must be a positive multiple of 32, got '0'"),
        (["--group-size", "33"], "argument --group-size: must be a positive multiple of 32, got '33'"),
        (["--group-size", "x"], "argument --group-size: must be a positive multiple of 32, got 'x'"),
    ],
)
def test_store_convert_refuses_bad_widths_before_writing(capsys, tmp_path, option, message):
    argv = ["store", "convert", DEMO, str(tmp_path / "store"), *option]
    assert message in _one_line_error(capsys, argv, "moeweave store convert", status=2)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "No such file or directory"),
        (b"{'0.0': 4}", "not a UTF-8 JSON file"),
        ('{"0.0": 4, "0.1": "\u00e9"}'.encode("latin-1"), "not a UTF-8 JSON file"),
        (b"[4, 4]", "must be a JSON object"),
        (b'"4"', "must be a JSON object"),
        # The widths themselves are write_store's to check.
        (b'{"0.0": "4"}', ""),
        (b'{"0.0": true}', ""),
        (b'{"0.0": 4.0}', ""),
        (b'{"99.0": 4}', ""),
    ],
)
def test_store_convert_with_a_bad_bits_map_is_one_line(capsys, tmp_path, content, message):
    bits_map = tmp_path / "bits.json"
    if content is not None:
        bits_map.write_bytes(content)
    argv = ["store", "convert", DEMO, str(tmp_path / "store"), "--bits-map", str(bits_map)]
    assert message in _one_line_error(capsys, argv, "moeweave store convert")


def test_argparse_errors_are_one_line(capsys):
    assert "invalid int value: 'many'" in _one_line_error(
        capsys, ["run", "--max-new-tokens", "many"], "moeweave run", status=2
    )
    assert "required" in _one_line_error(capsys, ["store"], "moeweave store", status=2)


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(moeweave.info, "gather", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info"])


def test_the_installed_command_prints_no_traceback():
    done = subprocess.run([MOEWEAVE, "run", "/nonexistent"], capture_output=True, text=True, env=QUIET)
    assert (done.returncode, done.stderr) == (
        1,
        "moeweave run: checkpoint directory /nonexistent does not exist\n",
    )


def test_info_into_a_closed_pipe_is_silent():
    """`moeweave info | head -1` after head has exited: the status a SIGPIPE gives, nothing on
    stderr (no traceback, no "Exception ignored ... BrokenPipeError" at exit)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([MOEWEAVE, "info"], stdout=write, stderr=subprocess.PIPE, text=True, env=QUIET)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, "")


def _writer_once_read(fifo: Path, process: subprocess.Popen) -> int:
    """The write end of `fifo`, opened once `process` has opened it for reading (before that, a
    non-blocking open fails with ENXIO)."""
    while process.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
        time.sleep(0.01)
    raise AssertionError(f"exited with {process.returncode} before reading the map: {process.stderr.read()}")


def _wait_until_blocked_on(fifo: Path, process: subprocess.Popen) -> None:
    """Returns once `process` sits in a system call on `fifo` (/proc/PID/syscall: its number,
    then its first argument, the descriptor). A SIGINT just before that call would only set
    CPython's flag: the call would block all the same, and the KeyboardInterrupt never come."""
    proc, identity = Path(f"/proc/{process.pid}"), (fifo.stat().st_dev, fifo.stat().st_ino)
    while process.poll() is None:
        try:
            descriptors = {
                int(fd.name)
                for fd in (proc / "fd").iterdir()
                if (fd.stat().st_dev, fd.stat().st_ino) == identity
            }
            call = (proc / "syscall").read_text().split()
        except FileNotFoundError:  # a descriptor closed, or the process exited, meanwhile
            continue
        if len(call) > 1 and int(call[1], 16) in descriptors:
            return
        time.sleep(0.01)
    raise AssertionError(f"exited with {process.returncode} before reading the map: {process.stderr.read()}")


def _sigint_default() -> None:
    """In the child before it runs: a shell that started the tests in the background (as CI
    may) leaves SIGINT ignored, and Python keeps an inherited SIG_IGN instead of raising
    KeyboardInterrupt, so the command under test would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_store_convert(tmp_path):
    """The bits map is a FIFO that never gets its data, so the command waits inside `store
    convert` for as long as it takes; it is interrupted there."""
    fifo = tmp_path / "bits.json"
    os.mkfifo(fifo)
    argv = [MOEWEAVE, "store", "convert", DEMO, str(tmp_path / "store"), "--bits-map", str(fifo)]
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=QUIET,
        preexec_fn=_sigint_default,
    ) as process:
        writer = _writer_once_read(fifo, process)
        try:
            _wait_until_blocked_on(fifo, process)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=300)
        finally:
            os.close(writer)
    assert (process.returncode, out, err) == (
        128 + signal.SIGINT,
        "",
        "moeweave store convert: interrupted\n",
    )
    assert not (tmp_path / "store").exists()
