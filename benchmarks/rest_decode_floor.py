"""What a REST ``:predict`` body costs to decode, step by step, in process: the floor under the
server's decode + encode phases (issue #11 item 4 asks ≤ 10 ms for a 256-image body).

    python -m benchmarks.rest_decode_floor [--images 32,256] [--rounds 5]

For each body (``benchmarks.serving.rest_row_body``: ``json.dumps`` of float32 images, as the
stock Python client sends it) it times, in alternating rounds:
the steps the fast decoder takes (simdjson parse, ``as_buffer``, the structure check with
``bytes.translate``), the whole decoder and the answer's encoding as the server calls them, and
the other ways of extracting the structure that were tried (numpy masks, ``str.translate``), so
that the printed floor (parse + as_buffer + the cheapest structure check + cast + encode) can be
checked on any machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import simdjson

from benchmarks.rest_codec import SIGNATURE
from benchmarks.serving import rest_row_body
from serving.transport import rest_json


def _steps(raw: bytes, images: int) -> dict[str, Callable[[], Any]]:
    parser = simdjson.Parser()
    structure = rest_json._NOT_STRUCTURE
    as_array = np.frombuffer(raw, np.uint8)
    as_text = raw.decode("ascii")
    text_table = dict.fromkeys(c for c in range(128) if chr(c) not in "[],")
    outputs: dict[str, np.ndarray] = {
        "probabilities": np.random.default_rng(1).random((images, 10)).astype(np.float32),
        "classes": np.arange(images, dtype=np.int64),
    }
    decoded = rest_json.decode_predict_fast(raw)
    assert decoded is not None, "the fast decoder must take this body"
    flat = decoded.inputs(SIGNATURE)[0]["images"].astype(np.float64)

    def parse() -> None:
        document = parser.parse(raw)
        del document

    def parse_as_buffer() -> None:
        document: Any = parser.parse(raw)
        np.frombuffer(document["instances"].as_buffer(of_type="d"), np.float64)
        del document

    def numpy_mask_compress() -> bytes:
        mask = as_array == ord("[")
        mask |= as_array == ord("]")
        mask |= as_array == ord(",")
        return bytes(np.compress(mask, as_array).tobytes())

    # A document of its own: the other steps' parser takes a new one on every call.
    own_document: Any = simdjson.Parser().parse(raw)
    instances = own_document["instances"]

    def outer_lengths() -> bool:
        # Part of a count-based proof: the O(1) len() of every image and row array.
        return len(instances) == images and all(
            len(image) == 28 and all(len(row) == 28 for row in image) for image in instances
        )

    def numpy_three_counts() -> int:
        # Not a proof of anything: the least any count-based check would read (three passes).
        return sum(int(np.count_nonzero(as_array == ord(c))) for c in "[],")

    expected = raw.translate(None, structure)
    assert numpy_mask_compress() == expected
    assert as_text.translate(text_table).encode() == expected
    return {
        "simdjson parse": parse,
        "simdjson parse + as_buffer": parse_as_buffer,
        "structure: bytes.translate (used)": lambda: raw.translate(None, structure),
        "structure: numpy mask + compress": numpy_mask_compress,
        "structure: str.translate": lambda: as_text.translate(text_table),
        "numpy: three compare + count passes": numpy_three_counts,
        "simdjson: len() of every image and row array": outer_lengths,
        "cast float64 -> float32 (with range check)": lambda: rest_json._fast_cast(
            flat, SIGNATURE.inputs["images"]
        ),
        "decoder as served (decode_predict + inputs)": lambda: rest_json.decode_predict(raw).inputs(
            SIGNATURE
        ),
        "answer encoding (2 outputs, rows)": lambda: rest_json.encode_response(outputs, True),
    }


def alternating_rounds(
    steps: Mapping[str, Callable[[], Any]], rounds: int, calls: int
) -> dict[str, list[float]]:
    """Seconds per call of each step in each round: every step called ``calls`` times in a
    row (after one untimed call), the steps' order reversed every other round."""
    per_round: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds):
        order = list(steps) if round_index % 2 == 0 else list(steps)[::-1]
        for name in order:
            step = steps[name]
            step()
            started = time.perf_counter()
            for _ in range(calls):
                step()
            per_round[name].append((time.perf_counter() - started) / calls)
    return per_round


def measure(images: int, rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call of each step over ``rounds`` alternating rounds."""
    raw = rest_row_body(images)
    per_round = alternating_rounds(_steps(raw, images), rounds, calls)
    result = {name: statistics.median(values) * 1e3 for name, values in per_round.items()}
    result["body MB"] = len(raw) / 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    """Print each step's median ms per call and the floor for each body size."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.rest_decode_floor", description=__doc__)
    p.add_argument("--images", default="32,256", help="comma-separated batch sizes")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=0, help="calls per round (default: ~0.3 s)")
    args = p.parse_args(argv)
    for images in (int(n) for n in args.images.split(",")):
        calls = args.calls or max(5, 3000 // images)
        figures = measure(images, args.rounds, calls)
        print(
            f"{images} images, body {figures.pop('body MB'):.2f} MB, {calls} calls x "
            f"{args.rounds} rounds, median ms per call:"
        )
        for name, value in figures.items():
            print(f"  {name:56s} {value:8.3f}")
        floor = (
            figures["simdjson parse + as_buffer"]
            + min(v for k, v in figures.items() if k.startswith("structure:"))
            + figures["cast float64 -> float32 (with range check)"]
            + figures["answer encoding (2 outputs, rows)"]
        )
        served = (
            figures["decoder as served (decode_predict + inputs)"]
            + figures["answer encoding (2 outputs, rows)"]
        )
        print(f"  {'floor: parse+as_buffer, cheapest structure, cast, encode':56s} {floor:8.3f}")
        print(f"  {'decoder as served + encode':56s} {served:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
