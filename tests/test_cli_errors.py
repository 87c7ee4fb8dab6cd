"""An ordinary mistake on the command line gets one line on stderr, prefixed by the command, and a
non-zero exit status; Ctrl-C and a reader that closes the pipe get no traceback either; a bug
keeps its traceback. Most cases call moeweave.cli.main in this process (each would otherwise pay
torch's import); those about signals, pipes and the installed command run it as a subprocess.
`moeweave run`'s cases on a running model are in tests/models/test_run_cli.py."""

import os
import signal
import subprocess
import sys
import threading
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
        (["--prompt", "a", "--prompt", "b"], "several --prompt are for --expert-parallel"),
        (["--expert-parallel"], "start it with torchrun"),
        (["--expert-parallel", "--memory-budget", "1MiB"], "it has no engine mode"),
        (["--expert-parallel", "--stats"], "--stats is the engine's telemetry"),
    ],
)
def test_run_mistakes_are_one_line(capsys, argv, message):
    assert message in _one_line_error(capsys, ["run", *argv], "moeweave run")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--replicas", "0"], "--replicas must be >= 1"),
        (["--replicas", "3", "--max-replicas", "2"], "--max-replicas 2 is below --replicas 3"),
    ],
)
def test_serve_ray_mistakes_are_one_line_before_any_cluster(capsys, argv, message):
    assert message in _one_line_error(capsys, ["serve", "--ray", *argv], "moeweave serve")


def test_run_of_a_checkpoint_whose_config_is_no_object_is_one_line(capsys, tmp_path):
    (tmp_path / "config.json").write_text("[1]")
    assert "must hold a JSON object" in _one_line_error(capsys, ["run", str(tmp_path)], "moeweave run")


def test_convert_of_a_missing_or_file_checkpoint_is_one_line(capsys, tmp_path):
    for source, message in (
        ("/nonexistent", "checkpoint directory /nonexistent does not exist"),
        (f"{DEMO}/config.json", "config.json is not a directory"),
    ):
        argv = ["convert", source, str(tmp_path / "store")]
        assert message in _one_line_error(capsys, argv, "moeweave convert")


@pytest.mark.parametrize(
    "option, message",
    [
        (["--bits", "5"], "argument --bits: invalid choice: '5'"),
        (["--group-size", "0"], "argument --group-size: must be a positive multiple of 32, got '0'"),
        (["--group-size", "33"], "argument --group-size: must be a positive multiple of 32, got '33'"),
        (["--group-size", "x"], "argument --group-size: must be a positive multiple of 32, got 'x'"),
    ],
)
def test_convert_refuses_bad_widths_before_writing(capsys, tmp_path, option, message):
    argv = ["convert", DEMO, str(tmp_path / "store"), *option]
    assert message in _one_line_error(capsys, argv, "moeweave convert", status=2)
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
def test_convert_with_a_bad_bits_map_is_one_line(capsys, tmp_path, content, message):
    bits_map = tmp_path / "bits.json"
    if content is not None:
        bits_map.write_bytes(content)
    argv = ["convert", DEMO, str(tmp_path / "store"), "--bits-map", str(bits_map)]
    assert message in _one_line_error(capsys, argv, "moeweave convert")


def test_argparse_errors_are_one_line(capsys):
    assert "invalid int value: 'many'" in _one_line_error(
        capsys, ["run", "--max-new-tokens", "many"], "moeweave run", status=2
    )
    assert "the following arguments are required: hf_dir, out_dir" in _one_line_error(
        capsys, ["convert"], "moeweave convert", status=2
    )


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


def _write_end_once_read(fifo: Path, process: subprocess.Popen) -> tuple[int, list[int]]:
    """The write end of `fifo`. Opening it blocks until a reader opens the FIFO: the command, or,
    should the command exit first, a stand-in opened by a watchdog thread, so that a broken
    command fails the test instead of hanging it. Returns it and the stand-in's descriptors."""
    stand_in: list[int] = []

    def open_a_reader_once_exited() -> None:
        process.wait()
        stand_in.append(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

    threading.Thread(target=open_a_reader_once_exited, daemon=True).start()
    return os.open(fifo, os.O_WRONLY), stand_in


def test_ctrl_c_during_convert(tmp_path, interruptible_popen):
    """The bits map is a FIFO: the command opens it and waits in `convert` for data that
    never comes. The Ctrl-C is sent once it has opened the map, so its SIGINT handler is in
    place; closing the write end right after the signal ends a read that the signal may have
    just missed (CPython only flags a signal that lands outside a system call), so the
    interrupt is raised either way."""
    fifo = tmp_path / "bits.json"
    os.mkfifo(fifo)
    argv = [MOEWEAVE, "convert", DEMO, str(tmp_path / "store"), "--bits-map", str(fifo)]
    with interruptible_popen(argv, env=QUIET) as process:
        writer, stand_in = _write_end_once_read(fifo, process)
        process.send_signal(signal.SIGINT)
        os.close(writer)
        out, err = process.communicate(timeout=300)
    for descriptor in stand_in:
        os.close(descriptor)
    assert (process.returncode, out, err) == (
        128 + signal.SIGINT,
        "",
        "moeweave convert: interrupted\n",
    )
    assert not (tmp_path / "store").exists()
