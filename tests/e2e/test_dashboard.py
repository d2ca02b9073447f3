"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against
every service as its own process. Sign in with a tenant token, push, and watch the run page
change without a reload while the log follows the job's output; restart the gateway under it
and see it carry on where it was. Then the page's pieces alone, in the same browser: the
event-stream parser, reconnecting with Last-Event-ID, ANSI colours, auto-scroll.

Screenshots of the run page are kept in LEDGERCI_TEST_ARTIFACTS (default tests/artifacts/)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from gateway.dashboard import STATIC_DIR
from tests.support.api import Api
from tests.support.cluster import LedgerCluster
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("LEDGERCI_TEST_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))

# The first job prints a line a second for about twelve seconds (colours, and markup that must stay
# text); the second prints quickly. The run page must show both turning green on its own.
WORKFLOW = r"""
jobs:
  - name: slow
    run: |
      echo "step 1"
      sleep 1
      printf '\033[32mstep 2 in green\033[0m then \033[1;91mbold bright red\033[0m\n'
      sleep 1
      echo '<b>step 3 stays text</b>'
      for n in 4 5 6 7 8 9 10 11 12; do sleep 1; echo "step $n"; done
  - name: quick
    run: echo "quick ran"
"""

SLOW_RUNNING_WITH_A_LINE_SHOWN = """() => {
  const job = document.querySelector('a.job[data-job-name="slow"]');
  const log = document.querySelector('.log');
  return job?.dataset.status === 'running' && log?.textContent.includes('step 2 in green');
}"""


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(f"{url}/")
    page.fill("#token", token)
    page.click("form.sign-in button[type=submit]")
    expect(page.locator(".runs-page")).to_be_visible()


def keep_screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"dashboard screenshot: {path}")


def tenant_with_a_repository(admin: Api, tmp_path: Path, workflow: str) -> tuple[Api, str, str, str]:
    """A tenant, its token, and a repository whose commit holds `workflow`."""
    tenant_id, token = admin.tenant()
    repo = GitRepo(tmp_path / "repo")
    commit = repo.commit({".ledgerci.yml": workflow})
    return Api(admin.url, token), token, admin.repository(tenant_id, repo.clone_url), commit


def watched_page(browser: Browser, errors: list[str]) -> Page:
    """A page whose script errors are collected in `errors`."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: _keep_errors(message, errors))
    return page


def test_run_page_turns_jobs_green_and_follows_the_log_without_a_reload(tmp_path: Path, admin: Api,
                                                                       browser: Browser) -> None:
    tenant, token, repository_id, commit = tenant_with_a_repository(admin, tmp_path, WORKFLOW)
    page_errors: list[str] = []
    page = watched_page(browser, page_errors)
    try:
        sign_in(page, admin.url, token)
        page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
        run_id = tenant.push(repository_id, commit).json()["run_id"]

        # The list picks the new run up by itself; its repository appears with it.
        row = page.locator(f'tr[data-run="{run_id}"]')
        expect(row).to_be_visible(timeout=15_000)
        expect(page.locator(f'.repos a[data-repository="{repository_id}"]')).to_be_visible()
        row.click()
        expect(page).to_have_url(re.compile(f"#/runs/{run_id}$"))

        # A line the job printed is on the page while the page still says the job is running.
        page.wait_for_function(SLOW_RUNNING_WITH_A_LINE_SHOWN, timeout=20_000)
        seen_while_running = datetime.now(UTC)
        keep_screenshot(page, "dashboard-running")
        log = page.locator(".log")
        expect(log.locator(".ansi-fg-2", has_text="step 2 in green")).to_be_visible()
        expect(log.locator(".ansi-fg-9.ansi-bold", has_text="bold bright red")).to_be_visible()
        expect(log).to_contain_text("<b>step 3 stays text</b>")
        assert log.locator("b").count() == 0, "log text was parsed as markup"

        for name in ("slow", "quick"):
            job = page.locator(f'a.job[data-job-name="{name}"]')
            expect(job).to_have_attribute("data-status", "succeeded", timeout=30_000)
            expect(job.locator(".badge")).to_have_css("background-color", "rgb(26, 127, 55)")  # green
        expect(page.locator(".run-head .badge")).to_have_attribute("data-status", "succeeded")
        expect(log).to_contain_text("quick ran")  # the pane followed the run to its next job
        expect(log).to_contain_text("job succeeded")  # the log stream's end
        assert page.evaluate("window.sameDocument") is True, "the page was reloaded"
    finally:
        keep_screenshot(page, "dashboard-run")
        page.close()

    slow = tenant.run(run_id)["jobs"][0]
    assert seen_while_running < datetime.fromisoformat(slow["finished_at"]), "the line was seen only after the job"
    assert page_errors == []


TICKING = """
jobs:
  - name: ticks
    run: for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "tick $i"; sleep 1; done
  - name: after
    run: echo "after the restart"
