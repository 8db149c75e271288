"""``edgenode rollout``: health-gated rolling upgrade of an edgenode fleet.

Copies a package (an edgenode .deb or single-file .pyz) to each host, installs it, and
waits for the host's ``/healthz`` to report ``status: ok`` with the package's version
before moving on: canary host(s) first, then batches. The first host that does not come
back healthy stops the rollout; it can be rolled back to a previous package, and the
remaining hosts are never touched.

After a host is installed (and, with ``--health``, its health URL answers ok on the new
version), the gate runs on the host itself: by default ``edgenode selftest``, which waits
for the node the host's own config and data directory describe, deploys and invokes a
canary worker and runs a sandbox command. Only then does the rollout move on.

Every remote action is a command template, split with shlex and filled in per argument,
then run without a shell, so a host name can never become shell syntax. The defaults
suit a real fleet reached over ssh; other templates drive a local test fleet.

    edgenode rollout dist/edgenode_0.2.0_amd64.deb --hosts-file fleet.txt --canary 1 --batch 5 \\
        --rollback-package dist/edgenode_0.1.0_amd64.deb
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx

from edgenode.cli.output import emit, json_mode

DEFAULT_COPY = "scp -q {package} {host}:{remote}"
DEFAULT_RUN = "ssh -o BatchMode=yes {host} {command}"
DEFAULT_REMOTE = "/var/tmp/{name}"
#: No health URL polled from here by default: the shipped config listens on the host's loopback
#: only, so the gate checks health on the host (``edgenode selftest`` reads the node's URL there).
DEFAULT_HEALTH = ""
#: The gate run on each upgraded host (through --run) before the rollout moves on.
DEFAULT_GATE = ("sudo edgenode --data /var/lib/edgenode selftest --expect-version {version} --health-timeout 120",)
DEFAULT_INSTALL = {
    "deb": ("sudo dpkg -i {remote}",),
    "pyz": ("sudo install -m 0755 {remote} /usr/lib/edgenode/edgenode.pyz", "sudo systemctl restart edgenode"),
}

# Which placeholders each template may use; anything else is a typo worth failing on early.
PLACEHOLDERS = {
    "copy": {"package", "host", "address", "remote", "name"},
    "run": {"host", "address", "command", "remote", "name"},
    "install": {"host", "address", "remote", "name"},
    "remote": {"host", "address", "name"},
    "health": {"host", "address"},
    "gate": {"host", "address", "version", "remote", "name"},
}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]*)\}")

# An optional ssh user, then a DNS name or IPv4 address: no leading dash (it would read as
# an option to ssh/scp), no whitespace, colons, slashes or shell syntax.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?:(?P<user>[A-Za-z_][A-Za-z0-9_.-]{{0,31}})@)?(?P<address>{_LABEL}(?:\.{_LABEL})*)$")

UPGRADED, FAILED, ROLLED_BACK, ROLLBACK_FAILED, NOT_TOUCHED = (
    "upgraded", "failed", "rolled back", "rollback failed", "not touched")


class RolloutError(Exception):
    """A step on one host failed; the message says which and why."""


def validate_host(host: str) -> str:
    """Return ``host`` if it is ``[user@]name`` with a DNS name or IPv4 address; else raise ValueError."""
    if len(host) > 253 or not _HOST.match(host):
        raise ValueError(f"not a valid host name: {host!r} (expected [user@]hostname or an IPv4 address)")
    return host


def address_of(host: str) -> str:
    """The host without its ssh user, for URLs."""
    return host.rpartition("@")[2]


def check_template(kind: str, template: str) -> None:
    """Raise ValueError if ``template`` uses a placeholder that ``kind`` does not offer."""
    for name in _PLACEHOLDER.findall(template):
        if name not in PLACEHOLDERS[kind]:
            allowed = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS[kind]))
            raise ValueError(f"--{kind} template {template!r}: unknown placeholder {{{name}}} (use {allowed})")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace each ``{name}`` in one string; no format-spec or attribute syntax is honoured."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def render(template: str, values: dict[str, str]) -> list[str]:
    """Split ``template`` with shlex, then fill each argument: a value stays one argument."""
    return [fill(arg, values) for arg in shlex.split(template)]


def package_kind(path: Path) -> str:
    """``deb`` or ``pyz`` from the file name."""
    kind = path.suffix.lstrip(".")
    if kind not in DEFAULT_INSTALL:
        raise ValueError(f"{path}: expected a .deb or .pyz package")
    return kind


def read_version(path: Path, kind: str) -> str:
    """The version a package will report: its control field, or what the zipapp prints for --version."""
    if kind == "deb":
        argv = ["dpkg-deb", "--field", str(path), "Version"]
    else:
        argv = [sys.executable, "-I", str(path), "--version"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"cannot read the version of {path}: {exc}") from exc
    words = result.stdout.split()
    if result.returncode != 0 or not words:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"cannot read the version of {path} ({shlex.join(argv)}: {detail}); "
                         "pass --expect-version")
    return words[-1]  # "edgenode, version 0.1.0" or "0.1.0"


def plan(hosts: list[str], canary: int, batch: int) -> list[list[str]]:
    """The canary batch (if any), then the remaining hosts in batches of ``batch``."""
    batches = [hosts[:canary]] if canary else []
    rest = hosts[canary:]
    batches += [rest[i:i + batch] for i in range(0, len(rest), batch)]
    return [b for b in batches if b]


@dataclass
class Release:
    """A package file and the version a host reports once it runs it."""

    path: Path
    kind: str
    version: str


@dataclass
class Rollout:
    """The templates and limits of one rollout; ``upgrade`` runs it, ``deploy`` does one host."""

    copy: str
    run: str
    install: tuple[str, ...]
    remote: str
    health: str
    health_timeout: float
    command_timeout: float
    dry_run: bool = False
    gate: tuple[str, ...] = ()
    interval: float = 0.5
    echo: Callable[[str], None] = click.echo
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, host: str, message: str) -> None:
        with self._lock:  # batch members report from their own threads
            self.echo(f"[{host}] {message}")

    def values(self, host: str, release: Release) -> dict[str, str]:
        base = {"host": host, "address": address_of(host), "name": release.path.name}
        return {**base, "package": str(release.path), "remote": fill(self.remote, base)}

    def commands(self, host: str, release: Release) -> list[list[str]]:
        """The copy command, then one run command per install step, as argument lists."""
        values = self.values(host, release)
        steps = [render(self.copy, values)]
        for step in self.install:
            steps.append(render(self.run, {**values, "command": shlex.join(render(step, values))}))
        return steps

    def health_url(self, host: str) -> str:
        return fill(self.health, {"host": host, "address": address_of(host)})

    def execute(self, host: str, argv: list[str]) -> None:
        self.say(host, "$ " + shlex.join(argv))
        if self.dry_run:
            return
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=self.command_timeout)
        except subprocess.TimeoutExpired as exc:
            raise RolloutError(f"{argv[0]} timed out after {self.command_timeout:g}s") from exc
        except OSError as exc:
            raise RolloutError(f"{argv[0]}: {exc.strerror or exc}") from exc
        if result.returncode != 0:
            lines = (result.stderr + result.stdout).strip().splitlines()
            raise RolloutError(f"{argv[0]} exited with {result.returncode}" + (f": {lines[-1]}" if lines else ""))

    def wait_healthy(self, host: str, version: str) -> None:
        """Poll the host's health URL until it reports ok and ``version``; RolloutError after the timeout."""
        url = self.health_url(host)
        self.say(host, f"wait for {url} to report ok, version {version}")
        if self.dry_run:
            return
        deadline = time.monotonic() + self.health_timeout
        last = "no answer"
        with httpx.Client(timeout=min(5.0, self.health_timeout)) as client:
            while True:
                try:
                    response = client.get(url)
                    body = response.json() if response.status_code == 200 else {}
                    body = body if isinstance(body, dict) else {"status": repr(body)[:40]}
                    if body.get("status") == "ok" and body.get("version") == version:
                        self.say(host, f"healthy, version {version}")
                        return
                    last = (f"status {body.get('status')!r}, version {body.get('version')!r}" if body
                            else f"HTTP {response.status_code}")
                except (httpx.HTTPError, ValueError) as exc:
                    last = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                if time.monotonic() >= deadline:
                    raise RolloutError(f"not healthy within {self.health_timeout:g}s (last: {last})")
                time.sleep(self.interval)

    def gate_commands(self, host: str, release: Release) -> list[list[str]]:
        """The gate's steps, each run on the host through the run template."""
        values = {**self.values(host, release), "version": release.version}
        return [render(self.run, {**values, "command": shlex.join(render(step, values))}) for step in self.gate]

    def deploy(self, host: str, release: Release) -> None:
        """Copy, install, health-check and gate one release on one host."""
        for argv in self.commands(host, release):
            self.execute(host, argv)
        if self.health:
            self.wait_healthy(host, release.version)
        for argv in self.gate_commands(host, release):
            try:
                self.execute(host, argv)
            except RolloutError as exc:
                raise RolloutError(f"gate failed: {exc}") from None
        if self.gate:
            self.say(host, f"gate passed on version {release.version}")

    def upgrade(self, hosts: list[str], batches: list[list[str]], release: Release, rollback: Release | None,
                *, canary: bool = True) -> dict[str, tuple[str, str]]:
        """Roll ``release`` out batch by batch (the first is the canary); returns host -> (status, detail)."""
        results = {host: (NOT_TOUCHED, "") for host in hosts}

        def one(host: str) -> tuple[str, str]:
            try:
                self.deploy(host, release)
                return UPGRADED, release.version
            except RolloutError as exc:
                self.say(host, f"FAILED: {exc}")
                if rollback is None:
                    return FAILED, str(exc)
                self.say(host, f"rolling back to {rollback.path.name} ({rollback.version})")
                try:
                    self.deploy(host, rollback)
                    return ROLLED_BACK, f"{exc}; back on {rollback.version}"
                except RolloutError as again:
                    self.say(host, f"ROLLBACK FAILED: {again}")
                    return ROLLBACK_FAILED, f"{exc}; rollback: {again}"

        for number, members in enumerate(batches, 1):
            label = "canary" if canary and number == 1 else f"batch {number - 1 if canary else number}"
            self.echo(f"== {label}: {', '.join(members)}")
            with ThreadPoolExecutor(max_workers=len(members)) as pool:
                for host, outcome in zip(members, pool.map(one, members), strict=True):
                    results[host] = outcome
            if any(results[h][0] != UPGRADED for h in members):
                self.echo(f"== stopping: {label} did not come back healthy")
                break
        return results


