"""What a test that counts child processes leaves out."""

import os
import signal

import psutil


def is_helper(p: psutil.Process) -> bool:
    """Whether ``p`` is one of multiprocessing's helpers of this interpreter.

    Python starts them with the first worker process and keeps them until
    exit: the resource tracker, and the forkserver that local workers are
    forked from (qdask.deploy.forkserver). Forked workers carry the server's
    command line too; the server is the one whose parent is this process.
    """
    cmdline = " ".join(p.cmdline())
    return "resource_tracker" in cmdline or ("multiprocessing.forkserver" in cmdline and p.ppid() == os.getpid())


def ctrl_c_ready() -> None:
    """``preexec_fn`` of a child that a test stops with SIGINT, as Ctrl-C would.

    A shell starts background jobs with SIGINT ignored, children inherit that,
    and Python then installs no KeyboardInterrupt handler: a suite run as
    ``make test &`` would wait for good on a child that never sees the signal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
