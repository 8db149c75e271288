"""The maintainer agent: fork a repository, reproduce its failing tests, fix them with a model, ask a human.

Input::

    {"repo": "calc",                      # the artifacts repository to repair (required)
     "model": "scripted:maintainer",      # or "openai:gpt-4o-mini", "anthropic:...", "local:..."
     "fork": "calc-fix-1",                # optional; default "<repo>-fix-<random>"
     "branch": "fix/failing-tests",       # the branch the fix is pushed to, in the fork
     "test_cmd": "python3 -m unittest -v"}

Every effect is a journaled ``ctx`` call, so the run can wait for the approval for days,
survive a restart of the node, and resume exactly here. The model edits files through
three tools (``read_file``, ``replace_in_file``, ``write_file``) answered inside the
sandbox. With ``scripted:`` models the replies below are used, so the example runs
anywhere; any other model string gets the same prompt and tools and decides by itself.
"""

from edgenode_guest.agent import HostError

MAX_TURNS = 12
TAIL = 4000

TOOLS = [
    {"name": "read_file", "description": "Read a file of the repository.",
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
    {"name": "replace_in_file", "description": "Replace the first occurrence of `old` with `new` in a file.",
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "old": {"type": "string"},
                                                     "new": {"type": "string"}},
                    "required": ["path", "old", "new"]}},
    {"name": "write_file", "description": "Create or overwrite a file of the repository.",
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                    "required": ["path", "content"]}},
]

#: What the ``scripted:`` model answers, turn by turn: look, fix, explain.
SCRIPT = [
    {"text": "", "tool_calls": [{"name": "read_file", "arguments": {"path": "calc.py"}}]},
    {"text": "", "tool_calls": [{"name": "replace_in_file",
                                 "arguments": {"path": "calc.py", "old": "return a - b", "new": "return a + b"}}]},
    "Fix add(): it subtracted its arguments instead of adding them.",
]


def tail(text):
    """The end of a long output (what a reviewer and the model need)."""
    return text if len(text) <= TAIL else "..." + text[-TAIL:]


def use_tool(ctx, sandbox, call):
    """Answer one tool call of the model inside the sandbox's clone; the text the model gets back."""
    args = call.get("arguments") or {}
    path = str(args.get("path") or "")
    if not path or path.startswith("/") or ".." in path.split("/"):
        return "error: path must be relative to the repository"
    try:
        if call["name"] == "read_file":
            return ctx.sandbox_read(sandbox, "repo/" + path)
        if call["name"] == "write_file":
            ctx.sandbox_write(sandbox, "repo/" + path, str(args.get("content") or ""))
            return "written"
        if call["name"] == "replace_in_file":
            text = ctx.sandbox_read(sandbox, "repo/" + path)
            old, new = str(args.get("old") or ""), str(args.get("new") or "")
            if not old or old not in text:
                return "error: the text to replace is not in the file"
            ctx.sandbox_write(sandbox, "repo/" + path, text.replace(old, new, 1))
            return "replaced"
    except HostError as exc:  # a tool failure is the model's to see, not the run's end
        return f"error: {exc}"
    return f"error: no tool named {call['name']!r}"


