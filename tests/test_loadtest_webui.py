"""Locust's web UI with the HDR comparison tab, in a real headless Chromium.

A real server (tiny models), Locust with its web UI and two worker processes, a swarm started
through the UI's own HTTP API (POST /swarm, which also switches --model to both models), and the
"HDR comparison" tab read from the rendered page while the test runs and after it stops.

Needs Debian's ``chromium`` (``make browser`` installs it as root) and the pinned ``playwright``
(dev extra; its driver ships in the wheel, no browser download: it drives /usr/bin/chromium).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import ServerProcess, free_port
from loadtest.record import hdr, webui
from loadtest.run.locust import LOCUSTFILE

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Where to keep the screenshot besides the test's own folder (docs/img/locust-compare.png).
SCREENSHOT_ENV = "LOADTEST_WEBUI_SCREENSHOT"
RATIO_COLUMNS = ("images_per_s", "p50_us", "p90_us", "p99_us")


def _require_browser() -> Any:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(
            "Debian's chromium is not installed: `make browser` installs it (root and apt-get)"
        )
    return pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is missing")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def _post(url: str, fields: dict[str, str]) -> dict[str, Any]:
    body = urllib.parse.urlencode(fields).encode()
    with urllib.request.urlopen(url, data=body, timeout=10) as response:
        return dict(json.loads(response.read()))


def _wait_for(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture
def locust_ui(model_repository: Path, tmp_path: Path) -> Iterator[str]:
    """Locust's web UI (master + 2 workers) against a real server; yields the UI's base URL."""
    with ServerProcess(
        model_repository / "models.config",
        ["--runtime", "onnx"],
        log_path=tmp_path / "server.log",
    ) as server:
        port = free_port()
        log = open(tmp_path / "locust.log", "w")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                *("-f", str(LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(port)),
                *("--host", server.rest_url, "--grpc-target", server.grpc_target),
                *("--processes", "2", "--hdr-output", str(tmp_path / "hdr.json")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the workers too, so the teardown can end the whole group
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for(
                lambda: json.loads(_get(f"{url}/stats/requests")).get("worker_count") == 2,
                60,
                "Locust's web UI with 2 workers",
            )
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


def _read_table(page: Any) -> dict[tuple[str, str, str], dict[str, str]]:
    """The comparison tab's rows by (model, protocol, batch), cells by column key."""
    headers = [h.strip() for h in page.locator("table thead th").all_inner_texts()]
    titles = {title: key for key, title in webui.COLUMNS}
    keys = [titles[h] for h in headers]
    rows = {}
    for row in page.locator("table tbody tr").all():
        texts = [c.strip() for c in row.locator("td").all_inner_texts()]
        cells = dict(zip(keys, texts, strict=True))
        rows[(cells["model"], cells["protocol"], cells["batch_size"])] = cells
    return rows


def _hdr_rows(url: str) -> dict[str, dict[str, Any]]:
    merged = json.loads(_get(f"{url}/loadtest/hdr.json"))
    return {r["model"]: r for r in merged["results"]}


