"""``qdask.deploy.guard``: which lines of a script count as guarded by ``if __name__ == "__main__":``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from qdask.deploy.guard import _guarded_lines


def _ranges(tmp_path, source: str):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(source))
    return _guarded_lines(str(path), path.stat().st_mtime_ns)


def test_guard_bodies_are_found_in_either_spelling(tmp_path):
    ranges = _ranges(tmp_path, """\
        import qdask
        def main():
            return qdask.QuantumCluster()
        if __name__ == "__main__":
            main()
            print("done")
        if '__main__' == __name__: main()
        if __name__ != "__main__":
            main()
        """)
    assert ranges == ((5, 6), (7, 7))


def test_a_script_that_cannot_be_parsed_is_not_judged(tmp_path):
    assert _ranges(tmp_path, "def (:\n") is None


def test_guarded_call_through_a_function_passes_and_an_unguarded_one_fails_at_once(tmp_path):
    # Not starting a cluster: inproc needs no guard, so the check alone is exercised with threads.
    body = textwrap.dedent("""\
        from qdask.deploy.guard import check_main_guarded
        def main():
            check_main_guarded("QuantumCluster()")
            print("ok")
        """)
    guarded = tmp_path / "guarded.py"
    guarded.write_text(body + 'if __name__ == "__main__":\n    main()\n')
    unguarded = tmp_path / "unguarded.py"
    unguarded.write_text(body + "main()\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ok = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    t0 = time.perf_counter()
    bad = subprocess.run([sys.executable, str(unguarded)], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 1 and time.perf_counter() - t0 < 10
    assert "unguarded.py, line 5, outside an `if __name__ == \"__main__\":` block" in bad.stderr, bad.stderr
