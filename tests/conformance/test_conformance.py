"""SPIRE's own KeyManager conformance suite against the frozen binary.

The Go side, conformance_test.go (a Go module of its own, next to this file), runs keymanagertest from
SPIRE v1.15.3, unmodified, on the binary loaded as spire-server loads an external plugin: SPIRE's catalog
starts it from a `plugins { KeyManager ... }` block (plugin_cmd, plugin_checksum, plugin_data) and binds it
through the KeyManager v1 facade. It runs for two profiles (what SPIRE's built-in aws_kms declares
unsupported, and nothing unsupported) and both naming schemes.

One `go test -json` run covers everything; each pytest test checks one (profile, naming scheme), and a
failure names the failing Go subtests with their output. Go compiles with the caches, cgo settings and
-trimpath of scripts/install_spire.sh, so the SPIRE packages compiled for spire-server v1.15.3 are reused
(cold, this compile takes minutes on two cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.gocache import go_cache_env
from tests.support.kms_emulator import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, EmulatorProcess

pytestmark = pytest.mark.binary

HERE = Path(__file__).resolve().parent
ROOT_TEST = "TestConformance"
# The names conformance_test.go gives its subtests.
PROFILES = ("builtin-profile", "full")
SCHEMES = ("community", "builtin")
GO_TEST_TIMEOUT = "30m"
# A little longer than go test's own timeout, which fails the run with the stuck tests named.
SUBPROCESS_TIMEOUT = 35 * 60
MIN_GO_MINOR = 26
# Per failing Go test, the last lines of its output shown; and at most this many failing tests.
OUTPUT_LINES = 60
MAX_FAILURES_SHOWN = 30


@dataclass
class GoTest:
    name: str
    outcome: str | None = None  # "pass", "fail" or "skip"; None: started but never finished
    elapsed: float | None = None
    output: list[str] = field(default_factory=list)


@dataclass
class GoRun:
    command: list[str]
    returncode: int
    seconds: float
    timed_out: bool
    tests: dict[str, GoTest]
    # Output no test owns: the package's own lines, build output, lines that are not JSON events.
    package_output: list[str]
    package_outcome: str | None
    # How long the test binary ran (the rest of `seconds` is go's build), when the package finished.
    package_elapsed: float | None
    stderr: str

    def under(self, prefix: str) -> list[GoTest]:
        return [test for name, test in self.tests.items() if name == prefix or name.startswith(prefix + "/")]

    def leaves(self, prefix: str) -> list[GoTest]:
        """The tests under prefix that have no subtests: the individual checks."""
        tests = self.under(prefix)
        parents = {test.name.rsplit("/", 1)[0] for test in tests if "/" in test.name}
        return [test for test in tests if test.name not in parents]

    def counts(self, prefix: str) -> dict[str, int]:
        counts = {"passed": 0, "failed": 0, "skipped": 0, "unfinished": 0}
        key = {"pass": "passed", "fail": "failed", "skip": "skipped", None: "unfinished"}
        for test in self.leaves(prefix):
            counts[key.get(test.outcome, "failed")] += 1
        return counts

    def describe(self) -> str:
        """How the run as a whole went, for failures that no single Go test explains."""
        status = "timed out" if self.timed_out else f"exit status {self.returncode}"
        lines = [f"`{' '.join(self.command)}` in {HERE}: {status} after {self.seconds:.0f} s"]
        if self.package_output:
            lines += ["package output (last lines):", *_tail(self.package_output, OUTPUT_LINES)]
        if self.stderr.strip():
            lines += ["stderr (last lines):", *_tail(self.stderr.splitlines(), OUTPUT_LINES)]
        return "\n".join(lines)


def _tail(lines: list[str], n: int) -> list[str]:
    if len(lines) <= n:
        return lines
    return [f"... ({len(lines) - n} lines before)", *lines[-n:]]


def parse_events(stdout: str) -> tuple[dict[str, GoTest], list[str], str | None, float | None]:
    """`go test -json` events: per test its outcome and output; the output no test owns; the package's
    outcome and elapsed time."""
    tests: dict[str, GoTest] = {}
    package_output: list[str] = []
    package_outcome: str | None = None
    package_elapsed: float | None = None
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            package_output.append(line)
            continue
        if not isinstance(event, dict):
            package_output.append(line)
            continue
        action = event.get("Action")
        output = str(event.get("Output", "")).rstrip("\n")
        name = event.get("Test")
        if not name:
            if action in ("output", "build-output"):
                package_output.append(output)
            elif action in ("pass", "fail", "skip"):
                package_outcome = action
                package_elapsed = event.get("Elapsed")
            elif action == "build-fail":
                package_output.append(f"build of {event.get('ImportPath', '?')} failed")
            continue
        test = tests.setdefault(name, GoTest(name))
        if action == "output":
            test.output.append(output)
        elif action in ("pass", "fail", "skip"):
            test.outcome = action
            test.elapsed = event.get("Elapsed")
    return tests, package_output, package_outcome, package_elapsed


def go_env(binary: Path, endpoint: str) -> dict[str, str]:
    """The environment of `go test`: scripts/install_spire.sh's Go caches and build settings, so its compiled
    packages are reused, and the conformance suite's inputs. The Go test isolates the plugins' environment
    further itself (no outside AWS, Python or proxy variables; a private TMPDIR)."""
    drop = ("AWS_", "PYTHON")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    for name in ("GOOS", "GOARCH", "GOBIN", "GOFLAGS"):
        env.pop(name, None)
    env.update(go_cache_env())
    env.update(
        CGO_ENABLED="1",
        CC=os.environ.get("MUSL_CC", "musl-gcc"),
        AKM_PLUGIN_BINARY=str(binary),
        AKM_KMS_ENDPOINT=endpoint,
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=DUMMY_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=DUMMY_SECRET_ACCESS_KEY,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


def go_command(env: dict[str, str]) -> str:
    """The go command (on PATH, else /usr/local/go/bin/go), checked to be Go >= 1.26."""
    go = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    try:
        result = subprocess.run(
            [go, "env", "GOVERSION"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    except OSError as exc:
        pytest.fail(f"no working Go toolchain at {go} ({exc}): Go >= 1.26 is needed", pytrace=False)
    version = result.stdout.strip()
    match = re.match(r"go1\.(\d+)", version)
    if result.returncode != 0 or match is None or int(match.group(1)) < MIN_GO_MINOR:
        pytest.fail(
            f"{go} is {version or 'not working'} ({result.stderr.strip()}): Go >= 1.{MIN_GO_MINOR} is needed",
            pytrace=False,
        )
    if shutil.which(env["CC"], path=env.get("PATH")) is None:
        pytest.fail(f"no {env['CC']}: install musl-tools (the build uses cgo with musl)", pytrace=False)
    return go


def run_go_test(binary: Path, endpoint: str) -> GoRun:
    env = go_env(binary, endpoint)
    go = go_command(env)
    command = [
        go,
        "test",
        "-count=1",
        "-json",
        "-trimpath",
        f"-timeout={GO_TEST_TIMEOUT}",
        # Linked as spire-server is: statically, with musl (link flags do not change the compile cache).
        "-ldflags=-linkmode=external -extldflags=-static",
        "./...",
    ]
    start = time.monotonic()
    timed_out = False
    # A session of its own, so that on a timeout the whole tree (go, the test binary, its plugins) can go.
    with subprocess.Popen(
        command,
        cwd=HERE,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
    tests, package_output, package_outcome, package_elapsed = parse_events(stdout)
    return GoRun(
        command=command,
        returncode=process.returncode,
        seconds=time.monotonic() - start,
        timed_out=timed_out,
        tests=tests,
        package_output=package_output,
        package_outcome=package_outcome,
        package_elapsed=package_elapsed,
        stderr=stderr,
    )


class _Summary:
    """Prints the counts per profile and naming scheme at the end of the session, past pytest's capture."""

    def __init__(self, run: GoRun) -> None:
        self.run = run

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        run = self.run
        terminalreporter.write_sep("-", "SPIRE v1.15.3 keymanager conformance suite (leaf subtests)")
        for profile in PROFILES:
            for scheme in SCHEMES:
                counts = run.counts(f"{ROOT_TEST}/{profile}/{scheme}")
                text = ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "passed")
                terminalreporter.write_line(f"{profile:<16} {scheme:<10} {text}")
        status = "timed out" if run.timed_out else f"exit status {run.returncode}"
        if run.package_elapsed is None:
            timing = f"{run.seconds:.1f} s"
        else:
            build = run.seconds - run.package_elapsed
            timing = f"{run.seconds:.1f} s (build {build:.1f} s, tests {run.package_elapsed:.1f} s)"
        terminalreporter.write_line(f"go test: {timing}, {status}")