def run(ctx, input):
    upstream = input["repo"]
    spec = input.get("model") or "scripted:maintainer"
    branch = input.get("branch") or "fix/failing-tests"
    test_cmd = (input.get("test_cmd") or "python3 -m unittest -v") + " 2>&1"
    fork_name = input.get("fork") or f"{upstream}-fix-{int(ctx.random() * 1_000_000):06d}"

    # 1. Fork in artifacts (shares objects, copies nothing) and clone the fork into a sandbox.
    fork = ctx.fork(upstream, fork_name)
    sandbox = ctx.sandbox_create(network={"allow": ["node"]})["id"]
    read = ctx.repo_token(fork["name"], "read", ttl_s=300)
    cloned = ctx.sandbox_exec(sandbox, ["git", "clone", "-q", read["clone_url"], "repo"])
    if cloned["exit_code"] != 0:
        ctx.sandbox_delete(sandbox)
        return {"status": "clone_failed", "output": tail(cloned["stderr"])}
    # The token was for the clone only; the remote keeps no credentials.
    ctx.sandbox_exec(sandbox, ["git", "-C", "repo", "remote", "set-url", "origin", read["url"]])

    # 2. Reproduce: run the test suite.
    # No bytecode: an edit within the second of the first run would otherwise meet a stale .pyc,
    # and the commit below adds every file of the work tree.
    quiet = {"PYTHONDONTWRITEBYTECODE": "1"}
    before = ctx.sandbox_exec(sandbox, test_cmd, cwd="repo", timeout_s=300, env=quiet)
    if before["exit_code"] == 0:
        ctx.sandbox_delete(sandbox)
        return {"status": "nothing_to_fix", "fork": fork["name"]}
    listing = ctx.sandbox_exec(sandbox, ["git", "ls-files"], cwd="repo")["stdout"]

    # 3. Ask the model for a fix; each tool call it makes is answered in the sandbox (and journaled).
    model = ctx.model(spec)
    options = {"replies": SCRIPT} if spec.startswith("scripted:") else {}
    messages = [
        {"role": "system", "content": "You are a careful maintainer. Fix the code so the failing tests pass, "
                                      "changing as little as possible and never weakening a test. Use the tools "
                                      "to read and edit files, then reply with a one-line commit message."},
        {"role": "user", "content": f"Repository files:\n{listing}\n`{test_cmd}` fails:\n{tail(before['stdout'])}"},
    ]
    reply = model.chat(messages, tools=TOOLS, **options)
    turns = 1
    while reply.tool_calls and turns < MAX_TURNS:
        messages.append(reply.message())
        for call in reply.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": use_tool(ctx, sandbox, call)})
        reply = model.chat(messages, tools=TOOLS, **options)
        turns += 1
    summary = reply.text.strip().splitlines()[0] if reply.text.strip() else "Fix the failing tests"

    # 4. Run the tests again; only a passing fix goes to a human.
    after = ctx.sandbox_exec(sandbox, test_cmd, cwd="repo", timeout_s=300, env=quiet)
    diff = ctx.sandbox_exec(sandbox, ["git", "diff"], cwd="repo")["stdout"]
    if after["exit_code"] != 0:
        ctx.sandbox_delete(sandbox)
        return {"status": "fix_failed", "fork": fork["name"], "summary": summary, "diff": diff,
                "tests": tail(after["stdout"])}

    # 5. Wait (durably: no thread, no memory) for a human to approve the change.
    decision = ctx.approval(f"Commit this fix to {fork['name']}:{branch} and open a merge request into "
                            f"{upstream}?", {"summary": summary, "diff": diff, "tests_before": tail(before["stdout"]),
                                             "tests_after": tail(after["stdout"])})
    if not decision.approved:
        ctx.sandbox_delete(sandbox)
        return {"status": "rejected", "comment": decision.comment, "diff": diff}

    # 6. Commit on a branch and push it to the fork with a short-lived write token.
    write = ctx.repo_token(fork["name"], "write", ttl_s=300)
    script = ("set -e; git checkout -q -b \"$BRANCH\"; git add -A; "
              "git -c user.name='edgenode maintainer' -c user.email=maintainer@edgenode.invalid commit -q -F -; "
              "git push -q \"$PUSH_URL\" \"$BRANCH\"; git rev-parse HEAD")
    pushed = ctx.sandbox_exec(sandbox, script, cwd="repo", stdin=summary + "\n\nApproved by " + str(decision.by),
                              env={"BRANCH": branch, "PUSH_URL": write["clone_url"]})
    if pushed["exit_code"] != 0:
        ctx.sandbox_delete(sandbox)
        return {"status": "push_failed", "output": tail(pushed["stdout"] + pushed["stderr"])}
    commit = pushed["stdout"].strip().splitlines()[-1]

    # 7. Record the merge request in the upstream repository's event log, and in the agent's state.
    mr = ctx.merge_request(upstream, source=fork["name"], branch=branch, title=summary,
                           description=f"{diff}\nApproved by {decision.by}: {decision.comment}")
    state = ctx.state or {}
    ctx.set_state({**state, "merge_requests": [*state.get("merge_requests", []), mr["id"]]})
    ctx.sandbox_delete(sandbox)
    return {"status": "merge_request", "merge_request": mr, "commit": commit, "fork": fork["name"],
            "branch": branch, "sandbox": sandbox, "diff": diff}