"""

EVERY_TICK_ONCE = """() => {
  const text = document.querySelector('.log')?.textContent || '';
  return Array.from({length: 12}, (_, i) => text.split(`tick ${i + 1}\\n`).length - 1);
}"""


def test_the_run_page_resumes_where_it_was_when_the_gateway_restarts(tmp_path: Path, admin: Api,
                                                                     cluster: LedgerCluster, browser: Browser) -> None:
    tenant, token, repository_id, commit = tenant_with_a_repository(admin, tmp_path, TICKING)
    run_id = tenant.push(repository_id, commit).json()["run_id"]
    page_errors: list[str] = []
    page = watched_page(browser, page_errors)
    try:
        ticks_job = tenant.wait_run(run_id, until=lambda run: len(run["jobs"]) == 2)["jobs"][0]["id"]
        sign_in(page, admin.url, token)
        # A shared link to the run with the ticks job's log pinned (not following the next job).
        page.goto(f"{admin.url}/#/runs/{run_id}/jobs/{ticks_job}")
        log = page.locator(".log")
        expect(log).to_contain_text("tick 2", timeout=20_000)
        connection = page.locator("#connection")
        expect(connection).to_have_attribute("data-state", "live")

        cluster.stop("gateway")  # SIGTERM: it ends its streams with a retry hint
        expect(connection).to_have_attribute("data-state", "reconnecting")
        cluster.start("gateway")  # same port; back when it answers /readyz

        expect(page.locator('a.job[data-job-name="after"]')).to_have_attribute("data-status", "succeeded",
                                                                               timeout=30_000)
        expect(page.locator('a.job[data-job-name="ticks"]')).to_have_attribute("data-status", "succeeded")
        expect(connection).to_have_attribute("data-state", "ended")  # the run's stream said `end`
        expect(log).to_contain_text("job succeeded")  # the same log stream, resumed, to its end
        assert page.evaluate(EVERY_TICK_ONCE) == [1] * 12, "a line was lost or shown twice"
    finally:
        keep_screenshot(page, "dashboard-resumed")
        page.close()
    assert page_errors == []


# A failing build that logs just under 16 MiB (the default cap), a green word on every line,
# then a clean-up that runs anyway and succeeds: the run page must open the build, not the clean-up.
BIG_LINE = "line {0:07d} \x1b[32mok\x1b[0m compiling module {0:07d} of the build\n"
BIG_LINES = 16 * 1024 * 1024 // len(BIG_LINE.format(1))
BIG_LOG = f"""
jobs:
  - name: build
    run: |
      awk 'BEGIN {{ for (i = 1; i <= {BIG_LINES}; i++)
        printf "line %07d \\033[32mok\\033[0m compiling module %07d of the build\\n", i, i }}'
      exit 3
  - name: cleanup
    when: always
    run: echo "cleaned up"
