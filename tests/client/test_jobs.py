"""Long work as jobs: a repository import answers 202 with a job the SDK and the CLI follow."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner

from edgenode.cli import cli
from edgenode.client import Client, NotFound, errors
from edgenode.client import _calls as calls
from edgenode.errors import ImportFailed, JobNotFound
from edgenode.jobs import Job, Jobs
from tests.client.helpers import tenant_token
from tests.support import MIN_WAIT_S, NodeProcess

UPSTREAM_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A node on 127.0.0.2 holding a repository with one commit; its clone URL with a read token."""
    proc = NodeProcess(tmp_path_factory.mktemp("upstream"), listen=f"{UPSTREAM_HOST}:0").start()
    with Client(proc.url, proc.admin_token) as c:
        c.repos.create("source")
        c.repos.commit("source", {"README": "hello\n"}, message="first")
        token = c.send(_repo_token("source"))
    yield f"http://git:{token}@{UPSTREAM_HOST}:{proc.url.rsplit(':', 1)[1]}/git/default/source.git"
    proc.stop()


def _repo_token(name: str) -> calls.Call[str]:
    return calls.Call("POST", f"/v1/repos/{name}/tokens", lambda r: r.json()["token"], json={"access": "read"})


@pytest.fixture(scope="module")
def importer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("importer"),
                       env={"EDGENODE_EGRESS_ALLOW_NETWORKS": f"{UPSTREAM_HOST}/32"}).start()
    yield proc
    proc.stop()


def test_an_import_answers_202_with_a_job_that_ends_with_the_repository(importer: NodeProcess,
                                                                         upstream: str) -> None:
    token = tenant_token(importer, "jobs")
    with httpx.Client(base_url=importer.url, headers={"authorization": f"Bearer {token}"}, timeout=120) as api:
        started = api.post("/v1/repos", json={"name": "copy", "import": {"url": upstream}},
                           headers={"prefer": "respond-async"})
        assert started.status_code == 202, started.text
        job = started.json()
        assert started.headers["location"] == f"/v1/jobs/{job['id']}" and job["kind"] == "repo_import"
        followed = api.get(job["url"], params={"wait": 30}).json()
        for _ in range(int(MIN_WAIT_S)):  # each look holds until the job ends (or 30 s)
            if followed["status"] != "running":
                break
            followed = api.get(job["url"], params={"wait": 30}).json()
        assert followed["status"] == "succeeded", followed
        assert followed["result_status"] == 201 and followed["result"]["name"] == "copy"
        assert followed["progress"]["bytes_received"] > 0
        # Another tenant does not see it; a bad wait is refused.
        other = tenant_token(importer, "jobs-other")
        hidden = api.get(job["url"], headers={"authorization": f"Bearer {other}"})
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "job_not_found"
        bad = api.get(job["url"], params={"wait": "forever"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "wait"
        # Without the header, the route answers as before: 201 when the import is done.
        assert api.post("/v1/repos", json={"name": "copy2", "import": {"url": upstream}}).status_code == 201


def test_the_sdk_and_the_cli_follow_an_import(importer: NodeProcess, upstream: str) -> None:
    token = tenant_token(importer, "jobs-sdk")
    seen: list[str] = []
    with Client(importer.url, token) as c:
        repo = c.repos.import_url("via-sdk", upstream, on_progress=lambda job: seen.append(job["status"]))
        assert repo["name"] == "via-sdk" and seen[-1] == "succeeded"
        with pytest.raises(errors.ImportFailed) as failed:  # a failed job raises the error it ended with
            c.repos.import_url("broken", f"http://{UPSTREAM_HOST}:9/none.git")
        assert failed.value.http_status == 400 and failed.value.request_id.startswith("job_")
        with pytest.raises(NotFound):
            c.jobs.get("job_0000000000000000")
    done = CliRunner().invoke(cli, ["--url", importer.url, "--token", token, "repo", "create", "via-cli",
                                    "--import", upstream, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["name"] == "via-cli"


def test_jobs_belong_to_their_tenant_and_keep_their_outcome() -> None:
    async def scenario() -> None:
        clock = [1000.0]
        jobs = Jobs(keep_s=60, now=lambda: clock[0])

        async def works(job: Job) -> tuple[int, object]:
            job.report(phase="half")
            return 201, {"ok": True}

        async def fails(job: Job) -> tuple[int, object]:
            raise ImportFailed("no such repository")

        good = jobs.start("a", "test", works)
        bad = jobs.start("a", "test", fails)
        assert (await jobs.wait(good, 30)).wire()["result"] == {"ok": True}
        assert good.progress == {"phase": "half"}
        assert (await jobs.wait(bad, 30)).error == {"code": "import_failed", "message": "no such repository"}
        assert bad.result_status == 400
        with pytest.raises(JobNotFound):
            jobs.get("b", good.id)
        clock[0] += 61  # finished long ago: forgotten at the next start
        jobs.start("a", "test", works)
        with pytest.raises(JobNotFound):
            jobs.get("a", good.id)
        await jobs.stop()

    asyncio.run(scenario())
