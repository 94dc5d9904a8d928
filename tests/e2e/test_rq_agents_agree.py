"""Issue 12, item 9: the django-rq page and the Agents page agree on what is running.

Two real `rqworker` agents on PostgreSQL and Redis, and uvicorn serving the portal. The steps
block on gate files that the test opens one at a time, so each phase lasts until the test has
looked at it: both agents idle; both busy; one busy through local continuation; one busy and
one idle; both idle again. In each phase, RQ's worker registry in Redis and the agents' rows in
the database must tell the same story, and so must the pages a superuser sees: /django-rq/ (its
workers list, each worker's page and its current job's page) and the Agents page
(/executions/agent/).

Under local continuation (docs/architecture.md) RQ's current job stays the predecessor's
`run_step(<first step>)` while the agent runs the successor, whose own stored `rq_job_id` was
never enqueued: there the two sides agree on the chain, not on the step.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.worker import Worker

from apps.executions.choices import StepStatus
from apps.executions.models import Agent, Step
from apps.executions.services import trigger_workflow
from tests.e2e.conftest import needs_services
from tests.e2e.test_chaos import wait_for_agents, wait_until
from tests.factories import make_org, make_workflow

pytestmark = [needs_services, pytest.mark.multiprocess]

WORKER_ENV = {"OPSFLOW_HEARTBEAT_SECONDS": "1"}  # the Agents page follows within a second
PORTS = range(18500, 18600)  # the ports this test may listen on


def gated(node_id: str, gate: Path) -> dict:
    """A shell step on `shell` that runs until `gate` exists (20 s at most, then it fails)."""
    return {
        "id": node_id,
        "type": "shell.command",
        "queue": "shell",
        "timeout": 30,
        "config": {
            "script": f"for i in $(seq 400); do [ -e {gate} ] && exit 0; sleep 0.05; done; exit 1"
        },
    }


# --- what each side says ---


@dataclass(frozen=True)
class View:
    """What both sides say at one moment, by agent name (`<hostname>/<rq worker name>`)."""

    rq: dict[str, tuple[str, str | None, int | None]]  # state, current job, the job's step id
    agents: dict[str, tuple[str, tuple[int, ...]]]  # heartbeat: state, running step ids
    working_on: dict[str, tuple[int, ...]]  # the Agents page's column: running steps by worker


def job_step(job_id: str | None, connection) -> int | None:
    """The step an RQ job runs: `run_step(<step id>)`."""
    try:
        job = Job.fetch(job_id, connection=connection) if job_id else None
    except NoSuchJobError:  # it ended meanwhile (result_ttl=0)
        return None
    return job.args[0] if job and job.func_name == "apps.executions.jobs.run_step" else None


def look(connection) -> View:
    host = socket.gethostname()
    rq = {}
    for worker in Worker.all(connection=connection):
        job_id = worker.get_current_job_id()
        rq[f"{host}/{worker.name}"] = (worker.get_state(), job_id, job_step(job_id, connection))
    agents = {
        a.name: (a.display_state(), tuple(sorted(a.running_step_ids)))
        for a in Agent.objects.exclude(state="stopped")
    }
    working_on: dict[str, list[int]] = {name: [] for name in agents}
    running = Step.objects.filter(status=StepStatus.RUNNING, worker__in=list(agents))
    for worker, step_id in running.values_list("worker", "pk"):
        working_on[worker].append(step_id)
    return View(rq, agents, {n: tuple(sorted(ids)) for n, ids in working_on.items()})


def downstream(step: Step, of: Step) -> bool:
    """Whether `step` follows `of` in their execution's graph (a chain local continuation runs)."""
    edges = step.execution.version.definition["edges"]
    seen, frontier = set(), {of.node_id}
    while frontier:
        frontier = {e["to"] for e in edges if e["from"] in frontier} - seen
        seen |= frontier
    return step.node_id in seen