def table(results: dict[str, tuple[str, str]]) -> str:
    """Host, status and detail in aligned columns."""
    rows = [("HOST", "STATUS", "DETAIL"), *((h, s, d) for h, (s, d) in results.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in rows)


def read_hosts(args: Iterable[str], files: Iterable[str]) -> list[str]:
    """Hosts from arguments and files (one per line, ``#`` comments), validated and de-duplicated."""
    hosts: list[str] = list(args)
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError as exc:
            raise click.BadParameter(f"{name}: {exc.strerror}", param_hint="--hosts-file") from exc
        hosts += [h for line in text.splitlines() if (h := line.split("#", 1)[0].strip())]
    if not hosts:
        raise click.UsageError("no hosts: give them as arguments or with --hosts-file")
    for host in hosts:
        try:
            validate_host(host)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="HOSTS") from exc
    return list(dict.fromkeys(hosts))


def load_release(path: Path, version: str | None, hint: str) -> Release:
    """A package and the version it should report, or a usage error naming ``hint``."""
    try:
        kind = package_kind(path)
        return Release(path.resolve(), kind, version or read_version(path, kind))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from exc


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("hosts", nargs=-1)
@click.option("--hosts-file", "hosts_files", multiple=True, metavar="FILE",
              help="Read hosts from FILE, one per line ('#' starts a comment); may be repeated.")
