"""The Airflow UI in a real browser: login, both pipelines listed, no import errors, one run through
the UI to success, the dbt task group and the 'Airbyte job' link; the on-call path: the Assets page's
stream -> staging -> marts edges, a failed sync that pages with its cause, Clear on the failed `sync`
and Clear of the whole run, each re-run succeeding and resolving that window's incident.

Headless Chromium from Debian's `chromium` package (`make browser`), driven by Playwright's Python
API; Playwright never downloads a browser here. Screenshots go to artifacts/screenshots/ (git-ignored).
The run waits up to ELT_UI_RUN_TIMEOUT seconds (default 1800).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from dev.airflow_client import AirflowClient
from tests.integration.pipeline_runs import ENERGY_CONNECTION, local_airbyte

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("ELT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PIPELINES = ("energy_meters", "ecommerce_sales")
TRIGGERED = "energy_meters"
SYNC_TASK = "airbyte_energy.sync"
# The UI is slow on a loaded machine (and the first visit compiles nothing but fetches many chunks).
UI_TIMEOUT_MS = 90_000
RUN_TIMEOUT = float(os.environ.get("ELT_UI_RUN_TIMEOUT", "1800"))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium with `make browser`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui(browser, stack: dict[str, str], airflow: AirflowClient) -> Iterator[UI]:
    airflow.wait_for_dags(list(PIPELINES))
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    ui = UI(page, stack["AIRFLOW_API_URL"])
    page.on("console", lambda m: m.type == "error" and ui.problems.append(f"console: {m.text[:300]}"))
    page.on(
        "response", lambda r: r.status >= 400 and ui.problems.append(f"{r.status} {r.request.method} {r.url}")
    )
    page.on(  # not the requests a navigation aborts
        "requestfailed",
        lambda r: "ERR_ABORTED" not in (r.failure or "") and ui.problems.append(f"{r.url}: {r.failure}"),
    )
    ui.login(stack["AIRFLOW_ADMIN_USER"], stack["AIRFLOW_ADMIN_PASSWORD"])
    yield ui
    context.close()


class UI:
    """The few things the tests do in the Airflow UI, with a screenshot after each."""

    def __init__(self, page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url.rstrip("/")
        self.problems: deque[str] = deque(maxlen=20)  # the page's last console errors and failed requests
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(self, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def open(self, path: str, ready_text: str) -> None:
        """Go to `path` and wait for `ready_text`; reload once if a lazily loaded chunk failed to fetch."""
        for attempt in (1, 2):
            self.page.goto(self.base_url + path)
            try:
                self.page.get_by_text(ready_text, exact=False).first.wait_for()
                return
            except Exception:
                if attempt == 2 or "Failed to fetch dynamically imported module" not in self.body():
                    self.shot("failed-" + re.sub(r"\W+", "-", path).strip("-"))
                    raise

    def wait_reloading_once(self, locator, name: str, first_timeout_ms: float = 30_000) -> None:
        """Wait for `locator`; if it has not shown after `first_timeout_ms`, reload the page once and wait
        again, as a user would. A screenshot and the page's recent errors are kept for each miss.

        Something the page needs can arrive too late for it (a lazily loaded chunk or translation on
        a loaded machine); a reload is what a user does then."""
        try:
            locator.wait_for(timeout=first_timeout_ms)
            return
        except Exception:
            self.shot(f"slow-{name}")
            print(
                f"{name}: not shown after {first_timeout_ms / 1000:g} s; reloading. Page errors: {list(self.problems)}"
            )
        self.page.reload()
        try:
            locator.wait_for()
        except Exception as exc:
            self.shot(f"failed-{name}")
            raise AssertionError(
                f"{name}: not shown after a reload either; page errors: {list(self.problems)}"
            ) from exc

    def park(self) -> None:
        """Leave the UI for a blank page while a test waits on a run through the REST API: an open
        grid refreshes itself every few seconds, which costs Chromium and the api-server CPU that
        the tests running beside this one need (make test is CPU-bound on 2 cores)."""
        self.page.goto("about:blank")

    def body(self) -> str:
        return self.page.inner_text("body")

    def login(self, user: str, password: str) -> None:
        self.page.goto(self.base_url + "/")
        self.page.locator("input[name=username]").fill(user)
        self.page.locator("input[name=password]").fill(password)
        self.shot("01-login")
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_role("link", name="Dags").first.wait_for()


def test_login_lands_on_the_home_page_without_import_errors(ui: UI, airflow: AirflowClient) -> None:
    ui.open("/", "Dags")
    ui.page.wait_for_load_state("networkidle")
    ui.shot("02-home")
    errors = airflow.import_errors()
    if errors or re.search(r"import error", ui.body(), re.I):
        ui.open("/dags", "Dags")
        button = ui.page.get_by_text(re.compile(r"import error", re.I)).first
        if button.count():
            button.click()
            time.sleep(2)
        ui.shot("02-import-errors")
        details = "; ".join(f"{e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}" for e in errors)
        pytest.fail(f"the UI shows DAG import errors: {details or 'see 02-import-errors.png'}")


def test_dag_list_shows_both_pipelines(ui: UI) -> None:
    ui.open("/dags", PIPELINES[0])
    for dag_id in PIPELINES:
        ui.page.get_by_role("link", name=dag_id, exact=True).first.wait_for()
    ui.shot("03-dag-list")


@pytest.mark.parametrize("dag_id", PIPELINES)
def test_dag_page_shows_its_task_groups_and_docs(ui: UI, dag_id: str) -> None:
    ui.open(f"/dags/{dag_id}", "dbt")
    ui.page.get_by_text(re.compile(r"^airbyte_")).first.wait_for()
    ui.shot(f"04-dag-{dag_id}")
    ui.open(f"/dags/{dag_id}/details", "Owner")
    ui.shot(f"05-dag-{dag_id}-details")


@pytest.fixture(scope="module")
def ui_run(ui: UI, airflow: AirflowClient) -> dict:
    """A run of TRIGGERED started with the UI's Trigger button, waited for until it finishes."""
    airflow.unpause(TRIGGERED)
    before = {r["dag_run_id"] for r in _runs(airflow)}
    clicked_at = datetime.now(UTC)
    ui.open(f"/dags/{TRIGGERED}", "Trigger")
    ui.page.get_by_role("button", name="Trigger").first.click()
    dialog = ui.page.get_by_role("dialog")
    dialog.wait_for()
    ui.shot("06-trigger-dialog")
    dialog.get_by_role("button", name="Trigger").last.click()

    deadline = time.monotonic() + 60
    new: list[dict] = []
    while not new and time.monotonic() < deadline:
        new = [r for r in _runs(airflow) if r["dag_run_id"] not in before]
        time.sleep(1)
    assert new, f"no new {TRIGGERED} run appeared within 60 s of clicking Trigger at {clicked_at}"
    ui.park()
    run = airflow.wait_for_run(TRIGGERED, new[0]["dag_run_id"], timeout=RUN_TIMEOUT)
    return run