"""


def test_a_16_mib_log_opens_at_its_tail_and_can_be_searched_linked_and_downloaded(
        tmp_path: Path, admin: Api, browser: Browser) -> None:
    tenant, token, repository_id, commit = tenant_with_a_repository(admin, tmp_path, BIG_LOG)
    run_id = tenant.push(repository_id, commit).json()["run_id"]
    run = tenant.wait_run(run_id, timeout=120)
    assert [(job["name"], job["status"]) for job in run["jobs"]] == [("build", "failed"), ("cleanup", "succeeded")]
    build = run["jobs"][0]["id"]
    raw = tenant.http.get(f"/api/v1/jobs/{build}/log").content
    assert len(raw) == BIG_LINES * len(BIG_LINE.format(1)) and raw.endswith(BIG_LINE.format(BIG_LINES).encode())

    page_errors: list[str] = []
    page = watched_page(browser, page_errors)
    try:
        sign_in(page, admin.url, token)
        page.goto(f"{admin.url}/#/runs/{run_id}")
        # The failed run opens its failed job, not the clean-up that ran last.
        expect(page.locator('a.job[data-job-name="build"]')).to_have_attribute("aria-current", "true")
        expect(page.locator(".log-title strong")).to_have_text("build")

        # The tail is in view, in colour, with the job's end below it.
        log = page.locator(".log")
        last = log.locator(f'.log-row[data-line="{BIG_LINES}"]')
        expect(last).to_be_visible(timeout=30_000)
        expect(last.locator(".ansi-fg-2")).to_have_text("ok")
        expect(log.locator(".log-note-error")).to_have_text("job failed · exit code 3")
        keep_screenshot(page, "dashboard-big-log-tail")

        # The page answers: a click in the search box, and the search goes through all of the log.
        page.click(".log-search")
        page.keyboard.type("line 0123456 ")
        page.keyboard.press("Enter")
        expect(page.locator(".log-search-count")).to_have_text("1 of 1")
        match = log.locator('.log-row.log-current-match[data-line="123456"]')
        expect(match).to_be_visible()
        expect(match.locator("mark")).to_have_text("line 0123456 ")

        # A line number is a link to its line; the link opens there, also in a page of its own.
        match.locator("a.log-number").click()
        expect(page).to_have_url(re.compile(f"#/runs/{run_id}/jobs/{build}/L123456\\?attempt=1$"))
        expect(log.locator('.log-row.log-target[data-line="123456"]')).to_be_visible()
        keep_screenshot(page, "dashboard-big-log-search")

        # The raw log downloads whole, byte for byte what the API has.
        with page.expect_download() as download:
            page.click(".raw-log")
        assert download.value.suggested_filename == "build-attempt-1.log"
        assert Path(download.value.path()).read_bytes() == raw
    finally:
        page.close()

    shared = watched_page(browser, page_errors)
    try:
        sign_in(shared, admin.url, token)
        shared.goto("about:blank")  # the link opens a page afresh, as when it is shared
        shared.goto(f"{admin.url}/#/jobs/{build}/L200000?attempt=1")
        target = shared.locator('.log-row.log-target[data-line="200000"]')
        expect(target).to_be_visible(timeout=30_000)
        expect(target).to_contain_text("line 0200000 ok compiling module 0200000")
        # The log alone names its job, run and repository, with a link back to the run.
        title = shared.locator(".log-title")
        expect(title.locator("strong")).to_have_text("build")
        expect(title.locator(f'a[href="#/runs/{run_id}/jobs/{build}"]')).to_be_visible()
        expect(title).to_contain_text(repository_id)
        keep_screenshot(shared, "dashboard-big-log-line")
    finally:
        shared.close()
    assert page_errors == []


WITH_ARTIFACTS = """
jobs:
  - name: build
    run: mkdir -p dist && head -c 100000 /dev/urandom > dist/app.bin
    artifacts:
      paths: [dist/]
