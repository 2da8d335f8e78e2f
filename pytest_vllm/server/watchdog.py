"""A tiny supervisor between pytest and one vLLM server, so no server outlives pytest.

pytest starts ``python -m pytest_vllm.server.watchdog --lifeline FD --log LOG -- CMD...`` in a
new session. The watchdog:

* runs CMD (the vLLM server) with its output in LOG, in the watchdog's own process group;
* becomes a child subreaper, so vLLM's engine and worker processes stay its descendants even
  if the API server dies first;
* holds the read end of a pipe whose write end only pytest holds: when pytest exits for any
  reason (teardown, Ctrl-C, SIGKILL, a crash), the pipe reads EOF and the watchdog stops the
  whole tree: SIGTERM, a grace period, then SIGKILL. ``atexit`` alone cannot do this: a
  SIGKILLed pytest runs no exit handlers.

It exits with the server's exit code (or 128+signal), so pytest can tell a crash during boot.
Only the standard library and psutil are imported: it must start in milliseconds.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def stop_tree(grace: float) -> None:
    """SIGTERM every descendant, wait up to ``grace`` seconds, SIGKILL what is left."""
    me = psutil.Process()
    victims = me.children(recursive=True)
    for proc in victims:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=grace)
    # Processes forked while we waited (or reparented to us) are swept too.
    alive += [p for p in me.children(recursive=True) if p not in alive]
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="supervise one vLLM server for pytest-vllm")
    parser.add_argument("--lifeline", type=int, required=True, help="fd whose EOF means pytest is gone")
    parser.add_argument("--log", required=True, help="file that receives the server's stdout and stderr")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no server command given")

    become_subreaper()
    stopping = threading.Event()

    def request_stop(*_: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_stop)

    def watch_lifeline() -> None:
        try:
            while os.read(args.lifeline, 1024):
                pass
        except OSError:
            pass
        stopping.set()  # EOF: pytest is gone

    threading.Thread(target=watch_lifeline, daemon=True).start()
    parent = os.getppid()

    with open(args.log, "ab", buffering=0) as log:
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        while not stopping.is_set():
            code = server.poll()
            if code is not None:
                stop_tree(grace=2.0)  # the server's own children, if it left any
                return code if code >= 0 else 128 - code
            if os.getppid() != parent:  # reparented: pytest died (backup for the lifeline)
                break
            stopping.wait(0.2)
        log.write(f"\n[pytest-vllm watchdog] stopping the server (grace {args.grace:.0f}s)\n".encode())
        started = time.monotonic()
        stop_tree(grace=args.grace)
        log.write(f"[pytest-vllm watchdog] stopped in {time.monotonic() - started:.1f}s\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