@pytest.fixture(scope="module")
def go_run(request: pytest.FixtureRequest, plugin_binary: Path, emulator_process: EmulatorProcess) -> GoRun:
    """One `go test` of the whole suite against the shared emulator, reset first. Every key manager the suite
    creates has a naming space of its own, so they need no reset between them."""
    emulator_process.control().reset()
    run = run_go_test(plugin_binary, emulator_process.url)
    manager = request.config.pluginmanager
    if manager.get_plugin("conformance-summary") is None:
        manager.register(_Summary(run), "conformance-summary")
    return run


def _format_failures(run: GoRun, prefix: str, failed: list[GoTest]) -> str:
    # Leaves first (they hold the assertion messages), then the tests above them, which hold the plugin's log.
    leaves = {test.name for test in run.leaves(prefix)}
    failed = sorted(failed, key=lambda test: (test.name not in leaves, test.name))
    lines = [f"{len(failed)} Go tests under {prefix} did not pass:"]
    lines += [f"  {test.name}: {test.outcome or 'did not finish'}" for test in failed]
    for test in failed[:MAX_FAILURES_SHOWN]:
        output = [line for line in test.output if not line.lstrip().startswith(("=== RUN", "=== PAUSE"))]
        lines += ["", f"--- {test.name} ({test.outcome or 'did not finish'}), output:"]
        lines += _tail(output, OUTPUT_LINES) or ["(none)"]
    if len(failed) > MAX_FAILURES_SHOWN:
        lines.append(f"\n(output of {len(failed) - MAX_FAILURES_SHOWN} more failing tests not shown)")
    lines += ["", run.describe()]
    return "\n".join(lines)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("profile", PROFILES)