def disagreements(view: View) -> list[str]:
    """Where RQ and the agents differ; empty when they agree.

    A busy RQ worker is an agent whose heartbeat reports one running step, and that step is
    the one RQ's current job runs (`run_step(<step id>)`, the step's stored job id) or, under
    local continuation, a step downstream of it in the same execution that the same agent
    runs after it. An idle RQ worker is an agent that reports nothing running."""
    problems = []
    if set(view.rq) != set(view.agents):
        problems.append(f"RQ lists workers {sorted(view.rq)}, the agents are {sorted(view.agents)}")
    for name, (state, job_id, head_id) in sorted(view.rq.items()):
        if name not in view.agents:
            continue
        agent_state, reported = view.agents[name]
        if agent_state != "running":
            problems.append(f"{name}: RQ says {state}, the Agents page {agent_state}")
        if reported != view.working_on[name]:
            problems.append(
                f"{name}: its heartbeat reports steps {reported}, the page's running steps "
                f"say {view.working_on[name]}"
            )
        if state != "busy":
            if job_id or reported:
                problems.append(f"{name}: RQ says {state} (job {job_id}), it runs {reported}")
            continue
        if not job_id or len(reported) != 1:
            problems.append(f"{name}: RQ says busy with job {job_id}, the agent runs {reported}")
            continue
        head = Step.objects.filter(pk=head_id).first()
        shown = Step.objects.select_related("execution__version").get(pk=reported[0])
        if head is None or head.rq_job_id != job_id:
            problems.append(f"{name}: RQ's job {job_id} is no step's job (its step: {head_id})")
        elif shown.pk != head.pk and not (
            shown.execution_id == head.execution_id
            and head.worker == name
            and head.status == StepStatus.COMPLETED
            and downstream(shown, of=head)
        ):
            problems.append(
                f"{name}: RQ runs job {job_id} of step {head.pk} ({head.node_id} of execution "
                f"{head.execution_id}), the Agents page shows step {shown.pk} ({shown.node_id} "
                f"of execution {shown.execution_id})"
            )
    return problems


def agreeing(connection, expected, timeout: float = 10) -> View:
    """Poll until both sides agree and say what `expected(view)` wants (no message); the last
    disagreement is the failure message at the deadline."""
    last: list[str] = []

    def check() -> View | None:
        nonlocal last
        view = look(connection)
        last = disagreements(view) or [m for m in [expected(view)] if m]
        return None if last else view

    try:
        return wait_until(check, timeout, "RQ and the agents to agree", every=0.1)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}: {last}") from None


def busy_with(*steps: Step):
    """`expected` for: exactly these steps are running, each on the agent that started it."""

    def expected(view: View) -> str:
        wanted = {}
        for step in steps:
            step.refresh_from_db()
            if step.status != StepStatus.RUNNING:
                return f"step {step.pk} ({step.node_id}) is {step.status}"
            wanted[step.worker] = (step.pk,)
        reported = {name: ids for name, (_state, ids) in view.agents.items() if ids}
        return "" if reported == wanted else f"agents run {reported}, expected {wanted}"

    return expected


# --- the pages ---


@dataclass
class Cell:
    text: str
    links: list[str]


class Page(HTMLParser):
    """A page's table rows (cells with their text and links) and its text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.rows: list[list[Cell]] = []
        self.words: list[str] = []
        self.links: list[str] = []
        self._row: list[Cell] | None = None
        self._cell: Cell | None = None
        self._skip = 0
        self.feed(html)
        self.text = " ".join(" ".join(self.words).split())

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = Cell("", [])
        if tag == "a":
            self.links.append(dict(attrs).get("href") or "")
            if self._cell is not None:
                self._cell.links.append(self.links[-1])

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._cell.text = " ".join(self._cell.text.split())
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._skip:
            return
        self.words.append(data)
        if self._cell is not None:
            self._cell.text += data


@pytest.fixture
def portal(processes, transactional_db):
    """uvicorn on a free port of this test's range; an httpx client logged in as a superuser."""
    get_user_model().objects.create_superuser("root", password="pw-root")
    port = next(p for p in PORTS if listenable(p))
    # the test settings: their password hasher is the one the superuser was made with
    process = processes.web(port, DJANGO_SETTINGS_MODULE="config.settings.test")
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, "uvicorn exited"
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 30, "uvicorn to answer", every=0.2)
    with httpx.Client(base_url=base, timeout=10) as client:
        form = client.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token, form.text[:500]
        credentials = {"username": "root", "password": "pw-root"}
        done = client.post("/login/", data={**credentials, "csrfmiddlewaretoken": token[1]})
        assert done.status_code == 302, done.text[:500]
        yield client


