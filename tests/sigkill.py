"""Kill-at-a-checkpoint for the resume tests: a tool run SIGKILLed, with every process it started, once a file
(its first periodic checkpoint) exists."""
import os
import signal
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sigkill_once_exists(command, path, log_path, env, timeout=300):
    """Starts ``command`` in its own process group (logging to ``log_path``), SIGKILLs the group (launcher, ranks,
    loader workers) once ``path`` exists, and asserts that the kill, not the end of the run, stopped it."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.time() + timeout
        while not os.path.exists(path) and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"{command[1]} ended before it could be killed (log {log_path})"