@click.option("--canary", default=1, show_default=True, type=click.IntRange(min=0),
              help="Upgrade this many hosts first, on their own, before any batch.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Then upgrade this many hosts at a time; each batch must be healthy before the next.")
@click.option("--expect-version", metavar="VERSION",
              help="Version /healthz must report [default: read from PACKAGE with dpkg-deb --field, "
                   "or PACKAGE --version for a .pyz].")
@click.option("--health-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait after install for a host's /healthz to report ok and the version.")
@click.option("--rollback-package", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="On failure, install this package (the previous release) on the failed host(s).")
@click.option("--rollback-version", metavar="VERSION",
              help="Version the rollback package reports [default: read from it like --expect-version].")
@click.option("--copy", "copy_template", default=DEFAULT_COPY, show_default=True,
              help="Command that copies the package to a host; {package} {host} {address} {remote} {name}.")
@click.option("--run", "run_template", default=DEFAULT_RUN, show_default=True,
              help="Command that runs one install step on a host; {command} is the step, shell-quoted.")
@click.option("--install", "install_templates", multiple=True, metavar="TEMPLATE",
              help=f"An install step run through --run, in order; may be repeated [default for .deb: "
                   f"{DEFAULT_INSTALL['deb'][0]!r}; for .pyz: " + " then ".join(map(repr, DEFAULT_INSTALL["pyz"]))
                   + "].")