def listenable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def get(client: httpx.Client, path: str) -> Page:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code, response.text[:500])
    return Page(response.text)


def rq_pages(client: httpx.Client) -> dict[str, tuple[str, str | None, int | None]]:
    """What django-rq shows a superuser, from its home page down: for each worker of the
    `shell` queue, its state on the workers list, its state and current job on its own page,
    and the step id that job's page shows as its argument. Keyed like the agents
    (`<hostname>/<worker name>`)."""
    home = get(client, "/django-rq/")
    (shell,) = [row for row in home.rows if row and row[0].text == "shell"]
    (workers_link,) = [link for cell in shell for link in cell.links if "/workers/" in link]
    listed = get(client, workers_link)
    assert int([c.text for c in shell if workers_link in c.links][0]) == len(listed.rows) - 1
    host = socket.gethostname()
    shown = {}
    for row in listed.rows[1:]:  # under the header
        name, state = row[0].text, row[1].text
        detail = get(client, row[0].links[0])
        assert f"Name: {name} State: {state} " in detail.text, detail.text
        job = re.search(r"Current Job: apps\.executions\.jobs\.run_step \( (\w+) \)", detail.text)
        if job is None:
            shown[f"{host}/{name}"] = (state, None, None)
            continue
        (job_link,) = [link for link in detail.links if job[1] in link]
        job_page = get(client, job_link)
        arg = re.search(r"Status started .* args (\d+) kwargs", job_page.text)
        shown[f"{host}/{name}"] = (state, job[1], int(arg[1]) if arg else None)
    return shown


def agents_page(client: httpx.Client) -> dict[str, tuple[str, str]]:
    """The Agents page: each agent's state and what it is working on (`#<execution> <node>`,
    or `—`)."""
    page = get(client, "/executions/agent/")
    # (unfold adds its sort icons' names to the sortable headings: "Name arrow_circle_down …")
    (header,) = [row for row in page.rows if any(c.text == "Working on" for c in row)]
    columns = [cell.text for cell in header]
    state, working_on = columns.index("State"), columns.index("Working on")
    rows = page.rows[page.rows.index(header) + 1 :]
    return {
        row[0].text: (row[state].text, row[working_on].text)
        for row in rows
        if len(row) == len(columns)
    }


def pages_agree(client: httpx.Client, connection, expected, timeout: float = 10) -> View:
    """Both pages show what RQ and the agents agree on. The view is read before and after the
    pages and must not change meanwhile (else all is read again), so the pages saw that view."""
    last: list[str] = []

    def check() -> View | None:
        nonlocal last
        before = agreeing(connection, expected)
        try:
            last = page_differences(before, rq_pages(client), agents_page(client))
        except AssertionError as unexpected:  # a page not as expected: moved on meanwhile?
            last = [f"a page: {unexpected}"]
        if look(connection) != before:
            last = ["the view changed while the pages were read", *last]
            return None
        assert not last, last  # a steady view the pages do not show: no use waiting
        return before

    try:
        return wait_until(check, timeout, "a steady view to compare the pages with", every=0.1)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}: {last}" if last else str(timed_out)) from None