def test_comparison_tab_in_a_real_browser(locust_ui: str, tmp_path: Path) -> None:
    sync_api = _require_browser()
    url = locust_ui
    # Started with the default --model standard: the UI's start form switches to both models.
    answer = _post(
        f"{url}/swarm",
        {"user_count": "4", "spawn_rate": "4", "model": "standard,separable", "host": ""},
    )
    assert answer["success"], answer
    keys = [("standard", "grpc", "1"), ("separable", "grpc", "1")]
    ratio_key = (webui.RATIO_MODEL, "grpc", "1")

    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path, prefix="chromium-profile-"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 360},
        )
        try:
            page = context.new_page()
            page.goto(f"{url}/?tab={webui.TAB_KEY}")
            page.get_by_role("tab", name=webui.TAB_TITLE).wait_for()
            page.get_by_text(webui.RATIO_MODEL).wait_for(timeout=30_000)
            first = _read_table(page)
            assert set(first) == {*keys, ratio_key}
            assert first[ratio_key]["macs"] == "3.927x"

            # Live: the UI polls every 2 s and the workers report every 3 s.
            def moved() -> dict[tuple[str, str, str], dict[str, str]] | None:
                now = _read_table(page)
                grew = all(int(now[k]["requests"]) > int(first[k]["requests"]) for k in keys)
                return now if grew else None

            live = _wait_for(moved, 30, "the request counts in the tab to grow")
            for key in keys:
                assert int(live[key]["failures"]) == 0
                assert 0 < int(live[key]["p50_us"]) <= int(live[key]["p99_us"])
            # Locust's own columns for the same rows: percentiles in whole milliseconds.
            locust_rows = json.loads(_get(f"{url}/stats/requests"))["stats"]
            for stat in locust_rows:
                print(
                    f"Locust {stat['method']} {stat['name']}: median {stat['median_response_time']}"
                    f" ms, 99%ile {stat['response_time_percentile_0.99']} ms,"
                    f" average {stat['avg_response_time']:.3f} ms"
                )
                assert float(stat["median_response_time"]).is_integer()
            screenshot = tmp_path / "locust-compare.png"
            page.screenshot(path=str(screenshot), full_page=True)
            if os.environ.get(SCREENSHOT_ENV):
                shutil.copyfile(screenshot, os.environ[SCREENSHOT_ENV])

            # After the stop, wait for both workers' final snapshots, then the tab must show
            # exactly what the downloadable HDR data says.
            assert _post(f"{url}/stop", {})["success"]
            _wait_for(
                lambda: json.loads(_get(f"{url}/loadtest/hdr.json"))["final_snapshots"] == 2,
                30,
                "both workers' final HDR snapshots",
            )
            time.sleep(webui.CACHE_S)
            page.reload()
            page.get_by_text(webui.RATIO_MODEL).wait_for(timeout=30_000)
            final = _read_table(page)
        finally:
            context.close()

    for label, table in (("live", live), ("final", final)):
        print(f"{label}:", *(" | ".join(row.values()) for row in table.values()), sep="\n  ")
    results = _hdr_rows(url)
    standard, separable = results["standard"], results["separable"]
    for model, key in zip(("standard", "separable"), keys, strict=True):
        histogram = hdr.decode(results[model]["histogram"])
        assert final[key]["requests"] == str(histogram.get_total_count())
        assert final[key]["p50_us"] == f"{histogram.get_value_at_percentile(50.0):.0f}"
    for column in RATIO_COLUMNS:
        ms = column.replace("_us", "_ms")
        field = ms if ms in standard else column
        expected = separable[field] / standard[field]
        assert final[ratio_key][column] == f"{expected:.3f}x", column
    assert float(final[ratio_key]["p50_us"].rstrip("x")) == pytest.approx(
        hdr.decode(separable["histogram"]).get_value_at_percentile(50.0)
        / hdr.decode(standard["histogram"]).get_value_at_percentile(50.0),
        abs=5e-4,
    )


def _merged(latencies_us: dict[tuple[str, str, int], list[float]]) -> dict[str, Any]:
    from loadtest.record.recorder import Recorder, key_string, merge_snapshots

    recorder = Recorder()
    for (model, protocol, batch), values in latencies_us.items():
        for i, value in enumerate(values):
            started = recorder.window_start_perf + i * 1e-6
            recorder.record(key_string(model, protocol, batch), started, value / 1e6, ok=True)
    recorder.stop()
    recorder.window_end_wall = recorder.window_start_wall + 2.0
    return merge_snapshots([recorder.snapshot()])