"""


def test_the_run_page_lists_its_artifacts_and_downloads_each_as_stored(tmp_path: Path, admin: Api,
                                                                      browser: Browser) -> None:
    tenant, token, repository_id, commit = tenant_with_a_repository(admin, tmp_path, WITH_ARTIFACTS)
    run_id = tenant.push(repository_id, commit).json()["run_id"]
    assert tenant.wait_run(run_id)["status"] == "succeeded"
    stored = tenant.http.get(f"/api/v1/runs/{run_id}/artifacts/build/dist/app.bin").content

    page_errors: list[str] = []
    page = watched_page(browser, page_errors)
    try:
        sign_in(page, admin.url, token)
        page.goto(f"{admin.url}/#/runs/{run_id}")
        row = page.locator('.artifacts tr[data-artifact="build/dist/app.bin"]')
        expect(row).to_contain_text("97.7 KiB")
        keep_screenshot(page, "dashboard-artifacts")
        with page.expect_download() as download:
            row.locator("button.artifact").click()
        assert download.value.suggested_filename == "app.bin"
        assert Path(download.value.path()).read_bytes() == stored
    finally:
        page.close()
    assert page_errors == []


# Attempt 1 prints a line and hangs until its 2-second timeout; the retry prints another and succeeds.
RETRIED = """
jobs:
  - name: flaky
    retries: 1
    timeout: 2s
    run: |
      if [ "$LEDGERCI_ATTEMPT" = 1 ]; then echo "attempt one"; exec sleep 60; fi
      echo "attempt two"
