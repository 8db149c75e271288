"""The approvals page as a reviewer uses it, in headless Chromium: a comment that survives refreshes,
diffs shown as diffs, logs as text, and the decision recorded under the approving token's name."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgenode.client import Client
from tests.agents.browser import Browser, find_chromium
from tests.support import MIN_WAIT_S, NodeProcess

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")

DIFF = ("diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n"
        "-    return a - b\n+    return a + b\n")
LOG = "collected 2 items\ntest_add PASSED\ntest_sub PASSED\n"
AGENT = f"""
def run(ctx, input):
    log = ctx.step("tests", lambda: {LOG!r})
    decision = ctx.approval("Commit this fix?", {{"summary": "Fix add()", "diff": {DIFF!r}, "tests_after": log}})
    return {{"approved": decision.approved, "by": decision.by, "comment": decision.comment}}
"""


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None
    b = Browser(CHROMIUM)
    b.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    yield b
    b.close()


def test_a_reviewer_reads_the_diff_writes_a_comment_and_approves(node: NodeProcess, browser: Browser,
                                                                 tmp_path: Path) -> None:
    with node.client() as admin:
        issued = admin.post("/v1/tokens", json={"tenant": "review", "name": "alice-laptop"}).json()
    with Client(node.url, issued["token"], timeout=120) as sdk:
        sdk.agents.deploy("fixer", {"main.py": AGENT})
        run = sdk.agents.start("fixer", {}).wait_for_approval(MIN_WAIT_S)
        assert run.awaiting_approval

        browser.open(f"{node.url}/v1/agents/ui/#token={issued['token']}")
        browser.wait("document.body.dataset.loaded === 'yes'", timeout=MIN_WAIT_S)
        row = f"document.querySelector('#approvals tr[data-run=\"{run.id}\"]')"
        # The diff is a diff: one line per element, added and removed lines marked; the log is text.
        assert browser.eval(f"{row}.querySelector('pre.diff .add').textContent") == "+    return a + b\n"
        assert browser.eval(f"{row}.querySelector('pre.diff .del').textContent") == "-    return a - b\n"
        assert browser.eval(f"{row}.querySelector('[data-key=tests_after] pre.text').textContent") == LOG
        assert "\\n" not in browser.eval(f"{row}.textContent")  # no JSON-escaped newlines anywhere
        # A comment being written survives the page's refreshes (the same element, its text, its focus).
        browser.eval(f"""(() => {{ const c = {row}.querySelector('textarea.comment');
            c.focus(); c.value = 'Looks right; ship it'; c.dataset.mark = 'typed'; }})()""")
        seen = int(browser.eval("document.body.dataset.refreshes"))
        browser.wait(f"Number(document.body.dataset.refreshes) > {seen}", timeout=MIN_WAIT_S)
        assert browser.eval(f"{row}.querySelector('textarea.comment').dataset.mark") == "typed"
        assert browser.eval(f"{row}.querySelector('textarea.comment').value") == "Looks right; ship it"
        assert browser.eval("document.activeElement.className") == "comment"
        # The journal shows the step's log as text too.
        browser.eval(f"document.querySelector('#runs tr[data-run=\"{run.id}\"]').click()")
        browser.wait("!!document.querySelector('#journal pre.text')", timeout=MIN_WAIT_S)
        assert browser.eval("document.querySelector('#journal pre.text').textContent") == LOG

        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        (tmp_path / "approvals.png").write_bytes(shot)
        if os.environ.get("EDGENODE_SCREENSHOT"):  # keep it to look at: EDGENODE_SCREENSHOT=path.png
            Path(os.environ["EDGENODE_SCREENSHOT"]).write_bytes(shot)
        assert shot.startswith(b"\x89PNG")

        browser.eval(f"{row}.querySelector('button.approve').click()")
        done = run.wait(MIN_WAIT_S)
        who = f"alice-laptop ({issued['id']})"
        assert done.output == {"approved": True, "by": who, "comment": "Looks right; ship it"}
        browser.wait(f"document.getElementById('notice').textContent.includes('as {who}')", timeout=MIN_WAIT_S)
        browser.wait("!!document.querySelector('#decisions li')", timeout=MIN_WAIT_S)
        assert f"approved by {who}" in browser.eval("document.querySelector('#decisions').textContent")
