"""The agents page in headless Chromium: runs, the journal, approve and reject buttons."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.agents.browser import Browser, find_chromium
from tests.agents.helpers import deploy, start, wait_status
from tests.support import NodeProcess

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it)")


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None
    b = Browser(CHROMIUM)
    yield b
    b.close()


def test_page_lists_runs_and_approves(api: httpx.Client, agent_node: NodeProcess, browser: Browser) -> None:
    deploy(api, "page-agent", """
        def run(ctx, input):
            ctx.step("prepare", lambda: "<b>not html</b>")
            return ctx.approval("release <script>x</script>?", {"n": input}).approved
    """)
    first = start(api, "page-agent", 1)
    second = start(api, "page-agent", 2)
    wait_status(api, first["id"], "waiting")
    wait_status(api, second["id"], "waiting")
    page = api.get("/v1/agents/ui/", headers={"authorization": ""})
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]

    browser.open(f"{agent_node.url}/v1/agents/ui/#token={agent_node.admin_token}")
    browser.wait("document.body.dataset.loaded === 'yes'")
    rows = browser.eval("[...document.querySelectorAll('#approvals tr')].map(r => r.dataset.run)")
    assert first["id"] in rows and second["id"] in rows
    # Data is shown as text: the prompt's markup is not interpreted.
    assert browser.eval("document.querySelectorAll('#approvals script').length") == 0
    assert "<script>" in browser.eval("document.querySelector('#approvals').textContent")
    # Clicking a run shows its journal.
    browser.eval(f"document.querySelector('#runs tr[data-run=\"{first['id']}\"]').click()")
    browser.wait("document.querySelectorAll('#journal tr').length === 2")
    assert "<b>not html</b>" in browser.eval("document.querySelector('#journal').textContent")
    # Approve one and reject the other with the buttons.
    browser.eval(f"document.querySelector('#approvals tr[data-run=\"{first['id']}\"] button.approve').click()")
    browser.eval(f"""(() => {{ const row = document.querySelector('#approvals tr[data-run="{second['id']}"]');
        row.querySelector('.comment').value = 'not now'; row.querySelector('button.reject').click(); }})()""")
    assert wait_status(api, first["id"], "completed")["output"] is True
    assert wait_status(api, second["id"], "completed")["output"] is False
    events = api.get(f"/v1/agents/runs/{second['id']}/history").json()["events"]
    assert events[0]["payload"] == {"approved": False, "comment": "not now"}
    browser.wait(f"!document.querySelector('#approvals tr[data-run=\"{first['id']}\"]')")


def test_page_without_a_token_asks_for_one(agent_node: NodeProcess, browser: Browser) -> None:
    browser.open(f"{agent_node.url}/v1/agents/ui")
    text = browser.wait("document.getElementById('error').textContent")
    assert "token" in text.lower()
    browser.eval("document.getElementById('token').value = 'wrong'; document.querySelector('#login button').click()")
    browser.wait("document.getElementById('error').textContent.includes('unauthorized')")


def test_the_token_is_kept_where_no_other_page_can_read_it(agent_node: NodeProcess, browser: Browser) -> None:
    browser.open(f"{agent_node.url}/v1/agents/ui/#token={agent_node.admin_token}")
    browser.wait("document.body.dataset.loaded === 'yes'")
    assert "token=" not in browser.eval("location.href")
    # Web storage and cookies are shared by every page of the origin (a public worker's page included).
    stored = browser.eval("JSON.stringify([sessionStorage.length, localStorage.length, document.cookie])")
    assert stored == '[0,0,""]'
    browser.eval("document.getElementById('token').value = 'typed'; document.querySelector('#login button').click()")
    browser.wait("document.getElementById('error').textContent.includes('unauthorized')")
    assert browser.eval("sessionStorage.length + localStorage.length") == 0