def test_conformance(go_run: GoRun, profile: str, scheme: str) -> None:
    prefix = f"{ROOT_TEST}/{profile}/{scheme}"
    group = go_run.tests.get(prefix)
    if group is None:
        root = go_run.tests.get(ROOT_TEST)
        detail = "" if root is None else "\n" + "\n".join(_tail(root.output, OUTPUT_LINES))
        pytest.fail(f"Go test {prefix} never ran{detail}\n\n{go_run.describe()}", pytrace=False)

    failed = [test for test in go_run.under(prefix) if test.outcome != "pass"]
    counts = go_run.counts(prefix)
    print(f"{profile} {scheme}: {counts}")
    if failed:
        pytest.fail(_format_failures(go_run, prefix, failed), pytrace=False)
    assert counts["passed"] > 0, f"no Go subtest ran under {prefix}"


def test_whole_run_passed(go_run: GoRun) -> None:
    """Nothing outside the (profile, scheme) groups failed: the build, the package, the top-level test."""
    root = go_run.tests.get(ROOT_TEST)
    problems = []
    if go_run.returncode != 0 or go_run.timed_out:
        problems.append("go test did not succeed")
    if go_run.package_outcome != "pass":
        problems.append(f"the package's outcome is {go_run.package_outcome or 'missing'}")
    if root is None or root.outcome != "pass":
        problems.append(f"{ROOT_TEST}: {'never ran' if root is None else root.outcome or 'did not finish'}")
    groups = {f"{ROOT_TEST}/{profile}/{scheme}" for profile in PROFILES for scheme in SCHEMES}
    ran = {name for name in go_run.tests if name.count("/") == 2}
    if ran != groups:
        problems.append(f"the (profile, scheme) groups that ran are {sorted(ran)}, expected {sorted(groups)}")
    if problems:
        root_output = [] if root is None else ["", f"{ROOT_TEST} output:", *_tail(root.output, OUTPUT_LINES)]
        pytest.fail("\n".join([*problems, *root_output, "", go_run.describe()]), pytrace=False)