"""


def test_an_earlier_attempt_can_be_read_and_a_run_without_jobs_says_so(tmp_path: Path, admin: Api,
                                                                       browser: Browser) -> None:
    tenant, token, repository_id, commit = tenant_with_a_repository(admin, tmp_path, RETRIED)
    run_id = tenant.push(repository_id, commit).json()["run_id"]
    job = tenant.wait_run(run_id, timeout=60)["jobs"][0]
    assert job["attempt"] == 2
    broken = GitRepo(tmp_path / "repo").commit({".ledgerci.yml": "jobs: nope\n"})
    broken_run = tenant.push(repository_id, broken).json()["run_id"]
    assert tenant.wait_run(broken_run)["jobs"] == []

    page_errors: list[str] = []
    page = watched_page(browser, page_errors)
    try:
        sign_in(page, admin.url, token)
        page.goto(f"{admin.url}/#/runs/{run_id}")
        log = page.locator(".log")
        expect(log).to_contain_text("attempt two")
        expect(log).not_to_contain_text("attempt one")
        page.select_option("select.attempt-picker", "1")
        expect(page).to_have_url(re.compile(f"#/runs/{run_id}/jobs/{job['id']}\\?attempt=1$"))
        expect(log).to_contain_text("attempt one")
        expect(log.locator(".log-note-info")).to_have_text("attempt 1 abandoned · timed out")  # not in red
        expect(log).not_to_contain_text("attempt two")
        keep_screenshot(page, "dashboard-earlier-attempt")

        page.goto(f"{admin.url}/#/runs/{broken_run}")
        expect(page.locator(".log")).to_have_attribute("data-empty", re.compile("^This run has no jobs: "))
        keep_screenshot(page, "dashboard-no-jobs")
    finally:
        page.close()
    assert page_errors == []


def test_the_page_is_public_its_data_is_not_and_it_stays_out_of_the_schema(admin: Api) -> None:
    anonymous = admin.as_token(None)
    page = anonymous.get("/")
    assert page.status_code == 200 and "/dashboard/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert anonymous.get("/dashboard/app.js").status_code == 200
    assert anonymous.get("/api/v1/runs").status_code == 401
    paths = admin.http.get("/schema/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/dashboard")]


def _keep_errors(message: ConsoleMessage, errors: list[str]) -> None:
    # Chromium logs every HTTP error answer ("Failed to load resource"); the page handles those.
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        errors.append(message.text)


# The pieces of the page on their own, in the same browser: the files served as they are, plus
# an event stream that drops its client once, to see it come back with Last-Event-ID.


class StaticAndDroppingStream(SimpleHTTPRequestHandler):
    resumed_with: list[str | None]

    def do_GET(self) -> None:
        if self.path == "/not-yet-then-ends":
            self.not_yet_then_ends()
            return
        if self.path != "/drops-once":
            super().do_GET()
            return
        self.resumed_with.append(self.headers.get("Last-Event-ID"))
        first = len(self.resumed_with) == 1
        body = (b"retry: 50\nid: 1-5\nevent: log\ndata: first\n\n" if first
                else b": resumed\nid: 1-9\nevent: end\ndata: done\n\n")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))  # then the connection ends: a drop
        self.end_headers()
        self.wfile.write(body)

    def not_yet_then_ends(self) -> None:
        """404 twice (a read model that has not caught up), then a stream that ends."""
        self.resumed_with.append("asked")
        if len(self.resumed_with) <= 2:
            self.send_error(404)
            return
        body = b"event: end\ndata: done\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def modules_page(browser: Browser) -> Iterator[tuple[Page, list[str | None]]]:
    resumed_with: list[str | None] = []
    handler = type("Handler", (StaticAndDroppingStream,), {"resumed_with": resumed_with})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(STATIC_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.server_port}/style.css")
        page.set_content('<link rel="stylesheet" href="/style.css"><div id="root"></div>')
        yield page, resumed_with
    finally:
        page.close()
        server.shutdown()
        server.server_close()
        thread.join()


def test_event_stream_parser_follows_the_standard_across_chunk_boundaries(modules_page) -> None:
    page, _ = modules_page
    parsed = page.evaluate("""async () => {
      const { EventStreamParser } = await import("/sse.js");
      const parser = new EventStreamParser();
      const chunks = ["\\uFEFFid: 3\\r", "\\nevent: run\\ndata: {\\"a\\":1}\\n\\n: keep-alive\\n\\n",
                      "retry: 2500\\ndata: x\\ndata:y\\n\\nretry: soon\\nid: 7\\nevent: end\\nda",
                      "ta: done\\r\\n\\r\\n",
                      "id\\nevent: ignored-without-data\\n\\n"];
      const messages = chunks.flatMap((chunk) => parser.feed(chunk));
      return { messages, lastEventId: parser.lastEventId, retry: parser.retry };
    }""")
    assert parsed == {
        "messages": [{"event": "run", "data": '{"a":1}', "id": "3"},
                     {"event": "message", "data": "x\ny", "id": "3"},
                     {"event": "end", "data": "done", "id": "7"}],
        "lastEventId": "",  # a bare `id` line resets it
        "retry": 2500,  # `retry: soon` is not a number: ignored
    }


def test_a_dropped_stream_reconnects_with_last_event_id_after_the_retry_hint(modules_page) -> None:
    page, resumed_with = modules_page
    seen = page.evaluate("""() => new Promise(async (resolve) => {
      const { followStream } = await import("/sse.js");
      const events = [];
      const onState = (state) => {
        events.push(state);
        if (state === "ended") resolve(events);
      };
      followStream("/drops-once", { token: "t", onMessage: (m) => events.push([m.event, m.data, m.id]), onState });
    })""")
    assert seen == ["connecting", "live", ["log", "first", "1-5"], "reconnecting", "live", ["end", "done", "1-9"],
                    "ended"]
    assert resumed_with == [None, "1-5"]


def test_a_stream_waits_out_a_few_404s_only_when_told_the_thing_exists(modules_page) -> None:
    page, asked = modules_page
    states = page.evaluate("""async () => {
      const { followStream } = await import("/sse.js");
      const follow = (retries) => new Promise((resolve) => {
        const states = [];
        followStream("/not-yet-then-ends", { token: "t", notFoundRetries: retries, onMessage: () => {},
          onState: (state) => { states.push(state); if (["ended", "refused"].includes(state)) resolve(states); } });
      });
      return [await follow(0), await follow(5)];
    }""")
    assert states == [["connecting", "refused"], ["connecting", "live", "ended"]]
    assert len(asked) == 3


def test_ansi_colours_render_as_styled_text_never_as_markup(modules_page) -> None:
    page, _ = modules_page
    rendered = page.evaluate("""async () => {
      const { AnsiRenderer } = await import("/ansi.js");
      const renderer = new AnsiRenderer();
      const root = document.getElementById("root");
      // Escape sequences cut by chunk boundaries; markup; a cursor sequence to drop; 256 colours.
      for (const chunk of ["plain \\x1b[3", "2mgreen\\x1b[0m <img src=x onerror=alert(1)> \\x1b[1;9",
                           "4mbold bright blue\\x1b[22m still blue\\x1b[39m\\x1b[K default \\x1b",
                           "[38;5;196mred256\\x1b[0m\\n"]) {
        root.append(renderer.render(chunk));
      }
      return { text: root.textContent, images: root.querySelectorAll("img").length,
               spans: [...root.querySelectorAll("span")].map((s) => [s.className, s.textContent, s.style.color]) };
    }""")
    assert rendered["text"] == "plain green <img src=x onerror=alert(1)> bold bright blue still blue default red256\n"
    assert rendered["images"] == 0
    assert rendered["spans"] == [["ansi-fg-2", "green", ""], ["ansi-fg-12 ansi-bold", "bold bright blue", ""],
                                 ["ansi-fg-12", " still blue", ""], ["", "red256", "rgb(255, 0, 0)"]]


def test_a_log_taller_than_the_browser_allows_still_reaches_its_end_and_any_line(modules_page) -> None:
    page, _ = modules_page
    page.evaluate("""async () => {
      const { LogView } = await import("/log.js");
      window.view = new LogView();
      view.output.style.height = "300px";
      document.getElementById("root").append(view.element);
      view.append(Array.from({ length: 2_000_000 }, (_, i) => `row ${i + 1}`).join("\\n") + "\\n", 1);
    }""")
    # Two million rows of 19 px is 38 million px, past Chromium's limit for one element.
    log = page.locator(".log")
    expect(log.locator('.log-row[data-line="2000000"]')).to_be_visible()
    page.evaluate("view.goToLine(1, 1234567)")
    expect(log.locator('.log-row.log-target[data-line="1234567"]')).to_be_visible()
    expect(log.locator('.log-row[data-line="1234567"]')).to_have_text("row 1234567\n")


def test_log_auto_scroll_stops_when_scrolled_up_and_resumes_at_the_bottom(modules_page) -> None:
    page, _ = modules_page
    page.evaluate("""async () => {
      const { LogView } = await import("/log.js");
      window.view = new LogView();
      view.output.style.height = "200px";
      document.getElementById("root").append(view.element);
      window.lines = (from, to) => { for (let i = from; i < to; i++) view.append(`line ${i}\\n`); };
      window.gap = () => view.output.scrollHeight - view.output.scrollTop - view.output.clientHeight;
      lines(0, 100);
    }""")
    assert page.evaluate("gap()") <= 1, "it follows the end from the start"
    page.locator(".log").hover()
    page.mouse.wheel(0, -600)  # the reader scrolls up
    expect(page.locator(".follow")).to_be_visible()
    top = page.evaluate("view.output.scrollTop")
    page.evaluate("lines(100, 200)")
    assert page.evaluate("view.output.scrollTop") == top, "new lines pulled the reader away"
    page.mouse.wheel(0, 100_000)  # back to the bottom: following again
    expect(page.locator(".follow")).to_be_hidden()
    page.evaluate("lines(200, 300)")
    assert page.evaluate("gap()") <= 1
    page.evaluate("view.output.scrollTop = 0")
    expect(page.locator(".follow")).to_be_visible()
    page.click(".follow")
    page.evaluate("lines(300, 310)")
    assert page.evaluate("gap()") <= 1