def page_differences(view: View, rq_shown, agents_shown) -> list[str]:
    problems = []
    if rq_shown != view.rq:
        problems.append(f"django-rq shows {rq_shown}, RQ says {view.rq}")
    if set(agents_shown) != set(view.agents):
        problems.append(f"the Agents page lists {sorted(agents_shown)}, not {sorted(view.agents)}")
        return problems
    for name, (state, _reported) in view.agents.items():
        label, doing = agents_shown[name]
        steps = Step.objects.filter(pk__in=view.working_on[name]).order_by("pk")
        wanted = ", ".join(f"#{s.execution_id} {s.node_id}" for s in steps) or "—"
        if (label, doing) != (state, wanted):
            problems.append(f"the Agents page shows {name} {label} on {doing!r}, not {wanted!r}")
    return problems


# --- the test ---


@pytest.fixture
def gates(processes, tmp_path):
    """Gate files the steps wait for; all opened at the end, so no step outlives the test."""
    made: list[Path] = []

    def gate(name: str) -> Path:
        made.append(tmp_path / f"gate-{name}")
        return made[-1]

    yield gate
    for path in made:
        path.touch()


def test_the_django_rq_page_and_the_agents_page_agree_on_what_is_running(
    processes, gates, portal, redis_conn
):
    org = make_org("acme")
    solo_gate, first_gate, second_gate = gates("solo"), gates("first"), gates("second")
    solo = make_workflow(
        org, {"slug": "solo", "name": "Solo", "nodes": [gated("hold", solo_gate)], "edges": []}
    )
    relay = make_workflow(
        org,
        {
            "slug": "relay",
            "name": "Relay",
            "nodes": [gated("first", first_gate), gated("second", second_gate)],
            "edges": [{"from": "first", "to": "second"}],
        },
    )
    wait_for_agents(processes.worker(**WORKER_ENV), processes.worker(**WORKER_ENV))
    nothing = busy_with()

    # 1. Both idle: RQ lists both workers idle, the Agents page both running with nothing on.
    idle = pages_agree(portal, redis_conn, nothing)
    assert list(idle.rq.values()) == [("idle", None, None)] * 2

    # 2. Both busy, each with its own RQ job.
    solo_run, relay_run = trigger_workflow(solo), trigger_workflow(relay)
    hold = Step.objects.get(execution=solo_run, node_id="hold")
    first = Step.objects.get(execution=relay_run, node_id="first")
    both = pages_agree(portal, redis_conn, busy_with(hold, first))
    assert sorted(both.rq.values()) == sorted(
        [("busy", hold.rq_job_id, hold.pk), ("busy", first.rq_job_id, first.pk)]
    )
    assert hold.worker != first.worker

    # 3. `second` runs inside `first`'s RQ job (local continuation): RQ still shows that job,
    # the Agents page shows `second`; the other agent still runs `hold`.
    first_gate.touch()
    second = wait_until(
        lambda: Step.objects.filter(execution=relay_run, node_id="second").first(),
        10,
        "second to be dispatched",
    )
    chained = pages_agree(portal, redis_conn, busy_with(hold, second))
    assert second.worker == first.worker  # continued locally, by the same agent
    assert chained.rq[first.worker] == ("busy", first.rq_job_id, first.pk)
    assert chained.agents[first.worker][1] == (second.pk,)
    assert not Job.exists(second.rq_job_id, connection=redis_conn)  # never went through RQ

    # 4. `hold` done: its agent is idle on both sides, the other still runs `second`.
    solo_gate.touch()
    one = pages_agree(portal, redis_conn, busy_with(second))
    assert one.rq[hold.worker] == ("idle", None, None) and one.agents[hold.worker][1] == ()

    # 5. All done: both idle again.
    second_gate.touch()
    pages_agree(portal, redis_conn, nothing)
    for step in (hold, first, second):
        step.refresh_from_db()
        assert step.status == StepStatus.COMPLETED, (step.node_id, step.status)