@click.option("--remote", "remote_template", default=DEFAULT_REMOTE, show_default=True,
              help="Where the package is copied to on the host ({remote}); {name} is its file name.")
@click.option("--health", "health_template", default=DEFAULT_HEALTH,
              help="A health URL to poll from here after each install; {address} is the host without user@, "
                   "{host} as given [default: none; the gate checks health on the host].")
@click.option("--gate", "gate_templates", multiple=True, metavar="TEMPLATE",
              help="A check run on each upgraded host through --run before moving on; repeatable; {version} is "
                   "the release's [default: " + repr(DEFAULT_GATE[0]) + ": health, a canary worker deployed and "
                   "invoked, a sandbox command].")
@click.option("--no-gate", is_flag=True, help="Run no gate on the hosts (health alone decides).")
@click.option("--command-timeout", default=600.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds any single copy or install command may take.")
@click.option("--dry-run", is_flag=True, help="Print the commands and health checks; run and change nothing.")
def rollout(package: Path, hosts: tuple[str, ...], hosts_files: tuple[str, ...], canary: int, batch: int,
            expect_version: str | None, health_timeout: float, rollback_package: Path | None,
            rollback_version: str | None, copy_template: str, run_template: str,
            install_templates: tuple[str, ...], remote_template: str, health_template: str,
            gate_templates: tuple[str, ...], no_gate: bool, command_timeout: float, dry_run: bool) -> None:
    """Upgrade HOSTS to PACKAGE (.deb or .pyz), canary first, gated on each host's /healthz.

    Stops at the first host that is not healthy in time, optionally rolls it back, prints
    where every host ended up, and exits 1. Exits 0 when every host is upgraded.
    """
    fleet = read_hosts(hosts, hosts_files)
    release = load_release(package, expect_version, "PACKAGE")
    installs = install_templates or DEFAULT_INSTALL[release.kind]
    gate = () if no_gate else gate_templates or DEFAULT_GATE
    try:
        for kind, template in [("copy", copy_template), ("run", run_template), ("remote", remote_template),
                               ("health", health_template), *(("install", t) for t in installs),
                               *(("gate", t) for t in gate)]:
            check_template(kind, template)
            shlex.split(template)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    previous = None
    if rollback_package is not None:
        previous = load_release(rollback_package, rollback_version, "--rollback-package")
        if previous.kind != release.kind and not install_templates:
            raise click.UsageError("--rollback-package must be the same kind as PACKAGE unless --install is given")
    # Under --json the progress goes to stderr and the outcome to stdout as one JSON document.
    say: Callable[[str], None] = (lambda line: click.echo(line, err=True)) if json_mode() else click.echo
    runner = Rollout(copy_template, run_template, tuple(installs), remote_template, health_template,
                     health_timeout, command_timeout, dry_run=dry_run, echo=say, gate=tuple(gate))
    batches = plan(fleet, canary, batch)
    say(f"rolling out {release.path.name} (version {release.version}) to {len(fleet)} host(s) "
               f"in {len(batches)} step(s)" + (" [dry run]" if dry_run else ""))
    results = runner.upgrade(fleet, batches, release, previous, canary=canary > 0)
    if dry_run:
        return
    if json_mode():
        emit({"version": release.version, "hosts": {h: {"status": st, "detail": d} for h, (st, d) in results.items()}})
    else:
        click.echo("")
        click.echo(table(results))
    if any(status != UPGRADED for status, _ in results.values()):
        sys.exit(1)


def main() -> None:
    """Entry point of ``packaging/rollout.py``."""
    rollout()
