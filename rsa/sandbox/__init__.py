"""Local sandbox that runs untrusted Python programs against test cases (LiveCodeBench style).

One call of `Sandbox.run(program, tests)` starts ONE fresh sandbox for the program. Inside it a small trusted
harness (`rsa/sandbox/harness.py`, written into the sandbox) forks a fresh child process per test case; the child
runs the program (a stdin/stdout program, or a module whose `fn_name` is called with JSON arguments). The harness
sends each child's raw output back to the parent; the PARENT compares it with the expected output. The
expected outputs never enter the sandbox.

Isolation modes (reported in `RunResult.mode`):

* ``"bwrap"`` (default when bubblewrap works): the program runs as an unprivileged uid/gid with no
  supplementary groups and no capabilities, inside `bwrap --unshare-user --disable-userns --unshare-all
  --dev /dev --remount-ro /dev --tmpfs /dev/shm --proc /proc --tmpfs /tmp --die-with-parent --clearenv
  --new-session` on an empty, read-only root where only what a Python program needs is bound read-only: /usr
  (with the /bin, /sbin, /lib* links), the dynamic loader's and time zone's /etc files, and the interpreter's
  own directories (its prefix, the virtual environment and site-packages). The rest of the host (/home, /root,
  /run, /var, the host /tmp, /etc, /sys, the caller's files, and the UNIX sockets in any of them) does not exist
  there; the caller's working directory, `hidden_paths` and `hide_from_programs` paths are covered even where
  they lie inside a shown directory. A private size-limited /tmp and /dev/shm are its only writable places
  (the working directory /tmp/work starts empty; both vanish with the sandbox; /dev itself is read-only), its
  own PID/IPC/UTS/network namespaces (loopback only), an empty environment and no way to create further user
  namespaces. As root, each concurrent sandbox gets its own unused uid (61000 + n, claimed
  with a lock file so several processes never share one); an outer root bwrap builds that view, then
  `setpriv` drops to the uid before the inner, unprivileged bwrap starts. As a normal user the program runs
  under the caller's own uid (it cannot switch), in a single unprivileged bwrap with the same flags.
* ``"rlimits"`` (fallback, logged as a WARNING): when bwrap or user namespaces are unavailable, the harness
  runs as a plain subprocess with rlimits only, in an empty temporary directory, with a scrubbed
  environment, as the dedicated unused uid when the caller is root (otherwise as the caller).

Limits applied to every test process (both modes): CPU time (RLIMIT_CPU), wall time (the harness kills the
test's process group, and in bwrap mode every sandbox process, at `timeout_s`; the parent kills the whole
sandbox at the overall deadline), address space (RLIMIT_AS), process count (RLIMIT_NPROC), file size and
therefore output size (RLIMIT_FSIZE; output beyond `max_output_bytes` fails the test), open files, no core
dumps. Tests run in parallel over a bounded pool of `max_workers` sandboxes. The host folder of each run (program,
spec, inputs) is removed when the run ends; folders left by a grader killed with -9 are removed when the next
`Sandbox` starts (`clean_leftovers`: only folders whose owning process is dead, never a live grader's).

What it protects against (bwrap mode): infinite loops, fork bombs, memory bombs, huge outputs, writes to
the host file system, reading host files outside the system and interpreter directories (the grader's data
included), connecting to host UNIX sockets, reading the parent's environment (tokens, keys), network access, signalling or
ptracing the parent or any host process, host processes left behind, and tampering with the grading:
`sys.exit(0)` before the tests, closing stdout, monkeypatching the in-sandbox harness, forging result
records or returning objects with a rigged `__eq__` can only change what the program reports as ITS OWN
output, and that output is compared against expected outputs the program never sees.

What it does NOT protect against: kernel exploits (it is a namespace sandbox, not a VM; no seccomp filter);
reading world-readable files inside the shown system and interpreter directories (do not keep test data
there, or list it in `hidden_paths`); CPU/memory contention with the host within the limits; memory used by the
private /tmp and /dev/shm (bounded by `tmpfs_mb` and `shm_mb`, not counted in RLIMIT_AS); timing side channels.
In "rlimits" mode there is NO file-system, network or PID isolation: the program can read what its uid can read
(world-readable test data and the grader's input included), connect to any UNIX socket its uid may use, open
network connections and write to world-writable places such as the host /tmp and /dev/shm; run as the caller's uid
(non-root fallback) it can also signal the caller. Use that mode only for trusted code.

Layout (each module's docstring says what it owns; the public names are re-exported below): `isolation` (host
side: the bwrap command and namespaces, the view from an empty root, the scrubbed environment, the sandbox uid,
`Limits`), `grading` (host side: `TestSuite`, `RunResult`, output comparison), `cleanup` (host side: run folders
and the removal of those left by killed graders), `runner` (host side: the `Sandbox`, mode selection and the run
loop), `harness` (the trusted script run inside the sandbox; stdlib only, read through `importlib.resources` and
never imported by the grading process at run time).
"""

from rsa.sandbox.cleanup import clean_leftovers
from rsa.sandbox.grading import RunResult, TestOutcome, TestSuite, result_matches, stdout_matches
from rsa.sandbox.isolation import Limits, SandboxError, hide_from_programs
from rsa.sandbox.runner import Sandbox, default_sandbox

__all__ = [
    "Limits",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "TestOutcome",
    "TestSuite",
    "clean_leftovers",
    "default_sandbox",
    "hide_from_programs",
    "result_matches",
    "stdout_matches",
]
