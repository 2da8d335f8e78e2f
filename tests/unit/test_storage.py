"""Durable writes and the writers' lock, with real processes: a writer is SIGKILLed mid-write, not simulated."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_vllm import storage
from pytest_vllm.errors import StorageError

REPO = Path(__file__).resolve().parents[2]

# Starts replacing the file, says so once its temp file holds a megabyte, then hangs until killed.
HANGING_WRITER = """
import sys, time
from pathlib import Path
from pytest_vllm import storage

def fill(out):
    out.write(b"x" * 1_000_000)
    out.flush()
    print("writing", flush=True)
    time.sleep(600)

storage.atomic_write(Path(sys.argv[1]), fill)
"""

# Rewrites the file with 20 MB texts of one repeated letter as fast as it can, until killed.
BUSY_WRITER = """
import sys
from pathlib import Path
from pytest_vllm import storage

print("writing", flush=True)
for n in range(10_000):
    storage.atomic_write_text(Path(sys.argv[1]), "abcdefgh"[n % 8] * 20_000_000)
"""


def start(script: str, target: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    return child


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL


def temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{storage.TEMP_SUFFIX}"))


def test_a_writer_killed_mid_write_leaves_the_old_file_and_the_next_write_removes_its_temp(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    storage.atomic_write_text(target, '{"old": true}\n')
    kill(start(HANGING_WRITER, target))
    assert target.read_text() == '{"old": true}\n'
    [leftover] = temps(tmp_path)  # the kill landed mid-write: a megabyte sat in the temp file
    assert leftover.stat().st_size == 1_000_000
    storage.atomic_write_text(target, '{"new": true}\n')
    assert target.read_text() == '{"new": true}\n'
    assert temps(tmp_path) == []


def test_a_writer_killed_at_any_moment_leaves_one_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "big.txt"
    storage.atomic_write_text(target, "old")
    mid_write = 0
    for attempt in range(20):  # about half the kills land while a temp file is being filled
        child = start(BUSY_WRITER, target)
        time.sleep((0.0, 0.15, 0.3, 0.45)[attempt % 4])
        kill(child)
        text = target.read_text()
        assert text == "old" or (len(text) == 20_000_000 and text == text[0] * len(text)), attempt
        mid_write += bool(temps(tmp_path))
        storage.remove_stale_temps(target)
        assert temps(tmp_path) == []
        if mid_write >= 2:
            break
    assert mid_write >= 2, "no kill landed mid-write: the writes were too fast to test"


def test_a_failed_write_removes_its_temp_file_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    storage.atomic_write_json(target, {"run": 1})
    # json.dump streams: the big string reaches the temp file before the object that cannot be encoded
    with pytest.raises(TypeError, match="not JSON serializable"):
        storage.atomic_write_json(target, {"log": "x" * 1_000_000, "bad": object()})
    assert target.read_text() == '{"run": 1}\n'
    assert temps(tmp_path) == []


def test_a_rewrite_keeps_the_files_permissions(tmp_path: Path) -> None:
    target = tmp_path / "summary.md"
    storage.atomic_write_text(target, "one")
    target.chmod(0o640)
    storage.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_only_a_dead_writers_temp_file_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = storage.temp_path(target, int(gone.stdout)), storage.temp_path(target)  # live: this process
    dead.write_text("half"), live.write_text("in progress")
    assert storage.remove_stale_temps(target) == [dead]
    assert temps(tmp_path) == [live]


def test_a_held_lock_makes_another_writer_wait_then_time_out_with_the_file_named(tmp_path: Path) -> None:
    target = tmp_path / "b.json"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from pytest_vllm import storage\nwith storage.locked(Path(sys.argv[1])):\n"
                               "    print('held', flush=True); time.sleep(600)", str(target)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(StorageError, match=f"{target} has been locked by another process"):
            with storage.locked(target, timeout_s=0.3):
                pass
        assert time.monotonic() - started >= 0.3
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    with storage.locked(target, timeout_s=5):  # a killed holder's lock is free (flock goes with the process)
        pass