def test_comparison_rows_pair_the_models_per_protocol_and_batch() -> None:
    merged = _merged(
        {
            ("separable", "grpc", 1): [300.0] * 40,
            ("standard", "grpc", 1): [600.0] * 20,
            ("standard", "rest", 1): [900.0] * 10,  # no separable partner: no ratio row
        }
    )
    rows = webui.comparison(merged, mac_ratio=3.927)
    assert [(r["model"], r["protocol"]) for r in rows] == [
        ("standard", "grpc"),
        ("separable", "grpc"),
        (webui.RATIO_MODEL, "grpc"),
        ("standard", "rest"),
    ]
    ratio = rows[2]
    assert ratio["p50_us"] == pytest.approx(300.0 / 600.0, rel=1e-3)
    assert ratio["images_per_s"] == pytest.approx(40 / 20)
    assert ratio["macs"] == 3.927
    shown = webui.formatted(rows)
    # Locust's table sorts by name: the names keep this order.
    assert [row["name"] for row in shown] == sorted(row["name"] for row in shown)
    assert (shown[0]["p50_us"], shown[0]["requests"], shown[0]["macs"]) == ("600", "20", "–")
    assert (shown[2]["p50_us"], shown[2]["requests"], shown[2]["macs"]) == ("0.500x", "–", "3.927x")
    table = webui.text_table(rows).splitlines()
    assert table[0].split()[:3] == ["Model", "Protocol", "Batch"]
    assert table[4].startswith("separable ÷ standard  grpc") and table[4].endswith("3.927x")
    assert webui.csv_text(rows).splitlines()[3].startswith("separable ÷ standard,grpc,1,,,2.0,")


def test_reference_mac_ratio_is_the_tutorial_architectures() -> None:
    assert f"{webui.reference_mac_ratio():.2f}" == "3.93"


BAD_FORMS = [
    ("model", "standard,,separable", "--model: empty item in 'standard,,separable'"),
    ("protocol", "grpc,soap", "--protocol: 'soap' is not one of grpc, rest"),
    ("batch_size", "0", "--batch-size: expected an integer >= 1, got 0"),
]


def test_swarm_form_rejects_bad_lists_and_the_ui_still_starts(locust_ui: str) -> None:
    url = locust_ui
    fields = {"user_count": "2", "spawn_rate": "2", "host": ""}
    for field, value, message in BAD_FORMS:
        body = urllib.parse.urlencode({**fields, field: value}).encode()
        with urllib.request.urlopen(f"{url}/swarm", data=body, timeout=10) as response:
            assert response.status == 200  # Locust's own convention for a refused start
            answer = json.loads(response.read())
        assert (answer["success"], answer["message"]) == (False, message)
        assert json.loads(_get(f"{url}/stats/requests"))["state"] == "ready"
    # The same UI then starts a valid test, with one class per combination.
    good = _post(f"{url}/swarm", {**fields, "model": "standard,separable"})
    assert good["success"], good

    def both_models() -> bool:
        names = {s["name"] for s in json.loads(_get(f"{url}/stats/requests"))["stats"]}
        return names >= {"standard batch=1", "separable batch=1"}

    _wait_for(both_models, 30, "requests of both models")
    # Locust's "Reset" button: both workers' HDR histograms start again too.
    before = json.loads(_get(f"{url}/loadtest/hdr.json"))
    assert before["processes"] == 2 and all(r["requests"] > 0 for r in before["results"])
    clicked = time.time()
    request = urllib.request.Request(f"{url}/stats/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    def reset_everywhere() -> bool:
        merged = json.loads(_get(f"{url}/loadtest/hdr.json"))
        snapshots = merged["snapshots"]
        return len(snapshots) == 2 and all(
            s["generation"] == 1 and s["window_start"] >= clicked for s in snapshots
        )

    _wait_for(reset_everywhere, 30, "both workers to reset their HDR histograms")
    # A running test keeps its classes: changing the model needs a stop first.
    changed = _post(f"{url}/swarm", {**fields, "model": "separable"})
    assert changed["success"] is False and "stop the test" in changed["message"]
