"""bench/serve_bench.py's own pieces: its arguments, the load generator's HTTP reading and the
figures it draws from what clients saw. The benchmark itself is run by hand (bench/RESULTS.md)."""
import asyncio
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[2] / "bench" / "serve_bench.py"
spec = importlib.util.spec_from_file_location("serve_bench", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_defaults_are_the_issue_s_levels():
    args = bench.parse_args([])
    assert args.clients == [1, 5, 20, 50] and args.rollback_clients == 20 and args.database == "postgresql"
    assert not args.write and not args.quick


def test_quick_shrinks_every_phase():
    args = bench.parse_args(["--quick"])
    assert args.clients == [1, 5, 20] and args.duration <= 5 and args.epochs == 1 and args.train_rows <= 300


@pytest.mark.parametrize("argv", [["--clients", "0"], ["--canary-share", "100"], ["--canary-share", "0"],
                                  ["--duration", "0"], ["--serving-workers", "0"], ["--database", "mysql"],
                                  ["--warmup", "-1"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.parse_args(argv)
    assert exited.value.code == 2 and "error" in capsys.readouterr().err


def test_percentile_matches_numpy():
    values = list(np.random.default_rng(0).exponential(10, 1001))
    for q in (0, 50, 95, 99, 100):
        assert bench.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert bench.percentile([], 50) is None and bench.percentile([4.0], 99) == 4.0


def test_build_request_is_one_http_request():
    payload = json.dumps({"inputs": ["héllo"]}).encode()
    raw = bench.build_request("127.0.0.1", 8100, "/v1/deployments/x/predict", "lcs_key", payload)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/deployments/x/predict HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Host"] == "127.0.0.1:8100" and headers["Authorization"] == "Bearer lcs_key"
    assert int(headers["Content-Length"]) == len(body) and body == payload


def read(raw):
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        first = await bench.read_response(reader)
        return first, await reader.read()
    return asyncio.run(go())


def test_read_response_by_content_length_leaves_the_next_response():
    body = b'{"route": "stable"}'
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n%sHTTP/1.1 503" % (len(body), body)
    (status, headers, got), rest = read(raw)
    assert (status, got, rest) == (200, body, b"HTTP/1.1 503")
    assert headers["content-type"] == "application/json"


def test_read_response_chunked_and_to_the_close():
    (status, _, got), rest = read(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\nNEXT")
    assert (status, got, rest) == (503, b"abcdefg", b"NEXT")
    (status, _, got), _ = read(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    assert (status, got) == (200, b"until the end")


def test_answer_route_accepts_only_a_full_answer():
    good = json.dumps({"request_id": "r", "route": "canary", "outputs": [{"label": "refund", "probabilities": {}}]})
    assert bench.answer_route(200, good.encode()) == ("canary", None)
    assert bench.answer_route(503, b'{"error": {}}') == (None, "http 503")
    assert bench.answer_route(200, b"not json") == (None, "malformed answer")
    assert bench.answer_route(200, json.dumps({"route": "stable", "outputs": []}).encode()) == (None, "malformed answer")


def test_summarize_counts_only_the_window():
    records = [(0.0, 0.5, "stable", None),  # warm-up: left out
               (1.0, 1.010, "stable", None), (1.0, 1.020, "canary", None), (1.5, 1.6, None, "http 503"),
               (2.9, 3.2, "stable", None)]  # done after the window: left out
    result = bench.summarize(records, 1.0, 3.0)
    assert result["requests"] == 3 and result["answers"] == 2 and result["errors"] == {"http 503": 1}
    assert result["throughput"] == 1.0 and result["routes"] == {"stable": 1, "canary": 1}
    assert result["p50_ms"] == pytest.approx(15.0)


def test_rollback_summary():
    click = 100.0
    records = [(95.0 + i * 0.1, 95.0 + i * 0.1 + 0.01, "canary" if i % 2 else "stable", None) for i in range(50)]
    records += [(99.9, 100.3, "canary", None),  # sent before the click, answered after it
                (100.2, 100.45, "canary", None),  # sent after the click: the process had not switched yet
                (100.5, 100.6, "stable", None), (100.6, 100.7, None, "http 500"), (104.0, 104.1, None, "http 500")]
    result = bench.rollback_summary(records, click)
    assert result["canary_share_before"] == pytest.approx(0.5)
    assert result["to_stable_s"] == pytest.approx(0.45)
    assert result["last_canary_sent_after_click_s"] == pytest.approx(0.45)
    assert result["canary_answers_after_click"] == 2
    assert result["failed_during"] == 1 and result["failed_total"] == 2 and result["requests_total"] == 55


def test_rollback_summary_with_no_canary_after_the_click():
    result = bench.rollback_summary([(99.0, 99.5, "canary", None), (100.1, 100.2, "stable", None)], 100.0)
    assert result["to_stable_s"] == 0.0 and result["last_canary_sent_after_click_s"] is None