def _runs(airflow: AirflowClient) -> list[dict]:
    return airflow.get(f"/api/v2/dags/{TRIGGERED}/dagRuns?order_by=-run_after&limit=20")["dag_runs"]


def _run_path(run: dict) -> str:
    return f"/dags/{TRIGGERED}/runs/{quote(run['dag_run_id'], safe='')}"


def test_triggered_run_succeeds_in_the_grid(ui: UI, ui_run: dict, airflow: AirflowClient) -> None:
    ui.open(_run_path(ui_run), ui_run["dag_run_id"][:20])
    ui.page.wait_for_load_state("networkidle")
    ui.shot("07-run")
    if ui_run["state"] != "success":
        failed = [
            f"{t['task_id']} ({t['state']})"
            for t in airflow.task_instances(TRIGGERED, ui_run["dag_run_id"])
            if t["state"] not in ("success", "skipped")
        ]
        pytest.fail(f"{TRIGGERED} run {ui_run['dag_run_id']} ended {ui_run['state']}: {', '.join(failed)}")
    ui.page.get_by_text("Success").first.wait_for()


# The button's label, or its translation key: Airflow 3.3.2's grid renders the button with a
# translator that does not load the `dag` namespace, so when dag.json arrives after the grid has
# rendered (a loaded machine), the label stays "taskGroups.expandAll" until the page is reloaded.
EXPAND_ALL = re.compile(r"^(Expand all task groups|taskGroups\.expandAll)$")


def test_dbt_group_opens_in_the_grid(ui: UI, ui_run: dict) -> None:
    """The Cosmos task group opens to its model tasks in the grid.

    Through "Expand all task groups", which opens every group. A click on a group's name toggles
    it, and the grid keeps which groups are open (per DAG, in the browser): a click on a group that
    an earlier page left open closes it, before its rows have rendered (this failed a fresh-clone run).
    """
    ui.open(_run_path(ui_run), "dbt")
    expand_all = ui.page.get_by_role("button", name=EXPAND_ALL)
    ui.wait_reloading_once(expand_all, "08-expand-all")  # shown once the grid knows the DAG's groups
    if expand_all.is_enabled():  # disabled when every group is open already
        expand_all.click()
    try:  # the model's row in the grid (exact: the run's task list names "dbt.fct_energy_daily.run")
        ui.page.get_by_text("fct_energy_daily", exact=True).first.wait_for(timeout=60_000)
    except Exception:
        ui.shot("failed-08-dbt-group")
        raise
    ui.shot("08-dbt-group")


def test_sync_task_has_the_airbyte_job_link(ui: UI, ui_run: dict) -> None:
    ui.open(f"{_run_path(ui_run)}/tasks/{SYNC_TASK}", SYNC_TASK)
    link = ui.page.get_by_role("link", name="Airbyte job")
    if not link.count():
        ui.open(f"{_run_path(ui_run)}/tasks/{SYNC_TASK}/details", SYNC_TASK)
        link = ui.page.get_by_role("link", name="Airbyte job")
    link.first.wait_for()
    ui.shot("09-airbyte-job-link")
    href = link.first.get_attribute("href") or ""
    assert re.search(r"/connections/[0-9a-f-]{36}/timeline\?jobId=\d+$", href), href


def test_dbt_docs_in_the_browse_menu(ui: UI, stack: dict[str, str]) -> None:
    """Cosmos's dbt docs view, once `[cosmos] dbt_docs_projects` is configured and docs are generated."""
    if "AIRFLOW__COSMOS__DBT_DOCS_PROJECTS" not in stack:
        pytest.skip("the stack does not set AIRFLOW__COSMOS__DBT_DOCS_PROJECTS (dbt docs not configured)")
    env = {**os.environ, **stack, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)])}
    ui.park()
    generated = subprocess.run(
        [sys.executable, "-m", "elt.dbt_docs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    ui.open("/", "Browse")
    ui.page.get_by_role("button", name="Browse").click()
    entry = ui.page.get_by_text("dbt docs", exact=True).first
    entry.wait_for()
    ui.shot("10-browse-menu")
    # The entry opens the docs in a new tab; follow its link in this one.
    href = entry.evaluate("e => e.closest('a') && e.closest('a').getAttribute('href')")
    assert href and href.endswith("/cosmos/managed_elt/dbt_docs_index.html"), href
    docs = ui.base_url + href if href.startswith("/") else href
    ui.page.goto(docs)
    ui.page.get_by_text("Welcome to the auto-generated documentation").first.wait_for()
    ui.shot("11-dbt-docs")
    ui.page.goto(docs + "#!/model/model.managed_elt.fct_energy_daily")
    ui.page.get_by_text("Energy per meter, direction and UTC bucket").first.wait_for()
    ui.shot("12-dbt-docs-fct-energy-daily")
    for artifact in ("manifest.json", "catalog.json"):
        response = ui.page.request.get(f"{ui.base_url}/cosmos/managed_elt/{artifact}")
        assert response.ok, f"{artifact}: HTTP {response.status}"
    manifest = ui.page.request.get(f"{ui.base_url}/cosmos/managed_elt/manifest.json").json()
    assert "model.managed_elt.fct_energy_daily" in manifest["nodes"]


# -- the on-call path: assets graph, a failed sync's page, Clear from the UI ------------------------

STREAM, STAGING, INTERMEDIATE, MART = (
    "raw_energy/muid_1",
    "analytics_staging/stg_energy_meters__muid_1",
    "analytics_intermediate/int_energy_readings_unpivoted",
    "analytics_marts/fct_energy_daily",
)
# asset -> (tasks that produce it, tasks that consume it), read off the dbt project's SQL
EXPECTED_TASK_EDGES = {
    STREAM: ({"airbyte_energy.wait"}, {"dbt.stg_energy_meters__muid_1.run"}),
    STAGING: ({"dbt.stg_energy_meters__muid_1.run"}, {"dbt.int_energy_readings_unpivoted.run"}),
    INTERMEDIATE: ({"dbt.int_energy_readings_unpivoted.run"}, {"dbt.fct_energy_daily.run"}),
    MART: ({"dbt.fct_energy_daily.run"}, set()),
}
FAILURE_CAUSE = "HTTP 401 from meter API (token expired)"


def test_assets_page_shows_stream_to_staging_to_marts_edges(ui: UI, airflow: AirflowClient) -> None:
    """Each asset's producing and consuming tasks, as the Assets page lists and draws them.

    The edges are read from the endpoint the page renders (reading them off the SVG graph was flaky:
    it lays edges out in steps and may keep the previous asset's); the page is opened and shot for each.
    """
    assets = airflow.get("/api/v2/assets?limit=200")["assets"]
    for table, (producers, consumers) in EXPECTED_TASK_EDGES.items():
        asset = next((a for a in assets if a["uri"].endswith(f"/{table}")), None)
        assert asset, f"no asset for {table}: {[a['uri'] for a in assets]}"
        produced = {t["task_id"] for t in asset["producing_tasks"]}
        consumed = {t["task_id"] for t in asset["consuming_tasks"]}
        assert producers <= produced, (table, produced)
        assert consumers <= consumed, (table, consumed)
        # The page's labels render before the asset's details: wait for the asset's own URI.
        ui.open(f"/assets/{asset['id']}", asset["uri"])
        assert asset["uri"] in ui.body() and "Consuming Tasks" in ui.body()
        ui.shot(f"13-asset-{table.replace('/', '-')}")


def _recorded(stack: dict[str, str]) -> dict:
    with urllib.request.urlopen(f"{stack['RECEIVERS_URL']}/recorded", timeout=30) as response:
        return json.load(response)


def _pages_of(stack: dict[str, str], run_id: str, action: str) -> list[dict]:
    events = [e["body"] for e in _recorded(stack)["pagerduty"]]
    return [e for e in events if e["event_action"] == action and run_id in json.dumps(e)]


def _failed_sync_run(ui: UI, airflow: AirflowClient, stack: dict[str, str]) -> str:
    ui.park()
    local_airbyte(
        stack, "POST", "/faults/fail-next-job", {"connectionId": ENERGY_CONNECTION, "message": FAILURE_CAUSE}
    )
    airflow.unpause(TRIGGERED)
    run_id = airflow.trigger(TRIGGERED)
    assert airflow.wait_for_run(TRIGGERED, run_id, timeout=RUN_TIMEOUT)["state"] == "failed"
    return run_id


def _confirm_clear(ui: UI, endpoint: str) -> None:
    dialog = ui.page.get_by_role("dialog")
    dialog.wait_for()
    dialog.get_by_text("Affected Tasks").first.wait_for()
    ui.shot(f"14-clear-dialog-{endpoint}")

    def the_clear(r) -> bool:  # not the dialog's dry runs (it lists the affected tasks with those)
        body = (r.request.post_data or "").replace(" ", "")
        return endpoint in r.url and r.request.method == "POST" and '"dry_run":false' in body

    with ui.page.expect_response(the_clear) as response:
        dialog.get_by_role("button", name="Confirm").click()
    assert response.value.status == 200, response.value.text()
    ui.park()


def _wait_for_rerun(airflow: AirflowClient, run_id: str) -> dict:
    deadline = time.monotonic() + 60
    while airflow.run(TRIGGERED, run_id)["state"] == "failed" and time.monotonic() < deadline:
        time.sleep(1)
    return airflow.wait_for_run(TRIGGERED, run_id, timeout=RUN_TIMEOUT)


def _wait_for_resolve(stack: dict[str, str], run_id: str, dedup_key: str) -> None:
    deadline = time.monotonic() + 180  # the success callback runs in the dag-processor
    while time.monotonic() < deadline:
        if [e for e in _pages_of(stack, run_id, "resolve") if e["dedup_key"] == dedup_key]:
            return
        time.sleep(3)
    pytest.fail(f"no PagerDuty resolve of {dedup_key}: {_recorded(stack)['pagerduty'][-3:]}")


def test_clear_on_the_failed_sync_reruns_it_and_resolves_that_windows_incident(
    ui: UI, airflow: AirflowClient, stack: dict[str, str]
) -> None:
    run_id = _failed_sync_run(ui, airflow, stack)
    (page,) = _pages_of(stack, run_id, "trigger")
    dedup_key = page["dedup_key"]
    assert dedup_key.startswith(f"elt/{TRIGGERED}/")

    ui.open(f"/dags/{TRIGGERED}/runs/{quote(run_id, safe='')}/tasks/{SYNC_TASK}", SYNC_TASK)
    ui.page.get_by_role("button", name="Press shift+c to clear").click()
    ui.page.get_by_role("dialog").get_by_text("airbyte_energy.wait").first.wait_for()  # downstream included
    _confirm_clear(ui, "clearTaskInstances")
    assert _wait_for_rerun(airflow, run_id)["state"] == "success"
    _wait_for_resolve(stack, run_id, dedup_key)
    # The page carried the cause (the Airbyte job's failure reason), not only "job N failed".
    assert FAILURE_CAUSE in page["payload"]["custom_details"].get("error", ""), page["payload"]


def test_clear_run_only_failed_tasks_reruns_the_run(
    ui: UI, airflow: AirflowClient, stack: dict[str, str]
) -> None:
    run_id = _failed_sync_run(ui, airflow, stack)
    (page,) = _pages_of(stack, run_id, "trigger")

    ui.open(f"/dags/{TRIGGERED}/runs/{quote(run_id, safe='')}", run_id[:20])
    ui.page.get_by_role("button", name="Press shift+c to clear").first.click()
    ui.page.get_by_role("dialog").get_by_role("button", name="Clear only failed tasks").click()
    _confirm_clear(ui, "/clear")
    assert _wait_for_rerun(airflow, run_id)["state"] == "success"
    _wait_for_resolve(stack, run_id, page["dedup_key"])
